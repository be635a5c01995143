"""A searchable FAISS index of the clips in a set of shards.

    build_clip_index(encoder, ["shards/*.tar"], "runs/index", kind="hnsw")
    hits = search_clips("runs/index", ["a red circle moves left"], k=10)   # uses the model recorded at build time

The folder holds index.faiss, clips.jsonl (index id -> sample key, source video, span, caption),
info.json (model folder, kind, sampling, counts, the shard files) and the clip media a search page serves:
where each clip's video lies in its shard, and a thumbnail (`clip_media`).
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from data_tools.logs import get_logger

from .clip_media import write_clip_media
from .evaluate import ClipIds, EvalConfig, encode_gallery, gallery_loader_config
from .index import IndexParams, build_index, load_index_folder, save_index_folder, search, set_search_params

log = get_logger(__name__)


def build_clip_index(encoder, shards: Sequence[str] | str, out_dir: str | Path, kind: str = "flat",
                     params: IndexParams | None = None, model_dir: str | Path | None = None,
                     batch_size: int = 16, num_workers: int = 2, progress: bool = True,
                     media: bool = True) -> dict[str, Any]:
    """Encode every clip of `shards` once and write an index folder; returns its info. `media` also writes the
    thumbnails and video locations that `hdvila serve` shows and plays."""
    params = params or IndexParams()
    started = time.perf_counter()
    cfg = EvalConfig(batch_size=batch_size, num_workers=num_workers)
    loader_cfg = gallery_loader_config(shards, cfg, encoder.inference.backend, encoder.inference.max_text_len)
    gallery = encode_gallery(encoder.encode_clips, loader_cfg, encoder.sampling, ClipIds("key"), progress=progress)
    encoded = time.perf_counter()
    index = build_index(gallery.embeddings, kind, params)
    shard_files = [str(Path(s).resolve()) for s in loader_cfg.shards]
    info = {
        "model": str(Path(model_dir).resolve()) if model_dir else None,
        "shards": loader_cfg.shards,
        "shard_files": shard_files,
        "params": asdict(params),
        "inference": asdict(encoder.inference),
        "loader": gallery.counts,
        "encode_seconds": round(encoded - started, 2),
        "build_seconds": round(time.perf_counter() - encoded, 2),
    }

    def write_media(folder: Path) -> dict:
        info["media"] = write_clip_media(folder, shard_files, [r["key"] for r in gallery.records],
                                         backend=encoder.inference.backend, progress=progress)
        return {"media": info["media"]}

    info = {"kind": kind, "count": int(index.ntotal), "dim": int(index.d), **info}
    save_index_folder(out_dir, index, gallery.records, info, extra=write_media if media else None)
    log.info("indexed %d clips (%s) into %s", index.ntotal, kind, out_dir)
    return info


def encoder_for_index(index_dir: str | Path, index, info: dict, encoder=None):
    """`encoder`, else the model folder recorded at build time; either must embed into the index's dims."""
    if encoder is None:
        from ..encoder import load_pretrained

        if not info.get("model"):
            raise ValueError(f"{index_dir} records no model folder; pass the model (--model)")
        encoder = load_pretrained(info["model"])
    if encoder.embed_dim != index.d:
        raise ValueError(f"the model embeds into {encoder.embed_dim} dims, the index holds {index.d}-dim vectors: "
                         "search with the model that built the index")
    return encoder


def search_clips(index_dir: str | Path, queries: Sequence[str] | str, k: int = 10, encoder=None,
                 ef_search: int | None = None, nprobe: int | None = None,
                 rerank: int | None = None) -> list[list[dict]]:
    """Top-k clips per text query: [{rank, score, key, clip_id, video_id, source, span, caption}, ...]."""
    index, records, info = load_index_folder(index_dir)
    encoder = encoder_for_index(index_dir, index, info, encoder)
    set_search_params(index, ef_search=ef_search, nprobe=nprobe, rerank=rerank)
    queries = [queries] if isinstance(queries, str) else list(queries)
    scores, ids = search(index, encoder.encode_text(queries).numpy(), min(k, index.ntotal))
    hits = []
    for row_scores, row_ids in zip(scores, ids):
        hits.append([{**records[i], "rank": r + 1, "score": float(s)}  # a record's own fields never mask these
                     for r, (s, i) in enumerate(zip(row_scores, row_ids)) if i >= 0])
    return hits


_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def _printable(value) -> str:
    """Text safe for a terminal: control characters (an ESC sequence in an old shard's caption) as \\xNN."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def format_hits(query: str, hits: list[dict]) -> str:
    lines = [f"query: {_printable(query)}",
             f"{'rank':>4}  {'score':>6}  {'clip':<14}  {'span (s)':<13}  source / caption"]
    for hit in hits:
        span = hit.get("span") or []
        span_text = f"{span[0]:.1f}-{span[1]:.1f}" if len(span) == 2 else "-"
        source = _printable(Path(hit["source"]).name) if hit.get("source") else "-"
        key = hit.get("key", hit.get("id", "-"))  # records written from embedding files may have no key
        lines.append(f"{hit['rank']:>4}  {hit['score']:>6.3f}  {_printable(key):<14}  {span_text:<13}  {source}")
        lines.append(f"{'':>4}  {'':>6}  {'':<14}  {'':<13}  \"{_printable(hit.get('caption', ''))}\"")
    return "\n".join(lines)
