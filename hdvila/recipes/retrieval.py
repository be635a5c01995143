"""Text-to-video retrieval: contrastive finetuning on the shared trainer, and FAISS evaluation.

    hdvila retrieval finetune --config retrieval/msrvtt [key=value ...]
    hdvila retrieval eval --config retrieval/msrvtt --model runs/msrvtt/pretrained

Videos come from shards built by `hdvila data build` (for a public dataset, from the manifest that
`hdvila retrieval manifest` writes, so each clip carries the annotation's video id in `clip_id`); captions
come from the annotation files. `data.dataset: shards` evaluates on plain shards instead, each clip's own
caption being its query (zero-shot on a held-out split).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from data_tools.decoders import DEFAULT_BACKEND
from data_tools.loading.pipeline import LoaderConfig, make_loader
from data_tools.loading.sampling import ClipSamplingConfig
from data_tools.logs import get_logger
from data_tools.shard_summary import iter_shard_captions
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.run import run_summary, start_run
from data_tools.training.trainer import Trainer, move_to_device

from ..encoder import InferenceConfig, VideoTextEncoder
from ..models import HDVILA, create_model
from ..retrieval.annotations import RetrievalAnnotations, read_annotations
from ..retrieval.evaluate import ClipIds, EvalConfig, cap_bank, gallery_loader_config, read_bank_file, write_report
from .common import Evaluation, evaluate_on_shards, export_pretrained, validation_metrics

log = get_logger(__name__)


@dataclass
class RetrievalDataConfig:
    dataset: str = "msrvtt"  # msrvtt | didemo | activitynet | lsmdc | jsonl | shards (captions from the shards)
    train_annotations: Optional[str] = None
    train_options: dict = field(default_factory=dict)  # reader options, e.g. {video_list: MSRVTT_train.9k.csv}
    test_annotations: Optional[str] = None
    test_options: dict = field(default_factory=dict)
    paragraph: Optional[bool] = None  # None: the dataset's convention (DiDeMo, ActivityNet: paragraph queries)
    train_shards: list[str] = field(default_factory=list)
    test_shards: list[str] = field(default_factory=list)
    id_field: str = "clip_id"  # shard metadata field holding the annotation's video id ("key": the sample key)
    num_workers: int = 2
    backend: str = DEFAULT_BACKEND
    decode_timeout: float = 30.0
    shuffle_buffer: int = 64
    epoch_samples: int = 0  # per rank per epoch; 0 = one pass over the training captions
    num_frm: Optional[int] = None  # frames per segment; None = the model's (time embeddings interpolate)
    train_segments: int = 2
    test_segments: int = 4
    sample_rate: int = 4
    canvas_short_side: Optional[int] = None
    hflip_prob: float = 0.5
    max_text_len: int = 40
    tokenizer: Optional[str] = None  # None: the pretrained folder's own tokenizer


@dataclass
class RetrievalConfig:
    model: str = "runs/pretrain-small/pretrained"  # a pretrained folder (or a registry name: random init)
    output_dir: str = "runs/retrieval"
    temperature: float = 0.08
    export: bool = True
    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def inference_config(cfg: RetrievalConfig) -> InferenceConfig:
    data = cfg.data
    return InferenceConfig(n_segments=data.test_segments, num_frm=data.num_frm, sample_rate=data.sample_rate,
                           canvas_short_side=data.canvas_short_side, max_text_len=data.max_text_len,
                           backend=data.backend)


def load_encoder(cfg: RetrievalConfig, model: HDVILA | None = None, device: str | torch.device = "cpu"
                 ) -> VideoTextEncoder:
    """The model (given, or from cfg.model) with this config's tokenizer and test-time sampling."""
    if model is None:
        if not Path(cfg.model).is_dir():
            raise FileNotFoundError(f"model {cfg.model!r} is not a pretrained folder")
        model = HDVILA.from_pretrained(cfg.model)
    return VideoTextEncoder(model, tokenizer_for(cfg), inference_config(cfg), device)


def tokenizer_for(cfg: RetrievalConfig) -> str | None:
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    own = Path(cfg.model) / "tokenizer"
    return str(own) if own.is_dir() else None


def read_split(cfg: RetrievalDataConfig, which: str) -> RetrievalAnnotations | None:
    """The train or test annotations (None for `dataset: shards`)."""
    if cfg.dataset == "shards":
        return None
    path = cfg.train_annotations if which == "train" else cfg.test_annotations
    if not path:
        raise ValueError(f"data.{which}_annotations is not set (dataset {cfg.dataset})")
    options = cfg.train_options if which == "train" else cfg.test_options
    return read_annotations(cfg.dataset, path, split=which, paragraph=cfg.paragraph, **options)


class AnnotationCaptions(ClipIds):
    """Loader caption hook for training: a caption of the clip's video drawn per (epoch, clip), or skip the
    clip when its video has no annotation."""

    def __init__(self, ann: RetrievalAnnotations, field: str):
        super().__init__(field, ann.video_ids)
        self.by_video: dict[str, list[str]] = {}
        for caption, v in zip(ann.captions, ann.caption_video):
            self.by_video.setdefault(ann.video_ids[v], []).append(caption)

    def __call__(self, key: str, meta: dict, text: str, seed: int) -> str | None:
        captions = self.by_video.get(self.video_id(key, meta))
        return captions[seed % len(captions)] if captions else None


# ----------------------------------------------------------------------------------------------- evaluation

class RetrievalEvaluator:
    """Encodes the test gallery and queries with a model and scores them (used by `eval` and, every
    train.val_every steps, by finetuning)."""

    def __init__(self, cfg: RetrievalConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.test_ann = read_split(cfg.data, "test")
        if not cfg.data.test_shards:
            raise ValueError("data.test_shards is empty: point it at shards built by `hdvila data build`")
        field_name = cfg.data.id_field if self.test_ann is not None else "key"
        self.clip_ids = ClipIds(field_name, self.test_ann.video_ids if self.test_ann is not None else None)
        self.loader_cfg = gallery_loader_config(cfg.data.test_shards, cfg.eval, cfg.data.backend,
                                                cfg.data.max_text_len, None, cfg.data.decode_timeout)
        self._bank_texts: list[str] | None = None
        self._bank_source: str | None = None

    def bank(self) -> tuple[list[str], str]:
        """Query-bank sentences for QB-norm: training captions by default, never the test queries."""
        if self._bank_texts is None:
            source = self.cfg.eval.qb_norm_bank
            if source == "train":
                train_ann = read_split(self.cfg.data, "train") if self.cfg.data.dataset != "shards" else None
                if train_ann is not None:
                    texts = list(train_ann.captions)
                elif self.cfg.data.train_shards:
                    texts = [text for _, _, text in iter_shard_captions(self.cfg.data.train_shards)]
                else:
                    raise ValueError("eval.qb_norm_bank: train needs data.train_annotations or data.train_shards")
                source = f"training captions ({self.cfg.data.dataset})"
            else:
                texts = read_bank_file(source)
            self._bank_texts = cap_bank(texts, self.cfg.eval.qb_norm_bank_size)
            self._bank_source = f"{source}, {len(self._bank_texts)} sentences"
        return self._bank_texts, self._bank_source

    @torch.no_grad()
    def __call__(self, encoder: VideoTextEncoder) -> Evaluation:
        return evaluate_on_shards(encoder, self.loader_cfg, self.cfg.eval, self.clip_ids, self.test_ann, self.bank,
                                  self.cfg.data.dataset, self.progress)


def run_eval(cfg: RetrievalConfig, out_dir: str | Path | None = None, progress: bool = True,
             encoder: VideoTextEncoder | None = None) -> dict[str, Any]:
    """Evaluate cfg.model on the test split; writes results.json/.md and recall_at_k.png into out_dir."""
    encoder = encoder or load_encoder(cfg)
    results, ranks, ann = RetrievalEvaluator(cfg, progress)(encoder)
    results["model"] = str(cfg.model)
    out = Path(out_dir or Path(cfg.output_dir) / "eval")
    title = f"{cfg.data.dataset} retrieval: {len(ann.video_ids)} videos, {len(ann.captions)} queries"
    results["files"] = write_report(out, results, ranks, title, plot=cfg.eval.plot)
    return results


# ----------------------------------------------------------------------------------------------- finetuning

class RetrievalObjective:
    """Symmetric InfoNCE between video and text embeddings (negatives gathered over ranks), plus retrieval
    evaluation on the test split as validation."""

    def __init__(self, temperature: float, evaluator: RetrievalEvaluator | None, cfg: RetrievalConfig):
        self.temperature = temperature
        self.evaluator = evaluator
        self.cfg = cfg

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        return {k: move_to_device(batch[k], device) for k in ("hr", "lr", "input_ids", "attention_mask")}

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        outputs = model(batch, ("vtc",))
        return getattr(model, "module", model).losses(outputs, self.temperature)

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        return validation_metrics(model, tokenizer_for(self.cfg), inference_config(self.cfg), self.evaluator)


def build_model(cfg: RetrievalConfig) -> HDVILA:
    if Path(cfg.model).is_dir():
        return HDVILA.from_pretrained(cfg.model)
    log.warning("model %r is not a pretrained folder: finetuning from random initialisation", cfg.model)
    return create_model(cfg.model)


def train_sampling(model: HDVILA, data: RetrievalDataConfig) -> ClipSamplingConfig:
    """Training clips: random segments and flips (evaluation samples as `inference_config` says)."""
    return ClipSamplingConfig(n_segments=data.train_segments, num_frm=data.num_frm or model.config.video.num_frm,
                              sample_rate=data.sample_rate, hr_size=tuple(model.config.video.hr_size),
                              lr_factor=model.config.video.lr_factor, hflip_prob=data.hflip_prob, random=True,
                              canvas_short_side=data.canvas_short_side)


def run_finetune(cfg: RetrievalConfig, resume: bool = False) -> dict[str, Any] | None:
    """Contrastive finetuning from a pretrained folder; exports output_dir/pretrained and evaluates it."""
    out = start_run(cfg)
    data = cfg.data
    model = build_model(cfg)
    if data.dataset == "shards":
        raise ValueError("finetuning needs annotations: set data.dataset and data.train_annotations")
    if not data.train_shards:
        raise ValueError("data.train_shards is empty: point it at shards built by `hdvila data build`")
    train_ann = read_split(data, "train")
    epoch_samples = data.epoch_samples or len(train_ann.captions) // max(1, D.world_size())
    loader_cfg = LoaderConfig(shards=data.train_shards, batch_size=cfg.train.batch_size, num_workers=data.num_workers,
                              resampled=True, epoch_samples=max(epoch_samples, cfg.train.batch_size),
                              shuffle_buffer=data.shuffle_buffer, seed=cfg.train.seed, backend=data.backend,
                              decode_timeout=data.decode_timeout, max_text_len=data.max_text_len,
                              tokenizer=tokenizer_for(cfg))
    loader, dataset = make_loader(loader_cfg, "clip", train_sampling(model, data),
                                  caption_fn=AnnotationCaptions(train_ann, data.id_field))
    evaluator = RetrievalEvaluator(cfg, progress=D.is_main()) if cfg.train.val_every > 0 and data.test_shards else None
    if D.is_main():
        log.info("finetuning %s on %s: %d training videos, %d captions; temperature %.3f", cfg.model, data.dataset,
                 len(train_ann.video_ids), len(train_ann.captions), cfg.temperature)
    trainer = Trainer(cfg.train, cfg.optim, model, RetrievalObjective(cfg.temperature, evaluator, cfg), loader,
                      out, epoch_setter=dataset.set_epoch, data_state=dataset, resume=resume)
    summary = trainer.fit()
    if cfg.export:
        export_pretrained(trainer, model.config, out / "pretrained", tokenizer_for(cfg), inference_config(cfg))
    D.barrier()
    summary = run_summary(summary, cfg)
    if summary is not None and cfg.export and data.test_shards and D.is_main():
        final = run_eval(dataclasses.replace(cfg, model=str(out / "pretrained")), out / "eval",
                         progress=cfg.train.progress)
        summary["eval"] = {k: final[k] for k in ("plain", "chance", "files") if k in final}
    return summary
