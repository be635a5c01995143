"""The diffusion run config: what to train (model, target, schedule, weighting, data), how to sample and score.

Shared by training (`diffusion.train`) and inference (`diffusion.pipeline`): an exported model folder carries
this config as `run_config.yaml`, so sampling knows the target, the schedule and the sampler. Every name is
checked against its registry when the config is built (`from_dict`, `load_config`, overrides alike), so a typo
fails with a did-you-mean hint before anything trains or samples.

    import hdvila  # registers the packaged recipe configs, so names resolve
    cfg = load_config(DiffusionConfig, "diffusion/digits-dit", ["sampler.steps=25"])   # or a YAML path
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from data_tools.config import ConfigError, apply_overrides, from_dict, to_dict
from data_tools.image_datasets import IMAGE_DATASETS, ImageDataConfig
from data_tools.training.config import OptimConfig, TrainConfig

from .models import DenoiserConfig, get_model_config
from .process import TARGETS
from .samplers import GRID_KINDS, SAMPLERS
from .schedules import SCHEDULES
from .weighting import get_weighting


def _check(where: str, fn, *args) -> Any:
    """Run a registry or value check and report its ValueError as a ConfigError naming the key."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # a registered schedule (diffusion.schedules.SCHEDULES)
    params: dict = field(default_factory=dict)  # e.g. {mu: 0.0, b: 0.5} for laplace; logsnr_min/max; floor

    def __post_init__(self) -> None:
        _check("schedule.name", SCHEDULES.get, self.name)


@dataclass
class WeightingConfig:
    name: str = "constant"  # a registered weighting: constant | min_snr | soft_min_snr | snr | trunc_snr | importance
    params: dict = field(default_factory=dict)  # {gamma: 5}; importance: {target_schedule: {name, params}}

    def __post_init__(self) -> None:
        _check("weighting", get_weighting, self.name, self.params)


@dataclass
class SamplerConfig:
    name: str = "ddim"  # a registered sampler: ddim | euler | heun | euler_ancestral
    steps: int = 50
    grid: str = "cosine"  # cosine | linear | schedule (quantiles of the training density)
    logsnr_min: float = -10.0
    logsnr_max: float = 10.0
    eta: float = 0.0  # ddim only
    guidance: float = 1.0  # classifier-free guidance scale (class-conditional models)
    clip_x0: Optional[list[float]] = field(default_factory=lambda: [-1.0, 1.0])

    def __post_init__(self) -> None:
        sampler = _check("sampler.name", SAMPLERS.get, self.name)
        _check("sampler.eta", sampler.check_eta, self.eta)
        if self.steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {self.steps}")
        if self.grid not in GRID_KINDS:
            raise ConfigError(f"sampler.grid must be one of {GRID_KINDS}, got {self.grid!r}")
        if not self.logsnr_min < self.logsnr_max:
            raise ConfigError(f"sampler: need logsnr_min < logsnr_max, got {self.logsnr_min} and {self.logsnr_max}")
        if self.clip_x0 is not None and (len(self.clip_x0) != 2 or not self.clip_x0[0] < self.clip_x0[1]):
            raise ConfigError(f"sampler.clip_x0 must be null or [low, high] with low < high, got {self.clip_x0}")


@dataclass
class EvalConfig:
    samples: int = 1000  # generated samples per evaluation
    seed: int = 1234  # the same noise every evaluation, so curves compare checkpoints, not draws
    grid_images: int = 64
    classifier_cache: str = "runs/diffusion/feature-classifiers"


@dataclass
class DiffusionConfig:
    model: str = "dit-digits"  # a registered denoiser (diffusion.models.DENOISERS)
    model_overrides: dict = field(default_factory=dict)
    target: str = "eps"  # eps | x0 | v: what the network predicts
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    class_conditional: bool = False
    label_dropout: float = 0.1  # labels replaced by the null class, for classifier-free guidance
    ema_decay: float = 0.995
    output_dir: str = "runs/diffusion"
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {self.target!r}")
        _check("model", get_model_config, self.model)


def denoiser_config(cfg: DiffusionConfig) -> DenoiserConfig:
    """The denoiser a run trains: the registered config with model_overrides, and the data set's channels and
    classes filled in where the overrides leave them open."""
    overrides = dict(cfg.model_overrides)
    info = IMAGE_DATASETS.get(cfg.data.name) if cfg.data.kind == "array" and cfg.data.name in IMAGE_DATASETS else None
    if info is not None and "channels" not in overrides:
        overrides["channels"] = info.channels
    if cfg.class_conditional and "num_classes" not in overrides:
        overrides["num_classes"] = info.num_classes if info is not None else 10
    return get_model_config(cfg.model, **overrides)


def image_size(cfg: DiffusionConfig) -> int:
    """The resolution the run trains at (the denoiser's image_size)."""
    return get_model_config(cfg.model, **cfg.model_overrides).image_size


def with_overrides(cfg: DiffusionConfig, overrides: Iterable[str] | Mapping[str, Any] = ()) -> DiffusionConfig:
    """A validated copy of `cfg` with dotted overrides applied: `["sampler.steps=25"]` (values parsed as YAML) or
    `{"sampler.steps": 25}`. Goes through the config system, so types and registry names are checked and a bad
    value raises ConfigError naming the key."""
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]  # JSON is YAML
    return from_dict(DiffusionConfig, apply_overrides(to_dict(cfg), list(overrides)))


__all__ = ["DiffusionConfig", "EvalConfig", "ImageDataConfig", "SamplerConfig", "ScheduleConfig", "WeightingConfig",
           "denoiser_config", "image_size", "with_overrides"]
