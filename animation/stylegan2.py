"""StyleGAN2 (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", 2020) in plain PyTorch.

No custom CUDA ops and nothing compiled at import: it runs the same on CPU, GPU and the meta device.

    G, D = create_gan("sg2-faces32")
    ws = G.mapping(z, truncation_psi=0.7)          # [B, num_ws, w_dim]
    images = G.synthesis(ws, noise_mode="const")   # [B, C, H, W], roughly in [-1, 1]

Design notes:
- Every linear / conv uses the equalized learning rate: weights are stored ~ N(0, 1) / lr_mul and scaled at run
  time by lr_mul / sqrt(fan_in), biases are stored b and used as b * lr_mul.
- Modulated convs scale the input activations by the style instead of building per-sample grouped weights: one
  shared-weight conv per layer, because the double backward (R1, path length) of a grouped conv is slow.
  Demodulation becomes a per (sample, out channel) output scale.
- Resampling uses the [1, 3, 3, 1] FIR filter: transposed conv + blur to go up, blur + strided conv to go down.
  The blur is a depthwise conv on CPU and sums of shifted slices elsewhere (see `blur`).
- Losses are functions (non-saturating logistic, R1, path length); the training loop lives elsewhere.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_tools.config import from_dict
from data_tools.pretrained import PretrainedFolder, PretrainedMixin, save_pretrained_folder
from data_tools.registry import Registry

SQRT2 = math.sqrt(2.0)
NOISE_MODES = ("random", "const", "none")


# --------------------------------------------------------------------------------------------- config + registry
def check_resolution(res, lo: int, hi: int | None = None) -> None:
    """A power of two in lo..hi (config validation shared by the GAN and the inversion encoder)."""
    if not isinstance(res, int) or res < lo or (hi is not None and res > hi) or res & (res - 1):
        span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"resolution must be a power of two {span}, got {res!r}")


def check_positive(cfg, names) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


@dataclass
class StyleGAN2Config:
    resolution: int
    channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    w_avg_beta: float = 0.995
    mbstd_group: int = 4

    def __post_init__(self):
        check_resolution(self.resolution, 16, 1024)
        if self.channel_base // self.resolution < 1:
            raise ValueError(f"channel_base {self.channel_base} gives no channels at {self.resolution} px "
                             f"(needs >= {self.resolution})")
        check_positive(self, ("channels", "z_dim", "w_dim", "mapping_layers", "channel_max", "mbstd_group"))

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def channels_at(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)


GAN_CONFIGS: Registry[StyleGAN2Config] = Registry("StyleGAN2 config")
# For tests: three blocks, a few thousand parameters per layer.
GAN_CONFIGS.register("sg2-tiny16", StyleGAN2Config(16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256,
                                                   channel_max=32))
# Small faces / sprites; trains on a CPU.
GAN_CONFIGS.register("sg2-faces32", StyleGAN2Config(32, z_dim=128, w_dim=128, mapping_layers=4, channel_base=2048,
                                                     channel_max=128))
GAN_CONFIGS.register("sg2-64", StyleGAN2Config(64, channel_base=16384, channel_max=512))
# StyleGAN2-ADA's "paper256" widths (half of config-f).
GAN_CONFIGS.register("sg2-256", StyleGAN2Config(256, channel_base=16384, channel_max=512))
# Config-f, the paper's FFHQ 1024 model.
GAN_CONFIGS.register("sg2-ffhq1024", StyleGAN2Config(1024, channel_base=32768, channel_max=512))


def list_gans() -> list[str]:
    return GAN_CONFIGS.list()


def get_gan_config(name: str, **overrides) -> StyleGAN2Config:
    """A registered config with `overrides` applied (a copy: the registry's entry is untouched); an unknown
    name raises RegistryError (a KeyError and a ValueError) with a did-you-mean hint."""
    return dataclasses.replace(GAN_CONFIGS.get(name), **overrides)  # replace() re-runs validation


def create_gan(name_or_cfg: str | StyleGAN2Config, **overrides) -> tuple["Generator", "Discriminator"]:
    if isinstance(name_or_cfg, str):
        cfg = get_gan_config(name_or_cfg, **overrides)
    else:
        cfg = dataclasses.replace(name_or_cfg, **overrides)
    return Generator(cfg), Discriminator(cfg)


# --------------------------------------------------------------------------------------------- building blocks
# The [1, 3, 3, 1] FIR filter, two ways. On CPU a depthwise conv is fastest. On CUDA the double backward of a
# depthwise (groups = channels) conv is pathologically slow (R1 + path-length steps were ~13x slower than with
# slices at 256 px on an H200), so there the separable filter is written as sums of shifted slices.
def _fir_kernel(x: Tensor) -> Tensor:
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


def _blur_conv(x: Tensor, pad: int, stride: int = 1, gain: float = 1.0) -> Tensor:
    channels = x.shape[1]
    weight = (_fir_kernel(x) * gain).expand(channels, 1, 4, 4)
    return F.conv2d(x, weight, stride=stride, padding=pad, groups=channels)


def _fir_along(x: Tensor, dim: int, pad: int, stride: int) -> Tensor:
    x = F.pad(x, (pad, pad) if dim == 3 else (0, 0, pad, pad))
    count = (x.shape[dim] - 4) // stride + 1

    def tap(offset: int) -> Tensor:
        index = [slice(None)] * x.ndim
        index[dim] = slice(offset, offset + stride * (count - 1) + 1, stride)
        return x[tuple(index)]

    return (tap(0) + tap(3) + 3 * (tap(1) + tap(2))) * 0.125


def _blur_slices(x: Tensor, pad: int, stride: int = 1, gain: float = 1.0) -> Tensor:
    x = _fir_along(_fir_along(x, 2, pad, stride), 3, pad, stride)
    return x * gain if gain != 1 else x


def blur(x: Tensor, pad: int, stride: int = 1, gain: float = 1.0) -> Tensor:
    """[1,3,3,1] x [1,3,3,1] / 64 filter (times gain) with `pad` zeros on each side, keeping every stride-th pixel."""
    return (_blur_conv if x.device.type == "cpu" else _blur_slices)(x, pad, stride, gain)


def _upsample_conv(x: Tensor) -> Tensor:
    channels = x.shape[1]
    weight = (_fir_kernel(x) * 4).expand(channels, 1, 4, 4)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=channels)


def _upsample_along(x: Tensor, dim: int) -> Tensor:
    # Polyphase form: even outputs are 3/4 x[i] + 1/4 x[i - 1], odd ones 3/4 x[i] + 1/4 x[i + 1].
    length = x.shape[dim]
    padded = F.pad(x, (1, 1) if dim == 3 else (0, 0, 1, 1))
    centre = padded.narrow(dim, 1, length) * 0.75
    even, odd = centre + padded.narrow(dim, 0, length) * 0.25, centre + padded.narrow(dim, 2, length) * 0.25
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


def _upsample_slices(x: Tensor) -> Tensor:
    return _upsample_along(_upsample_along(x, 2), 3)


def upsample_2x(x: Tensor) -> Tensor:
    """FIR upsampling: zero insertion + the [1,3,3,1] filter with gain 4 (keeps the mean)."""
    return (_upsample_conv if x.device.type == "cpu" else _upsample_slices)(x)


def _lrelu(x: Tensor, gain: float = SQRT2) -> Tensor:
    return F.leaky_relu(x, 0.2) * gain


class EqualLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return _lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Equalized conv; down=True blurs, then convolves with stride 2 (4x cheaper than conv-then-blur-down)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, down: bool = False, gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.kernel_size, self.activation, self.down, self.gain = kernel_size, activation, down, gain

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.weight_gain
        if not self.down:
            x = F.conv2d(x, weight, self.bias, padding=self.kernel_size // 2)
        elif self.kernel_size == 1:
            x = F.conv2d(blur(x, pad=1, stride=2), weight, self.bias)
        else:  # padding chosen so H -> H/2 with the filter centred between input pixel pairs
            x = F.conv2d(blur(x, pad=(self.kernel_size + 1) // 2), weight, self.bias, stride=2)
        return _lrelu(x, SQRT2 * self.gain) if self.activation else x * self.gain


class ModulatedConv2d(nn.Module):
    """y = conv(x * s, W) * d with d = rsqrt(s^2 @ sum_k(W^2)^T + 1e-8): same as per-sample weights W * s * d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, demodulate: bool = True,
                 up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.kernel_size, self.demodulate, self.up = kernel_size, demodulate, up

    def forward(self, x: Tensor, styles: Tensor) -> Tensor:
        weight = self.weight * self.weight_gain
        x = x * styles[:, :, None, None].to(x.dtype)
        if self.up:  # transposed conv at input resolution (4x fewer FLOPs than conv after upsampling), then blur
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)  # H -> 2H + 1
            x = blur(x, pad=1, gain=4)  # 2H + 1 -> 2H
        else:
            x = F.conv2d(x, weight, padding=self.kernel_size // 2)
        if self.demodulate:
            weight_sq = weight.square().sum(dim=(2, 3))  # [out, in]
            demod = torch.rsqrt(styles.square() @ weight_sq.t() + 1e-8)  # [B, out]
            x = x * demod[:, :, None, None].to(x.dtype)
        return x


# --------------------------------------------------------------------------------------------- generator
class MappingNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mul=cfg.mapping_lr_mul, activation=True)
            for i in range(cfg.mapping_layers))
        self.num_ws, self.w_avg_beta = cfg.num_ws, cfg.w_avg_beta
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def map_z(self, z: Tensor) -> Tensor:
        """z [B, z_dim] -> w [B, w_dim], with no broadcast, truncation or w_avg update."""
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # PixelNorm
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None) -> Tensor:
        w = self.map_z(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([truncated, ws[:, cutoff:]], dim=1)
        return ws


class SynthesisLayer(nn.Module):
    """Style affine -> modulated 3x3 conv -> noise -> bias -> lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start near 1
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, demodulate=True, up=up)
        # shape [1], not a 0-d scalar: DeepSpeed broadcasts parameters as bytes, which a 0-d tensor cannot be viewed as
        self.noise_strength = nn.Parameter(torch.zeros(1))  # 0 at init: noise fades in as training wants it
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.resolution = resolution

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        x = self.conv(x, self.affine(w))
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        return _lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.conv(x, self.affine(w)) + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution: [upsampling conv,] conv, ToRGB. Uses num_conv + 1 ws; the ToRGB's w is shared with the
    next block's first conv, which is how 2*log2(res) - 2 ws cover 2*log2(res) - 3 convs and log2(res) - 1 ToRGBs."""

    def __init__(self, in_channels: int, out_channels: int, cfg: StyleGAN2Config, resolution: int):
        super().__init__()
        first = resolution == 4
        self.convs = nn.ModuleList(
            ([] if first else [SynthesisLayer(in_channels, out_channels, cfg.w_dim, resolution, up=True)])
            + [SynthesisLayer(out_channels, out_channels, cfg.w_dim, resolution)])
        self.torgb = ToRGB(out_channels, cfg.channels, cfg.w_dim)
        self.num_conv = len(self.convs)

    def forward(self, x: Tensor, img: Tensor | None, ws: Tensor, noise_mode: str) -> tuple[Tensor, Tensor]:
        for i, conv in enumerate(self.convs):
            x = conv(x, ws[:, i], noise_mode)
        rgb = self.torgb(x, ws[:, self.num_conv])
        img = rgb if img is None else upsample_2x(img) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        resolutions = [2 ** i for i in range(2, int(math.log2(cfg.resolution)) + 1)]
        self.const = nn.Parameter(torch.randn(cfg.channels_at(4), 4, 4))
        self.blocks = nn.ModuleList(
            SynthesisBlock(cfg.channels_at(max(res // 2, 4)), cfg.channels_at(res), cfg, res) for res in resolutions)
        self.num_ws = 1 + sum(block.num_conv for block in self.blocks)  # + 1 for the last ToRGB
        assert self.num_ws == cfg.num_ws, (self.num_ws, cfg.num_ws)

    def forward(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must be [B, {self.num_ws}, w_dim], got {tuple(ws.shape)}")
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        img, w_idx = None, 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise_mode)
            w_idx += block.num_conv
        return img


PRETRAINED_KIND = "stylegan2"
DISCRIMINATOR_WEIGHTS = "discriminator"


class Generator(PretrainedMixin, nn.Module):
    """The StyleGAN2 generator. `save_pretrained(dir, discriminator=D)` writes an exported GAN folder (the
    generator as model.safetensors, D as discriminator.safetensors); `Generator.from_pretrained(dir)` and
    `Discriminator.from_pretrained(dir)` read either network back. Loaded generators are frozen, in eval mode."""

    pretrained_kind = PRETRAINED_KIND

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws, self.z_dim, self.w_dim = cfg.num_ws, cfg.z_dim, cfg.w_dim

    def pretrained_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict) -> "Generator":
        return cls(from_dict(StyleGAN2Config, config)).eval().requires_grad_(False)

    def save_pretrained(self, directory, *, discriminator: "Discriminator | None" = None, meta=None,
                        extra_files=None, dtype: torch.dtype | None = None):
        """The GAN folder: this generator (model.safetensors) and, if given, the discriminator."""
        weights = dict(self.pretrained_weights())
        if discriminator is not None:
            weights.update(discriminator.pretrained_weights())
        return save_pretrained_folder(directory, self.pretrained_kind, self.pretrained_config(), weights,
                                      meta={**self.pretrained_meta(), **(meta or {})}, extra_files=extra_files,
                                      dtype=dtype)

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random") -> Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)

    @torch.no_grad()
    def mean_w(self, n: int = 4096, generator: torch.Generator | None = None, chunk: int = 1024) -> Tensor:
        """Mean of w over n random z, computed directly (w_avg is only an EMA of training batches)."""
        device = self.mapping.w_avg.device
        total = torch.zeros(self.w_dim, device=device)
        for start in range(0, n, chunk):
            z = torch.randn(min(chunk, n - start), self.z_dim, device=device, generator=generator)
            total += self.mapping.map_z(z).sum(dim=0)
        return total / n


def mix_styles(ws_a: Tensor, ws_b: Tensor, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Style mixing regularisation: with probability prob per sample, layers from a random crossover point
    (1 .. num_ws - 1) come from ws_b instead of ws_a. `generator` is the torch RNG."""
    batch, num_ws = ws_a.shape[:2]
    device = ws_a.device
    mixed = torch.rand(batch, device=device, generator=generator) < prob
    cutoff = torch.randint(1, num_ws, (batch,), device=device, generator=generator)
    cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, num_ws))
    take_b = torch.arange(num_ws, device=device)[None, :] >= cutoff[:, None]  # [B, num_ws]
    return torch.where(take_b[:, :, None], ws_b, ws_a)


# --------------------------------------------------------------------------------------------- discriminator
class DiscriminatorBlock(nn.Module):
    """Residual: two 3x3 convs (the second downsamples) plus a 1x1 downsampling skip, summed and scaled 1/sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        gain = math.sqrt(0.5)  # keeps the variance of skip + main equal to either's
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True, gain=gain)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True, gain=gain)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


class MinibatchStdDev(nn.Module):
    """Appends the std of features over groups of samples, so D can see (lack of) variety in a batch."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        group = min(self.group_size, batch)
        if batch % group:
            raise ValueError(f"batch size {batch} must be divisible by the minibatch-std group size {group}")
        feats = self.num_channels
        y = x.reshape(batch // group, group, feats, channels // feats, height, width)
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)  # variance within each group
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [batch / group, feats]
        y = y.repeat_interleave(group, dim=0)[:, :, None, None].expand(-1, -1, height, width)
        return torch.cat([x, y], dim=1)


class Discriminator(PretrainedMixin, nn.Module):
    """Reads its weights (discriminator.safetensors) from an exported GAN folder: `Discriminator.from_pretrained`."""

    pretrained_kind = PRETRAINED_KIND

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        top = cfg.resolution
        self.from_rgb = EqualConv2d(cfg.channels, cfg.channels_at(top), 1)
        resolutions = [2 ** i for i in range(int(math.log2(top)), 2, -1)]  # top .. 8
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(cfg.channels_at(res), cfg.channels_at(res // 2)) for res in resolutions)
        ch4 = cfg.channels_at(4)
        self.mbstd = MinibatchStdDev(cfg.mbstd_group, num_channels=1)
        self.conv = EqualConv2d(ch4 + 1, ch4, 3)
        self.fc = EqualLinear(ch4 * 4 * 4, ch4, activation=True)
        self.out = EqualLinear(ch4, 1)

    def pretrained_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict) -> "Discriminator":
        return cls(from_dict(StyleGAN2Config, config)).eval()

    def pretrained_weights(self) -> dict:
        return {DISCRIMINATOR_WEIGHTS: self.state_dict()}

    def load_pretrained_weights(self, folder: PretrainedFolder, device) -> None:
        self.load_state_dict(folder.tensors(DISCRIMINATOR_WEIGHTS, device), strict=True)

    def forward(self, img: Tensor) -> Tensor:
        """img [B, C, H, W] -> logits [B]."""
        x = self.from_rgb(img)
        for block in self.blocks:
            x = block(x)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


# --------------------------------------------------------------------------------------------- losses
def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    return F.softplus(-fake_logits).mean()


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_images: Tensor, real_logits: Tensor) -> Tensor:
    """Mean over the batch of ||grad_x D(x)||^2; real_images must require grad. Multiply by gamma / 2 (and the
    lazy interval) yourself. The graph is kept (create_graph=True) so the penalty trains D."""
    if not real_logits.requires_grad:  # D does not depend on anything trainable or on x
        return real_logits.new_zeros(())
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True, allow_unused=True)
    if grad is None:  # D ignores its input: the gradient is exactly zero
        return real_logits.sum() * 0
    return grad.square().sum(dim=(1, 2, 3)).mean()


class PathLengthPenalty(nn.Module):
    """Path-length regularisation. lengths = sqrt(mean over ws of |J_w^T y|^2), y ~ N(0, I) / sqrt(H W);
    the running mean a follows a <- a + decay (mean(lengths) - a); penalty = mean((lengths - a)^2).

        ws = G.mapping(z); images = G.synthesis(ws, noise_mode="random")
        penalty, lengths = pl(images, ws)   # images must be computed from ws with grad enabled
    """

    def __init__(self, decay: float = 0.01):
        super().__init__()
        self.decay = decay
        self.register_buffer("mean_length", torch.zeros([]))

    def forward(self, images: Tensor, ws: Tensor) -> tuple[Tensor, Tensor]:
        height, width = images.shape[2:]
        y = torch.randn_like(images) / math.sqrt(height * width)
        (grad,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()  # [B]
        with torch.no_grad():
            self.mean_length.copy_(self.mean_length.lerp(lengths.mean().detach(), self.decay))
        penalty = (lengths - self.mean_length).square().mean()
        return penalty, lengths


def lazy_adam_params(lr: float, betas: tuple[float, float], interval: int) -> tuple[float, tuple[float, float]]:
    """Adam settings for a network regularised every `interval` steps (lazy regularisation, StyleGAN2 App. B)."""
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
