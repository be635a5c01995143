"""The first and last lines every recipe shares: open the process group and the run folder, and hand back
the trainer's summary with the config that produced it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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
