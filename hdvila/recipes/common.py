"""What the pretraining and retrieval recipes share: the export of the trained model as a pretrained folder,
and retrieval evaluation of a model on shards (zero-shot on plain shards when there are no annotations),
used both as the trainer's validation and by `hdvila retrieval eval`.

    export_pretrained(trainer, model.config, out / "pretrained", tokenizer, inference)   # collective
    results, ranks, ann = evaluate_on_shards(encoder, loader_cfg, eval_cfg)             # zero-shot
    metrics = validation_metrics(module, tokenizer, inference,
                                 lambda encoder: evaluate_on_shards(encoder, loader_cfg, eval_cfg))
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from data_tools.logs import get_logger
from data_tools.loading.pipeline import LoaderConfig
from data_tools.training import distributed as D

from ..encoder import InferenceConfig, VideoTextEncoder
from ..models import HDVILA, HDVILAConfig
from ..retrieval.annotations import RetrievalAnnotations
from ..retrieval.evaluate import ClipIds, EvalConfig, annotations_from_gallery, encode_gallery, evaluate_embeddings

log = get_logger(__name__)

METRIC_NAMES = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")
Evaluation = tuple[dict[str, Any], dict, RetrievalAnnotations]  # (results, ranks, annotations evaluated)


def export_pretrained(trainer: Any, config: HDVILAConfig, path: str | Path, tokenizer: str | Path | None,
                      inference: InferenceConfig) -> None:
    """Collective: gather the trained weights (ZeRO-3 safe) and, on rank 0, write a pretrained folder with
    the tokenizer and the test-time sampling (inference.yaml)."""
    from data_tools.training.checkpoint import consolidated_state_dict

    state = consolidated_state_dict(trainer.engine)  # collective under ZeRO-3
    if D.is_main() and state is not None:
        # a fresh fp32 copy: under ZeRO-3 the engine's module holds only this rank's partition, under bf16 bf16 weights
        export = HDVILA(config, load_weights=False)
        export.load_state_dict({k: v.float() for k, v in state.items()})
        VideoTextEncoder(export, tokenizer, inference).save_pretrained(path)
        log.info("exported %s", path)


def evaluate_on_shards(encoder: VideoTextEncoder, loader_cfg: LoaderConfig, eval_cfg: EvalConfig,
                       clip_ids: ClipIds | None = None, test_ann: RetrievalAnnotations | None = None,
                       bank: Callable[[], tuple[list[str], str]] | None = None, dataset: str = "shards",
                       progress: bool = False) -> Evaluation:
    """Encode the gallery of the shards in `loader_cfg` once and the queries once, and score them.

    Without `test_ann` this is zero-shot on plain shards: each clip's own caption is its query (with
    `eval_cfg.same_caption_positive`, clips of identical captions all answer it). With `test_ann`, the
    annotated videos found in the shards are evaluated in annotation order. `bank` (called only when
    `eval_cfg.qb_norm`) gives the query-bank sentences and where they came from."""
    started = time.perf_counter()
    clip_ids = clip_ids or ClipIds("key")
    gallery = encode_gallery(encoder.encode_clips, loader_cfg, encoder.sampling, clip_ids, eval_cfg.max_videos,
                             progress)
    if test_ann is None:
        ann = annotations_from_gallery(gallery)
    else:
        ann = test_ann.subset(gallery.video_ids)
        missing = len(test_ann.video_ids) - len(ann.video_ids)
        if missing and not eval_cfg.max_videos:
            log.warning("%d of %d annotated test videos are not in the shards; evaluating on the %d found",
                        missing, len(test_ann.video_ids), len(ann.video_ids))
        order = {vid: i for i, vid in enumerate(gallery.video_ids)}
        keep = [order[v] for v in ann.video_ids]  # gallery rows in annotation order
        gallery.embeddings = gallery.embeddings[keep]
        gallery.records = [gallery.records[i] for i in keep]
        gallery.video_ids = [gallery.video_ids[i] for i in keep]
    text_emb = encoder.encode_text(ann.captions, progress=progress)
    bank_emb, bank_source = None, None
    if eval_cfg.qb_norm and bank is not None:
        texts, bank_source = bank()
        bank_emb = encoder.encode_text(texts, progress=progress)
    results, ranks = evaluate_embeddings(gallery.embeddings, text_emb, ann, eval_cfg, bank_emb, bank_source)
    results["data"] = {"dataset": dataset, "videos": len(ann.video_ids), "captions": len(ann.captions),
                       "annotated_videos": len(test_ann.video_ids) if test_ann is not None else len(ann.video_ids),
                       "loader": gallery.counts, "duplicate_clips": gallery.duplicates,
                       "test_segments": encoder.inference.n_segments,
                       "seconds": round(time.perf_counter() - started, 1)}
    return results, ranks, ann


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """{"t2v_R@1": ..., "v2t_MdR": ..., "dsl_t2v_R@1": ..., "chance_t2v_R@1": ..., "clips": ...} for the
    trainer's val/ log."""
    out = {}
    for method, prefix in (("plain", ""), ("dual_softmax", "dsl_"), ("qb_norm", "qbnorm_")):
        for direction, values in results.get(method, {}).items():
            for name in METRIC_NAMES:
                out[f"{prefix}{direction}_{name}"] = float(values[name])
    out["chance_t2v_R@1"] = float(results["chance"]["t2v"]["R@1"])
    if "data" in results:
        out["clips"] = float(results["data"]["videos"])
    return out


@torch.no_grad()
def validation_metrics(model: nn.Module, tokenizer: str | Path | None, inference: InferenceConfig,
                       evaluate: Callable[[VideoTextEncoder], Evaluation]) -> dict[str, float]:
    """A training objective's `validate`: the (engine's) model as an encoder with this tokenizer and test-time
    sampling, evaluated by `evaluate`; the model's train/eval mode is restored afterwards."""
    module = getattr(model, "module", model)
    was_training = module.training
    device = next(module.parameters()).device
    try:
        results, _, _ = evaluate(VideoTextEncoder(module, tokenizer, inference, device))
    finally:
        module.train(was_training)
    return flat_metrics(results)
