"""Diffusion training on the shared trainer, with data from the shared data layer.

    hdvila diffusion train --config configs/diffusion/digits-dit.yaml [key=value ...]

One step: draw λ from the training schedule, noise the images, predict the target (ε, x0 or v), and take the
per-sample MSE times the loss weight of λ (constant, Min-SNR-γ, ...). An EMA of the weights is kept in the
objective (saved in checkpoints); validation samples with the EMA model and scores the samples against
held-out real images (Fréchet distance in a project-trained classifier's features, sliced Wasserstein).
The run folder follows the pretraining convention: config.yaml, metrics.jsonl, tensorboard/, checkpoints/,
samples/ (PNG grids) and model/ (the exported EMA weights + config).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from data_tools.config import dump_config, from_dict, load_config
from data_tools.images import ArrayBatches, frames_to_images
from data_tools.files import atomic_directory, atomic_write_json
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.trainer import Trainer
from data_tools.training.run import run_summary, start_run

from .models import DenoiserConfig, create_model, get_model_config
from .process import add_noise, target_of
from .schedules import get_schedule
from .weighting import loss_weight

log = get_logger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    params: dict = field(default_factory=dict)  # e.g. {mu: 0.0, b: 0.5} for laplace; logsnr_min/max


@dataclass
class WeightingConfig:
    name: str = "constant"  # constant | min_snr | soft_min_snr | snr | trunc_snr | importance
    params: dict = field(default_factory=dict)  # {gamma: 5}; importance: {target_schedule: {name, params}}


@dataclass
class SamplerConfig:
    name: str = "ddim"  # ddim | euler | heun
    steps: int = 50
    grid: str = "cosine"  # cosine | linear | schedule (quantiles of the training density)
    logsnr_min: float = -10.0
    logsnr_max: float = 10.0
    eta: float = 0.0
    guidance: float = 1.0  # classifier-free guidance scale (class-conditional models)
    clip_x0: Optional[list[float]] = field(default_factory=lambda: [-1.0, 1.0])


@dataclass
class DiffusionDataConfig:
    kind: str = "array"  # array (a dataset shipped in a package) | folder (image files) | video (frames from shards)
    name: str = "digits"  # array datasets: digits | mnist5k
    size: Optional[int] = None  # resize (array, folder) or frame size (video)
    folder: Optional[str] = None
    shards: list[str] = field(default_factory=list)
    channels: int = 1
    num_workers: int = 0
    backend: str = "decord"
    epoch_samples: int = 2048  # video: frames per rank per epoch (resampled shards)
    split_seed: int = 0  # array: the train/test split; fixed across training seeds so every run sees the same split


@dataclass
class EvalConfig:
    samples: int = 1000  # generated samples per evaluation
    seed: int = 1234  # the same noise every evaluation, so curves compare checkpoints, not draws
    grid_images: int = 64
    classifier_cache: str = "runs/diffusion/feature-classifiers"


@dataclass
class DiffusionConfig:
    model: str = "dit-digits"
    model_overrides: dict = field(default_factory=dict)
    target: str = "eps"  # eps | x0 | v: what the network predicts
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    class_conditional: bool = False
    label_dropout: float = 0.1  # labels replaced by the null class, for classifier-free guidance
    ema_decay: float = 0.995
    output_dir: str = "runs/diffusion"
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


# ------------------------------------------------------------------------------------------------ data

def make_data(cfg: DiffusionConfig):
    """(training batches, epoch setter, data state, held-out reference images [N, C, H, W] or None)."""
    data = cfg.data
    rank, world = D.rank(), D.world_size()
    if data.kind == "array":
        from data_tools.image_datasets import load_image_dataset

        images, labels = load_image_dataset(data.name, split="train", size=data.size, seed=data.split_seed)
        reference, _ = load_image_dataset(data.name, split="test", size=data.size, seed=data.split_seed)
        batches = ArrayBatches(images, labels, cfg.train.batch_size, cfg.train.seed, rank, world)
        return batches, batches.set_epoch, None, reference
    if data.kind == "folder":
        from data_tools.images import ImageFolderDataset

        if not data.folder:
            raise ValueError("data.kind: folder needs data.folder")
        dataset = ImageFolderDataset(data.folder, data.size or cfg_image_size(cfg), data.channels)
        images = dataset.tensors()
        labels = torch.zeros(len(images), dtype=torch.long)
        batches = ArrayBatches(images, labels, cfg.train.batch_size, cfg.train.seed, rank, world)
        return batches, batches.set_epoch, None, images
    if data.kind == "video":
        from data_tools.images import video_frame_loader

        loader, dataset = video_frame_loader(data.shards, data.size or cfg_image_size(cfg), cfg.train.batch_size,
                                             num_workers=data.num_workers, epoch_samples=data.epoch_samples,
                                             seed=cfg.train.seed, backend=data.backend)
        return loader, dataset.set_epoch, dataset, None
    raise ValueError(f"data.kind must be array, folder or video, got {data.kind!r}")


def cfg_image_size(cfg: DiffusionConfig) -> int:
    return get_model_config(cfg.model, **cfg.model_overrides).image_size


# ------------------------------------------------------------------------------------------------ objective

class DiffusionObjective:
    """Weighted denoising loss, EMA after every optimizer step, sample-based validation."""

    def __init__(self, cfg: DiffusionConfig, model: nn.Module, reference: torch.Tensor | None, output_dir: Path):
        self.cfg = cfg
        self.schedule = get_schedule(cfg.schedule.name, **cfg.schedule.params)
        self.weighting = cfg.weighting
        self.weight_params = self._weight_params()  # built once: importance weights hold schedule objects
        self.ema = torch.optim.swa_utils.AveragedModel(
            copy.deepcopy(model), multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay))
        self.ema.requires_grad_(False)
        self.reference = reference
        self.output_dir = output_dir
        self.num_classes = model.config.num_classes
        self._classifier = None

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        if "images" in batch:
            images, labels = batch["images"], batch["labels"]
        else:  # frames from video shards
            images = frames_to_images(batch["frames"])
            labels = torch.zeros(len(images), dtype=torch.long)
        return {"images": images.to(device), "labels": labels.to(device)}

    def weights(self, logsnr: torch.Tensor) -> torch.Tensor:
        return loss_weight(self.weighting.name, logsnr, self.cfg.target, **self.weight_params)

    def _weight_params(self) -> dict:
        params = dict(self.weighting.params)
        if self.weighting.name == "importance":
            target = params.pop("target_schedule")
            params = {"sample_schedule": self.schedule,
                      "target_schedule": get_schedule(target["name"], **target.get("params", {})), **params}
        return params

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        x0, labels = batch["images"], batch["labels"]
        b = x0.shape[0]
        # noise levels and noise from a generator keyed by (seed, step, rank): resumable, rank-distinct
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step * 1009 + D.rank())
        logsnr = self.schedule.sample_logsnr(b, generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = add_noise(x0, noise, logsnr)
        if self.cfg.class_conditional and self.num_classes > 0:
            drop = torch.rand(b, generator=generator).to(x0.device) < self.cfg.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        else:
            labels = None
        prediction = model(x_t, logsnr, labels)
        target = target_of(x0, noise, logsnr, self.cfg.target)
        mse = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        weight = self.weights(logsnr).float()
        return {"loss": (weight * mse).mean(), "mse": mse.mean().detach(), "weight": weight.mean().detach()}

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        self.ema.update_parameters(getattr(model, "module", model))

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.reference is None:
            samples = generate(self.ema.module, self.cfg, self.cfg.eval.grid_images, self.cfg.eval.seed)
            write_grid(samples, self.output_dir / "samples" / f"step{step:07d}.png")
            return {}
        from .metrics import get_feature_classifier, sample_quality

        if self._classifier is None:
            self._classifier = get_feature_classifier(self.cfg.data.name, self.cfg.eval.classifier_cache,
                                                      size=self.cfg.data.size, seed=self.cfg.data.split_seed)
        samples = generate(self.ema.module, self.cfg, self.cfg.eval.samples, self.cfg.eval.seed)
        if D.is_main():
            write_grid(samples[:self.cfg.eval.grid_images], self.output_dir / "samples" / f"step{step:07d}.png")
        quality = sample_quality(samples, self.reference, self._classifier)
        return {k: float(v) for k, v in quality.items() if isinstance(v, (int, float))}


# ------------------------------------------------------------------------------------------------ sampling

def model_fn_for(model: nn.Module, guidance: float, num_classes: int):
    """(x, logsnr, cond) -> prediction, with classifier-free guidance when the model is class-conditional."""
    def fn(x, logsnr, cond):
        return model(x, logsnr, cond)

    if num_classes > 0 and guidance != 1.0:
        from .samplers import guided

        return guided(fn, guidance, null_cond=num_classes)
    return fn


@torch.no_grad()
def generate(model: nn.Module, cfg: DiffusionConfig, n: int, seed: int, labels: torch.Tensor | None = None,
             batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """n samples [n, C, H, W] in [-1, 1] on the CPU, drawn with cfg.sampler from a fixed seed on the model's device."""
    from . import samplers

    was_training = model.training
    model.eval()
    mcfg = model.config
    device = next(model.parameters()).device
    scfg = cfg.sampler
    schedule = get_schedule(cfg.schedule.name, **cfg.schedule.params) if scfg.grid == "schedule" else None
    grid = samplers.logsnr_grid(scfg.steps, kind=scfg.grid, logsnr_min=scfg.logsnr_min, logsnr_max=scfg.logsnr_max,
                                schedule=schedule)
    generator = torch.Generator().manual_seed(seed)
    if labels is None and mcfg.num_classes > 0 and cfg.class_conditional:
        labels = torch.arange(n) % mcfg.num_classes
    fn = model_fn_for(model, scfg.guidance if labels is not None else 1.0, mcfg.num_classes)
    clip = tuple(scfg.clip_x0) if scfg.clip_x0 else None
    out = []
    try:
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            shape = (count, mcfg.channels, mcfg.image_size, mcfg.image_size)
            cond = labels[start:start + count].to(device) if labels is not None else None
            if scfg.name == "ddim":
                x = samplers.ddim_sample(fn, shape, grid, cfg.target, eta=scfg.eta, generator=generator, cond=cond,
                                         clip_x0=clip, device=device, progress=progress)
            elif scfg.name in ("euler", "heun"):
                sample_fn = samplers.euler_sample if scfg.name == "euler" else samplers.heun_sample
                x = sample_fn(fn, shape, grid, cfg.target, generator=generator, cond=cond, clip_x0=clip,
                              device=device, progress=progress)
            else:
                raise ValueError(f"sampler.name must be ddim, euler or heun, got {scfg.name!r}")
            out.append(x.float().clamp(-1, 1).cpu())  # metrics and grids work on CPU
    finally:
        model.train(was_training)
    return torch.cat(out)


def write_grid(images: torch.Tensor, path: Path) -> Path:
    from data_tools.images import save_image_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, path)
    return path


# ------------------------------------------------------------------------------------------------ export

def save_model(directory: str | Path, model: nn.Module, cfg: DiffusionConfig) -> Path:
    """model/: config.yaml (the whole run config, so sampling knows target, schedule and sampler) and the
    weights as safetensors, written as one folder."""
    from safetensors.torch import save_file

    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(dump_config(cfg), encoding="utf-8")
        atomic_write_json(tmp / "denoiser.json", asdict(model.config))
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE))
    return Path(directory)


def load_model(directory: str | Path) -> tuple[nn.Module, DiffusionConfig]:
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no {MODEL_FILE}; `hdvila diffusion train` exports one to "
                                "<output_dir>/model")
    cfg = load_config(DiffusionConfig, directory / CONFIG_FILE)
    denoiser = from_dict(DenoiserConfig, json.loads((directory / "denoiser.json").read_text()))
    model = create_model(denoiser)
    model.load_state_dict(load_file(str(directory / MODEL_FILE)))
    return model.eval(), cfg


# ------------------------------------------------------------------------------------------------ run

def build_model(cfg: DiffusionConfig) -> nn.Module:
    overrides = dict(cfg.model_overrides)
    if cfg.data.kind == "array" and "channels" not in overrides:
        overrides["channels"] = 1
    if cfg.class_conditional and "num_classes" not in overrides:
        overrides["num_classes"] = 10
    return create_model(cfg.model, **overrides)


def run_train(cfg: DiffusionConfig, resume: bool = False) -> dict[str, Any] | None:
    """Train, export the EMA model to output_dir/model, write a final sample grid; returns the last record."""
    out = start_run(cfg)
    model = build_model(cfg)
    batches, epoch_setter, data_state, reference = make_data(cfg)
    objective = DiffusionObjective(cfg, model, reference, out)
    if D.is_main():
        log.info("diffusion %s (%.2fM parameters), target %s, schedule %s, weighting %s", cfg.model,
                 sum(p.numel() for p in model.parameters()) / 1e6, cfg.target, cfg.schedule.name, cfg.weighting.name)
    trainer = Trainer(cfg.train, cfg.optim, model, objective, batches, out, epoch_setter=epoch_setter,
                      data_state=data_state, resume=resume)
    summary = trainer.fit()
    if D.is_main():
        save_model(out / "model", objective.ema.module, cfg)
        write_grid(generate(objective.ema.module, cfg, cfg.eval.grid_images, cfg.eval.seed), out / "samples.png")
    D.barrier()
    return run_summary(summary, cfg)


def evaluate_model(directory: str | Path, samples: int | None = None, overrides: dict | None = None
                   ) -> dict[str, float]:
    """FD / SWD of an exported model's samples against the held-out split of its dataset."""
    from data_tools.image_datasets import load_image_dataset
    from .metrics import get_feature_classifier, sample_quality

    model, cfg = load_model(directory)
    for key, value in (overrides or {}).items():
        setattr(cfg.sampler, key, value)
    if cfg.data.kind != "array":
        raise ValueError("evaluation needs a held-out reference: train on an array dataset (digits, mnist5k)")
    reference, _ = load_image_dataset(cfg.data.name, split="test", size=cfg.data.size, seed=cfg.data.split_seed)
    classifier = get_feature_classifier(cfg.data.name, cfg.eval.classifier_cache, size=cfg.data.size,
                                        seed=cfg.data.split_seed)
    generated = generate(model, cfg, samples or cfg.eval.samples, cfg.eval.seed, progress=True)
    return {k: float(v) for k, v in sample_quality(generated, reference, classifier).items()
            if isinstance(v, (int, float, np.floating))}
