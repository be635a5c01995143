"""Synthetic clip batches: random uint8 pixels and token ids in the exact shapes the loader delivers.

For measuring a model's training step alone (GPU speed, MFU) without shards or decoding: one batch is made
once and handed out again and again, pinned when CUDA is present so that the host-to-device copy a real
batch pays is still paid, at its real cost.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .sampling import ClipSamplingConfig


def synthetic_clip_batch(batch_size: int, sampling: ClipSamplingConfig, max_text_len: int, vocab_size: int,
                         seed: int = 0, special_ids: Sequence[int] = ()) -> dict:
    """A batch shaped like `collate` of HD-VILA samples: hr [B, S, H, W, 3] and lr [B, S, T-1, h, w, 3] uint8,
    input_ids / attention_mask [B, max_text_len] (ids above every special id below vocab_size, and above 99
    where BERT vocabularies keep theirs; the tail of each row is padding, id 0)."""
    first_id = max([99, *(i for i in special_ids if i < vocab_size)]) + 1
    if batch_size < 1 or max_text_len < 2 or vocab_size <= first_id:
        raise ValueError(f"batch_size must be >= 1, max_text_len >= 2 and vocab_size > {first_id}, got "
                         f"{batch_size}, {max_text_len}, {vocab_size}")
    g = torch.Generator().manual_seed(seed)
    s, t = sampling.n_segments, sampling.num_frm
    hr_h, hr_w = sampling.hr_size
    f = sampling.lr_factor
    hr = torch.randint(0, 256, (batch_size, s, hr_h, hr_w, 3), generator=g, dtype=torch.uint8)
    lr = torch.randint(0, 256, (batch_size, s, t - 1, hr_h // f, hr_w // f, 3), generator=g, dtype=torch.uint8)
    lengths = torch.randint(max(2, max_text_len // 2), max_text_len + 1, (batch_size,), generator=g)
    mask = (torch.arange(max_text_len)[None, :] < lengths[:, None]).long()
    ids = torch.randint(first_id, vocab_size, (batch_size, max_text_len), generator=g) * mask
    frames = torch.arange(t).repeat(batch_size, s, 1)
    return {"__key__": [f"synthetic_{i:06d}" for i in range(batch_size)], "text": [""] * batch_size,
            "meta": [{} for _ in range(batch_size)], "hr": hr, "lr": lr, "frame_indices": frames,
            "input_ids": ids, "attention_mask": mask}


class SyntheticClips:
    """An endless-per-epoch source of one fixed synthetic batch, `batches_per_epoch` times per epoch; it has
    the loader's `set_epoch`/`skip_batches` so the trainer treats it like the real one."""

    def __init__(self, batch_size: int, sampling: ClipSamplingConfig, max_text_len: int, vocab_size: int,
                 batches_per_epoch: int, seed: int = 0, special_ids: Sequence[int] = ()):
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.batch = synthetic_clip_batch(batch_size, sampling, max_text_len, vocab_size, seed, special_ids)
        if torch.cuda.is_available():
            self.batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}
        self.batches_per_epoch = batches_per_epoch
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self._skip = 0

    def skip_batches(self, batches: int) -> None:
        self._skip = int(batches)

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self._skip, self.batches_per_epoch):
            yield self.batch
