"""BERT masking for masked language modelling."""
from __future__ import annotations

from typing import Iterable

import torch

IGNORE_INDEX = -100  # torch cross_entropy's default ignore_index


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Iterable[int], mask_id: int,
                vocab_size: int, prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's scheme: pick each real, non-special token with probability `prob`; of those, 80% become
    `mask_id`, 10% a random non-special token, 10% stay unchanged.

    Returns (masked_ids, labels): labels hold the original id at picked positions and -100 elsewhere.
    Random numbers come from `generator` (on its own device) so masking is reproducible per step.
    """
    specials = sorted(set(int(i) for i in special_ids))
    in_vocab = [i for i in specials if 0 <= i < vocab_size]
    pick_draw, action, choice = _masking_draws(input_ids.shape, generator, input_ids.device,
                                               vocab_size - len(in_vocab))

    eligible = attention_mask.bool()
    for special_id in specials:  # scalar comparisons: no tensor of ids to copy to the device
        eligible = eligible & (input_ids != special_id)
    picked = eligible & (pick_draw < prob)
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # One draw splits the picked tokens 80 / 10 / 10.
    to_mask = picked & (action < 0.8)
    to_random = picked & (action >= 0.8) & (action < 0.9)

    # Random replacements come from the non-special ids only, so no [PAD]/[CLS]/[SEP] appears mid-text: the
    # c-th non-special id is c shifted past each special id at or below it (ascending). Shape-static, with no
    # boolean indexing, so it neither waits for the GPU nor breaks a compiled graph.
    for special_id in in_vocab:
        choice = choice + (choice >= special_id).long()

    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    return torch.where(to_random, choice, masked), labels


@torch.compiler.disable
def _masking_draws(shape: torch.Size, generator: torch.Generator | None, device: torch.device,
                   replacements: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three draws of `mask_tokens`, in their order, from `generator` on its own device. Kept out of
    compiled graphs (a torch.Generator argument cannot be traced): one graph break instead of three. Draws
    made on the CPU for a GPU travel in one pinned, non-blocking copy, so the GPU's queue is not drained."""
    rng_device = generator.device if generator is not None else device
    pick = torch.rand(shape, generator=generator, device=rng_device)
    action = torch.rand(shape, generator=generator, device=rng_device)
    choice = torch.randint(replacements, shape, generator=generator, device=rng_device)
    if torch.device(rng_device) == torch.device(device):
        return pick, action, choice
    # float64 holds every id exactly (a vocabulary is far below 2**53), so one tensor carries all three
    draws = torch.stack([pick.double(), action.double(), choice.double()])
    if torch.device(device).type == "cuda":
        draws = draws.pin_memory()
    draws = draws.to(device, non_blocking=True)
    return draws[0].to(pick.dtype), draws[1].to(action.dtype), draws[2].long()
