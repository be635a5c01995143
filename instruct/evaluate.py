"""Scoring an instruction-editing model on held-out examples (instruct.tasks + instruct.decode).

    pipe = InstructPipeline.from_pretrained("runs/instruct/small/model")
    examples = eval_examples(pipe, split="val")                  # held-out combinations and phrasings
    results = evaluate(pipe, examples)        # {"instructed": per task, "no_instruction": per task, "settings"}
    results["sweep"] = guidance_sweep(pipe, examples, [1, 3, 5], [0.5, 1.25])
    write_figure(results, "figure.png")
    run_eval("runs/instruct/small/model", split="test", out_dir="runs/instruct/small/eval-test")

The "no_instruction" arm edits the same sources with the instruction removed at test time (text = "", what
text dropout trained): a model that reads its instructions must then fail to pick the task, so its scores
collapse towards what leaving the image alone gives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from data_tools.config import from_dict
from data_tools.files import atomic_write_json

from .decode import METRICS, score, summarise
from .pipeline import InstructPipeline
from .tasks import InstructDataConfig, InstructExample, example_grid, make_eval_set

RESULTS_FILE = "results.json"
FIGURE_FILE = "figure.png"
GRID_FILE = "examples.png"


@dataclass
class InstructEvalConfig:
    """Which examples an evaluation edits and how (the training run's validation uses the same settings)."""

    n_per_task: int = 16
    split: str = "val"  # val while choosing; test once, at the end
    seed: int = 1234
    combos: str = "heldout"  # held-out (shape, colour) / (part, colour) combinations, or "train"
    phrasing: str = "heldout"  # held-out paraphrases, or "train"
    steps: Optional[int] = 25  # sampler steps; None = the model's edit.steps
    grid_per_task: int = 4  # rows per task in the example grids
    text_scales: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0, 7.5])  # guidance sweep: s_T
    image_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.25, 1.5])  # and s_I

    def __post_init__(self) -> None:
        if self.n_per_task < 1 or self.grid_per_task < 0:
            raise ValueError("eval.n_per_task must be >= 1 and eval.grid_per_task >= 0")
        if self.split not in ("val", "test"):
            raise ValueError(f"eval.split must be val or test, got {self.split!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"eval.steps must be >= 1 or null, got {self.steps}")


def eval_settings(pipeline: InstructPipeline) -> tuple[InstructDataConfig, InstructEvalConfig]:
    """The data and eval sections of the run config the exported model was trained with."""
    run = pipeline.run_config
    if "data" not in run:
        raise ValueError("the model folder holds no run_config.yaml with a data section (`hdvila instruct train` "
                         "exports one); pass examples instead")
    return from_dict(InstructDataConfig, run["data"]), from_dict(InstructEvalConfig, run.get("eval") or {})


def eval_examples(pipeline: InstructPipeline, split: str | None = None,
                  n_per_task: int | None = None) -> list[InstructExample]:
    """The evaluation set of the model's own data config (held-out combinations and phrasings by default)."""
    data, ecfg = eval_settings(pipeline)
    return make_eval_set(data, n_per_task or ecfg.n_per_task, split or ecfg.split, ecfg.seed, combos=ecfg.combos,
                         phrasing=ecfg.phrasing)


def edit_examples(pipeline: InstructPipeline, examples: Sequence[InstructExample], blank_instruction: bool = False,
                  **edit_kwargs: Any) -> list[np.ndarray]:
    """Each example's source edited by its instruction (or by "" with blank_instruction): uint8 [H, W, 3] each."""
    if not examples:
        raise ValueError("no examples to edit")
    sources = np.stack([e.source for e in examples])
    texts = ["" if blank_instruction else e.instruction for e in examples]
    return list(pipeline.edit(sources, texts, **edit_kwargs))


def score_outputs(examples: Sequence[InstructExample], outputs: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per-task summary (instruct.decode.summarise) of the outputs' scores."""
    return summarise(score(e, o) for e, o in zip(examples, outputs, strict=True))


def evaluate(pipeline: InstructPipeline, examples: Sequence[InstructExample], text_scale: float | None = None,
             image_scale: float | None = None, steps: int | None = None, seed: int = 0,
             blank_instruction: bool = True, batch_size: int = 64, keep_outputs: bool = False) -> dict[str, Any]:
    """{"instructed": per-task summary, "no_instruction": the same with text = "" (if blank_instruction),
    "settings": the scales, steps, sampler and seed used}; with keep_outputs also "outputs", the instructed
    edits (uint8 [H, W, 3] each, for example grids). Unset values come from the model's edit.yaml."""
    cfg = pipeline.config
    settings = {"text_scale": cfg.text_scale if text_scale is None else float(text_scale),
                "image_scale": cfg.image_scale if image_scale is None else float(image_scale),
                "steps": cfg.steps if steps is None else int(steps), "sampler": cfg.sampler, "seed": int(seed),
                "examples": len(examples)}
    kwargs = dict(text_scale=settings["text_scale"], image_scale=settings["image_scale"], steps=settings["steps"],
                  seed=seed, batch_size=batch_size)
    outputs = edit_examples(pipeline, examples, **kwargs)
    results: dict[str, Any] = {"instructed": score_outputs(examples, outputs)}
    if blank_instruction:
        blank = edit_examples(pipeline, examples, blank_instruction=True, **kwargs)
        results["no_instruction"] = score_outputs(examples, blank)
    results["settings"] = settings
    if keep_outputs:
        results["outputs"] = outputs
    return results


def guidance_sweep(pipeline: InstructPipeline, examples: Sequence[InstructExample], text_scales: Sequence[float],
                   image_scales: Sequence[float], steps: int | None = None, seed: int = 0,
                   batch_size: int = 64) -> list[dict[str, Any]]:
    """[{"text_scale", "image_scale", "summary": per task}] for every (s_T, s_I) on the grid."""
    rows = []
    for text_scale in text_scales:
        for image_scale in image_scales:
            outputs = edit_examples(pipeline, examples, text_scale=text_scale, image_scale=image_scale, steps=steps,
                                    seed=seed, batch_size=batch_size)
            rows.append({"text_scale": float(text_scale), "image_scale": float(image_scale),
                         "summary": score_outputs(examples, outputs)})
    return rows


def draw_sweep(ax: Any, sweep: Sequence[dict[str, Any]], task: str) -> Any:
    """A heatmap of `task`'s metric over a guidance sweep (rows of `guidance_sweep`) on a matplotlib axis, each
    cell labelled; returns the image for a colour bar."""
    metric = METRICS[task]
    text_scales = sorted({r["text_scale"] for r in sweep})
    image_scales = sorted({r["image_scale"] for r in sweep})
    grid = np.full((len(text_scales), len(image_scales)), math.nan)
    for r in sweep:
        if task in r["summary"]:
            grid[text_scales.index(r["text_scale"]), image_scales.index(r["image_scale"])] = r["summary"][task][metric]
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(image_scales)), [f"{s:g}" for s in image_scales])
    ax.set_yticks(range(len(text_scales)), [f"{s:g}" for s in text_scales])
    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xlabel("image scale s_I")
    ax.set_ylabel("text scale s_T")
    return image


def write_figure(results: dict[str, Any], path: str | Path) -> Path:
    """One PNG, written atomically: per task, its metric with and without the instruction (top row), and the
    metric over the guidance grid when results hold a "sweep" (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call in a worker or a test
    import matplotlib.pyplot as plt

    from data_tools.training.metrics import save_figure

    tasks = list(results["instructed"])
    sweep = results.get("sweep") or []
    rows = 2 if sweep else 1
    fig, axes = plt.subplots(rows, len(tasks), figsize=(3.2 * len(tasks), 3.0 * rows), squeeze=False)
    for k, task in enumerate(tasks):
        metric = METRICS[task]
        arms = [("instruction", results["instructed"][task][metric])]
        if "no_instruction" in results and task in results["no_instruction"]:
            arms.append(("no instruction", results["no_instruction"][task][metric]))
        ax = axes[0][k]
        ax.bar([a for a, _ in arms], [v for _, v in arms], color=["tab:blue", "tab:gray"][:len(arms)])
        ax.set_title(f"{task}: {metric}")
        ax.axhline(0.0, color="black", linewidth=0.5)
        if sweep:
            fig.colorbar(draw_sweep(axes[1][k], sweep, task), ax=axes[1][k], shrink=0.8)
    settings = results.get("settings", {})
    fig.suptitle(f"s_T={settings.get('text_scale')}, s_I={settings.get('image_scale')}, "
                 f"{settings.get('sampler')} {settings.get('steps')} steps, {settings.get('examples')} examples")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def json_safe(value: Any) -> Any:
    """NaN and infinities (a metric with no examples, e.g. absent_acc without absent objects) as null: strict
    JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def example_rows(examples: Sequence[InstructExample], per_task: int) -> list[int]:
    """Indices of the first `per_task` examples of each task, in task order (for example grids)."""
    seen: dict[str, int] = {}
    chosen = []
    for i, e in enumerate(examples):
        if seen.get(e.task, 0) < per_task:
            seen[e.task] = seen.get(e.task, 0) + 1
            chosen.append(i)
    return chosen


def run_eval(model_dir: str | Path, split: str | None = None, out_dir: str | Path | None = None,
             n_per_task: int | None = None, steps: int | None = None, sweep: bool = False,
             seed: int = 0) -> dict[str, Any]:
    """`hdvila instruct eval`: evaluate an exported model on its data config's val or test split; with out_dir,
    write results.json, figure.png and examples.png (source | target | output rows) there, each atomically."""
    pipeline = InstructPipeline.from_pretrained(model_dir)
    _, ecfg = eval_settings(pipeline)
    examples = eval_examples(pipeline, split, n_per_task)
    steps = steps if steps is not None else ecfg.steps
    results = evaluate(pipeline, examples, steps=steps, seed=seed, keep_outputs=True)
    outputs = results.pop("outputs")
    results["settings"].update({"split": split or ecfg.split, "model": str(model_dir)})
    if sweep:
        results["sweep"] = guidance_sweep(pipeline, examples, ecfg.text_scales, ecfg.image_scales, steps=steps,
                                          seed=seed)
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / RESULTS_FILE, json_safe(results))
        write_figure(results, out / FIGURE_FILE)
        rows = example_rows(examples, max(1, ecfg.grid_per_task))
        example_grid([examples[i] for i in rows], out / GRID_FILE, outputs=[outputs[i] for i in rows])
    return results


__all__ = ["InstructEvalConfig", "draw_sweep", "edit_examples", "eval_examples", "eval_settings", "evaluate", "example_rows",
           "guidance_sweep", "json_safe", "run_eval", "score_outputs", "write_figure"]
