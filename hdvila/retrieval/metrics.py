"""Retrieval metrics with explicit tie handling and any number of positives per query.

The rank of a query is 1 + the number of gallery items that are not positives for it and score strictly
higher than its best positive (ties="optimistic"), or higher or equal (ties="pessimistic"). This fixes the
reference (CLIP4Clip-derived) code, which counts one rank entry per tied value and assumes one caption per
video.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10, 50)


def _as_tensor(sim) -> torch.Tensor:
    if isinstance(sim, torch.Tensor):
        return sim.detach().float().cpu()
    return torch.as_tensor(np.asarray(sim), dtype=torch.float32)


def compute_ranks(sim, positives: Sequence[Sequence[int]] | None = None, ties: str = "optimistic",
                  chunk: int = 4096) -> np.ndarray:
    """1-based rank of each query's best positive; rows are processed `chunk` at a time."""
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    sim = _as_tensor(sim)
    if sim.ndim != 2:
        raise ValueError(f"sim must be [queries x gallery], got shape {tuple(sim.shape)}")
    n_q, n_g = sim.shape
    if positives is None:
        if n_q != n_g:
            raise ValueError("without `positives`, sim must be square (query i matches gallery item i)")
        positives = [[i] for i in range(n_q)]
    if len(positives) != n_q:
        raise ValueError(f"{len(positives)} positive lists for {n_q} queries")
    ranks = np.empty(n_q, dtype=np.int64)
    for start in range(0, n_q, chunk):
        rows = sim[start:start + chunk]
        mask = torch.zeros_like(rows, dtype=torch.bool)
        for r, pos in enumerate(positives[start:start + chunk]):
            if len(pos) == 0:
                raise ValueError(f"query {start + r} has no positive")
            mask[r, list(pos)] = True
        best = rows.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True).values
        beats = rows > best if ties == "optimistic" else rows >= best
        ranks[start:start + len(rows)] = (beats & ~mask).sum(dim=1).numpy() + 1
    return ranks


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def compute_metrics(sim, positives: Sequence[Sequence[int]] | None = None, ties: str = "optimistic"
                    ) -> dict[str, float]:
    """R@1, R@5, R@10, R@50 (percent), median rank MdR and mean rank MnR of a [queries x gallery] score array."""
    return metrics_from_ranks(compute_ranks(sim, positives, ties))
