"""Ranks of each query's best positive from embeddings, without a [queries x gallery] matrix.

Three ways to the same numbers (`metrics.compute_ranks` on the full matrix is the reference):

* `chunked_ranks(score_block, ...)`: scores computed block by block (query chunk x gallery chunk) in two
  passes, first the best positive score per query, then how many non-positives beat it. Memory is one block.
* `faiss_ranks(index, queries, gallery, ...)`: one top-k FAISS search; a query whose best positive sits in
  its top-k list, above the list's last score, is ranked from the list alone. Only the others (usually few)
  fall back to the chunked count.
* score normalisations as block functions: dual softmax (Cheng et al. 2021) and query-bank normalisation
  (dynamic inverted softmax, Bogolin et al. 2022). Both are transductive or need extra data, so they are
  reported beside the plain scores, never instead of them.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import torch

ScoreBlock = Callable[[slice, slice], torch.Tensor]

_TIES = ("optimistic", "pessimistic")


def as_tensor(vectors: Any) -> torch.Tensor:
    if isinstance(vectors, torch.Tensor):
        return vectors.detach().float().cpu().contiguous()
    return torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32))


def _check(positives: Sequence[Sequence[int]] | None, n_q: int, n_g: int, ties: str) -> list[list[int]]:
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    if positives is None:
        if n_q != n_g:
            raise ValueError("without `positives`, queries and gallery must be the same length (i matches i)")
        return [[i] for i in range(n_q)]
    if len(positives) != n_q:
        raise ValueError(f"{len(positives)} positive lists for {n_q} queries")
    out = []
    for q, pos in enumerate(positives):
        pos = [int(p) for p in pos]
        if not pos:
            raise ValueError(f"query {q} has no positive")
        if min(pos) < 0 or max(pos) >= n_g:
            raise ValueError(f"query {q}: positive index out of range for a gallery of {n_g}")
        out.append(pos)
    return out


def _positive_mask(positives: list[list[int]], rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(rows.stop - rows.start, cols.stop - cols.start, dtype=torch.bool)
    for r, pos in enumerate(positives[rows]):
        inside = [p - cols.start for p in pos if cols.start <= p < cols.stop]
        if inside:
            mask[r, inside] = True
    return mask


def chunked_ranks(score_block: ScoreBlock, n_queries: int, n_gallery: int,
                  positives: Sequence[Sequence[int]] | None = None, ties: str = "optimistic",
                  query_chunk: int = 1024, gallery_chunk: int = 65536) -> np.ndarray:
    """1-based rank of each query's best positive, scoring `score_block(query_slice, gallery_slice)`.

    Rank = 1 + #non-positives scoring strictly above the best positive ("optimistic") or at least as high
    ("pessimistic"). The same block is computed the same way in both passes, so ties are exact.
    """
    pos = _check(positives, n_queries, n_gallery, ties)
    ranks = np.empty(n_queries, dtype=np.int64)
    for q0 in range(0, n_queries, query_chunk):
        rows = slice(q0, min(q0 + query_chunk, n_queries))
        best = torch.full((rows.stop - rows.start,), float("-inf"))
        blocks = [slice(g0, min(g0 + gallery_chunk, n_gallery)) for g0 in range(0, n_gallery, gallery_chunk)]
        masks = []
        for cols in blocks:
            mask = _positive_mask(pos, rows, cols)
            masks.append(mask)
            if mask.any():
                scores = score_block(rows, cols)
                best = torch.maximum(best, scores.masked_fill(~mask, float("-inf")).max(dim=1).values)
        beaten = torch.zeros(rows.stop - rows.start, dtype=torch.int64)
        for cols, mask in zip(blocks, masks):
            scores = score_block(rows, cols)
            above = scores > best[:, None] if ties == "optimistic" else scores >= best[:, None]
            beaten += (above & ~mask).sum(dim=1)
        ranks[rows] = (beaten + 1).numpy()
    return ranks


def ranks_from_embeddings(queries: Any, gallery: Any, positives: Sequence[Sequence[int]] | None = None,
                          ties: str = "optimistic", query_chunk: int = 1024, gallery_chunk: int = 65536
                          ) -> np.ndarray:
    """Ranks under inner-product scores, as `compute_ranks(queries @ gallery.T, ...)` without the matrix."""
    q, g = as_tensor(queries), as_tensor(gallery)
    return chunked_ranks(lambda rows, cols: q[rows] @ g[cols].T, len(q), len(g), positives, ties,
                         query_chunk, gallery_chunk)


def faiss_ranks(index: Any, queries: Any, gallery: Any, positives: Sequence[Sequence[int]] | None = None,
                ties: str = "optimistic", k: int = 100, batch_size: int = 4096) -> tuple[np.ndarray, dict]:
    """Ranks from an exact FAISS inner-product index over `gallery` (the same vectors, in index-id order).

    A query is settled from its top-k list when its best positive is in the list and the list's last score
    is strictly below it: every item that scores as high is then in the list, whatever the tie rule. The
    rest are counted exactly in chunks. Returns (ranks, {"from_index": n, "fallback": n}).
    """
    from .index import search

    q = as_tensor(queries)
    g = as_tensor(gallery)
    n_q, n_g = len(q), len(g)
    if index.ntotal != n_g:
        raise ValueError(f"the index holds {index.ntotal} vectors, the gallery {n_g}")
    pos = _check(positives, n_q, n_g, ties)
    k = min(int(k), n_g)
    scores, ids = search(index, q.numpy(), k, batch_size=batch_size)
    ranks = np.zeros(n_q, dtype=np.int64)
    unsettled: list[int] = []
    for i in range(n_q):
        pset = set(pos[i])
        row_ids, row_scores = ids[i], scores[i]
        where = [j for j, item in enumerate(row_ids) if item in pset]
        if not where:
            unsettled.append(i)
            continue
        best = row_scores[where[0]]  # the list is sorted: the first positive is the best one
        if k < n_g and not row_scores[-1] < best:
            unsettled.append(i)
            continue
        above = row_scores > best if ties == "optimistic" else row_scores >= best
        ranks[i] = 1 + sum(1 for j in np.flatnonzero(above) if row_ids[j] not in pset)
    if unsettled:
        sub = torch.as_tensor(unsettled)
        ranks[unsettled] = ranks_from_embeddings(q[sub], g, [pos[i] for i in unsettled], ties)
    return ranks, {"from_index": n_q - len(unsettled), "fallback": len(unsettled)}


# ------------------------------------------------------------------------------------------ normalisations

def column_logsumexp(queries: torch.Tensor, gallery: torch.Tensor, scale: float, query_chunk: int = 1024,
                     gallery_chunk: int = 65536) -> torch.Tensor:
    """For each gallery item g: log sum_q exp(scale * <q, g>), accumulated over query chunks."""
    out = torch.full((len(gallery),), float("-inf"))
    for g0 in range(0, len(gallery), gallery_chunk):
        cols = slice(g0, min(g0 + gallery_chunk, len(gallery)))
        acc = torch.full((cols.stop - cols.start,), float("-inf"))
        for q0 in range(0, len(queries), query_chunk):
            block = scale * (queries[q0:q0 + query_chunk] @ gallery[cols].T)
            acc = torch.logaddexp(acc, torch.logsumexp(block, dim=0))
        out[cols] = acc
    return out


def dual_softmax_block(queries: Any, gallery: Any, inverse_temperature: float = 100.0) -> ScoreBlock:
    """Scores s * softmax_q(t * s): each gallery item's similarities re-weighted by a softmax over all
    test queries (transductive: it needs the whole query set)."""
    q, g = as_tensor(queries), as_tensor(gallery)
    lse = column_logsumexp(q, g, inverse_temperature)

    def block(rows: slice, cols: slice) -> torch.Tensor:
        s = q[rows] @ g[cols].T
        return s * torch.exp(inverse_temperature * s - lse[cols])

    return block


def qb_norm_block(queries: Any, gallery: Any, bank: Any, beta: float = 20.0) -> tuple[ScoreBlock, dict]:
    """Query-bank normalisation (dynamic inverted softmax).

    Gallery items that are the top-1 hit of some bank query are hubs. A test query whose own top-1 hit is a
    hub gets the inverted-softmax scores beta*s - log sum_b exp(beta * s_bg) over its whole row; the other
    queries keep their raw scores (ranks only compare within a row, so mixing the two is sound).
    """
    q, g, b = as_tensor(queries), as_tensor(gallery), as_tensor(bank)
    if len(b) == 0:
        raise ValueError("query-bank normalisation needs a non-empty bank")
    lse = column_logsumexp(b, g, beta)
    hubs = torch.zeros(len(g), dtype=torch.bool)
    for b0 in range(0, len(b), 1024):
        hubs[(b[b0:b0 + 1024] @ g.T).argmax(dim=1)] = True
    normalised = torch.zeros(len(q), dtype=torch.bool)
    for q0 in range(0, len(q), 1024):
        top1 = (q[q0:q0 + 1024] @ g.T).argmax(dim=1)
        normalised[q0:q0 + len(top1)] = hubs[top1]

    def block(rows: slice, cols: slice) -> torch.Tensor:
        s = q[rows] @ g[cols].T
        inverted = beta * s - lse[cols]
        return torch.where(normalised[rows, None], inverted, s)

    stats = {"bank_size": len(b), "hubs": int(hubs.sum()), "queries_normalised": int(normalised.sum()),
             "beta": beta}
    return block, stats


# --------------------------------------------------------------------------------------------------- chance

def chance_recall(num_positives: Sequence[int], gallery_size: int, k: int) -> float:
    """Expected R@K (percent) of a scorer that orders the gallery at random."""
    n, k = int(gallery_size), min(int(k), int(gallery_size))
    total, count = 0.0, 0
    for p, queries in Counter(int(p) for p in num_positives).items():
        # P(no positive among the first K) = C(n - p, K) / C(n, K), in log-gamma form
        if n - p < k:
            miss = 0.0
        else:
            miss = math.exp(math.lgamma(n - p + 1) - math.lgamma(n - p - k + 1) - math.lgamma(n + 1)
                            + math.lgamma(n - k + 1))
        total += queries * (1.0 - miss)
        count += queries
    return 100.0 * total / max(1, count)


def chance_metrics(positives: Sequence[Sequence[int]], gallery_size: int,
                   ks: Sequence[int] = (1, 5, 10, 50)) -> dict[str, float]:
    """Chance R@K and mean rank: the best of p positives placed at random among n has expected rank
    (n - p) / (p + 1) + 1."""
    counts = [len(p) for p in positives]
    out = {f"R@{k}": chance_recall(counts, gallery_size, k) for k in ks}
    out["MnR"] = float(np.mean([(gallery_size - p) / (p + 1) + 1 for p in counts]))
    return out
