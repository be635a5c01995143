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
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long)
    rng_device = generator.device if generator is not None else input_ids.device

    def uniform(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=rng_device).to(input_ids.device)

    eligible = attention_mask.bool() & ~torch.isin(input_ids, special.to(input_ids.device))
    picked = eligible & (uniform(input_ids.shape) < prob)
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # One draw splits the picked tokens 80 / 10 / 10.
    action = uniform(input_ids.shape)
    to_mask = picked & (action < 0.8)
    to_random = picked & (action >= 0.8) & (action < 0.9)

    # Random replacements come from the non-special ids only, so no [PAD]/[CLS]/[SEP] appears mid-text.
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    pool = allowed.nonzero().squeeze(1).to(input_ids.device)
    choice = torch.randint(len(pool), input_ids.shape, generator=generator, device=rng_device).to(input_ids.device)

    masked = input_ids.clone()
    masked[to_mask] = mask_id
    masked[to_random] = pool[choice[to_random]]
    return masked, labels
