"""InstructDiffusion's claim in miniature: one multi-task model against single-task models with the same steps.

For every seed: train the multi-task model and one single-task model per task (`hdvila instruct train`, the
same config, steps and batch size; only `data.tasks` differs); choose each task's guidance scales (s_T, s_I)
on the VALIDATION split (held-out combinations and phrasings); then score the TEST split once at those scales,
with the instruction and with it removed, beside two references that need no model: the unchanged source
(identity: what ignoring the instruction scores) and the true target (the decoders' ceiling).

    python benchmarks/bench_instruct.py --steps 4000 --seeds 0 --out runs/instruct/bench
    python benchmarks/bench_instruct.py --render          # print the tables of --result

Writes docs/results/instruct.json (per-example test scores are summarised, not stored) and prints the tables.
Statistics: mean and sample standard deviation (ddof=1) over test examples; multi-task vs single-task is a
paired t-test over the same test examples (seed by seed), and over seeds a Welch test when there are >= 2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from diffusion_stats import paired  # noqa: E402  (paired t-test over the same test examples)

TASKS = ("segment", "keypoint", "restore", "edit")
GOALS = {"segment": 0.7, "keypoint": 0.8, "restore": 3.0, "edit": 0.8}  # issue 16, on held-out test examples
WITHIN = 0.10  # the multi-task model within 10% of the single-task ones


def train(config: str, tasks: Sequence[str], seed: int, steps: int, out: Path, extra: Sequence[str] = ()) -> Path:
    """Train one arm (skipped when its exported model exists); returns the model folder."""
    model = out / "model"
    if (model / "config.json").exists():
        return model
    cmd = [sys.executable, "-m", "hdvila.cli", "--quiet", "instruct", "train", "--config", config,
           f"output_dir={out}", f"data.tasks=[{','.join(tasks)}]", f"train.seed={seed}", f"train.max_steps={steps}",
           "train.progress=false", *extra]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return model


def example_scores(examples, outputs) -> list[dict]:
    from instruct.decode import score

    return [score(e, o) for e, o in zip(examples, outputs, strict=True)]


def task_values(scores: Sequence[dict], task: str) -> list[float]:
    return [float(s["value"]) for s in scores if s["task"] == task]


def choose_scales(sweep: Sequence[dict], task: str) -> dict[str, float]:
    """The (s_T, s_I) of the sweep with the best mean value for `task` (ties: the first, in sweep order)."""
    best = max(sweep, key=lambda row: row["means"].get(task, float("-inf")))
    return {"text_scale": best["text_scale"], "image_scale": best["image_scale"], "val": best["means"][task]}


def summary(values: Sequence[float]) -> dict[str, Any]:
    from diffusion_stats import mean_std

    mean, sd = mean_std(values)
    return {"mean": mean, "sd": sd, "n": len(values)}


def evaluate_arm(model: Path, tasks: Sequence[str], n_val: int, n_test: int, text_scales: Sequence[float],
                 image_scales: Sequence[float], steps: int) -> dict[str, Any]:
    """Guidance chosen per task on val; test scored once at those scales, with and without the instruction."""
    from instruct.decode import summarise
    from instruct.evaluate import edit_examples, eval_examples
    from instruct.pipeline import InstructPipeline

    pipe = InstructPipeline.from_pretrained(model)
    val = [e for e in eval_examples(pipe, "val", n_val) if e.task in tasks]
    sweep = []
    for s_t in text_scales:
        for s_i in image_scales:
            scores = example_scores(val, edit_examples(pipe, val, text_scale=s_t, image_scale=s_i, steps=steps))
            sweep.append({"text_scale": s_t, "image_scale": s_i,
                          "means": {t: summary(task_values(scores, t))["mean"] for t in tasks}})
    test = [e for e in eval_examples(pipe, "test", n_test) if e.task in tasks]
    arm: dict[str, Any] = {"sweep": sweep, "tasks": {}}
    for task in tasks:
        chosen = choose_scales(sweep, task)
        examples = [e for e in test if e.task == task]
        kwargs = dict(text_scale=chosen["text_scale"], image_scale=chosen["image_scale"], steps=steps)
        instructed = example_scores(examples, edit_examples(pipe, examples, **kwargs))
        blank = example_scores(examples, edit_examples(pipe, examples, blank_instruction=True, **kwargs))
        arm["tasks"][task] = {"scales": chosen, "values": task_values(instructed, task),
                              "no_instruction": task_values(blank, task),
                              "summary": summarise(instructed)[task]}  # iou_present, per-kind PSNR gains, ...
    return arm


def gaussian_blur(image, sigma: float = 0.8):
    """A classical denoiser for the restoration reference: Gaussian blur per channel, uint8 in and out."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0)) + 0.5, 0, 255).astype(np.uint8)


def references(model: Path, n_test: int) -> dict[str, dict[str, dict]]:
    """What needs no model, on the same test examples: the unchanged source (ignoring the instruction), a
    Gaussian blur of it (a classical restorer: it gains on noise and loses on blur and watermarks) and the
    true target (the decoders' ceiling). Each with the decoders' full summary per task."""
    from instruct.decode import summarise
    from instruct.evaluate import eval_examples
    from instruct.pipeline import InstructPipeline

    test = eval_examples(InstructPipeline.from_pretrained(model), "test", n_test)
    out: dict[str, dict[str, dict]] = {}
    for name, pick in (("identity", lambda e: e.source), ("blur", lambda e: gaussian_blur(e.source)),
                       ("target", lambda e: e.target)):
        scores = example_scores(test, [pick(e) for e in test])
        summaries = summarise(scores)
        out[name] = {t: {**summary(task_values(scores, t)), "summary": summaries[t]}
                     for t in TASKS if task_values(scores, t)}
    return out


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Per task: multi vs single over seeds (means, sd, Welch) and per seed (paired t-test), goal checks."""
    from diffusion_stats import mean_std, welch

    out: dict[str, Any] = {}
    seeds = sorted(results["seeds"])
    for task in TASKS:
        multi = [results["seeds"][s]["multi"]["tasks"][task] for s in seeds if task in results["seeds"][s]["multi"]["tasks"]]
        single = [results["seeds"][s][task]["tasks"][task] for s in seeds if task in results["seeds"][s]]
        if not multi:
            continue
        m_means = [summary(m["values"])["mean"] for m in multi]
        row: dict[str, Any] = {"multi": mean_std(m_means), "no_instruction": mean_std(
            [summary(m["no_instruction"])["mean"] for m in multi])}
        row["goal"] = GOALS[task]
        row["goal_met"] = bool(row["multi"][0] >= GOALS[task])
        if single:
            s_means = [summary(s["values"])["mean"] for s in single]
            row["single"] = mean_std(s_means)
            row["within_10pct"] = bool(row["multi"][0] >= (1 - WITHIN) * row["single"][0])
            row["paired_by_seed"] = [paired(m["values"], s["values"]) for m, s in zip(multi, single)]
            row["welch_over_seeds"] = welch(m_means, s_means)
        out[task] = row
    return out


def render(results: dict[str, Any]) -> str:
    def fmt(pair) -> str:
        mean, sd = pair
        return f"{mean:.3f}" + (f" +- {sd:.3f}" if sd is not None else "")

    refs = results.get("references", {})
    seeds = sorted(results["seeds"])
    lines = [f"Test split, held-out combinations and phrasings; seeds {', '.join(map(str, seeds))}; "
             f"{results['settings']['steps']} training steps per model; guidance chosen per task on validation.",
             "", "| task (metric) | goal | multi-task | single-task | multi / single | paired p (seed "
             f"{seeds[0]}) | no instruction | identity | target |", "|---|---|---|---|---|---|---|---|---|"]
    for task, row in results["comparison"].items():
        metric = {"segment": "IoU", "keypoint": "PCK", "restore": "PSNR gain dB", "edit": "edit acc"}[task]
        single = fmt(row["single"]) if "single" in row else "-"
        ratio = f"{row['multi'][0] / row['single'][0]:.2f}" if "single" in row and row["single"][0] else "-"
        test = (row.get("paired_by_seed") or [None])[0]
        p = f"{test['p']:.2g}" if test else "-"
        ident = refs.get("identity", {}).get(task, {}).get("mean", float("nan"))
        target = refs.get("target", {}).get(task, {}).get("mean", float("nan"))
        lines.append(f"| {task} ({metric}) | {row['goal']:g} | {fmt(row['multi'])} | {single} | {ratio} | {p} | "
                     f"{fmt(row['no_instruction'])} | {ident:.3f} | {target:.3f} |")
    # the decoders' secondary figures, multi-task model of the first seed beside the references
    first = results["seeds"][seeds[0]]["multi"]["tasks"]
    lines += ["", f"Secondary figures (multi-task model, seed {seeds[0]}; references on the same test examples):", "",
              "| figure | multi-task | identity | blur | target |", "|---|---|---|---|---|"]
    for task, arm in first.items():
        for key in sorted(k for k in arm["summary"] if k != "n"):
            cells = [arm["summary"][key]] + [refs.get(r, {}).get(task, {}).get("summary", {}).get(key, float("nan"))
                                            for r in ("identity", "blur", "target")]
            lines.append(f"| {task}: {key} | " + " | ".join(
                "-" if v is None or v != v else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from common import machine_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="instruct/small")
    parser.add_argument("--steps", type=int, default=4000, help="training steps of every model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--single", nargs="*", default=list(TASKS), help="tasks that get a single-task model")
    parser.add_argument("--n-val", type=int, default=16, help="validation examples per task")
    parser.add_argument("--n-test", type=int, default=32, help="test examples per task")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--text-scales", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.5])
    parser.add_argument("--image-scales", type=float, nargs="+", default=[0.5, 1.25, 1.5])
    parser.add_argument("--out", default="runs/instruct/bench")
    parser.add_argument("--train-overrides", nargs="*", default=[], help="extra key=value for every model")
    parser.add_argument("--result", default="docs/results/instruct.json")
    parser.add_argument("--render", action="store_true", help="print the tables of --result and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(Path(args.result).read_text())))
        return
    started = time.time()
    out = Path(args.out)
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("render", "result")},
                               "seeds": {}}
    eval_args = (args.n_val, args.n_test, args.text_scales, args.image_scales, args.sample_steps)
    for seed in args.seeds:
        arms = {"multi": TASKS, **{t: (t,) for t in args.single}}
        results["seeds"][seed] = {}
        for name, tasks in arms.items():
            model = train(args.config, tasks, seed, args.steps, out / f"{name}-seed{seed}", args.train_overrides)
            results["seeds"][seed][name] = evaluate_arm(model, tasks, *eval_args)
            print(f"seed {seed} {name}: " + ", ".join(
                f"{t} {summary(v['values'])['mean']:.3f}" for t, v in results["seeds"][seed][name]["tasks"].items()),
                flush=True)
    results["references"] = references(out / f"multi-seed{args.seeds[0]}" / "model", args.n_test)
    results["comparison"] = compare(results)
    results["machine"] = machine_line()
    results["minutes"] = round((time.time() - started) / 60, 1)
    from data_tools.files import atomic_write_json
    from instruct.evaluate import json_safe

    atomic_write_json(Path(args.result), json_safe(results))
    print(render(results))


if __name__ == "__main__":
    main()
