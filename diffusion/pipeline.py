"""Inference from an exported diffusion model, without the training code (diffusers-style).

    pipe = DiffusionPipeline.from_pretrained("runs/diffusion/digits-dit/model")
    images = pipe.sample(64, seed=0)                                 # [64, C, H, W] in [-1, 1], on the CPU
    pipe = pipe.with_overrides(["sampler.name=heun", "sampler.steps=25"])   # validated like any config
    metrics = evaluate_model("runs/diffusion/digits-dit/model", samples=1000)

An exported folder is a shared pretrained folder (`data_tools.pretrained`) of kind "diffusion-denoiser": the
DenoiserConfig as its config, the EMA weights as model.safetensors, and the whole run config as
`run_config.yaml` (target, schedule, sampler, data, eval), so sampling knows how to sample. Folders of the
older layout (config.yaml + denoiser.json + model.safetensors) load through a registered legacy reader, and
`hdvila pretrained migrate DIR` rewrites them (the run config then keeps its old name, config.yaml).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import yaml
from torch import nn

from data_tools.config import dump_config, from_dict
from data_tools.images import save_image_grid
from data_tools.pretrained import read_pretrained

from .config import DiffusionConfig, with_overrides
from .models import PRETRAINED_KIND, Denoiser, LEGACY_RUN_CONFIG
from .samplers import SAMPLERS, guided, logsnr_grid
from .schedules import get_schedule

RUN_CONFIG_FILE = "run_config.yaml"


def model_fn_for(model: nn.Module, guidance: float, num_classes: int):
    """(x, logsnr, cond) -> prediction, with classifier-free guidance when the model is class-conditional."""
    def fn(x, logsnr, cond):
        return model(x, logsnr, cond)

    if num_classes > 0 and guidance != 1.0:
        return guided(fn, guidance, null_cond=num_classes)
    return fn


@torch.no_grad()
def generate(model: nn.Module, cfg: DiffusionConfig, n: int, seed: int, labels: torch.Tensor | None = None,
             batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """n samples [n, C, H, W] in [-1, 1] on the CPU, drawn with cfg.sampler from a fixed seed on the model's device."""
    was_training = model.training
    model.eval()
    mcfg = model.config
    device = next(model.parameters()).device
    scfg = cfg.sampler
    sampler = SAMPLERS.get(scfg.name)
    schedule = get_schedule(cfg.schedule.name, **cfg.schedule.params) if scfg.grid == "schedule" else None
    grid = logsnr_grid(scfg.steps, kind=scfg.grid, logsnr_min=scfg.logsnr_min, logsnr_max=scfg.logsnr_max,
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
            x = sampler(fn, shape, grid, cfg.target, eta=scfg.eta, generator=generator, cond=cond, clip_x0=clip,
                        device=device, progress=progress)
            out.append(x.float().clamp(-1, 1).cpu())  # metrics and grids work on CPU
    finally:
        model.train(was_training)
    return torch.cat(out)


def write_grid(images: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, path)
    return path


class DiffusionPipeline:
    """A denoiser and the run config that says how to sample it."""

    def __init__(self, model: Denoiser, config: DiffusionConfig):
        self.model = model
        self.config = config

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "DiffusionPipeline":
        folder = read_pretrained(directory, PRETRAINED_KIND)
        model = Denoiser.from_pretrained_config(folder.config, folder.meta)
        model.load_pretrained_weights(folder, map_location)
        name = next((n for n in (RUN_CONFIG_FILE, LEGACY_RUN_CONFIG) if n in folder.files), None)
        if name is None:
            raise FileNotFoundError(f"{folder.path} holds a denoiser but no {RUN_CONFIG_FILE} (the run config that "
                                    "says how to sample it); `hdvila diffusion train` exports both to <run>/model")
        data = yaml.safe_load(folder.file(name).read_text(encoding="utf-8")) or {}
        return cls(model.to(map_location).eval(), from_dict(DiffusionConfig, data))

    def save_pretrained(self, directory: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        cfg = self.config
        info = {"model": cfg.model, "target": cfg.target, "schedule": cfg.schedule.name,
                "weighting": cfg.weighting.name, "sampler": cfg.sampler.name, **(meta or {})}
        return self.model.save_pretrained(directory, meta=info, extra_files={RUN_CONFIG_FILE: dump_config(cfg)},
                                          dtype=torch.float32)

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> "DiffusionPipeline":
        """The same model with a validated copy of the config (dotted overrides, e.g. "sampler.steps=25")."""
        return DiffusionPipeline(self.model, with_overrides(self.config, overrides))

    def sample(self, n: int, seed: int = 0, labels: torch.Tensor | None = None, progress: bool = False,
               batch_size: int = 500) -> torch.Tensor:
        return generate(self.model, self.config, n, seed, labels=labels, batch_size=batch_size, progress=progress)

    __call__ = sample


def evaluate_model(directory: str | Path, samples: int | None = None,
                   overrides: Iterable[str] | Mapping[str, Any] | None = None,
                   progress: bool = True) -> dict[str, float]:
    """FD / SWD of an exported model's samples against the held-out split of its dataset. `overrides` are
    dotted config overrides (e.g. {"sampler.steps": 25}), validated like any config."""
    from data_tools.image_datasets import load_image_dataset

    from .metrics import get_feature_classifier, sample_quality

    pipe = DiffusionPipeline.from_pretrained(directory).with_overrides(overrides or ())
    cfg = pipe.config
    if cfg.data.kind != "array":
        raise ValueError("evaluation needs a held-out reference: train on an array dataset (digits, mnist5k)")
    reference, _ = load_image_dataset(cfg.data.name, split="test", size=cfg.data.size, seed=cfg.data.split_seed,
                                      test_fraction=cfg.data.test_fraction, options=cfg.data.options)
    classifier = get_feature_classifier(cfg.data.name, cfg.eval.classifier_cache, size=cfg.data.size,
                                        seed=cfg.data.split_seed)
    generated = pipe.sample(samples or cfg.eval.samples, cfg.eval.seed, progress=progress)
    return {k: float(v) for k, v in sample_quality(generated, reference, classifier).items()
            if isinstance(v, (int, float, np.floating))}


__all__ = ["DiffusionPipeline", "RUN_CONFIG_FILE", "evaluate_model", "generate", "model_fn_for",
           "write_grid"]
