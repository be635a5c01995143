"""The first and last lines every recipe shares: open the process group and the run folder, and hand back
the trainer's summary with the config that produced it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import save_config, to_dict
from . import distributed as D


def start_run(cfg: Any) -> Path:
    """Process group, `cfg.output_dir` with the resolved config.yaml (rank 0), RNGs seeded from `cfg.train.seed`
    (the same seed gives the same initial weights on every rank and run). Returns the run folder."""
    D.init_distributed()
    out = Path(cfg.output_dir)
    if D.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    D.seed_everything(cfg.train.seed)
    return out


def run_summary(summary: dict | None, cfg: Any) -> dict[str, Any] | None:
    """The trainer's last record plus the whole config (None on ranks that have no summary)."""
    return None if summary is None else {**summary, "config": to_dict(cfg)}


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator keyed by (seed, optimizer step, rank): what an objective draws its noise from, so a resumed
    run draws the same numbers at the same step and every rank draws different ones."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + D.rank())
