"""InstructDiffusion's two-scale classifier-free guidance, as a model function for the diffusion core's samplers.

    ε̃ = ½ (ε(I, ∅) + ε(∅, T)) + s_T (ε(I, T) − ε(I, ∅)) + s_I (ε(I, T) − ε(∅, T))

I is the source image, T the instruction, ∅ their null versions (a zero source: what image dropout trains;
the encoding of "": what text dropout trains). There is no fully unconditional branch ε(∅, ∅): training never
drops both. The three branches go through the network as one batch of 3B.

Written per branch, the weights are (s_T + s_I) on ε(I, T), (½ − s_T) on ε(I, ∅) and (½ − s_I) on ε(∅, T);
they sum to one, so (as in `diffusion.samplers.guided`) combining raw predictions of any target (ε, x0 or v)
gives the same result as combining ε. Special cases: s_T = s_I = ½ is the plain conditional prediction
ε(I, T) (one branch, no guidance); s_T = s_I = 0 is the mean of the two half-conditioned branches.

    fn = two_scale_guided(model, text_scale=5.0, image_scale=1.25)
    x0 = SAMPLERS.get("euler_ancestral")(fn, shape, grid, "eps", eta=1.0, cond=EditCondition(...))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# (x_t, logsnr, source, text_states, text_mask) -> prediction: an InstructUNet
EditModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EditCondition:
    """What a sampler passes through to the model function as `cond`."""

    source: torch.Tensor  # [B, C, H, W] the images to edit
    text_states: torch.Tensor  # [B, L, D] the instructions' token states
    text_mask: torch.Tensor  # [B, L] 1 on tokens
    null_states: torch.Tensor  # [1, L0, D] the encoding of ""
    null_mask: torch.Tensor  # [1, L0]


def concat_padded(states: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states [B_i, L_i, D] (and masks [B_i, L_i]) stacked along the batch, zero-padded to the longest L."""
    length = max(s.shape[1] for s in states)
    padded_states, padded_masks = [], []
    for s, m in zip(states, masks, strict=True):
        extra = length - s.shape[1]
        padded_states.append(torch.nn.functional.pad(s, (0, 0, 0, extra)))
        padded_masks.append(torch.nn.functional.pad(m, (0, extra)))
    return torch.cat(padded_states), torch.cat(padded_masks)


def two_scale_combination(both: torch.Tensor, image_only: torch.Tensor, text_only: torch.Tensor,
                          text_scale: float, image_scale: float) -> torch.Tensor:
    """½ (ε(I, ∅) + ε(∅, T)) + s_T (ε(I, T) − ε(I, ∅)) + s_I (ε(I, T) − ε(∅, T)), with both = ε(I, T),
    image_only = ε(I, ∅), text_only = ε(∅, T)."""
    return (0.5 * (image_only + text_only) + text_scale * (both - image_only)
            + image_scale * (both - text_only))


def two_scale_guided(model: EditModel, text_scale: float, image_scale: float):
    """A sampler model function `(x_t, logsnr, cond: EditCondition) -> prediction` with two-scale guidance.

    The branches (I, T), (I, ∅), (∅, T) go through `model` as one batch of 3B; at s_T = s_I = ½ the result is
    the conditional prediction alone, so only that branch runs.
    """
    text_scale, image_scale = float(text_scale), float(image_scale)

    def fn(x: torch.Tensor, logsnr: torch.Tensor, cond: EditCondition) -> torch.Tensor:
        if text_scale == 0.5 and image_scale == 0.5:
            return model(x, logsnr, cond.source, cond.text_states, cond.text_mask)
        b = x.shape[0]
        null_states = cond.null_states.to(cond.text_states).expand(b, -1, -1)
        null_mask = cond.null_mask.to(cond.text_mask).expand(b, -1)
        states, mask = concat_padded([cond.text_states, null_states, cond.text_states],
                                     [cond.text_mask, null_mask, cond.text_mask])
        source = torch.cat([cond.source, cond.source, torch.zeros_like(cond.source)])
        out = model(torch.cat([x, x, x]), torch.cat([logsnr, logsnr, logsnr]), source, states, mask)
        both, image_only, text_only = out.chunk(3)
        return two_scale_combination(both, image_only, text_only, text_scale, image_scale)

    return fn


__all__ = ["EditCondition", "EditModel", "concat_padded", "two_scale_combination", "two_scale_guided"]
