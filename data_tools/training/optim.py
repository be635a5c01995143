"""Parameter groups by name pattern, the torch optimiser, and the warmup + decay learning-rate schedule."""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable

import torch
from torch import nn

from .config import OptimConfig, ParamGroupConfig

log = logging.getLogger(__name__)

DEFAULT_GROUP = "default"
NO_DECAY_SUFFIX = "/no_decay"


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights and other 1-D parameters (scales, gains) get no weight decay.

    Names are checked per dotted component, because a plain substring test for "bn" would also catch
    "subnet.fc.weight".
    """
    if param.ndim < 2:
        return True
    for part in name.split("."):
        lower = part.lower()
        if "bias" in lower or "norm" in lower or re.fullmatch(r"bn\d*", lower):
            return True
    return False


def _group_settings(group: ParamGroupConfig, cfg: OptimConfig) -> tuple[float, float]:
    if group.lr is not None and group.lr_scale is not None:
        raise ValueError(f"param group '{group.name}': give lr or lr_scale, not both")
    lr = group.lr if group.lr is not None else cfg.lr * (group.lr_scale if group.lr_scale is not None else 1.0)
    decay = group.weight_decay if group.weight_decay is not None else cfg.weight_decay
    return lr, decay


def _check_group_names(cfg: OptimConfig) -> list[str]:
    names = [g.name for g in cfg.param_groups]
    if any(not n for n in names) or len(set(names)) != len(names) or DEFAULT_GROUP in names:
        raise ValueError(f"param group names must be unique, non-empty and not '{DEFAULT_GROUP}': {names}")
    return names


def assign_param_groups(model: nn.Module, cfg: OptimConfig) -> dict[str, str]:
    """Trainable parameter name -> group name ("text", "text/no_decay", "default", ...); frozen ones left out."""
    _check_group_names(cfg)
    patterns = [(g.name, re.compile(g.pattern)) for g in cfg.param_groups]
    assignment = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = next((g for g, rx in patterns if rx.search(name)), DEFAULT_GROUP)
        assignment[name] = group + (NO_DECAY_SUFFIX if not cfg.decay_all and is_no_decay(name, param) else "")
    return assignment


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Torch param-group dicts: each configured group (and "default") split into a decay and a no-decay part.

    Every dict carries a `name` (e.g. "text", "text/no_decay") for the logs. Empty groups are dropped
    (ZeRO cannot flatten an empty group).
    """
    names = _check_group_names(cfg)
    settings = {g.name: _group_settings(g, cfg) for g in cfg.param_groups}
    settings[DEFAULT_GROUP] = (cfg.lr, cfg.weight_decay)
    betas = {g.name: tuple(g.betas) for g in cfg.param_groups if g.betas is not None}
    assignment = assign_param_groups(model, cfg)
    params = dict(model.named_parameters())
    groups = []
    for group_name in [*names, DEFAULT_GROUP]:
        lr, decay = settings[group_name]
        for key, wd in ((group_name, decay), (group_name + NO_DECAY_SUFFIX, 0.0)):
            members = [params[n] for n, g in assignment.items() if g == key]
            if members:
                group = {"name": key, "params": members, "lr": lr, "weight_decay": wd}
                if group_name in betas:
                    group["betas"] = betas[group_name]
                groups.append(group)
    used = {g.removesuffix(NO_DECAY_SUFFIX) for g in assignment.values()}
    for g in cfg.param_groups:
        if g.name not in used:
            log.warning("param group '%s' (pattern %r) matches no trainable parameter", g.name, g.pattern)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """A plain torch optimiser (DeepSpeed wraps it; its fused/CPU Adam would need a JIT build)."""
    groups = build_param_groups(model, cfg)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def warmup_steps(cfg: OptimConfig, max_steps: int) -> int:
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps
    return int(round(cfg.warmup_ratio * max_steps))


def lr_factor(step: int, *, max_steps: int, warmup: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for the update made at optimizer step `step` (0-based).

    Warmup ramps linearly from 1/warmup to 1 over the first `warmup` updates (never 0, so no update is
    wasted); then linear or cosine decay from 1 to `min_lr_ratio` at `max_steps`, a step decay (x0.1 at half
    and at three quarters of the decay), or constant.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, max_steps - warmup)))
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step":
        shape = 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def make_lr_lambda(cfg: OptimConfig, max_steps: int) -> Callable[[int], float]:
    warmup = warmup_steps(cfg, max_steps)

    def factor(step: int) -> float:
        return lr_factor(step, max_steps=max_steps, warmup=warmup, schedule=cfg.schedule,
                         min_lr_ratio=cfg.min_lr_ratio)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step (DeepSpeed steps it at each accumulation boundary).

    The lambda is a closure, so the scheduler's state_dict stores None for it: checkpoints stay plain data.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(cfg, max_steps))
