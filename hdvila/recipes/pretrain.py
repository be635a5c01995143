"""HD-VILA pretraining recipes on the shared trainer: stage 1 (contrastive), stage 2 (MLM over frozen
stage-1 parts) and joint. `hdvila pretrain --config configs/pretrain/<size>.yaml [key=value ...]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from data_tools.loading.pipeline import LoaderConfig, make_loader
from data_tools.loading.sampling import ClipSamplingConfig
from data_tools.logs import get_logger

from ..encoder import INFERENCE_FILE, InferenceConfig, inference_yaml
from ..models import HDVILA, create_model
from ..retrieval.annotations import RetrievalAnnotations
from ..retrieval.evaluate import EvalConfig, evaluate_embeddings
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.trainer import Trainer, move_to_device
from data_tools.training.run import run_summary, start_run

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
    backend: str = "decord"
    decode_timeout: float = 30.0
    n_segments: int = 2  # frames per segment, keyframe size and LR factor come from the model config
    sample_rate: int = 12
    canvas_short_side: int | None = None  # scale frames to this short side before cropping (None: native)
    hflip_prob: float = 0.0
    max_text_len: int = 40
    tokenizer: str | None = None  # None = the committed default vocabulary
    val_segments: int = 2
    val_batch_size: int = 16
    val_max_clips: int = 2000


@dataclass
class PretrainConfig:
    model: str = "hdvila-small"  # registry name (hdvila/models/model_configs) or a pretrained folder
    model_overrides: dict = field(default_factory=dict)  # nested, e.g. {video: {drop_path: 0.0}}
    recipe: Literal["stage1", "stage2", "joint"] = "stage1"
    vtm: bool = False  # add video-text matching with hard negatives
    init_from: str | None = None  # a save_pretrained folder to start from (stage 2 starts from stage 1)
    output_dir: str = "runs/pretrain"
    export: bool = True  # save_pretrained(output_dir/pretrained) at the end
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def sampling_config(model_cfg, data: PretrainDataConfig, train: bool) -> ClipSamplingConfig:
    return ClipSamplingConfig(
        n_segments=data.n_segments if train else data.val_segments,
        num_frm=model_cfg.video.num_frm,
        sample_rate=data.sample_rate,
        hr_size=tuple(model_cfg.video.hr_size),
        lr_factor=model_cfg.video.lr_factor,
        hflip_prob=data.hflip_prob if train else 0.0,
        random=train,
        canvas_short_side=data.canvas_short_side,
    )


class PretrainObjective:
    """Losses for the recipe's objectives, plus zero-shot text-to-video validation on held-out clips."""

    def __init__(self, objectives: tuple[str, ...], temperature: float, seed: int, val_loader=None,
                 val_max_clips: int | None = None):
        self.objectives = objectives
        self.temperature = temperature
        self.seed = seed
        self.val_loader = val_loader
        self.val_max_clips = val_max_clips

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        keep = ("hr", "lr", "input_ids", "attention_mask")
        return {k: move_to_device(batch[k], device) for k in keep}

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        # MLM masking draws from a generator keyed by (seed, step, rank): resumable and rank-distinct.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + D.rank())
        module = getattr(model, "module", model)
        outputs = model(batch, self.objectives, generator=generator)
        if "vtc" not in self.objectives:  # vtm also returns the embeddings; score only what was asked for
            outputs.pop("video_emb", None)
            outputs.pop("text_emb", None)
        return module.losses(outputs, self.temperature)

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        return evaluate_retrieval(getattr(model, "module", model), self.val_loader, progress=D.is_main(),
                                  max_clips=self.val_max_clips)


@torch.no_grad()
def encode_loader(model: HDVILA, loader, progress: bool = False, max_clips: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Video and text embeddings of every clip the loader yields (in order), with keys and captions."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    videos, texts, keys, captions = [], [], [], []
    try:
        for batch in tqdm(loader, desc="encode", unit="batch", disable=not progress, leave=False):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                v, _ = model.encode_video(batch["hr"].to(device), batch["lr"].to(device))
                t, _ = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            videos.append(v.float().cpu())
            texts.append(t.float().cpu())
            keys.extend(batch["__key__"])
            captions.extend(batch["text"])
            if max_clips and len(keys) >= max_clips:
                break
    finally:
        model.train(was_training)
    return torch.cat(videos), torch.cat(texts), keys, captions


def evaluate_retrieval(model: HDVILA, loader, progress: bool = False, max_clips: int | None = None
                       ) -> dict[str, float]:
    """Zero-shot retrieval on held-out clips: each clip's caption is a query, and clips whose captions are
    identical are all correct answers (the same scoring as `hdvila retrieval eval` on `dataset: shards`)."""
    video, text, keys, captions = encode_loader(model, loader, progress, max_clips)
    ann = RetrievalAnnotations(dataset="shards", split="val", video_ids=list(keys), captions=list(captions),
                               caption_video=list(range(len(keys))))
    results, _ = evaluate_embeddings(video, text, ann, EvalConfig(same_caption_positive=True))
    out = {f"{d}_{k}": float(v) for d in ("t2v", "v2t") for k, v in results["plain"][d].items()
           if k in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")}
    out.update({"clips": float(len(keys)), "chance_R@1": float(results["chance"]["t2v"]["R@1"])})
    return out


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
    return model


def make_loaders(cfg: PretrainConfig, model: HDVILA):
    data = cfg.data
    if not data.train_shards:
        raise ValueError("data.train_shards is empty: point it at shards built by `hdvila data build`")
    epoch_samples = data.epoch_samples or 1000 * cfg.train.batch_size
    train_cfg = LoaderConfig(shards=data.train_shards, batch_size=cfg.train.batch_size, num_workers=data.num_workers,
                             resampled=data.resampled, epoch_samples=epoch_samples if data.resampled else 0,
                             shuffle_buffer=data.shuffle_buffer, seed=cfg.train.seed, backend=data.backend,
                             decode_timeout=data.decode_timeout, max_text_len=data.max_text_len,
                             tokenizer=data.tokenizer)
    loader, dataset = make_loader(train_cfg, "clip", sampling_config(model.config, data, True))
    val_loader = None
    if data.val_shards:
        val_cfg = LoaderConfig(shards=data.val_shards, batch_size=data.val_batch_size, num_workers=0,
                               resampled=False, shuffle_shards=False, shuffle_buffer=0, seed=0,
                               backend=data.backend, decode_timeout=data.decode_timeout,
                               max_text_len=data.max_text_len, tokenizer=data.tokenizer, drop_last=False)
        # every rank scores the whole held-out set, so ZeRO-3 ranks run their forwards in lockstep
        val_loader, _ = make_loader(val_cfg, "clip", sampling_config(model.config, data, False), rank=0,
                                    world_size=1)
    return loader, dataset, val_loader


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> dict[str, Any] | None:
    """Build the model and data, run the shared trainer, export. Returns the trainer's summary."""
    out = start_run(cfg)
    model = build_model(cfg)
    objectives = RECIPE_OBJECTIVES[cfg.recipe] + (("vtm",) if cfg.vtm else ())
    loader, dataset, val_loader = make_loaders(cfg, model)
    objective = PretrainObjective(objectives, model.config.temperature, cfg.train.seed, val_loader,
                                  cfg.data.val_max_clips)
    if D.is_main():
        log.info("model %s: %.1fM parameters (%.1fM trainable); recipe %s -> %s", cfg.model,
                 model.num_parameters("full") / 1e6, model.num_parameters("full", trainable_only=True) / 1e6,
                 cfg.recipe, "+".join(objectives))
    trainer = Trainer(cfg.train, cfg.optim, model, objective, loader, out, epoch_setter=dataset.set_epoch,
                      data_state=dataset, resume=resume)
    summary = trainer.fit()
    if cfg.export:
        from data_tools.training.checkpoint import consolidated_state_dict

        state = consolidated_state_dict(trainer.engine)  # collective under ZeRO-3
        if D.is_main() and state is not None:
            # a fresh fp32 copy: under ZeRO-3 `model` holds only this rank's partition, under bf16 bf16 weights
            export = HDVILA(model.config, load_weights=False)
            export.load_state_dict({k: v.float() for k, v in state.items()})
            export.save_pretrained(out / "pretrained", tokenizer=cfg.data.tokenizer,
                                   extra_files={INFERENCE_FILE: inference_yaml(inference_config(cfg.data))})
            log.info("exported %s", out / "pretrained")
    D.barrier()
    return run_summary(summary, cfg)
