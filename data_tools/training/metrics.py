"""Run metrics: `metrics.jsonl` (one JSON object per logged step, flushed per line) and TensorBoard scalars.

`plot_training_curves` draws a run's losses and validation metrics (the caller names its keys), `save_figure`
writes any matplotlib figure atomically.

Only rank 0 writes. On resume the records after the resumed step are dropped (a killed run may have logged
steps its last checkpoint does not cover), and TensorBoard purges them too, so every step appears once.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
from pathlib import Path
from typing import Any, Sequence

from data_tools.files import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (killed writer) is skipped."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping an unreadable line", path)
    return records


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricsWriter:
    """Appends records to metrics.jsonl and mirrors their numeric entries as TensorBoard scalars."""

    def __init__(self, output_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / METRICS_FILE
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif self.path.exists():
            self.path.unlink()  # a fresh run in an old folder starts a fresh log
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(log_dir=str(self.output_dir / TENSORBOARD_DIR), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, numbers.Number) and not isinstance(value, bool):
                    self._tb.add_scalar(key, float(value), step)
            self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure atomically (format from the suffix, PNG without one) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    plt.close(fig)
    return path


def plot_training_curves(metrics_path: str | Path, out_path: str | Path, loss_keys: Sequence[str] = ("loss",),
                         val_keys: Sequence[str] | None = None, val_label: str = "validation",
                         chance_key: str | None = None, chance_label: str = "chance",
                         val_ylim: tuple[float, float] | None = None) -> Path | None:
    """PNG of the training losses against steps, beside the validation metrics that were logged; None when
    the file holds no records.

    `loss_keys`: the total first, then its components (plotted when two or more of them were logged: a single
    component is the total). `val_keys`: the validation metrics to plot (default: every logged "val/..." key
    but `chance_key`), on an axis labelled `val_label`. `chance_key`: a metric drawn as a dashed level line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not records:
        return None
    logged = {k for r in records for k in r}
    total, components = loss_keys[0], [k for k in loss_keys[1:] if k in logged and k != loss_keys[0]]
    plotted_losses = [total] + (components if len(components) > 1 else [])
    if val_keys is None:
        val_keys = sorted(k for k in logged if k.startswith("val/") and k != chance_key
                          and any(isinstance(r.get(k), numbers.Number) for r in records))
    val_present = [k for k in val_keys if k in logged]
    fig, axes = plt.subplots(1, 2 if val_present else 1, figsize=(11 if val_present else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key in plotted_losses:
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if val_present:
        ax = axes[0][1]
        for key in val_present:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points), marker="o", label=key.removeprefix("val/"))
        chance = [r[chance_key] for r in records if chance_key and chance_key in r]
        if chance:
            ax.axhline(chance[-1], color="k", ls="--", lw=1, label=chance_label)
        ax.set_xlabel("step")
        ax.set_ylabel(val_label)
        if val_ylim is not None:
            ax.set_ylim(*val_ylim)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_path)
