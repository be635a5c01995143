"""The InstructDiffusion denoiser: diffusers' UNet2DConditionModel over [noisy image ; source image], with
cross-attention to the instruction's token states.

    model = create_model("instruct-small")                    # 32 px RGB, the CPU miniature
    prediction = model(x_t, logsnr, source, text_states, text_mask)    # [B, C, H, W]: the recipe's target
    model = from_stable_diffusion("sd15-folder", text_encoder="hdvila:runs/encoder")   # 8-channel SD UNet

The input has 2C channels (C = image channels: 3 for the pixel-space miniature, 4 for Stable Diffusion's
latents), the output C. The noise level enters as the UNet's timestep through a named convention
(`TIMESTEP_CONVENTIONS`): "cosine" is the project's c(λ)·1000 (diffusion.models), which does not depend on the
training schedule; "scaled_linear" is Stable Diffusion's discrete index, so converted SD weights see the
timesteps they were trained on. The config records which text encoder (instruct.text) the model was trained
with; `cross_attention_dim` must equal that encoder's width.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import nn

from data_tools.config import from_dict, replace_checked
from data_tools.pretrained import PretrainedMixin
from data_tools.registry import Registry
from diffusion.process import cosine_time

from .text import DEFAULT_TEXT_ENCODER

PRETRAINED_KIND = "instruct-unet"


# ------------------------------------------------------------------------------------------------ timesteps

def cosine_timestep(logsnr: torch.Tensor) -> torch.Tensor:
    """1000·c(λ), c(λ) = (2/π) atan(e^{−λ/2}): the project's noise-level input (diffusion.models)."""
    return 1000.0 * cosine_time(logsnr.float())


_SD_SCHEDULE = None


def scaled_linear_timestep(logsnr: torch.Tensor) -> torch.Tensor:
    """Stable Diffusion's timestep index for λ: index k − 1 of the step whose ᾱ_k has logSNR λ, linear in λ
    between steps and clamped to [0, 999]. From the schedule's CDF: P(Λ ≤ λ_k) = 1 − k/N."""
    global _SD_SCHEDULE
    if _SD_SCHEDULE is None:
        from diffusion.schedules import get_schedule

        with torch.device("cpu"):  # the step table, even when the model is built under another default device
            _SD_SCHEDULE = get_schedule("scaled_linear")
    steps = _SD_SCHEDULE.num_timesteps
    index = steps * (1.0 - _SD_SCHEDULE.cdf(logsnr.detach().double())) - 1.0
    return index.clamp(0, steps - 1).float()


TIMESTEP_CONVENTIONS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("timestep convention")
TIMESTEP_CONVENTIONS.register("cosine", cosine_timestep)
TIMESTEP_CONVENTIONS.register("scaled_linear", scaled_linear_timestep)


# ------------------------------------------------------------------------------------------------ config

@dataclass
class InstructUNetConfig:
    image_size: int = 32  # pixels, or the latent side for a latent model (256 px / 8 = 32 for SD at 256²)
    image_channels: int = 3  # C: the UNet sees 2C (noisy image, source image) and predicts C
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    cross_attention_levels: list[bool] = field(default_factory=lambda: [False, False, True])  # per level
    attention_heads: Union[int, list[int]] = 4  # heads per attention layer (diffusers calls it attention_head_dim)
    transformer_layers: int = 1
    use_linear_projection: bool = False  # SD 2.x: linear in/out projections of the transformer blocks
    norm_num_groups: int = 8
    cross_attention_dim: int = 384  # the text encoder's width
    timestep: str = "cosine"  # a TIMESTEP_CONVENTIONS name
    text_encoder: str = DEFAULT_TEXT_ENCODER  # an instruct.text spec; "" = not chosen yet

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if levels < 1 or len(self.cross_attention_levels) != levels:
            raise ValueError("cross_attention_levels needs one entry per block_out_channels entry")
        if isinstance(self.attention_heads, list) and len(self.attention_heads) != levels:
            raise ValueError("attention_heads as a list needs one entry per level")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not multiples of norm_num_groups={self.norm_num_groups}")
        if self.image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {self.image_size} does not halve {levels - 1} times")
        TIMESTEP_CONVENTIONS.get(self.timestep)


def unet_kwargs(cfg: InstructUNetConfig) -> dict[str, Any]:
    """The UNet2DConditionModel arguments of a config (everything else stays at diffusers' defaults, which
    are Stable Diffusion 1.x's)."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention_levels))
    heads = tuple(cfg.attention_heads) if isinstance(cfg.attention_heads, list) else cfg.attention_heads
    return dict(sample_size=cfg.image_size, in_channels=2 * cfg.image_channels, out_channels=cfg.image_channels,
                block_out_channels=tuple(cfg.block_out_channels), down_block_types=down, up_block_types=up,
                layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.cross_attention_dim,
                attention_head_dim=heads, transformer_layers_per_block=cfg.transformer_layers,
                use_linear_projection=cfg.use_linear_projection, norm_num_groups=cfg.norm_num_groups)


INSTRUCT_MODELS: Registry[InstructUNetConfig] = Registry("instruct model")
# tests: 16 px, two levels, ~0.2M parameters
INSTRUCT_MODELS.register("instruct-tiny", InstructUNetConfig(
    image_size=16, block_out_channels=[16, 32], cross_attention_levels=[False, True], attention_heads=2))
# the CPU miniature at 32 px: cross-attention at 8x8 and in the middle block (attention at 16x16 halves the
# speed on a CPU for little gain on these scenes)
INSTRUCT_MODELS.register("instruct-small", InstructUNetConfig(
    image_size=32, block_out_channels=[16, 32, 64], cross_attention_levels=[False, False, True], attention_heads=4))
# the paper's: Stable Diffusion 1.5's UNet on 4-channel latents of 256² images, 8 input channels. SD's text
# encoder (CLIP ViT-L/14, 768 wide) ships in no wheel here: name a 768-wide encoder, or load SD weights with
# from_stable_diffusion
INSTRUCT_MODELS.register("instruct-sd15", InstructUNetConfig(
    image_size=32, image_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
    cross_attention_levels=[True, True, True, False], attention_heads=8, norm_num_groups=32,
    cross_attention_dim=768, timestep="scaled_linear", text_encoder=""))


def list_models() -> list[str]:
    return INSTRUCT_MODELS.list()


def get_model_config(name: str, **overrides: Any) -> InstructUNetConfig:
    """The registered config `name` (a copy) with `overrides`; unknown keys are an error."""
    return with_overrides(INSTRUCT_MODELS.get(name), **overrides)


def with_overrides(cfg: InstructUNetConfig, **overrides: Any) -> InstructUNetConfig:
    """A copy of `cfg` with `overrides` applied; unknown keys are an error (not silently dropped)."""
    return replace_checked(cfg, "instruct model config", **overrides)


def create_model(name_or_config: str | InstructUNetConfig, **overrides: Any) -> "InstructUNet":
    """A randomly initialised InstructUNet from a registered name or a config. Build under
    `with torch.device("meta"):` to count the parameters of the paper size without allocating them."""
    if isinstance(name_or_config, InstructUNetConfig):
        return InstructUNet(with_overrides(name_or_config, **overrides))
    return InstructUNet(get_model_config(name_or_config, **overrides))


# ------------------------------------------------------------------------------------------------ model

class InstructUNet(PretrainedMixin, nn.Module):
    pretrained_kind = PRETRAINED_KIND

    def __init__(self, config: InstructUNetConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = config
        self.unet = UNet2DConditionModel(**unet_kwargs(config))

    def timestep(self, logsnr: torch.Tensor) -> torch.Tensor:
        return TIMESTEP_CONVENTIONS.get(self.config.timestep)(logsnr)

    def forward(self, x_t: torch.Tensor, logsnr: torch.Tensor, source: torch.Tensor, text_states: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_t, source [B, C, H, W]; logsnr [B]; text_states [B, L, D]; text_mask [B, L] (1 = token) ->
        the prediction [B, C, H, W]. A null image is a zero source, a null text the encoding of ""."""
        if source.shape != x_t.shape:
            raise ValueError(f"source {tuple(source.shape)} and x_t {tuple(x_t.shape)} differ")
        if text_states.shape[-1] != self.config.cross_attention_dim:
            raise ValueError(f"text states are {text_states.shape[-1]} wide, the model cross-attends to "
                             f"{self.config.cross_attention_dim}")
        timestep = self.timestep(logsnr).to(x_t.dtype)
        sample = torch.cat([x_t, source.to(x_t.dtype)], dim=1)
        return self.unet(sample, timestep, encoder_hidden_states=text_states.to(x_t.dtype),
                         encoder_attention_mask=text_mask).sample

    def pretrained_config(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], meta: dict[str, Any]) -> "InstructUNet":
        return cls(from_dict(InstructUNetConfig, config))


# ------------------------------------------------------------------------------------------------ Stable Diffusion

# keys of a diffusers UNet config that say nothing about the network (bookkeeping, or what we set)
_SD_IGNORED_KEYS = {"in_channels"}


def from_stable_diffusion(folder: str | Path, text_encoder: str = "",
                          timestep: str = "scaled_linear") -> InstructUNet:
    """An 8-channel InstructUNet from a local Stable Diffusion folder in diffusers' layout (unet/config.json +
    weights as safetensors; a pickled .bin is refused), as InstructPix2Pix initialises: conv_in's first C input
    channels copy SD's, the C new ones (the source latent) start at zero, so with a zero source the model
    computes exactly what SD's UNet does.

    Every other setting of SD's UNet config must be one this model builds (checked key by key), so the
    weights load strictly. Nothing is downloaded.
    """
    from diffusers import UNet2DConditionModel

    path = Path(folder)
    if not (path / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no unet/config.json (expected a Stable Diffusion folder in diffusers' "
                                "layout)")
    # safetensors only: a pickled diffusion_pytorch_model.bin is never unpickled (not even weights_only)
    sd = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", local_files_only=True,
                                              use_safetensors=True,
                                              low_cpu_mem_usage=False)  # without accelerate installed
    sc = sd.config
    channels = sc.in_channels
    if sc.out_channels != channels:
        raise ValueError(f"{path}: in_channels {channels} != out_channels {sc.out_channels}")
    heads = sc.attention_head_dim if sc.num_attention_heads is None else sc.num_attention_heads
    transformer_layers = sc.transformer_layers_per_block
    if not isinstance(transformer_layers, int):
        if len(set(transformer_layers)) != 1:
            raise ValueError(f"{path}: per-level transformer_layers_per_block {transformer_layers} is not supported")
        transformer_layers = transformer_layers[0]
    config = InstructUNetConfig(
        image_size=int(sc.sample_size), image_channels=channels, block_out_channels=list(sc.block_out_channels),
        layers_per_block=int(sc.layers_per_block),
        cross_attention_levels=[t.startswith("CrossAttn") for t in sc.down_block_types],
        attention_heads=list(heads) if isinstance(heads, (list, tuple)) else int(heads),
        transformer_layers=int(transformer_layers), use_linear_projection=bool(sc.use_linear_projection),
        norm_num_groups=int(sc.norm_num_groups), cross_attention_dim=int(sc.cross_attention_dim),
        timestep=timestep, text_encoder=text_encoder)
    model = InstructUNet(config)
    ours = model.unet.config
    differing = sorted(k for k in sc if not k.startswith("_") and k not in _SD_IGNORED_KEYS
                       and _plain(sc[k]) != _plain(ours.get(k)))
    if differing:
        raise ValueError(f"{path}: the UNet config differs from what InstructUNet builds in {differing}")
    state = sd.state_dict()
    weight = state["conv_in.weight"]
    widened = torch.zeros(weight.shape[0], 2 * channels, *weight.shape[2:], dtype=weight.dtype)
    widened[:, :channels] = weight  # the source latent's channels start at zero
    state["conv_in.weight"] = widened
    model.unet.load_state_dict(state, strict=True)
    return model


def _plain(value: Any) -> Any:
    """Config values compared as JSON (tuples and lists alike)."""
    return json.loads(json.dumps(value, default=str))


__all__ = ["INSTRUCT_MODELS", "InstructUNet", "InstructUNetConfig", "PRETRAINED_KIND", "TIMESTEP_CONVENTIONS",
           "create_model", "from_stable_diffusion", "get_model_config", "list_models", "unet_kwargs"]
