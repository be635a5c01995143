"""The shared trainer: one DeepSpeed loop for every recipe (pretraining, retrieval, diffusion, GAN, animation)."""
from __future__ import annotations

from .config import OptimConfig, ParamGroupConfig, TrainConfig
from .optim import assign_param_groups, build_optimizer, build_param_groups, build_scheduler, lr_factor
from .trainer import BatchStream, Objective, Trainer, build_deepspeed_config

__all__ = [
    "BatchStream", "Objective", "OptimConfig", "ParamGroupConfig", "TrainConfig", "Trainer",
    "assign_param_groups", "build_deepspeed_config", "build_optimizer", "build_param_groups",
    "build_scheduler", "lr_factor",
]
