"""HD-VILA pretraining recipes on the shared trainer: stage 1 (contrastive), stage 2 (MLM over frozen
stage-1 parts) and joint. `hdvila pretrain --config pretrain/<size> [key=value ...]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from data_tools.decoders import DEFAULT_BACKEND
from data_tools.loading.pipeline import LoaderConfig, make_loader
from data_tools.loading.sampling import ClipSamplingConfig
from data_tools.loading.synthetic import SyntheticClips
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.run import run_summary, start_run, step_generator
from data_tools.training.trainer import Trainer, move_to_device, zero_stage_of

from ..encoder import InferenceConfig
from ..models import HDVILA, create_model
from ..models.losses import NegativeQueue, all_gather_with_grad
from ..retrieval.evaluate import EvalConfig, gallery_loader_config
from .common import evaluate_on_shards, export_pretrained, validation_metrics

log = get_logger(__name__)

RECIPE_OBJECTIVES = {"stage1": ("vtc",), "stage2": ("mlm",), "joint": ("vtc", "mlm")}


@dataclass
class PretrainDataConfig:
    train_shards: list[str] = field(default_factory=list)
    val_shards: list[str] = field(default_factory=list)
    num_workers: int = 2
    resampled: bool = True
    epoch_samples: int = 0  # per rank; 0 = 1000 batches
    shuffle_buffer: int = 64
    backend: str = DEFAULT_BACKEND
    decode_timeout: float = 30.0
    n_segments: int = 2  # frames per segment, keyframe size and LR factor come from the model config
    sample_rate: int = 12
    canvas_short_side: int | None = None  # scale frames to this short side before cropping (None: native)
    hflip_prob: float = 0.0
    keyframes_on_iframes: bool = False  # segment centres on the 1 s I-frame grid: 1.42x less loader CPU
    max_text_len: int = 40
    tokenizer: str | None = None  # None = the committed default vocabulary
    val_segments: int = 2
    val_batch_size: int = 16
    val_max_clips: int = 2000
    # Train on one fixed batch of random pixels and tokens of the real shapes, no shards: measures the model
    # step alone (benchmarks/bench_gpu.py). Never for a model you keep.
    synthetic: bool = False


@dataclass
class PretrainConfig:
    model: str = "hdvila-small"  # registry name (hdvila/models/model_configs) or a pretrained folder
    model_overrides: dict = field(default_factory=dict)  # nested, e.g. {video: {drop_path: 0.0}}
    recipe: Literal["stage1", "stage2", "joint"] = "stage1"
    vtm: bool = False  # add video-text matching with hard negatives
    negative_queue: int = 0  # remember this many past (video, text) embedding pairs as extra vtc negatives
    # every clip played backwards is an extra vtc negative for the captions (costs one more temporal
    # Transformer pass, not a CNN pass): motion direction is what tells a clip from its reverse
    reversed_negatives: bool = False
    init_from: str | None = None  # a save_pretrained folder to start from (stage 2 starts from stage 1)
    output_dir: str = "runs/pretrain"
    export: bool = True  # save_pretrained(output_dir/pretrained) at the end
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def train_sampling(model_cfg, data: PretrainDataConfig) -> ClipSamplingConfig:
    """Training clips: random segments and flips. Validation samples as the exported model will
    (`inference_config`: val_segments evenly spaced, centre crop)."""
    return ClipSamplingConfig(n_segments=data.n_segments, num_frm=model_cfg.video.num_frm,
                              sample_rate=data.sample_rate, hr_size=tuple(model_cfg.video.hr_size),
                              lr_factor=model_cfg.video.lr_factor, hflip_prob=data.hflip_prob, random=True,
                              canvas_short_side=data.canvas_short_side,
                              keyframes_on_iframes=data.keyframes_on_iframes)


class PretrainObjective:
    """Losses for the recipe's objectives, plus zero-shot text-to-video validation on held-out clips (each
    clip's caption is a query; clips whose captions are identical are all correct answers, the scoring of
    `hdvila retrieval eval` on `dataset: shards`)."""

    def __init__(self, objectives: tuple[str, ...], temperature: float, seed: int,
                 val_loader: LoaderConfig | None = None, tokenizer: str | None = None,
                 inference: InferenceConfig | None = None, val_max_clips: int = 0, negative_queue: int = 0,
                 reversed_negatives: bool = False):
        self.objectives = objectives
        self.reversed_negatives = reversed_negatives
        self.queue = NegativeQueue(negative_queue) if negative_queue and "vtc" in objectives else None
        self.temperature = temperature
        self.seed = seed
        self.val_loader = val_loader
        self.tokenizer = tokenizer
        self.inference = inference or InferenceConfig()
        self.val_eval = EvalConfig(same_caption_positive=True, max_videos=val_max_clips, plot=False)

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        keep = ("hr", "lr", "input_ids", "attention_mask")
        prepared = {k: move_to_device(batch[k], device) for k in keep}
        if self.queue is not None:  # the clip keys tell which remembered entries are the same clip
            prepared["__key__"] = list(batch["__key__"])
        return prepared

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        # MLM masking draws from a generator keyed by (seed, step, rank): resumable and rank-distinct.
        module = getattr(model, "module", model)
        outputs = model(batch, self.objectives, generator=step_generator(self.seed, step),
                        reversed_negatives=self.reversed_negatives)
        if "vtc" not in self.objectives:  # vtm also returns the embeddings; score only what was asked for
            outputs.pop("video_emb", None)
            outputs.pop("text_emb", None)
        if self.queue is None:
            return module.losses(outputs, self.temperature)
        # rows of the contrastive loss are the gathered batch: the keys and the remembered entries follow it
        keys = [k for rank_keys in D.all_gather_objects(batch["__key__"]) for k in rank_keys]
        result = module.losses(outputs, self.temperature, self.queue.negatives(keys, outputs["video_emb"].device))
        self.queue.push(all_gather_with_grad(outputs["video_emb"]), all_gather_with_grad(outputs["text_emb"]), keys)
        return result

    def state_dict(self) -> dict:
        return {"negative_queue": self.queue.state_dict()} if self.queue is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.queue is not None and "negative_queue" in state:
            self.queue.load_state_dict(state["negative_queue"])

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        return validation_metrics(model, self.tokenizer, self.inference, lambda encoder: evaluate_on_shards(
            encoder, self.val_loader, self.val_eval, progress=D.is_main()))


def inference_config(data: PretrainDataConfig) -> InferenceConfig:
    """How the exported model samples videos and texts at test time: as validation did."""
    return InferenceConfig(n_segments=data.val_segments, sample_rate=data.sample_rate,
                           canvas_short_side=data.canvas_short_side, max_text_len=data.max_text_len,
                           backend=data.backend)


def build_model(cfg: PretrainConfig) -> HDVILA:
    if cfg.init_from:
        model = HDVILA.from_pretrained(cfg.init_from)
    elif Path(cfg.model).is_dir():
        model = HDVILA.from_pretrained(cfg.model)
    else:
        model = create_model(cfg.model, **{**cfg.model_overrides, **({"vtm": True} if cfg.vtm else {})})
    if cfg.vtm and not model.config.vtm:
        raise ValueError(f"vtm: true needs a matching head, and {cfg.init_from or cfg.model} was saved without one")
    if cfg.recipe == "stage2":
        model.freeze_stage1()
    if model.config.video.fold_norm and zero_stage_of(cfg.train) == 3:
        # ZeRO-3 gathers a module's parameters when that module runs; a folded convolution reads its
        # BatchNorm's parameters before the BatchNorm runs
        raise ValueError("video.fold_norm cannot run under ZeRO-3; use zero0-2 or fold_norm: false")
    return model


def make_loaders(cfg: PretrainConfig, model: HDVILA) -> tuple[Any, Any, LoaderConfig | None]:
    """The training loader and dataset, and the held-out gallery's loader config (None without val_shards)."""
    data = cfg.data
    epoch_samples = data.epoch_samples or 1000 * cfg.train.batch_size
    if data.synthetic:
        source = SyntheticClips(cfg.train.batch_size, train_sampling(model.config, data), data.max_text_len,
                                model.config.text.vocab_size, max(1, epoch_samples // cfg.train.batch_size),
                                seed=cfg.train.seed, special_ids=model.config.special_ids)
        return source, source, None
    if not data.train_shards:
        raise ValueError("data.train_shards is empty: point it at shards built by `hdvila data build`")
    train_cfg = LoaderConfig(shards=data.train_shards, batch_size=cfg.train.batch_size, num_workers=data.num_workers,
                             resampled=data.resampled, epoch_samples=epoch_samples if data.resampled else 0,
                             shuffle_buffer=data.shuffle_buffer, seed=cfg.train.seed, backend=data.backend,
                             decode_timeout=data.decode_timeout, max_text_len=data.max_text_len,
                             tokenizer=data.tokenizer)
    loader, dataset = make_loader(train_cfg, "clip", train_sampling(model.config, data))
    val_loader = None
    if data.val_shards:
        # one pass in shard order, in the main process; every rank scores the whole held-out set, so ZeRO-3
        # ranks run their forwards in lockstep
        val_loader = gallery_loader_config(data.val_shards, EvalConfig(batch_size=data.val_batch_size, num_workers=0),
                                           data.backend, data.max_text_len, data.tokenizer, data.decode_timeout)
    return loader, dataset, val_loader


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> dict[str, Any] | None:
    """Build the model and data, run the shared trainer, export. Returns the trainer's summary."""
    objectives = RECIPE_OBJECTIVES[cfg.recipe] + (("vtm",) if cfg.vtm else ())
    if cfg.reversed_negatives and "vtc" not in objectives:
        raise ValueError(f"reversed_negatives are contrastive negatives; recipe {cfg.recipe!r} has no vtc")
    out = start_run(cfg)
    model = build_model(cfg)
    loader, dataset, val_loader = make_loaders(cfg, model)
    objective = PretrainObjective(objectives, model.config.temperature, cfg.train.seed, val_loader,
                                  cfg.data.tokenizer, inference_config(cfg.data), cfg.data.val_max_clips,
                                  cfg.negative_queue, cfg.reversed_negatives)
    if D.is_main():
        log.info("model %s: %.1fM parameters (%.1fM trainable); recipe %s -> %s", cfg.model,
                 model.num_parameters("full") / 1e6, model.num_parameters("full", trainable_only=True) / 1e6,
                 cfg.recipe, "+".join(objectives))
    trainer = Trainer(cfg.train, cfg.optim, model, objective, loader, out, epoch_setter=dataset.set_epoch,
                      data_state=dataset, resume=resume)
    summary = trainer.fit()
    if cfg.export:
        export_pretrained(trainer, model.config, out / "pretrained", cfg.data.tokenizer, inference_config(cfg.data))
    D.barrier()
    return run_summary(summary, cfg)
