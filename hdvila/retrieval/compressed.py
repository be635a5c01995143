"""The `ivfpq` index kind: galleries of many millions of clips, compressed in memory, re-ranked from disk.

    source = EmbeddingFiles(["emb/part-000.npy", "emb/part-001.npy"])    # [n, D] float16/float32 each
    build_ivfpq_folder(source, "runs/index", IndexParams(pq_m=64, pq_bits=4, rerank=100))
    index, records, info = load_index_folder("runs/index")              # a RerankedIndex
    scores, ids = search(index, queries, k=10)

FAISS keeps product-quantised codes in inverted lists (IVF): `pq_m * pq_bits / 8` bytes per vector plus its 8-byte
id. 4-bit codes use FAISS's fast-scan kernels (SIMD look-ups, several times faster than 8-bit codes). PQ alone ranks
the true neighbour poorly at 512 dims, so the `rerank` best candidates of each query are scored again exactly
against float16 copies of the vectors in `vectors.f16`, memory-mapped: 2*D bytes per vector on disk, read only
for those candidates. Build and search read embeddings in a stream and never hold the gallery in memory:

    memory to build  ~ train_size * D * 4 (k-means sample) + batch_size * D * 4 + N * (code bytes + 8)
    memory to search ~ N * (code bytes + 8) + nlist * D * 4 (centroids)   [on_disk: the lists are mmapped too]

`on_disk` writes the inverted lists to `lists.ivfdata` (FAISS OnDiskInvertedLists, merged from per-batch parts)
for galleries whose codes exceed memory; FAISS supports it for 8-bit codes only, not fast-scan.
"""
from __future__ import annotations

import json
import math
import os
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from data_tools.files import atomic_directory
from data_tools.logs import get_logger

from .index import INDEX_FILE, INFO_FILE, RECORDS_FILE, IndexParams, _faiss

log = get_logger(__name__)

# the folder's other files are index.py's: INDEX_FILE, RECORDS_FILE, INFO_FILE
VECTORS_FILE = "vectors.f16"
LISTS_FILE = "lists.ivfdata"
RECORD_OFFSETS_FILE = "clips.offsets.npy"
ON_DISK_PART_VECTORS = 1_000_000  # vectors per part merged into the on-disk lists
RERANK_CHUNK = 256  # queries re-ranked at once: 256 x 1000 candidates x 512 dims x 4 B = 0.5 GB at most


# ------------------------------------------------------------------------------------------ embeddings

class EmbeddingFiles:
    """[N, D] vectors spread over .npy files (float16 or float32), read by memory map, never whole.

    Only the headers are read up front; each file is mapped while it is read and closed after, so a gallery may
    come in thousands of files. Rows are L2-normalised as they are read (inner product = cosine)."""

    def __init__(self, paths: Sequence[str | os.PathLike] = (), arrays: Sequence[np.ndarray] = ()):
        self.paths = [str(p) for p in paths]
        self.arrays = [np.asarray(a) for a in arrays]
        shapes: list[tuple[str, tuple, np.dtype]] = []
        for path in self.paths:
            part = self._map(path)
            shapes.append((path, part.shape, part.dtype))
            del part
        shapes.extend((f"array {i}", a.shape, a.dtype) for i, a in enumerate(self.arrays))
        if not shapes:
            raise ValueError("no embeddings: give at least one .npy file")
        dims = set()
        for label, shape, dtype in shapes:
            if len(shape) != 2 or dtype not in (np.float16, np.float32):
                raise ValueError(f"{label}: expected a 2-D float16/float32 array, got {dtype} {shape}")
            dims.add(shape[1])
        if len(dims) != 1:
            raise ValueError(f"the embedding files disagree on the dimension: {sorted(dims)}")
        self.dim = dims.pop()
        self.starts = np.cumsum([0] + [shape[0] for _, shape, _ in shapes])
        self.count = int(self.starts[-1])
        if self.count == 0:
            raise ValueError("the embedding files hold no vectors")

    @staticmethod
    def _map(path: str) -> np.ndarray:
        try:  # allow_pickle=False: an object array in a file is refused, never unpickled
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc

    def _part(self, number: int) -> np.ndarray:
        return self._map(self.paths[number]) if number < len(self.paths) else self.arrays[number - len(self.paths)]

    @classmethod
    def from_array(cls, vectors: np.ndarray) -> EmbeddingFiles:
        return cls(arrays=[np.asarray(vectors, dtype=np.float32)])

    @staticmethod
    def _normalise_in_place(out: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)):
            raise ValueError("the embeddings hold a NaN or infinite value")
        out /= np.maximum(norms, 1e-12)
        return out

    @classmethod
    def _normalised(cls, block: np.ndarray) -> np.ndarray:
        # a copy: the files are mapped read-only
        return cls._normalise_in_place(np.array(block, dtype=np.float32, order="C"))

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [n, D] normalised rows), in order; a batch never spans two files."""
        for number, start in enumerate(self.starts[:-1]):
            part = self._part(number)
            for offset in range(0, len(part), size):
                yield int(start + offset), self._normalised(part[offset:offset + size])
            del part

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The rows at sorted global `indices`, normalised (in place: one float32 copy of the sample)."""
        out = np.empty((len(indices), self.dim), np.float32)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for number in np.unique(which):
            mask = which == number
            out[mask] = self._part(number)[indices[mask] - self.starts[number]]
        return self._normalise_in_place(out)


MAX_RECORD_BYTES = 1 << 20  # a records line longer than this is refused, not read into memory


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """One JSON object per line, in vector order, read in a stream; a bad line stops the build with its number."""
    with open(path, "rb") as fh:
        for number, line in enumerate(iter(lambda: fh.readline(MAX_RECORD_BYTES + 1), b""), start=1):
            if len(line) > MAX_RECORD_BYTES:
                raise ValueError(f"{path}:{number}: a record longer than {MAX_RECORD_BYTES} bytes")
            try:
                record = json.loads(line)
                json.dumps(record, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here, not later
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"{path}:{number}: not a JSON record ({type(exc).__name__})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: a record must be a JSON object")
            yield record


# ------------------------------------------------------------------------------------------ building

def ivfpq_factory(dim: int, nlist: int, pq_m: int, pq_bits: int, opq: bool, coarse_hnsw: bool = False) -> str:
    """The FAISS factory string. An HNSW coarse quantizer finds the lists to probe in about log(nlist) steps
    instead of a scan of every centroid: what keeps queries fast at the 65k-262k lists of 100M vectors."""
    if pq_bits not in (4, 8):
        raise ValueError(f"pq_bits must be 4 (fast-scan) or 8, got {pq_bits}")
    if dim % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {dim}")
    codes = f"PQ{pq_m}x4fs" if pq_bits == 4 else f"PQ{pq_m}x8"
    return f"{f'OPQ{pq_m},' if opq else ''}IVF{nlist}{'_HNSW32' if coarse_hnsw else ''},{codes}"


def sub_quantizers(params: Any, dim: int) -> int:
    return int(params.pq_m) if params.pq_m else max(1, dim // 8)


def default_ivfpq_nlist(n: int, train_size: int) -> int:
    """A power of two near 4*sqrt(N), with at least 39 training points per list (k-means' own floor)."""
    target = max(1.0, min(4 * math.sqrt(n), min(n, train_size) / 39))
    return 2 ** int(math.floor(math.log2(target)))


def memory_bytes_per_vector(pq_m: int, pq_bits: int) -> int:
    """What the inverted lists hold per vector: its code and its 8-byte id."""
    return pq_m * pq_bits // 8 + 8


def _trained_index(source: EmbeddingFiles, params: Any) -> Any:
    faiss = _faiss()
    n, dim = source.count, source.dim
    nlist = params.nlist or default_ivfpq_nlist(n, params.train_size)
    if nlist > n:
        raise ValueError(f"ivfpq with nlist={nlist} needs at least that many vectors, got {n}")
    factory = ivfpq_factory(dim, nlist, sub_quantizers(params, dim), params.pq_bits, params.opq, params.coarse_hnsw)
    if min(n, params.train_size) < 2 ** params.pq_bits:
        raise ValueError(f"ivfpq trains {2 ** params.pq_bits} codewords per sub-quantizer and needs at least as "
                         f"many vectors, got {min(n, params.train_size)}: use kind flat for a gallery this small")
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.seed = params.seed
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # the factory's default for 8-bit codes: 30x the training time, unused
    train_rows = np.sort(np.random.default_rng(params.seed).choice(n, min(n, params.train_size), replace=False))
    log.info("ivfpq %s: training on %d of %d vectors", factory, len(train_rows), n)
    index.train(source.rows(train_rows))
    ivf.nprobe = min(params.nprobe, nlist)
    return index


def _info(index: Any, params: Any, on_disk: bool = False) -> dict:
    ivf = _faiss().extract_index_ivf(index)
    pq_m = sub_quantizers(params, index.d)
    return {
        "factory": ivfpq_factory(index.d, ivf.nlist, pq_m, params.pq_bits, params.opq, params.coarse_hnsw),
        "nlist": int(ivf.nlist),
        "memory_bytes_per_vector": memory_bytes_per_vector(pq_m, params.pq_bits),
        "disk_bytes_per_vector": 2 * int(index.d),
        "on_disk_lists": on_disk,
        "params": dict(vars(params)),
    }


def build_ivfpq_index(source: EmbeddingFiles, params: Any, batch_size: int = 65_536) -> RerankedIndex:
    """An in-memory ivfpq index (for galleries that fit): the float16 copies are kept in memory."""
    index = _trained_index(source, params)
    vectors = np.empty((source.count, source.dim), np.float16)
    for start, batch in source.batches(batch_size):
        vectors[start:start + len(batch)] = batch
        index.add_with_ids(batch, np.arange(start, start + len(batch), dtype=np.int64))
    return RerankedIndex(index, vectors, params.rerank, params)


def write_reranked_index(folder: Path, index: RerankedIndex, records: Iterable[dict]) -> dict:
    """The files of an ivfpq folder for an index built in memory (`save_index_folder` calls it)."""
    _faiss().write_index(index.index, str(folder / INDEX_FILE))
    with open(folder / VECTORS_FILE, "wb") as fh:
        for start in range(0, index.ntotal, 65_536):
            fh.write(np.ascontiguousarray(index.vectors[start:start + 65_536], dtype=np.float16).tobytes())
    if _write_records(folder, records, index.ntotal) != index.ntotal:
        raise ValueError(f"fewer records than the {index.ntotal} vectors")
    return _info(index.index, index.params)


def build_ivfpq_folder(source: EmbeddingFiles, out_dir: str | Path, params: Any,
                       records: Iterable[dict] | None = None, info: dict | None = None,
                       extra: Callable[[Path], dict] | None = None, batch_size: int = 65_536,
                       progress: bool = True, part_size: int = ON_DISK_PART_VECTORS) -> dict:
    """Train on a sample, fill in batches read in a stream, write the index folder atomically; returns its info.

    `params` is an `index.IndexParams`. `records` (one dict per vector, in order) default to {"row": i}."""
    faiss = _faiss()
    if params.on_disk and params.pq_bits != 8:
        raise ValueError("on-disk inverted lists need 8-bit codes (FAISS cannot merge fast-scan lists on disk)")
    n = source.count
    index = _trained_index(source, params)
    with atomic_directory(out_dir) as tmp:
        parts: list[str] = []
        part = None
        with open(tmp / VECTORS_FILE, "wb") as vectors, \
                tqdm(total=n, desc="index", unit="vec", unit_scale=True, disable=not progress) as bar:
            for start, batch in source.batches(batch_size):
                vectors.write(batch.astype(np.float16).tobytes())
                ids = np.arange(start, start + len(batch), dtype=np.int64)
                if params.on_disk:  # each part is a copy of the trained index holding `part_size` vectors
                    if part is None:
                        part = faiss.clone_index(index)
                    part.add_with_ids(batch, ids)
                    if part.ntotal >= part_size:
                        parts.append(_write_part(part, tmp, len(parts)))
                        part = None
                else:
                    index.add_with_ids(batch, ids)
                bar.update(len(batch))
        if part is not None:
            parts.append(_write_part(part, tmp, len(parts)))
        if params.on_disk:
            from faiss.contrib.ondisk import merge_ondisk

            merge_ondisk(index, parts, str(tmp / LISTS_FILE))  # the whole index: with OPQ both counts move
            for path in parts:
                os.unlink(path)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        if _write_records(tmp, records, n) != n:
            raise ValueError(f"fewer records than the {n} vectors")
        info = {"kind": "ivfpq", "count": n, "dim": source.dim, **(info or {}),
                **_info(index, params, on_disk=bool(params.on_disk))}
        if extra is not None:
            info.update(extra(tmp))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    log.info("indexed %d vectors (%s, %d bytes each in memory) into %s", n, info["factory"],
             info["memory_bytes_per_vector"], out_dir)
    return info


def _write_part(part: Any, folder: Path, number: int) -> str:
    path = folder / f".part-{number:05d}.index"
    _faiss().write_index(part, str(path))
    return str(path)


def _write_records(folder: Path, records: Iterable[dict] | None, n: int) -> int:
    """clips.jsonl plus the byte offset of each line, so a search reads only the records it returns."""
    offsets = array("q", [0])  # grows with the records actually written, whatever the files claim
    with open(folder / RECORDS_FILE, "wb") as fh:
        for i, record in enumerate(records if records is not None else ({"row": i} for i in range(n))):
            if i >= n:
                raise ValueError(f"more records than the {n} vectors")
            line = (json.dumps({**record, "id": i}, ensure_ascii=False) + "\n").encode("utf-8")
            fh.write(line)
            offsets.append(offsets[-1] + len(line))
    np.save(folder / RECORD_OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
    return len(offsets) - 1


# ------------------------------------------------------------------------------------------ reading

class JsonlRecords(Sequence):
    """clips.jsonl read line by line through its offsets file: a hundred million records stay on disk."""

    def __init__(self, path: Path, offsets: np.ndarray):
        self.path = Path(path)
        self.offsets = offsets  # memory-mapped: 8 B per record on disk, not in memory
        size = self.path.stat().st_size
        if offsets.ndim != 1 or offsets.dtype != np.int64 or len(offsets) < 1 or offsets[0] != 0 \
                or offsets[-1] != size:
            raise ValueError(f"{self.path}: the offsets file does not describe this records file")
        for start in range(0, len(offsets) - 1, 1 << 20):  # increasing, checked a block at a time
            if np.any(np.diff(offsets[start:start + (1 << 20) + 1]) <= 0):
                raise ValueError(f"{self.path}: the offsets file does not describe this records file")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        with open(self.path, "rb") as fh:
            fh.seek(int(self.offsets[i]))
            return json.loads(fh.read(int(self.offsets[i + 1] - self.offsets[i])))


class RerankedIndex:
    """An IVF-PQ FAISS index whose `rerank` best candidates per query are rescored exactly from `vectors.f16`.

    Mimics the FAISS calls the rest of the package makes: `ntotal`, `d`, `search(x, k, params=None)`,
    `reconstruct(i)`."""

    def __init__(self, index: Any, vectors: np.ndarray, rerank: int, params: Any = None):
        self.index = index
        self.vectors = vectors
        self.rerank = max(0, int(rerank))
        self.params = params
        if vectors.shape != (index.ntotal, index.d):
            raise ValueError(f"{VECTORS_FILE} holds {vectors.shape}, the index {index.ntotal} x {index.d}")

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ivf(self) -> Any:
        return _faiss().extract_index_ivf(self.index)

    def search(self, queries: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not self.rerank:
            return self.index.search(queries, k, params=params)
        first = min(max(k, self.rerank), self.ntotal)
        candidate_scores, candidate_ids = self.index.search(queries, first, params=params)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), RERANK_CHUNK):  # bounds the [queries, candidates, D] block
            block = slice(start, start + RERANK_CHUNK)
            scores[block], ids[block] = self._rerank(queries[block], candidate_ids[block], k)
        return scores, ids

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        valid = candidates >= 0
        # read each distinct candidate once, in file order: friendlier to the disk than the queries' order
        unique, inverse = np.unique(np.where(valid, candidates, 0), return_inverse=True)
        vectors = np.asarray(self.vectors[unique], dtype=np.float32)
        exact = np.einsum("qkd,qd->qk", vectors[inverse.reshape(candidates.shape)], queries)
        exact[~valid] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(exact, order, axis=1)
        top_ids = np.where(np.isfinite(top_scores), np.take_along_axis(candidates, order, axis=1), -1)
        pad = ((0, 0), (0, k - top_ids.shape[1]))  # fewer candidates than k: -1 ids, as FAISS pads
        return np.pad(top_scores, pad, constant_values=-np.inf), np.pad(top_ids, pad, constant_values=-1)

    def reconstruct(self, i: int) -> np.ndarray:
        return np.asarray(self.vectors[int(i)], dtype=np.float32)


def load_ivfpq(directory: Path, info: dict) -> tuple[RerankedIndex, JsonlRecords]:
    faiss = _faiss()
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if (directory / LISTS_FILE).is_file() else 0
    index = faiss.read_index(str(directory / INDEX_FILE), flags)
    vectors = np.memmap(directory / VECTORS_FILE, dtype=np.float16, mode="r",
                        shape=(int(index.ntotal), int(index.d)))
    params = IndexParams(**info.get("params", {}))
    records = JsonlRecords(directory / RECORDS_FILE,
                           np.load(directory / RECORD_OFFSETS_FILE, mmap_mode="r", allow_pickle=False))
    if len(records) != index.ntotal:
        raise ValueError(f"{directory}: {len(records)} records for {index.ntotal} vectors")
    return RerankedIndex(index, vectors, params.rerank, params), records
