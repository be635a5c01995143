"""One exponential moving average of a model's weights, for every recipe that samples from an average (diffusion,
GANs and whatever comes next).

    ema = EMA(model, decay=0.999)        # a frozen deep copy, in eval mode
    ema.update(model)                    # after each optimizer step: p_ema <- decay * p_ema + (1 - decay) * p
    ema.follow(model)                    # the same, first moving the average to the live model's device
    ema.module                           # the averaged model, to sample or export
    state = ema.state_dict()             # the averaged weights (plain tensors: checkpoint-safe)

Buffers (running statistics, fixed noise, a StyleGAN's w_avg) are copied, not averaged: they are already
statistics of the live model. `decay` may be changed between updates (a GAN's EMA half-life in images depends on
the batch size).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Not an nn.Module on purpose: a parent module would save it under one key layout and load it under
    another. Objectives keep it as an attribute and checkpoint `state_dict()` themselves."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
        for ema_p, p in zip(self.module.parameters(), live.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), live.buffers(), strict=True):
            ema_b.copy_(b)
        self.updates += 1

    @torch.no_grad()
    def follow(self, model: nn.Module) -> None:
        """`update`, after moving the average to the live model's device: an objective builds its EMA before
        the trainer moves the model (to a GPU), so an objective's `after_step` calls this."""
        live = next(getattr(model, "module", model).parameters())
        if next(self.module.parameters()).device != live.device:
            self.to(live.device)
        self.update(model)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self

    def parameters(self):
        return self.module.parameters()

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, strict: bool = True):
        return self.module.load_state_dict(state, strict=strict)


def ema_decay_from_half_life(half_life_images: float, batch_size: int) -> float:
    """Per-step decay whose weights halve every `half_life_images` images (StyleGAN's ema_kimg * 1000)."""
    if half_life_images <= 0:
        return 0.0
    return 0.5 ** (batch_size / half_life_images)
