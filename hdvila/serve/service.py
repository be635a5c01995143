"""The search behind the page: an index folder, its model and its clip media, answering checked requests.

    service = SearchService.from_folder("runs/demo/index")
    service.search_text("a red circle moves to the left", k=10)     # {"hits": [...], "took_ms": ...}
    service.similar(3, k=10)                                         # clips like index id 3, itself left out

No web framework here (the app in `hdvila.serve.app` is a thin layer over it), and nothing a request sends
becomes a path: clips are index ids, checked against the index.
"""
from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.logs import get_logger
from hdvila.retrieval.clip_index import encoder_for_index
from hdvila.retrieval.clip_media import ClipMedia, iter_file_range
from hdvila.retrieval.index import as_float32, index_kind, load_index_folder

log = get_logger(__name__)


@dataclass(frozen=True)
class ServeLimits:
    """Caps on what one request may ask for."""

    max_query_chars: int = 200
    max_k: int = 100
    max_effort: int = 4096  # nprobe (also capped by the index's list count) and HNSW ef


class BadRequest(ValueError):
    """A request the service refuses; the message is safe to show."""


class NotFound(LookupError):
    """A clip, thumbnail or video that the index does not have; the message is safe to show."""


_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def _basename(value: Any) -> str | None:
    """Only the file name of a source path: a page has no business knowing the server's folders."""
    return Path(str(value)).name if value not in (None, "") else None


def _span(span: Any) -> list[float] | None:
    """[start, end] in seconds, or None where a record's span is missing or not two finite numbers."""
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        return None
    try:
        values = [float(span[0]), float(span[1])]
    except (TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


class SearchService:
    def __init__(self, index, records: list[dict], info: dict, encoder, media: ClipMedia,
                 limits: ServeLimits | None = None, name: str = "index"):
        import faiss

        self.index, self.records, self.info, self.encoder, self.media = index, records, info, encoder, media
        self.limits = limits or ServeLimits()
        self.name = name
        self.kind = index_kind(index)
        self._faiss = faiss
        # one query at a time through the model: with 20 request threads inside torch at once the server
        # answered half as many searches per second (docs/benchmarks/serve.md)
        self._model_lock = threading.Lock()
        # ivfpq (a RerankedIndex) probes lists like ivf; its "more like this" reads the float16 vectors back
        self.nlist = int(faiss.extract_index_ivf(getattr(index, "index", index)).nlist) \
            if self.kind in ("ivf", "ivfpq") else None
        if self.kind == "ivf":
            faiss.extract_index_ivf(index).make_direct_map()  # "more like this" reads stored vectors back
        params = info.get("params") or {}
        self.default_nprobe = min(int(params.get("nprobe", 16)), self.nlist) if self.nlist else None
        self.default_ef = int(params.get("ef_search", 64)) if self.kind == "hnsw" else None

    @classmethod
    def from_folder(cls, index_dir: str | Path, encoder=None, limits: ServeLimits | None = None) -> "SearchService":
        """`encoder` None: the model folder recorded when the index was built."""
        index, records, info = load_index_folder(index_dir)
        encoder = encoder_for_index(index_dir, index, info, encoder)
        media = ClipMedia(index_dir, info.get("shard_files"), index.ntotal)
        if not media.has_thumbnails or not media.has_video:
            log.warning("%s has no clip media (built from embedding files, or before thumbnails and playback "
                        "existed): results show no thumbnails and do not play; `hdvila retrieval index --shards` "
                        "writes them", index_dir)
        return cls(index, records, info, encoder, media, limits, name=Path(index_dir).name)

    # ------------------------------------------------------------------------------------ checks

    def check_query(self, query: Any) -> str:
        if not isinstance(query, str):
            raise BadRequest("q must be text")
        if len(query) > self.limits.max_query_chars:
            raise BadRequest(f"q is longer than {self.limits.max_query_chars} characters")
        text = " ".join(_CONTROL_RE.sub(" ", query).split())
        if not text:
            raise BadRequest("q is empty: type a sentence to search for")
        return text

    def check_k(self, k: Any) -> int:
        return self._check_int("k", k, 1, self.limits.max_k)

    def check_clip(self, clip: Any) -> int:
        clip = self._check_int("id", clip, 0, None, not_found=True)
        if clip >= self.index.ntotal:
            raise NotFound(f"no clip {clip} in this index ({self.index.ntotal} clips)")
        return clip

    def _check_int(self, name: str, value: Any, low: int, high: int | None, not_found: bool = False) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise BadRequest(f"{name} must be a whole number")
        value = int(value)
        if value < low or (high is not None and value > high):
            if not_found:
                raise NotFound(f"no clip {value} in this index")
            raise BadRequest(f"{name} must be between {low} and {high}" if high is not None
                             else f"{name} must be at least {low}")
        return value

    def _search_params(self, nprobe: int | None, ef: int | None):
        faiss = self._faiss
        if nprobe is not None:
            self._check_int("nprobe", nprobe, 1, self.limits.max_effort)
        if ef is not None:
            self._check_int("ef", ef, 1, self.limits.max_effort)
        # per-call parameters: concurrent requests with different settings never touch shared index state
        if self.kind in ("ivf", "ivfpq"):
            params = faiss.SearchParametersIVF()
            params.nprobe = min(int(nprobe or self.default_nprobe), self.nlist)
            return params, {"nprobe": int(params.nprobe)}
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(ef or self.default_ef)
            return params, {"ef": int(params.efSearch)}
        return None, {}

    # ------------------------------------------------------------------------------------ answers

    def about(self) -> dict:
        """What the page shows about the index and offers as options."""
        return {
            "name": self.name,
            "count": int(self.index.ntotal),
            "kind": self.kind,
            "dim": int(self.index.d),
            "model": _basename(self.info.get("model")),
            "nlist": self.nlist,
            "defaults": {"k": min(10, self.limits.max_k), "nprobe": self.default_nprobe, "ef": self.default_ef},
            "limits": asdict(self.limits),
            "thumbnails": self.media.has_thumbnails,
            "playback": self.media.has_video,
        }

    def _hits(self, vector: np.ndarray, k: int, nprobe: int | None, ef: int | None, exclude: int | None = None
              ) -> tuple[list[dict], dict]:
        params, used = self._search_params(nprobe, ef)
        wanted = min(k + (exclude is not None), int(self.index.ntotal))
        scores, ids = self.index.search(as_float32(vector[None]), wanted, params=params)
        hits = []
        for score, clip in zip(scores[0], ids[0]):
            if clip < 0 or clip == exclude or len(hits) == k:
                continue
            hits.append(self.hit(int(clip), float(score), rank=len(hits) + 1))
        return hits, used

    def hit(self, clip: int, score: float, rank: int) -> dict:
        record = self.records[clip]
        span = record.get("span")
        return {
            "id": clip, "rank": rank, "score": round(score, 6) if math.isfinite(score) else None,
            "caption": str(record.get("caption") or ""),
            "video_id": record.get("video_id"), "clip_id": record.get("clip_id"),
            "source": _basename(record.get("source")),
            "span": _span(span),
            "thumbnail": f"/api/clips/{clip}/thumbnail" if self.media.has_thumbnails else None,
            "video": f"/api/clips/{clip}/video" if self.media.has_video else None,
        }

    def search_text(self, query: Any, k: Any = 10, nprobe: int | None = None, ef: int | None = None) -> dict:
        started = time.perf_counter()
        text, k = self.check_query(query), self.check_k(k)
        with self._model_lock:
            vector = self.encoder.encode_text([text]).numpy()[0]
        hits, used = self._hits(vector, k, nprobe, ef)
        return {"query": text, "k": k, **used, "hits": hits, "took_ms": round(1000 * (time.perf_counter() - started), 2)}

    def similar(self, clip: Any, k: Any = 10, nprobe: int | None = None, ef: int | None = None) -> dict:
        """Video to video: the clips nearest to a clip's own embedding, the clip itself left out."""
        started = time.perf_counter()
        clip, k = self.check_clip(clip), self.check_k(k)
        vector = np.asarray(self.index.reconstruct(clip), np.float32)
        hits, used = self._hits(vector, k, nprobe, ef, exclude=clip)
        return {"like": self.hit(clip, 1.0, rank=0), "k": k, **used, "hits": hits,
                "took_ms": round(1000 * (time.perf_counter() - started), 2)}

    def thumbnail(self, clip: Any) -> bytes:
        clip = self.check_clip(clip)
        jpeg = self.media.thumbnail(clip)
        if jpeg is None:
            raise NotFound(f"clip {clip} has no thumbnail" + ("" if self.media.has_thumbnails else
                           " (this index was built without them: rebuild it with `hdvila retrieval index`)"))
        return jpeg

    def video(self, clip: Any) -> tuple[Path, int, int]:
        """(shard file, offset, size) of the clip's mp4 inside its shard."""
        clip = self.check_clip(clip)
        where = self.media.video_location(clip)
        if where is None:
            raise NotFound(f"clip {clip} cannot be played from this index" + ("" if self.media.has_video else
                           " (built without video locations: rebuild it with `hdvila retrieval index`)"))
        return where


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range [start, end] (inclusive) a Range header asks of `size` bytes; None = send it all.

    A header that is not a single `bytes=` range is ignored, as RFC 9110 allows; a range that starts past the
    end raises `RangeNotSatisfiable`."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if len(first) > 18 or len(last) > 18:  # no number bigger than any file
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, end


class RangeNotSatisfiable(ValueError):
    def __init__(self, size: int):
        super().__init__(f"the range starts past the end of {size} bytes")
        self.size = size


__all__ = ["SearchService", "ServeLimits", "BadRequest", "NotFound", "parse_byte_range", "RangeNotSatisfiable",
           "iter_file_range"]
