"""FAISS indexes of L2-normalised embeddings (inner product = cosine), and their on-disk folder.

    index = build_index(video_emb, kind="flat")          # exact; "hnsw" and "ivf" are approximate
    scores, ids = search(index, text_emb, k=10)
    save_index_folder("runs/index", index, records, info)  # index.faiss + clips.jsonl + info.json
    index, records, info = load_index_folder("runs/index")

Choice of kind (FAISS wiki, "Guidelines to choose an index"): exact `flat` for evaluation galleries and up
to ~100k items; `hnsw` (M=32) for the best speed/recall when the vectors fit in RAM twice over; `ivf`
(nlist ~ 4*sqrt(N) lists, nprobe probed per query) when build time or memory matter more; `ivfpq` (`compressed`:
product-quantised codes in memory, the best candidates re-ranked from float16 vectors on disk) from millions of
clips up, when even the vectors do not fit.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data_tools.files import atomic_directory

INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
INDEX_FILE = "index.faiss"
RECORDS_FILE = "clips.jsonl"
INFO_FILE = "info.json"


@dataclass
class IndexParams:
    hnsw_m: int = 32  # graph degree: more = better recall, more memory (4*d + 8*M bytes per vector)
    ef_construction: int = 40
    ef_search: int = 64  # candidates kept per query; raise for recall
    nlist: int | None = None  # IVF lists; None = 4*sqrt(N), at least 1, at most N // 39
    nprobe: int = 16  # IVF lists scanned per query
    train_size: int = 262_144  # IVF k-means sample (the wiki's 30K-256K)
    seed: int = 0
    # ivfpq only (see `compressed`)
    pq_m: int | None = None  # sub-quantizers, pq_m * pq_bits / 8 bytes of code per vector; None = D / 8
    pq_bits: int = 4  # 4 = FAISS fast-scan; 8 = classic codes (needed for on_disk)
    opq: bool = False  # learn a rotation first (slow to train, better codes)
    coarse_hnsw: bool = False  # find the lists to probe with an HNSW graph over the centroids (nlist >= ~16k)
    rerank: int = 100  # candidates per query rescored exactly from the float16 vectors; 0 = codes only
    on_disk: bool = False  # inverted lists in a memory-mapped file


def _faiss():
    import faiss

    return faiss


def as_float32(vectors: Any) -> np.ndarray:
    """A C-contiguous float32 [N, D] array from a tensor or an array."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().float().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"expected [N, D] vectors, got shape {array.shape}")
    return array


def default_nlist(n: int) -> int:
    """4*sqrt(N) lists, but never so many that k-means sees fewer than 39 points per centroid."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def build_index(vectors: Any, kind: str = "flat", params: IndexParams | None = None) -> Any:
    """An inner-product FAISS index holding `vectors` (ids 0..N-1 in order)."""
    faiss = _faiss()
    params = params or IndexParams()
    data = as_float32(vectors)
    n, dim = data.shape
    if n == 0:
        raise ValueError("cannot index an empty set of vectors")
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    elif kind == "ivfpq":
        from .compressed import EmbeddingFiles, build_ivfpq_index

        return build_ivfpq_index(EmbeddingFiles.from_array(data), params)
    elif kind == "ivf":
        nlist = params.nlist or default_nlist(n)
        if nlist > n:
            raise ValueError(f"ivf with nlist={nlist} needs at least that many vectors, got {n}")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = params.seed
        sample = data
        if n > params.train_size:
            rows = np.random.default_rng(params.seed).choice(n, params.train_size, replace=False)
            sample = data[np.sort(rows)]
        index.train(sample)
        index.nprobe = min(params.nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}; choose from {INDEX_KINDS}")
    index.add(data)
    return index


def index_kind(index: Any) -> str:
    from .compressed import RerankedIndex

    if isinstance(index, RerankedIndex):
        return "ivfpq"
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "flat"


def set_search_params(index: Any, ef_search: int | None = None, nprobe: int | None = None,
                      rerank: int | None = None) -> None:
    """Per-query effort of an approximate index (ignored by kinds it does not apply to)."""
    from .compressed import RerankedIndex

    if isinstance(index, RerankedIndex):
        if rerank is not None:
            index.rerank = max(0, int(rerank))
        index = index.ivf
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if ef_search is not None and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(ef_search)
    if nprobe is not None and isinstance(index, faiss.IndexIVF):
        index.nprobe = min(int(nprobe), index.nlist)


def search(index: Any, queries: Any, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores [Q, k], ids [Q, k]) per query, best first; id -1 pads when the index holds < k items."""
    data = as_float32(queries)
    k = int(k)
    if k < 1:
        raise ValueError("k must be >= 1")
    scores = np.empty((len(data), k), np.float32)
    ids = np.empty((len(data), k), np.int64)
    for start in range(0, len(data), batch_size):
        s, i = index.search(data[start:start + batch_size], k)
        scores[start:start + len(s)], ids[start:start + len(i)] = s, i
    return scores, ids


# --------------------------------------------------------------------------------------------- on disk

def save_index_folder(directory: str | Path, index: Any, records: list[dict], info: dict | None = None,
                      extra: Callable[[Path], dict] | None = None) -> Path:
    """Write index.faiss, clips.jsonl (record i describes index id i) and info.json, atomically as a folder.
    `extra(tmp_folder)` may add files to the same folder before it is published; what it returns joins info."""
    faiss = _faiss()
    if len(records) != index.ntotal:
        raise ValueError(f"{len(records)} records for an index of {index.ntotal} vectors")
    info = {"kind": index_kind(index), "count": int(index.ntotal), "dim": int(index.d), **(info or {})}
    with atomic_directory(directory) as tmp:
        if extra is not None:
            info.update(extra(tmp))
        if info["kind"] == "ivfpq":
            from .compressed import write_reranked_index

            info.update(write_reranked_index(tmp, index, records))
        else:
            faiss.write_index(index, str(tmp / INDEX_FILE))
            with open(tmp / RECORDS_FILE, "w", encoding="utf-8") as fh:
                for i, record in enumerate(records):
                    fh.write(json.dumps({"id": i, **record}, ensure_ascii=False) + "\n")
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return Path(directory)


def load_index_folder(directory: str | Path) -> tuple[Any, list[dict], dict]:
    faiss = _faiss()
    directory = Path(directory)
    missing = [name for name in (INDEX_FILE, RECORDS_FILE, INFO_FILE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not an index folder (missing {', '.join(missing)}); "
                                "build one with `hdvila retrieval index`")
    info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
    if info.get("kind") == "ivfpq":  # records stay on disk: the gallery may hold a hundred million clips
        from .compressed import load_ivfpq

        index, records = load_ivfpq(directory, info)
        return index, records, info
    index = faiss.read_index(str(directory / INDEX_FILE))
    with open(directory / RECORDS_FILE, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    if len(records) != index.ntotal:
        raise ValueError(f"{directory}: {len(records)} records for {index.ntotal} vectors")
    return index, records, info

