"""Text-to-video and video-to-text retrieval evaluation: encode, index with FAISS, rank, report.

    loader_cfg = gallery_loader_config("shards/test-*.tar", cfg)
    gallery = encode_gallery(encoder.encode_clips, loader_cfg, encoder.sampling, ClipIds("clip_id", wanted))
    results, ranks = evaluate_embeddings(gallery.embeddings, encoder.encode_text(ann.captions), ann, cfg)
    write_report("runs/eval", results, ranks)     # results.json, results.md, recall_at_k.png

(`hdvila.recipes.common.evaluate_on_shards` runs these steps for an encoder, with or without annotations.)

Gallery videos are encoded once (segment features averaged), queries once; text-to-video ranks come from a
FAISS index over the videos (exact inner product by default) with an exact chunked count for the queries
whose best positive is not in their top-k, so no [queries x gallery] matrix is ever held. Dual softmax and
query-bank normalisation are optional and reported beside the plain result.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from data_tools.decoders import DEFAULT_BACKEND
from data_tools.files import atomic_write_json, atomic_write_text
from data_tools.loading.pipeline import LoaderConfig, expand_shards, make_loader
from data_tools.logs import get_logger
from data_tools.training.metrics import save_figure

from .annotations import RetrievalAnnotations
from .index import INDEX_KINDS, IndexParams, build_index
from .metrics import metrics_from_ranks
from .ranking import chance_metrics, chance_recall, chunked_ranks, dual_softmax_block, faiss_ranks, qb_norm_block

log = get_logger(__name__)

DIRECTIONS = ("t2v", "v2t")


@dataclass
class EvalConfig:
    index: str = "flat"  # flat (exact) | hnsw | ivf (approximate: ranks can be off, flagged in the results)
    k: int = 100  # top-k read from the index per query; queries whose best positive is further down are counted exactly
    ties: str = "optimistic"  # a positive tied with non-positives ranks first ("pessimistic": last)
    dual_softmax: bool = False  # also report dual-softmax scores (transductive: uses all test queries)
    dsl_inverse_temperature: float = 100.0
    qb_norm: bool = False  # also report query-bank normalisation (text-to-video)
    qb_norm_beta: float = 20.0
    qb_norm_bank: str = "train"  # "train": the training captions; or a .txt/.jsonl file of sentences
    qb_norm_bank_size: int = 10000  # the bank is capped (evenly spaced pick) to keep it cheap
    same_caption_positive: bool = False  # captions with identical text share their videos (synthetic corpora)
    batch_size: int = 16
    num_workers: int = 2
    max_videos: int = 0  # 0 = the whole gallery
    plot: bool = True


@dataclass
class Gallery:
    embeddings: torch.Tensor  # [N, D] L2-normalised
    video_ids: list[str]  # the ids annotations use (ClipIds.video_id)
    records: list[dict]  # sample key, clip_id, source video_id, source path, span, caption per item
    counts: dict = field(default_factory=dict)  # loader counts (ok, skipped by reason)
    duplicates: int = 0


class ClipIds:
    """Maps a shard sample to the video id that annotations use (`meta[field]`, else the sample key) and
    answers the loader's caption hook: clips whose id is not wanted are skipped before decoding."""

    def __init__(self, field: str = "key", wanted: Iterable[str] | None = None):
        self.field = field
        self.wanted = None if wanted is None else set(wanted)

    def video_id(self, key: str, meta: dict) -> str:
        value = meta.get(self.field) if self.field != "key" else None
        return str(value) if value not in (None, "") else key

    def __call__(self, key: str, meta: dict, text: str, seed: int) -> str | None:
        if self.wanted is not None and self.video_id(key, meta) not in self.wanted:
            return None
        return text


def gallery_loader_config(shards: Sequence[str] | str, cfg: EvalConfig, backend: str = DEFAULT_BACKEND,
                          max_text_len: int = 40, tokenizer: str | None = None,
                          decode_timeout: float | None = None) -> LoaderConfig:
    """One pass over the shards in order; a worker per shard at most, so each sample is read exactly once.
    `decode_timeout` None keeps the loader's default."""
    urls = expand_shards(shards)
    timeout = {} if decode_timeout is None else {"decode_timeout": decode_timeout}
    return LoaderConfig(shards=urls, batch_size=cfg.batch_size, num_workers=min(cfg.num_workers, len(urls)),
                        resampled=False, shuffle_shards=False, shuffle_buffer=0, seed=0, backend=backend,
                        max_text_len=max_text_len, tokenizer=tokenizer, drop_last=False, **timeout)


@torch.no_grad()
def encode_gallery(encode_clips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], loader_cfg: LoaderConfig,
                   sampling, clip_ids: ClipIds, max_videos: int = 0, progress: bool = False) -> Gallery:
    """Embed every wanted clip of the shards once; a video id seen again (the same clip in two shards)
    keeps its first copy."""
    loader, dataset = make_loader(loader_cfg, "clip", sampling, rank=0, world_size=1, caption_fn=clip_ids)
    embeddings, ids, records = [], [], []
    seen: set[str] = set()
    duplicates = 0
    bar = tqdm(desc="encode gallery", unit="clip", disable=not progress, leave=False)
    for batch in loader:
        emb = encode_clips(batch["hr"], batch["lr"])
        for row, (key, meta, text) in enumerate(zip(batch["__key__"], batch["meta"], batch["text"])):
            vid = clip_ids.video_id(key, meta)
            if vid in seen:
                duplicates += 1
                continue
            seen.add(vid)
            ids.append(vid)
            embeddings.append(emb[row])
            records.append({"key": key, "clip_id": meta.get("clip_id"), "video_id": meta.get("video_id"),
                            "source": meta.get("source"), "span": meta.get("span"), "caption": text})
        bar.update(len(batch["__key__"]))
        if max_videos and len(ids) >= max_videos:
            break
    bar.close()
    if not ids:
        raise RuntimeError(f"no clip of {loader_cfg.shards[:3]}... matched; loader counts {dataset.counts()}")
    emb = torch.stack(embeddings)
    if max_videos:
        emb, ids, records = emb[:max_videos], ids[:max_videos], records[:max_videos]
    return Gallery(emb, ids, records, counts=dataset.counts(), duplicates=duplicates)


def annotations_from_gallery(gallery: Gallery, split: str = "test") -> RetrievalAnnotations:
    """Zero-shot on plain shards: each clip's own caption is its query."""
    return RetrievalAnnotations(dataset="shards", split=split, video_ids=list(gallery.video_ids),
                                captions=[r["caption"] for r in gallery.records],
                                caption_video=list(range(len(gallery.video_ids))))


def positive_lists(ann: RetrievalAnnotations, same_caption: bool = False
                   ) -> tuple[list[list[int]], list[list[int]]]:
    """(t2v, v2t): videos that answer each caption, captions that answer each video. With `same_caption`,
    captions of identical text are one description: each answers every video any of them describes."""
    t2v = [[v] for v in ann.caption_video]
    v2t: list[list[int]] = [[] for _ in ann.video_ids]
    for c, v in enumerate(ann.caption_video):
        v2t[v].append(c)
    if same_caption:
        groups: dict[str, list[int]] = {}
        for c, text in enumerate(ann.captions):
            groups.setdefault(" ".join(text.lower().split()), []).append(c)
        for members in groups.values():
            videos = sorted({ann.caption_video[c] for c in members})
            for c in members:
                t2v[c] = videos
            for v in videos:
                v2t[v] = sorted(set(v2t[v]) | set(members))
    return t2v, v2t


def _direction_ranks(queries: torch.Tensor, gallery: torch.Tensor, positives: list[list[int]], cfg: EvalConfig,
                     index_params: IndexParams | None = None) -> tuple[np.ndarray, dict]:
    index = build_index(gallery, cfg.index, index_params)
    return faiss_ranks(index, queries, gallery, positives, cfg.ties, k=cfg.k)


def _summary(ranks: np.ndarray, gallery_size: int) -> dict:
    out = metrics_from_ranks(ranks)
    out["queries"] = int(len(ranks))
    out["gallery"] = int(gallery_size)
    return out


def evaluate_embeddings(video_emb: Any, text_emb: Any, ann: RetrievalAnnotations, cfg: EvalConfig,
                        bank_emb: Any = None, bank_source: str | None = None
                        ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Metrics for t2v and v2t under plain scores (FAISS), plus dual softmax / query-bank normalisation when
    enabled. Returns (results, ranks) with results[method][direction] = {R@1, R@5, R@10, R@50, MdR, MnR, ...}
    and results["chance"][direction] for a random ordering."""
    if cfg.index not in INDEX_KINDS:
        raise ValueError(f"eval.index must be one of {INDEX_KINDS}, got {cfg.index!r}")
    video = torch.as_tensor(video_emb).float()
    text = torch.as_tensor(text_emb).float()
    if len(video) != len(ann.video_ids) or len(text) != len(ann.captions):
        raise ValueError(f"{len(video)} video / {len(text)} text embeddings for {len(ann.video_ids)} videos and "
                         f"{len(ann.captions)} captions")
    t2v_pos, v2t_pos = positive_lists(ann, cfg.same_caption_positive)
    pairs = {"t2v": (text, video, t2v_pos), "v2t": (video, text, v2t_pos)}
    # "_" keys stay out of results.json: positives per query, for the chance curve of the plot
    results: dict[str, Any] = {"chance": {}, "plain": {},
                               "_positive_counts": {"t2v": [len(p) for p in t2v_pos], "v2t": [len(p) for p in v2t_pos]}}
    ranks: dict[str, dict[str, np.ndarray]] = {"plain": {}}
    for direction, (queries, gallery, positives) in pairs.items():
        r, how = _direction_ranks(queries, gallery, positives, cfg)
        ranks["plain"][direction] = r
        results["plain"][direction] = {**_summary(r, len(gallery)), "index": cfg.index,
                                       "ranked_from_index": how["from_index"], "counted_exactly": how["fallback"]}
        results["chance"][direction] = chance_metrics(positives, len(gallery))
    if cfg.index != "flat":
        results["approximate_index"] = True
    if cfg.dual_softmax:
        ranks["dual_softmax"] = {}
        results["dual_softmax"] = {}
        for direction, (queries, gallery, positives) in pairs.items():
            block = dual_softmax_block(queries, gallery, cfg.dsl_inverse_temperature)
            r = chunked_ranks(block, len(queries), len(gallery), positives, cfg.ties)
            ranks["dual_softmax"][direction] = r
            results["dual_softmax"][direction] = {**_summary(r, len(gallery)),
                                                  "inverse_temperature": cfg.dsl_inverse_temperature}
    if cfg.qb_norm:
        if bank_emb is None or len(bank_emb) == 0:
            log.warning("qb_norm: no query bank was given; skipped")
        else:
            block, stats = qb_norm_block(text, video, bank_emb, cfg.qb_norm_beta)
            r = chunked_ranks(block, len(text), len(video), t2v_pos, cfg.ties)
            ranks["qb_norm"] = {"t2v": r}
            results["qb_norm"] = {"t2v": {**_summary(r, len(video)), **stats, "bank": bank_source}}
    return results, ranks


# ------------------------------------------------------------------------------------------------ reports

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")
METHOD_NAMES = {"plain": "plain", "dual_softmax": "dual softmax", "qb_norm": "QB-norm", "chance": "chance"}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| direction | scores | " + " | ".join(METRIC_COLUMNS) + " |",
             "|---|---|" + "---|" * len(METRIC_COLUMNS)]
    for direction in DIRECTIONS:
        for method in ("plain", "dual_softmax", "qb_norm", "chance"):
            row = results.get(method, {}).get(direction)
            if row is None:
                continue
            cells = [_fmt(row.get(c)) for c in METRIC_COLUMNS]
            lines.append(f"| {direction} | {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_recall_curves(ranks: dict[str, dict[str, np.ndarray]], results: dict[str, Any], path: str | Path,
                       title: str = "") -> Path:
    """Recall@K against K (log scale) per direction and scoring, with the chance curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, direction in zip(axes, DIRECTIONS):
        gallery = None
        for method, per_dir in ranks.items():
            r = per_dir.get(direction)
            if r is None:
                continue
            gallery = results[method][direction]["gallery"]
            ks = np.unique(np.geomspace(1, gallery, num=200).round().astype(int))
            ax.plot(ks, [100.0 * np.mean(r <= k) for k in ks], label=METHOD_NAMES[method])
        if gallery:
            counts = results.get("_positive_counts", {}).get(direction)
            ks = np.unique(np.geomspace(1, gallery, num=60).round().astype(int))
            if counts is not None:
                ax.plot(ks, [chance_recall(counts, gallery, int(k)) for k in ks], "k--", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_title(f"{'text to video' if direction == 't2v' else 'video to text'}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_ylabel("recall@K (%)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(out_dir: str | Path, results: dict[str, Any], ranks: dict[str, dict[str, np.ndarray]],
                 title: str = "", plot: bool = True) -> dict[str, str]:
    """results.json (everything), results.md (the table) and recall_at_k.png, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    atomic_write_json(out / "results.json", public)
    header = f"# {title}\n\n" if title else ""
    atomic_write_text(out / "results.md", header + markdown_table(results) + "\n")
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    if plot:
        paths["plot"] = str(plot_recall_curves(ranks, results, out / "recall_at_k.png", title))
    return paths


def read_bank_file(path: str | Path) -> list[str]:
    """Sentences for a query bank: a .txt file (one per line) or JSONL with a caption/text field."""
    path = Path(path)
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                record = json.loads(line)
                value = next((record[k] for k in ("caption", "text", "sentence") if k in record), None)
                if isinstance(value, list):
                    texts.extend(str(v) for v in value)
                elif value is not None:
                    texts.append(str(value))
            else:
                texts.append(line)
    return texts


def cap_bank(texts: list[str], size: int) -> list[str]:
    if size <= 0 or len(texts) <= size:
        return texts
    pick = np.linspace(0, len(texts) - 1, num=size).round().astype(int)
    return [texts[i] for i in pick]
