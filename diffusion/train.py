"""Diffusion training on the shared trainer, with data from the shared data layer.

    hdvila diffusion train --config diffusion/digits-dit [key=value ...]

One step: draw λ from the training schedule, noise the images, predict the target (ε, x0 or v), and take the
per-sample MSE times the loss weight of λ (constant, Min-SNR-γ, ...). An EMA of the weights is kept in the
objective (saved in checkpoints); validation samples with the EMA model and scores the samples against
held-out real images (Fréchet distance in a project-trained classifier's features, sliced Wasserstein).
The run folder follows the pretraining convention: config.yaml, metrics.jsonl, tensorboard/, checkpoints/,
samples/ (PNG grids) and model/ (the EMA model as a pretrained folder, see `diffusion.pipeline`).

The configs live in `diffusion.config`; sampling and evaluation of an exported model in `diffusion.pipeline`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_tools.ema import EMA
from data_tools.image_datasets import make_image_data
from data_tools.images import frames_to_images
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.run import run_summary, start_run, step_generator
from data_tools.training.trainer import Trainer

from .config import DiffusionConfig, denoiser_config, image_size
from .models import create_model
from .pipeline import DiffusionPipeline, generate, write_grid
from .process import add_noise, target_of
from .schedules import get_schedule
from .weighting import loss_weight

log = get_logger(__name__)


# ------------------------------------------------------------------------------------------------ objective

class DiffusionObjective:
    """Weighted denoising loss, EMA after every optimizer step, sample-based validation."""

    def __init__(self, cfg: DiffusionConfig, model: nn.Module, reference: torch.Tensor | None, output_dir: Path):
        self.cfg = cfg
        self.schedule = get_schedule(cfg.schedule.name, **cfg.schedule.params)
        self.weighting = cfg.weighting
        self.weight_params = self._weight_params()  # built once: importance weights hold schedule objects
        self.ema = EMA(model, cfg.ema_decay)
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
        generator = step_generator(self.cfg.train.seed, step)
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
        self.ema.follow(model)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        ema = state["ema"]
        if "n_averaged" in ema:  # a checkpoint of the torch swa_utils average used before
            ema = {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}
        self.ema.load_state_dict(ema)

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


# ------------------------------------------------------------------------------------------------ run

def build_model(cfg: DiffusionConfig) -> nn.Module:
    return create_model(denoiser_config(cfg))


def run_train(cfg: DiffusionConfig, resume: bool = False) -> dict[str, Any] | None:
    """Train, export the EMA model to output_dir/model, write a final sample grid; returns the last record."""
    out = start_run(cfg)
    model = build_model(cfg)
    batches, epoch_setter, data_state, reference = make_image_data(
        cfg.data, image_size(cfg), cfg.train.batch_size, cfg.train.seed, D.rank(), D.world_size())
    objective = DiffusionObjective(cfg, model, reference, out)
    if D.is_main():
        log.info("diffusion %s (%.2fM parameters), target %s, schedule %s, weighting %s", cfg.model,
                 sum(p.numel() for p in model.parameters()) / 1e6, cfg.target, cfg.schedule.name, cfg.weighting.name)
    trainer = Trainer(cfg.train, cfg.optim, model, objective, batches, out, epoch_setter=epoch_setter,
                      data_state=data_state, resume=resume)
    summary = trainer.fit()
    if D.is_main():
        DiffusionPipeline(objective.ema.module, cfg).save_pretrained(out / "model")
        write_grid(generate(objective.ema.module, cfg, cfg.eval.grid_images, cfg.eval.seed), out / "samples.png")
    D.barrier()
    return run_summary(summary, cfg)
