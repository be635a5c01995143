"""GAN inversion: find the W+ latents that make a (frozen) StyleGAN2 generator redraw a given still image.

    result = invert(G, images, steps=300)                 # optimise ws from the mean w
    enc = train_inversion_encoder(G, steps=2000)          # or first guess them with an encoder ...
    result = invert(G, images, init="encoder", encoder=enc, steps=100)   # ... and refine (fewer steps)
    result.ws  # [N, num_ws, w_dim]: edit these in W+ and call G.synthesis(ws) to animate the face

Why this shape:
- Only the latents are optimised (Adam, warm-up then cosine / step decay). The generator is frozen for the
  duration (requires_grad off, eval mode) and restored afterwards, so a generator that is being trained or
  shared elsewhere comes back bit-identical with no gradients on it.
- `lr` is in units of the spread of w (estimated from the mapping network), so one value suits generators
  whose W spaces have very different scales.
- W+ (one w per synthesis layer) reaches far more images than W (one w for all layers) but strays further
  from what the generator was trained on; `space="w"` and `w_reg` are the knobs for that trade-off.
- The encoder (e4e-style: a CNN predicting an offset from the mean w) is trained on the generator's own
  samples, so it needs no data set. It gives a good first guess in one forward pass; optimisation refines it.
- `feature_fn` stands in for LPIPS (no pretrained perceptual network ships with the project): any
  differentiable image -> features callable, e.g. a face-attribute oracle's penultimate features.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from data_tools.pretrained import PretrainedMixin
from data_tools.training.config import OptimConfig
from data_tools.training.optim import lr_factor
from data_tools.training.small_fit import SmallFitConfig, fit_small, progress_range, seeded

from .stylegan2 import Generator, check_positive, check_resolution, mix_styles

PIXEL_LOSSES = ("l1", "l2", "mse")
SPACES = ("w+", "w")
LR_SCHEDULES = ("cosine", "linear", "step", "constant")  # data_tools.training.optim.lr_factor's schedules
W_STAT_SAMPLES = 2048  # z samples for the mean / spread of w: the mapping network alone, so cheap


# --------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Turn off requires_grad and switch to eval mode for the block, then restore both exactly as they were.

    Eval mode matters: the mapping network updates its w_avg buffer when called in training mode.
    """
    flags = [p.requires_grad for p in module.parameters()]
    modes = [m.training for m in module.modules()]
    module.requires_grad_(False)
    module.eval()
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        for m, mode in zip(module.modules(), modes):
            m.training = mode


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


@torch.no_grad()
def w_statistics(generator: Generator, n: int = W_STAT_SAMPLES, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(w_ref [w_dim], w_std [1]) on the generator's device.

    w_ref is the generator's w_avg when training has tracked one (it is what truncation pulls toward), else the
    mean of n mapped z; w_std is the root mean per-dimension variance of w, the unit for learning rates and
    regularisers. The z are drawn on the CPU from `seed`, so the numbers do not depend on the device.
    """
    device, _ = _device_dtype(generator)
    z = torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    with frozen(generator):
        w = generator.mapping.map_z(z).float()
    w_avg = generator.mapping.w_avg.float()
    w_ref = w_avg.clone() if bool(w_avg.abs().sum() > 0) else w.mean(dim=0)
    w_std = w.var(dim=0).mean().sqrt().clamp_min(1e-8).reshape(1)
    return w_ref, w_std


def _as_images(generator: Generator, images: Tensor | np.ndarray) -> Tensor:
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    cfg = generator.cfg
    expected = (cfg.channels, cfg.resolution, cfg.resolution)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images must be [N, {', '.join(map(str, expected))}] (the generator's channels and "
                         f"resolution, values in [-1, 1]); got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    return images


def per_image_loss(recon: Tensor, target: Tensor, kind: str) -> Tensor:
    """[B] pixel loss: l1 = mean |d|, mse = mean d^2, l2 = sqrt(mean d^2) (its gradient does not fade near the
    optimum the way the squared error's does)."""
    diff = (recon.float() - target.float()).flatten(1)
    if kind == "l1":
        return diff.abs().mean(dim=1)
    mse = diff.square().mean(dim=1)
    if kind == "mse":
        return mse
    if kind == "l2":
        return (mse + 1e-12).sqrt()
    raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {kind!r}")


def _feature_distance(features: Any, target: Any) -> Tensor:
    """[B] mean squared distance between feature tensors (or matching lists / tuples of them)."""
    if isinstance(features, (list, tuple)):
        return sum(_feature_distance(f, t) for f, t in zip(features, target, strict=True))
    return (features.float() - target.float()).flatten(1).square().mean(dim=1)


def _detach(features: Any) -> Any:
    if isinstance(features, (list, tuple)):
        return type(features)(_detach(f) for f in features)
    return features.detach()


def latent_lr_factor(step: int, steps: int, schedule: str = "cosine", warmup: float = 0.05) -> float:
    """The latent optimisation's learning-rate multiplier: the shared schedule (`data_tools.training.optim.
    lr_factor`) with a linear warm-up over the first `warmup` fraction of the steps (Adam's first moves from a
    good init are otherwise its largest), then cosine to zero, linear, x0.1 at 50% and 75% ("step"), or flat."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    return lr_factor(step, max_steps=steps, warmup=int(round(warmup * steps)), schedule=schedule, min_lr_ratio=0.0)


# --------------------------------------------------------------------------------------------- optimisation
@dataclass
class InversionResult:
    ws: Tensor  # [N, num_ws, w_dim], detached, on the input images' device
    images: Tensor  # [N, C, H, W] reconstructions G.synthesis(ws)
    losses: list[float]  # per step: the mean over images of the loss being minimised, before that step's update
    errors: Tensor  # [N] final per-image MSE against the target, in [-1, 1] pixel units (whatever pixel_loss)
    init_errors: Tensor  # [N] the same MSE at the initial ws: how much the optimisation bought

    @property
    def error(self) -> float:
        return float(self.errors.mean())


def _initial_ws(init: str | Tensor, encoder: "InversionEncoder | None", batch: Tensor, w_ref: Tensor,
                num_ws: int, w_dim: int) -> Tensor:
    """[B, num_ws, w_dim] float32 starting point on batch.device. A tensor init is already this batch's slice."""
    b, device = batch.shape[0], batch.device
    if isinstance(init, Tensor):
        ws = init.to(device=device, dtype=torch.float32)
        if ws.ndim == 1:  # one w for every image and layer
            ws = ws[None, None]
        elif ws.ndim == 2:  # one w per image
            ws = ws[:, None]
        if ws.ndim != 3 or ws.shape[0] not in (1, b) or ws.shape[1] not in (1, num_ws) or ws.shape[2] != w_dim:
            raise ValueError(f"init tensor must be [w_dim], [N, w_dim] or [N | 1, num_ws | 1, w_dim] with "
                             f"num_ws={num_ws}, w_dim={w_dim}; got {tuple(init.shape)}")
        return ws.expand(b, num_ws, w_dim).clone()
    if init == "mean":
        return w_ref.reshape(1, 1, w_dim).expand(b, num_ws, w_dim).clone()
    if init == "encoder":
        if encoder is None:
            raise ValueError('init="encoder" needs encoder=...')
        return encoder.encode(batch).to(device=device, dtype=torch.float32)
    raise ValueError(f'init must be "mean", "encoder" or a tensor of ws, got {init!r}')


def invert(generator: Generator, images: Tensor | np.ndarray, *, steps: int = 300, lr: float = 0.05,
           init: str | Tensor = "mean", encoder: "InversionEncoder | None" = None, space: str = "w+",
           pixel_loss: str = "l1", feature_fn: Callable[[Tensor], Any] | None = None, feature_weight: float = 1.0,
           w_reg: float = 0.0, noise_mode: str = "const", batch_size: int = 32, lr_schedule: str = "cosine",
           lr_warmup: float = 0.05, progress: bool = False, generator_seed: int | None = None) -> InversionResult:
    """Optimise latents so that generator.synthesis(ws, noise_mode) reproduces `images` ([N, C, H, W] in [-1, 1]).

    init        "mean" (the generator's mean w on every layer), "encoder" (encoder(images)), or a tensor of ws
                ([N | 1, num_ws | 1, w_dim], [N, w_dim] or [w_dim]).
    space       "w+": one w per layer; "w": one w broadcast to all layers (from an encoder init: its layer mean).
    lr          Adam step size in units of the spread of w (see `w_statistics`); `lr_schedule` / `lr_warmup`
                shape it over the steps.
    pixel_loss  "l1" | "mse" | "l2" (root of the per-image MSE).
    feature_fn  differentiable image batch -> features (a tensor or a list of tensors); adds feature_weight x
                the per-image MSE between the features of the reconstruction and of the target.
    w_reg       weight of the mean squared distance (in units of w's spread) of the ws from the mean w.
    generator_seed  seed of the z used to estimate the mean and spread of w (None: 0, so calls are repeatable).

    Images are processed `batch_size` at a time, each image independently (the loss is summed over images, so
    one image's latents never see another's gradient); the work runs on the generator's device and the results
    come back on the images' device. The generator is frozen during the call and left exactly as it was.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {pixel_loss!r}")
    latent_lr_factor(0, max(steps, 1), lr_schedule, lr_warmup)  # validates the schedule name up front
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    if encoder is not None:
        encoder.check_compatible(generator)
    images = _as_images(generator, images)
    out_device = images.device
    device, dtype = _device_dtype(generator)
    num_ws, w_dim = generator.num_ws, generator.w_dim
    w_ref, w_std = w_statistics(generator, seed=0 if generator_seed is None else generator_seed)
    n = images.shape[0]
    history = torch.zeros(steps, device=device)
    all_ws, all_images, all_errors, all_init_errors = [], [], [], []

    with frozen(generator):
        for start in range(0, n, batch_size):
            target = images[start:start + batch_size].to(device=device, dtype=torch.float32)
            b = target.shape[0]
            per_image_init = isinstance(init, Tensor) and init.ndim >= 2 and init.shape[0] == n
            init_b = init[start:start + b] if per_image_init else init
            with torch.no_grad():
                ws0 = _initial_ws(init_b, encoder, target, w_ref, num_ws, w_dim)
                all_init_errors.append(per_image_loss(
                    generator.synthesis(ws0.to(dtype), noise_mode=noise_mode), target, "mse").to(out_device))
                target_features = None if feature_fn is None else _detach(feature_fn(target))
            latent = (ws0.mean(dim=1, keepdim=True) if space == "w" else ws0).clone().requires_grad_(True)
            base_lr = lr * float(w_std)
            optimizer = torch.optim.Adam([latent], lr=base_lr, betas=(0.9, 0.99))

            def full(latent_: Tensor) -> Tensor:
                return latent_.expand(-1, num_ws, -1) if space == "w" else latent_

            for step in progress_range(steps, progress, f"invert {start}-{start + b}/{n}"):
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * latent_lr_factor(step, steps, lr_schedule, lr_warmup)
                ws = full(latent)
                recon = generator.synthesis(ws.to(dtype), noise_mode=noise_mode)
                loss = per_image_loss(recon, target, pixel_loss)
                if feature_fn is not None and feature_weight:
                    loss = loss + feature_weight * _feature_distance(feature_fn(recon), target_features)
                if w_reg:
                    loss = loss + w_reg * ((ws - w_ref) / w_std).square().mean(dim=(1, 2))
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
                history[step] += loss.detach().sum()

            with torch.no_grad():
                ws = full(latent).detach().clone()
                recon = generator.synthesis(ws.to(dtype), noise_mode=noise_mode).float()
                all_errors.append(per_image_loss(recon, target, "mse").to(out_device))
            all_ws.append(ws.to(out_device))
            all_images.append(recon.to(out_device))

    return InversionResult(ws=torch.cat(all_ws), images=torch.cat(all_images), losses=(history / n).tolist(),
                           errors=torch.cat(all_errors), init_errors=torch.cat(all_init_errors))


# --------------------------------------------------------------------------------------------- encoder
@dataclass
class EncoderConfig:
    resolution: int
    channels: int = 3
    num_ws: int = 8
    w_dim: int = 512
    base_channels: int = 32
    max_channels: int = 128
    hidden: int = 256

    def __post_init__(self):
        check_resolution(self.resolution, 4)
        check_positive(self, ("channels", "num_ws", "w_dim", "base_channels", "max_channels", "hidden"))


class InversionEncoder(PretrainedMixin, nn.Module):
    """Image [B, C, R, R] in [-1, 1] -> ws [B, num_ws, w_dim].

    A plain CNN (conv + lrelu, 2x average-pool down to 4x4, then an MLP) predicts per-layer offsets from the
    generator's mean w, in units of w's spread (both kept as buffers, so the encoder stands alone once
    trained). The last layer starts at zero: an untrained encoder answers the mean w, i.e. init="mean".
    `save_pretrained(dir)` / `InversionEncoder.from_pretrained(dir, map_location)` (eval mode).
    """

    pretrained_kind = "inversion-encoder"

    def __init__(self, cfg: EncoderConfig, meta: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.meta: dict = dict(meta or {})  # how it was trained (generator config, steps, seed, errors ...)
        width = lambda level: min(cfg.base_channels * 2 ** level, cfg.max_channels)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, width(0), 1), nn.LeakyReLU(0.2)]
        res, level = cfg.resolution, 0
        while res > 4:
            layers += [nn.Conv2d(width(level), width(level + 1), 3, padding=1), nn.LeakyReLU(0.2),
                       nn.AvgPool2d(2)]
            res, level = res // 2, level + 1
        layers += [nn.Conv2d(width(level), width(level), 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(),
                   nn.Linear(width(level) * min(cfg.resolution, 4) ** 2, cfg.hidden), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.hidden, cfg.num_ws * cfg.w_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("w_mean", torch.zeros(cfg.w_dim))
        self.register_buffer("w_std", torch.ones(1))

    @classmethod
    def for_generator(cls, generator: Generator, seed: int | None = None, w_seed: int = 0,
                      **overrides) -> "InversionEncoder":
        """An untrained encoder shaped for `generator`, holding its mean w and w spread, on its device.
        `seed` fixes the weight init without touching the global RNG."""
        g = generator.cfg
        cfg = EncoderConfig(resolution=g.resolution, channels=g.channels, num_ws=g.num_ws, w_dim=g.w_dim,
                            **overrides)
        with seeded(seed, threads=None) if seed is not None else contextlib.nullcontext():
            encoder = cls(cfg, meta={"generator": asdict(g)})
        w_ref, w_std = w_statistics(generator, seed=w_seed)
        encoder.w_mean.copy_(w_ref.cpu())
        encoder.w_std.copy_(w_std.cpu())
        return encoder.to(_device_dtype(generator)[0])

    def forward(self, images: Tensor) -> Tensor:
        offsets = self.head(self.body(images)).view(-1, self.cfg.num_ws, self.cfg.w_dim)
        return self.w_mean + self.w_std * offsets

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """ws for images, in eval mode and without gradients, on the images' device."""
        device = self.head.weight.device
        was_training = self.training
        self.eval()
        try:
            out = [self(chunk.to(device=device, dtype=torch.float32)).to(images.device)
                   for chunk in torch.as_tensor(images).split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)

    def check_compatible(self, generator: Generator) -> None:
        g, c = generator.cfg, self.cfg
        if (c.resolution, c.channels, c.num_ws, c.w_dim) != (g.resolution, g.channels, g.num_ws, g.w_dim):
            raise ValueError(f"encoder is for {c.resolution} px / {c.channels} ch / {c.num_ws} x {c.w_dim} ws, "
                             f"generator is {g.resolution} px / {g.channels} ch / {g.num_ws} x {g.w_dim}")

    # -- persistence: the one pretrained-folder format (config = EncoderConfig, meta = how it was trained) ----
    def pretrained_config(self) -> dict:
        return asdict(self.cfg)

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict) -> "InversionEncoder":
        return cls(EncoderConfig(**config), meta=meta).eval()


def train_inversion_encoder(generator: Generator, *, steps: int = 2000, batch_size: int = 32, lr: float = 1e-3,
                            real_images: Tensor | np.ndarray | None = None, real_weight: float = 1.0,
                            latent_weight: float = 1.0, pixel_weight: float = 1.0, truncation_psi: float = 1.0,
                            style_mixing: float = 0.0, encoder: InversionEncoder | None = None,
                            encoder_kwargs: dict | None = None, seed: int = 0,
                            progress: bool = False) -> InversionEncoder:
    """Train an encoder on the generator's own samples: z -> ws -> image, then regress ws from the image.

    Loss per step (Adam, cosine decay): latent_weight x MSE(predicted ws, true ws) in units of w's spread, plus
    pixel_weight x L1(G(predicted ws), image) (what inversion actually cares about; costs a synthesis backward,
    set 0 to skip), plus, when `real_images` are given, real_weight x L1(G(encoder(real)), real) on a batch of
    them (no latent target exists for those). style_mixing > 0 mixes two z's layers, so the encoder also sees
    W+ codes that plain sampling never produces. Deterministic given `seed` (weights, z and batches come from
    it; the global RNG is left alone). Returns the encoder in eval mode, on the generator's device.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    device, dtype = _device_dtype(generator)
    if encoder is None:
        encoder = InversionEncoder.for_generator(generator, seed=seed, **(encoder_kwargs or {}))
    encoder.check_compatible(generator)
    encoder.to(device)  # it trains where the generator runs
    if real_images is not None:
        real_images = _as_images(generator, real_images)
    rng = torch.Generator().manual_seed(seed + 1)  # + 1: not the stream that initialised the weights
    w_std = encoder.w_std.to(device)

    def loss_fn(model: nn.Module, step: int) -> Tensor:
        with torch.no_grad():
            z = torch.randn(batch_size, generator.z_dim, generator=rng).to(device)
            ws = generator.mapping(z, truncation_psi=truncation_psi).float()
            if style_mixing > 0:
                z2 = torch.randn(batch_size, generator.z_dim, generator=rng).to(device)
                ws = mix_styles(ws, generator.mapping(z2, truncation_psi=truncation_psi).float(),
                                style_mixing, generator=_device_rng(rng, device))
            images = generator.synthesis(ws.to(dtype), noise_mode="const").float()
        pred = model(images)
        loss = latent_weight * ((pred - ws) / w_std).square().mean()
        if pixel_weight:
            recon = generator.synthesis(pred.to(dtype), noise_mode="const")
            loss = loss + pixel_weight * per_image_loss(recon, images, "l1").mean()
        if real_images is not None and real_weight:
            idx = torch.randint(len(real_images), (batch_size,), generator=rng)
            real = real_images[idx].to(device=device, dtype=torch.float32)
            recon = generator.synthesis(model(real).to(dtype), noise_mode="const")
            loss = loss + real_weight * per_image_loss(recon, real, "l1").mean()
        return loss

    # Adam, warm-up over the first 2% of the steps, cosine to zero; the caller's thread setting is left alone
    optim = OptimConfig(name="adam", lr=lr, betas=(0.9, 0.99), weight_decay=0.0, schedule="cosine",
                        warmup_ratio=0.02, warmup_steps=0, min_lr_ratio=0.0)
    with frozen(generator):
        result = fit_small(encoder, loss_fn, SmallFitConfig(steps=steps, optim=optim, seed=seed, threads=None,
                                                            progress=progress, desc="inversion encoder"))
    encoder.zero_grad(set_to_none=True)
    encoder.meta.update({"steps": encoder.meta.get("steps", 0) + steps, "batch_size": batch_size, "lr": lr,
                         "seed": seed, "truncation_psi": truncation_psi, "style_mixing": style_mixing,
                         "latent_weight": latent_weight, "pixel_weight": pixel_weight,
                         "real_images": 0 if real_images is None else len(real_images),
                         "final_loss": result.last.get("loss", 0.0)})
    return encoder.eval()


def _device_rng(cpu_rng: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from the CPU stream (torch ops on CUDA need a CUDA generator)."""
    seed = int(torch.randint(2 ** 62, (1,), generator=cpu_rng))
    return torch.Generator(device=device).manual_seed(seed)


__all__ = ["EncoderConfig", "InversionEncoder", "InversionResult", "frozen", "invert", "latent_lr_factor",
           "per_image_loss", "train_inversion_encoder", "w_statistics"]
