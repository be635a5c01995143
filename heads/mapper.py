"""The text mapper both heads share: a W+ offset from a W+ code and a sentence embedding.

    dw = mapper(ws, text_emb)          # ws [B, num_ws, w_dim], text_emb [B, D] -> dw [B, num_ws, w_dim]

Each layer's w (PixelNorm-ed, as StyleCLIP's mapper sees it), the projected sentence embedding and a learned
embedding of the layer index go through one MLP shared by all layers (equalised-lr linears, as in StyleGAN2's
mapping network). Its last layer starts at zero, so an untrained mapper changes nothing. Offsets come out in
units of w's spread (`w_std`, a buffer), so one learning rate fits generators with different W scales.
`use_text=False` builds the no-text ablation: the same network with the sentence input removed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animation.motion import pixel_norm
from animation.stylegan2 import EqualLinear


@dataclass
class MapperConfig:
    num_ws: int
    w_dim: int
    text_dim: int
    hidden: int = 256
    layers: int = 3  # hidden layers of the shared MLP
    use_text: bool = True

    def __post_init__(self):
        if min(self.num_ws, self.w_dim, self.text_dim, self.hidden, self.layers) < 1:
            raise ValueError(f"mapper sizes must be >= 1: {self}")


class TextMapper(nn.Module):
    def __init__(self, cfg: MapperConfig):
        super().__init__()
        self.cfg = cfg
        text_width = cfg.hidden if cfg.use_text else 0
        self.text_proj = EqualLinear(cfg.text_dim, cfg.hidden) if cfg.use_text else None
        self.layer_embedding = nn.Parameter(torch.randn(cfg.num_ws, cfg.hidden) * 0.1)
        widths = [cfg.w_dim + text_width + cfg.hidden] + [cfg.hidden] * cfg.layers
        self.body = nn.Sequential(*[EqualLinear(a, b, activation=True) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nn.Linear(cfg.hidden, cfg.w_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("w_std", torch.ones(1))

    def forward(self, ws: Tensor, text_emb: Tensor | None = None) -> Tensor:
        b, num_ws, _ = ws.shape
        if num_ws != self.cfg.num_ws:
            raise ValueError(f"mapper is for {self.cfg.num_ws} ws, got {num_ws}")
        parts = [pixel_norm(ws), self.layer_embedding.expand(b, -1, -1)]
        if self.text_proj is not None:
            if text_emb is None or text_emb.shape != (b, self.cfg.text_dim):
                raise ValueError(f"text_emb must be [{b}, {self.cfg.text_dim}], got "
                                 f"{None if text_emb is None else tuple(text_emb.shape)}")
            text = self.text_proj(F.normalize(text_emb.float(), dim=-1) * self.cfg.text_dim ** 0.5)
            parts.insert(1, text[:, None].expand(-1, num_ws, -1))
        return self.out(self.body(torch.cat(parts, dim=-1))) * self.w_std


def offset_penalty(dw: Tensor, w_std: Tensor) -> Tensor:
    """Mean squared W+ offset in units of w's spread (StyleCLIP's latent L2 term)."""
    return (dw / w_std).square().mean()
