"""The networks of a bridge: a residual MLP for 2-D points, and the diffusion core's denoisers for images.

Both take (x, t) with t = k / N in [0, 1] and return a tensor shaped like x (a mean, an end point or a velocity,
as the parameterisation says). The core's denoisers take a logSNR; t is passed as the cosine schedule's λ(t),
which their own time embedding turns back into t exactly (`diffusion.process.cosine_time`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from data_tools.config import from_dict
from data_tools.pretrained import PretrainedMixin
from data_tools.registry import Registry
from diffusion.models import sincos_embedding

PRETRAINED_KIND = "bridge-network"


@dataclass
class BridgeNetConfig:
    kind: str = "resmlp"  # resmlp (vectors) | denoiser (images: a diffusion-core model)
    dim: int = 2  # resmlp: the data dimension
    width: int = 128
    depth: int = 5
    denoiser: str = "unet-digits"  # denoiser: a registered core model (diffusion.models.DENOISERS)
    denoiser_overrides: dict = field(default_factory=dict)


class ResMLP(nn.Module):
    """Residual MLP with a sinusoidal time embedding added in every block (SDSB's 2-D network, 128 x 5)."""

    def __init__(self, cfg: BridgeNetConfig):
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.inp = nn.Linear(cfg.dim, w)
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
                                    for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(sincos_embedding(1000.0 * t.expand(x.shape[0]), self.cfg.width))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


class DenoiserNet(nn.Module):
    """A diffusion-core denoiser used as a bridge network on images."""

    def __init__(self, cfg: BridgeNetConfig):
        super().__init__()
        from diffusion.models import create_model

        self.inner = create_model(cfg.denoiser, **cfg.denoiser_overrides)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.device, torch.float32).expand(x.shape[0]).clamp(1e-4, 1.0 - 1e-4)
        logsnr = -2.0 * torch.log(torch.tan(0.5 * math.pi * t))  # λ of the cosine schedule at t
        return self.inner(x, logsnr)


NETWORKS: Registry[type[nn.Module]] = Registry("bridge network")
NETWORKS.register("resmlp", ResMLP)
NETWORKS.register("denoiser", DenoiserNet)


class BridgeNet(PretrainedMixin, nn.Module):
    """One direction's network with its config and facts (direction, parameterisation, IPF iteration) in meta."""

    pretrained_kind = PRETRAINED_KIND

    def __init__(self, cfg: BridgeNetConfig, meta: dict | None = None):
        super().__init__()
        self.config = cfg
        self.meta = dict(meta or {})
        self.net = NETWORKS.get(cfg.kind)(cfg)

    def pretrained_config(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], meta: dict[str, Any]) -> "BridgeNet":
        return cls(from_dict(BridgeNetConfig, config), meta)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, torch.as_tensor(t, dtype=torch.float32, device=x.device))


__all__ = ["BridgeNet", "BridgeNetConfig", "DenoiserNet", "NETWORKS", "PRETRAINED_KIND", "ResMLP"]
