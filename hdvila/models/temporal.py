"""Divided space-time Transformer (TimeSformer-style) over a T x H x W grid of features.

Each block attends over time (per spatial position), then over space (per time step), then applies an MLP;
all pre-norm with residuals and drop-path. Only the middle time step is returned, so the last block computes
its queries, spatial attention and MLP for that step alone (the other steps' outputs would be discarded).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention on [N, L, d]; `query_slice` restricts the queries to some positions."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, query_slice: slice | None = None) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [N, heads, L, head_dim]
        if query_slice is not None:
            q = q[:, :, query_slice]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, q.shape[2], dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_attn = Attention(dim, heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, only_step: int | None = None) -> torch.Tensor:
        """x: [B, T, N, d] -> [B, T, N, d], or [B, 1, N, d] holding time step `only_step` alone."""
        b, t, n, d = x.shape
        steps = slice(only_step, only_step + 1) if only_step is not None else None
        xt = x.permute(0, 2, 1, 3).reshape(b * n, t, d)  # one sequence over time per position
        xt_out = self.temporal_attn(self.temporal_norm(xt), query_slice=steps)
        kept = x if steps is None else x[:, steps]
        tq = kept.shape[1]
        x = kept + self.drop_path(self.temporal_fc(xt_out).view(b, n, tq, d).permute(0, 2, 1, 3))
        xs = x.reshape(b * tq, n, d)  # one sequence over space per time step
        xs = xs + self.drop_path(self.attn(self.norm1(xs)))
        xs = xs + self.drop_path(self.mlp(self.norm2(xs)))
        return xs.view(b, tq, n, d)


class DividedSpaceTimeTransformer(nn.Module):
    """Learned space ([grid]) and time ([num_frames]) position embeddings, `depth` blocks, final LayerNorm.

    Position embeddings are resized (bilinear over space, linear over time) when the input grid or the
    number of frames differs from the configured one.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, drop_path: float,
                 grid: tuple[int, int], num_frames: int, time_conv: bool = False, time_conv_std: float = 0.0):
        super().__init__()
        self.space_pos = nn.Parameter(torch.zeros(1, dim, *grid))
        self.time_pos = nn.Parameter(torch.zeros(1, dim, num_frames))
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(dim, heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim)
        trunc_normal_(self.space_pos, std=0.02)
        trunc_normal_(self.time_pos, std=0.02)
        self.apply(_init_weights)
        # Optional depthwise space-time convolution (all time steps x 3x3 cells), a residual branch before the
        # blocks. At init attention is near uniform over time, so the blocks hardly see frame order, and
        # order-sensitive attention needs two small weights to grow together; this branch is linear in its
        # weights, so frame order gets a gradient from the first step. It is spatial too because a shape that
        # moves leaves one cell as it enters the next: per-cell trends cancel in the mean over cells, while a
        # filter tuned to "there before, here now" keeps the direction. Zero-initialised (it starts as the
        # identity), or random with `time_conv_std`, so clips and their reverses differ from the first step.
        self.time_conv = None
        if time_conv:
            self.time_conv = nn.Conv3d(dim, dim, (num_frames, 3, 3), padding=(num_frames // 2, 1, 1), groups=dim,
                                       bias=False)
            if time_conv_std:
                nn.init.normal_(self.time_conv.weight, 0.0, time_conv_std)
            else:
                nn.init.zeros_(self.time_conv.weight)

    def _positions(self, t: int, h: int, w: int) -> torch.Tensor:
        space = self.space_pos
        if space.shape[-2:] != (h, w):
            space = F.interpolate(space, size=(h, w), mode="bilinear", align_corners=False)
        time = self.time_pos
        if time.shape[-1] != t:
            time = F.interpolate(time, size=t, mode="linear", align_corners=False)
        # [1, T, H*W, d]
        return space.flatten(2).transpose(1, 2).unsqueeze(1) + time.transpose(1, 2).unsqueeze(2)

    def forward(self, x: torch.Tensor, keep_step: int | None = None) -> torch.Tensor:
        """x: [B, T, d, H, W] -> [B, H*W, d] at time step `keep_step` (default the middle one)."""
        b, t, d, h, w = x.shape
        keep_step = t // 2 if keep_step is None else keep_step
        x = x.flatten(3).transpose(2, 3) + self._positions(t, h, w)  # [B, T, N, d]
        if self.time_conv is not None:  # odd kernels, half padding: the output keeps every step and cell
            grid = x.permute(0, 3, 1, 2).reshape(b, d, t, h, w)
            x = x + self.time_conv(grid).flatten(3).permute(0, 2, 3, 1)
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, only_step=keep_step if last else None)
        if not self.blocks:
            x = x[:, keep_step:keep_step + 1]
        return self.norm(x[:, 0])


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
