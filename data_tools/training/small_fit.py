"""The one loop for small single-process auxiliary models (feature classifiers, oracles, scorers, inversion
encoders): seeded, on a fixed number of CPU threads, with a progress bar and the shared optimiser and schedule.

    cfg = SmallFitConfig(steps=2000, optim=OptimConfig(name="adam", lr=1e-3, weight_decay=0.0))
    with seeded(cfg.seed, cfg.threads):
        model = MyNet()                                  # same seed, same initial weights
    batches = shuffled_batches(len(x), batch_size=64, generator=torch.Generator().manual_seed(cfg.seed))
    result = fit_small(model, lambda m, step: F.cross_entropy(m(x[i := next(batches)]), y[i]), cfg)

Recipes that need DeepSpeed, several ranks, checkpoints or resumption use `data_tools.training.Trainer`; this
helper is for models that train in minutes on one process and are then frozen. Both share `OptimConfig`,
`build_optimizer` and `lr_factor`, so a schedule means the same thing in either.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from .config import OptimConfig
from .optim import build_optimizer, lr_factor, warmup_steps

LossFn = Callable[[nn.Module, int], "torch.Tensor | Mapping[str, torch.Tensor]"]


@dataclass
class SmallFitConfig:
    steps: int = 1000
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3, weight_decay=0.0,
                                                                   betas=(0.9, 0.999), schedule="constant"))
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    seed: int = 0
    threads: Optional[int] = 1  # float reduction order, and so the weights, can change with the thread count
    progress: bool = False
    desc: str = "fit"


@dataclass
class SmallFitResult:
    losses: list[float]  # the "loss" of every step, before that step's update
    last: dict[str, float]  # every scalar of the last step


@contextlib.contextmanager
def seeded(seed: int, threads: int | None = 1) -> Iterator[None]:
    """Run with the global torch RNG seeded to `seed` and on `threads` CPU threads (None: unchanged); the
    caller's RNG state and thread count are restored afterwards."""
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(old_threads)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches over range(n), a fresh permutation every epoch; the last batch of an epoch may be
    short (as a DataLoader without drop_last)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got {n} and {batch_size}")
    while True:
        order = torch.randperm(n, generator=generator)
        yield from order.split(batch_size)


def steps_for_epochs(n: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n / batch_size)


def progress_range(n: int, progress: bool, desc: str) -> Iterator[int] | range:
    """range(n), with a tqdm bar when `progress` (for step loops that are not training: sampling, inversion)."""
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, leave=False, dynamic_ncols=True)


def fit_small(model: nn.Module, loss_fn: LossFn, cfg: SmallFitConfig, *,
              params_from: nn.Module | None = None) -> SmallFitResult:
    """Minimise `loss_fn(model, step)` (a scalar, or a dict with a scalar "loss" and other scalars to report)
    for cfg.steps optimizer steps. The loss function draws its own batch, so data may come from arrays, a
    renderer or a generator. `params_from` trains only that part of `model` (default: all of it).

    Deterministic when the model is built inside `seeded(cfg.seed)` and the loss function draws from its own
    seeded generators; fit_small itself leaves the global RNG alone (so a caller's stream continues exactly as
    in a hand-written loop), and cfg.seed is the record of that seed. Runs under enable_grad (callers may sit
    under no_grad) and leaves the model in eval mode."""
    if cfg.steps < 0:
        raise ValueError(f"steps must be >= 0, got {cfg.steps}")
    trained = params_from if params_from is not None else model
    optimizer = build_optimizer(trained, cfg.optim)
    warmup = warmup_steps(cfg.optim, cfg.steps)
    peak = [group["lr"] for group in optimizer.param_groups]
    losses: list[float] = []
    last: dict[str, float] = {}
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc=cfg.desc, leave=False, dynamic_ncols=True)
    old_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    model.train()
    try:
        with torch.enable_grad():
            for step in range(cfg.steps):
                factor = lr_factor(step, max_steps=cfg.steps, warmup=warmup, schedule=cfg.optim.schedule,
                                   min_lr_ratio=cfg.optim.min_lr_ratio)
                for group, lr in zip(optimizer.param_groups, peak):
                    group["lr"] = lr * factor
                out = loss_fn(model, step)
                values = dict(out) if isinstance(out, Mapping) else {"loss": out}
                loss = values["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.grad_clip)
                optimizer.step()
                last = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()}
                losses.append(last["loss"])
                if bar is not None:
                    bar.update(1)
                    if step % 20 == 0:
                        bar.set_postfix(loss=f"{last['loss']:.4f}")
    finally:
        torch.set_num_threads(old_threads)
        if bar is not None:
            bar.close()
        model.eval()
    return SmallFitResult(losses, last)


__all__ = ["SmallFitConfig", "SmallFitResult", "fit_small", "progress_range", "seeded", "shuffled_batches",
           "steps_for_epochs"]
