"""Typed configs of the trainer and its optimiser, loadable with `data_tools.config.load_config`.

A recipe's config embeds them, e.g. `PretrainConfig(train: TrainConfig, optim: OptimConfig, model: ...)`, so
`train.max_steps=20` or `optim.param_groups=[{name: text, pattern: '^text\\.', lr_scale: 0.1}]` work as overrides.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["linear", "cosine", "constant", "step"]  # step: x0.1 at 50% and at 75% of the decay


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    seed: int = 42
    save_every: int = 500  # steps between checkpoints; 0 = only at the end
    save_at_end: bool = True
    log_every: int = 10
    val_every: int = 0  # 0 = never call objective.validate
    precision: Precision = "fp32"
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    deepspeed_config: str = "zero1"  # zero0..zero3 (data_tools/training/deepspeed/*.json) or a path to a JSON file
    zero_stage: Optional[int] = None  # None = the stage in the JSON
    deterministic: bool = False  # torch.use_deterministic_algorithms and friends
    compile: bool = False  # torch.compile the module through DeepSpeed's engine.compile()
    progress: bool = True  # tqdm bar on rank 0
    deepspeed_log_level: str = "warning"  # DeepSpeed prints its whole config at INFO


@dataclass
class ParamGroupConfig:
    """Parameters whose name matches `pattern` (re.search) form the group `name`; first matching group wins."""

    name: str = ""
    pattern: str = ""
    lr: Optional[float] = None  # absolute learning rate
    lr_scale: Optional[float] = None  # or a multiple of OptimConfig.lr
    weight_decay: Optional[float] = None  # None = OptimConfig.weight_decay (never applied to biases/norms)
    betas: Optional[tuple[float, float]] = None  # Adam betas of this group (e.g. GANs' lazy regularisation)


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"  # adam: L2 weight decay in the gradient, as torch.optim.Adam
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    momentum: float = 0.0  # sgd only
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0: fraction of train.max_steps
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.0  # final lr as a fraction of each group's peak lr
    decay_all: bool = False  # weight decay on biases and norm weights too (torch's plain behaviour)
    param_groups: list[ParamGroupConfig] = field(default_factory=list)
