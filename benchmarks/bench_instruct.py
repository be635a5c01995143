"""InstructDiffusion's claim in miniature: one multi-task model against single-task models with the same steps.

For every seed: train the multi-task model and one single-task model per task (`hdvila instruct train`, the
same config, steps and batch size; only `data.tasks` differs); choose each task's guidance scales (s_T, s_I)
on the VALIDATION split (held-out combinations and phrasings); then score the TEST split once at those scales,
with the instruction and with it removed, beside two references that need no model: the unchanged source
(identity: what ignoring the instruction scores) and the true target (the decoders' ceiling).

    python benchmarks/bench_instruct.py --steps 8000 --seeds 0 --arms multi restore --out runs/instruct/bench
    python benchmarks/bench_instruct.py --steps 8000 --seeds 0 --arms segment keypoint     # a later session
    python benchmarks/bench_instruct.py --render          # print the tables of --result
    python benchmarks/bench_instruct.py --arms            # no arm: refresh references, phrasings, tables

One model of 8,000 steps takes 1-2 hours on a 2-core CPU, so the arms can be made in several sessions: `--arms`
names those to train and score now, and an existing --result with the same settings keeps its other arms (each
arm records the machine and date it was scored on). Writes docs/results/instruct.json (per-example test values
are stored, so the paired tests can be redone), docs/results/instruct_bench.png (per task: every arm beside the
references; the multi-task model's validation sweep over (s_T, s_I)) and prints the tables, one of them the
first seed's test values per phrasing template (which held-out sentences fail).
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
COMBINATION_TASKS = ("segment", "keypoint", "edit")  # those that name (object or part, colour) pairs
GOALS = {"segment": 0.7, "keypoint": 0.8, "restore": 3.0, "edit": 0.8}  # issue 16, on held-out test examples
WITHIN = 0.10  # the multi-task model within 10% of the single-task ones
# the template families (instruct.tasks.TEMPLATES) each task's instructions are phrased from
PHRASING_FAMILIES = {"segment": ("segment",), "keypoint": ("keypoint",),
                     "restore": ("denoise", "deblur", "watermark"), "edit": ("recolour", "remove", "bigger")}


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
    """The (s_T, s_I) of the sweep (rows of instruct.evaluate.guidance_sweep) with the best validation mean of
    `task`'s metric (ties: the first, in sweep order)."""
    from instruct.decode import METRICS

    def value(row: dict) -> float:
        return row["summary"].get(task, {}).get(METRICS[task], float("-inf"))

    best = max(sweep, key=value)
    return {"text_scale": best["text_scale"], "image_scale": best["image_scale"], "val": value(best)}


def summary(values: Sequence[float]) -> dict[str, Any]:
    from diffusion_stats import mean_std

    mean, sd = mean_std(values)
    return {"mean": mean, "sd": sd, "n": len(values)}


def evaluate_arm(model: Path, tasks: Sequence[str], n_val: int, n_test: int, text_scales: Sequence[float],
                 image_scales: Sequence[float], steps: int) -> dict[str, Any]:
    """Guidance chosen per task on val; test scored once at those scales, with and without the instruction, and
    (the diagnostic "seen_combinations") on test scenes whose (object, colour) or (part, colour) pairs were
    trained, still phrased in held-out sentences: a model that fails only on held-out pairs has learnt the task
    but does not compose; one that fails on both has not learnt it."""
    from instruct.decode import summarise
    from instruct.evaluate import edit_examples, eval_examples, eval_settings, guidance_sweep
    from instruct.pipeline import InstructPipeline
    from instruct.tasks import make_eval_set

    pipe = InstructPipeline.from_pretrained(model)
    val = [e for e in eval_examples(pipe, "val", n_val) if e.task in tasks]
    sweep = guidance_sweep(pipe, val, text_scales, image_scales, steps=steps)
    test = [e for e in eval_examples(pipe, "test", n_test) if e.task in tasks]
    data, ecfg = eval_settings(pipe)
    seen = [e for e in make_eval_set(data, n_test, "test", ecfg.seed, combos="train", phrasing="heldout")
            if e.task in tasks and e.task in COMBINATION_TASKS]
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
        seen_examples = [e for e in seen if e.task == task]
        if seen_examples:
            arm["tasks"][task]["seen_combinations"] = task_values(
                example_scores(seen_examples, edit_examples(pipe, seen_examples, **kwargs)), task)
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


def phrasing_groups() -> dict[str, str]:
    """Regexes of the words a template's placeholders take, so a template matches only its own sentences
    ("Make {object} {colour}." must not match "Make the red circle larger.")."""
    import re

    from data_tools.synth import COLOURS, SHAPES
    from instruct.tasks import FACE_OBJECT, KEYPOINT_COLOURS, KEYPOINT_PARTS, MARK_COLOURS

    def any_of(words) -> str:
        return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))

    return {"colour": any_of([*MARK_COLOURS, *KEYPOINT_COLOURS, *COLOURS]), "part": any_of(KEYPOINT_PARTS),
            "object": f"{re.escape(FACE_OBJECT)}|the (?:{any_of(COLOURS)}) (?:{any_of(SHAPES)})"}


def phrasing(example, groups: dict[str, str] | None = None) -> str:
    """The template an example's instruction was made from (for keypoints, that of its first sentence). Test
    failures that gather in one held-out phrasing are a language failure, not a task failure."""
    from instruct.tasks import TEMPLATES, template_pattern

    split, groups, text = example.meta["phrasing"], groups or phrasing_groups(), example.instruction
    found = []
    for template in (t for family in PHRASING_FAMILIES[example.task] for t in TEMPLATES[family][split]):
        match = template_pattern(template, groups).match(text)
        # a keypoint instruction joins 1-5 sentences with spaces; every other instruction is one sentence
        if match and (match.end() == len(text) or (example.task == "keypoint" and text[match.end()] == " ")):
            found.append(template)
    if len(found) != 1:
        raise ValueError(f"{text!r} matches {len(found)} {split} templates of {example.task}")
    return found[0]


def phrasings_on_test(model: Path, n_test: int) -> dict[str, list[str]]:
    """Per task, the template of each test example, in the order of the stored per-example values."""
    from instruct.evaluate import eval_examples
    from instruct.pipeline import InstructPipeline

    out: dict[str, list[str]] = {}
    groups = phrasing_groups()
    for example in eval_examples(InstructPipeline.from_pretrained(model), "test", n_test):
        out.setdefault(example.task, []).append(phrasing(example, groups))
    return out


def by_phrasing(phrasings: Sequence[str], values: dict[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """{template: {"n": examples, arm: mean value}} from per-example values aligned with `phrasings`."""
    out: dict[str, dict[str, float]] = {}
    for name, vals in values.items():
        if len(vals) != len(phrasings):
            raise ValueError(f"{name}: {len(vals)} values for {len(phrasings)} phrasings")
    for template in dict.fromkeys(phrasings):
        rows = [i for i, p in enumerate(phrasings) if p == template]
        out[template] = {"n": len(rows), **{name: sum(vals[i] for i in rows) / len(rows)
                                            for name, vals in values.items()}}
    return out


def example_means(runs: Sequence[Sequence[float]]) -> list[float]:
    """Each test example's mean over runs (seeds) that scored the same examples in the same order."""
    if not runs:
        raise ValueError("example_means needs at least one run")
    if len({len(r) for r in runs}) != 1:
        raise ValueError(f"runs scored different numbers of examples: {[len(r) for r in runs]}")
    return [sum(vals) / len(vals) for vals in zip(*runs)]


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Per task: the multi-task model over seeds against the goal; where single-task models exist, multi vs
    single over the seeds that have both (means, sd, Welch) and per seed (paired t-test over test examples)."""
    from diffusion_stats import mean_std, welch

    out: dict[str, Any] = {}
    seeds = sorted(results["seeds"], key=int)
    for task in TASKS:
        multi = {s: results["seeds"][s]["multi"]["tasks"][task] for s in seeds
                 if task in results["seeds"][s].get("multi", {}).get("tasks", {})}
        if not multi:
            continue
        row: dict[str, Any] = {"multi": mean_std([summary(m["values"])["mean"] for m in multi.values()]),
                               "no_instruction": mean_std([summary(m["no_instruction"])["mean"]
                                                           for m in multi.values()]),
                               "goal": GOALS[task]}
        row["goal_met"] = bool(row["multi"][0] >= GOALS[task])
        seen = [summary(m["seen_combinations"])["mean"] for m in multi.values() if m.get("seen_combinations")]
        if seen:
            row["multi_seen_combinations"] = mean_std(seen)
        both = [s for s in multi if task in results["seeds"][s]]
        if both:
            single = [results["seeds"][s][task]["tasks"][task] for s in both]
            m_means = [summary(multi[s]["values"])["mean"] for s in both]
            s_means = [summary(x["values"])["mean"] for x in single]
            row["seeds_compared"] = [int(s) for s in both]
            row["multi_compared"] = mean_std(m_means)
            row["single"] = mean_std(s_means)
            # 10% of the single-task figure's size, so a PSNR gain below zero is judged the same way
            row["within_10pct"] = bool(row["multi_compared"][0] >= row["single"][0] - WITHIN * abs(row["single"][0]))
            row["paired_by_seed"] = [paired(multi[s]["values"], x["values"]) for s, x in zip(both, single)]
            # every seed scores the same test examples: pair each example's mean over the seeds
            row["paired_seed_means"] = paired(example_means([multi[s]["values"] for s in both]),
                                              example_means([x["values"] for x in single]))
            row["welch_over_seeds"] = welch(m_means, s_means)
        phrasings = results.get("test_phrasings", {}).get(task)
        if phrasings:  # where in the language the test examples fail, over the seeds compared (else every seed)
            used = both or list(multi)
            arms = {"multi": [multi[s]["values"] for s in used],
                    "single": [results["seeds"][s][task]["tasks"][task]["values"] for s in both]}
            row["by_phrasing_seeds"] = [int(s) for s in used]
            row["by_phrasing"] = by_phrasing(phrasings, {name: example_means(v) for name, v in arms.items() if v})
        out[task] = row
    return out


def render(results: dict[str, Any]) -> str:
    def fmt(pair) -> str:
        mean, sd = pair
        return f"{mean:.3f}" + (f" +- {sd:.3f}" if sd is not None else "")

    def p_of(test) -> str:
        return f"{test['p']:.2g}" if test else "-"

    refs = results.get("references", {})
    seeds = sorted(results["seeds"], key=int)
    lines = [f"Test split, held-out combinations and phrasings; seeds {', '.join(map(str, seeds))}; "
             f"{results['settings']['steps']} training steps per model; guidance chosen per task on validation.",
             "", "| task (metric) | goal | multi-task | goal met | single-task | multi / single | within 10% | "
             "paired p per seed | paired p, seed means | Welch p, seeds | multi, seen pairs | no instruction | "
             "identity | blur | target |",
             "|---" * 15 + "|"]
    for task, row in results["comparison"].items():
        metric = {"segment": "IoU", "keypoint": "PCK", "restore": "PSNR gain dB", "edit": "edit acc"}[task]
        single = fmt(row["single"]) if "single" in row else "-"
        ratio = (f"{row['multi_compared'][0] / row['single'][0]:.2f}" if "single" in row and row["single"][0] > 0
                 else "-")  # a ratio of negative PSNR gains means nothing
        per_seed = ", ".join(p_of(t) for t in row.get("paired_by_seed", [])) or "-"
        pooled = p_of(row.get("paired_seed_means"))
        welch_p = p_of(row.get("welch_over_seeds"))
        within = ("yes" if row["within_10pct"] else "no") if "within_10pct" in row else "-"
        ident, blur, target = (refs.get(name, {}).get(task, {}).get("mean", float("nan"))
                               for name in ("identity", "blur", "target"))
        lines.append(f"| {task} ({metric}) | {row['goal']:g} | {fmt(row['multi'])} | "
                     f"{'yes' if row['goal_met'] else 'no'} | {single} | {ratio} | {within} | "
                     f"{per_seed} | {pooled} | {welch_p} | "
                     f"{fmt(row['multi_seen_combinations']) if 'multi_seen_combinations' in row else '-'} | "
                     f"{fmt(row['no_instruction'])} | {ident:.3f} | {blur:.3f} | {target:.3f} |")
    # the decoders' secondary figures, multi-task model of the first seed beside the references
    first = results["seeds"][seeds[0]].get("multi", {}).get("tasks", {})
    lines += ["", f"Secondary figures (multi-task model, seed {seeds[0]}; references on the same test examples):", "",
              "| figure | multi-task | identity | blur | target |", "|---|---|---|---|---|"]
    for task, arm in first.items():
        for key in sorted(k for k in arm["summary"] if k != "n"):
            cells = [arm["summary"][key]] + [refs.get(r, {}).get(task, {}).get("summary", {}).get(key, float("nan"))
                                            for r in ("identity", "blur", "target")]
            lines.append(f"| {task}: {key} | " + " | ".join(
                "-" if v is None or v != v else f"{v:.3f}" for v in cells) + " |")
    phrased = {task: row for task, row in results["comparison"].items() if "by_phrasing" in row}
    if phrased:
        lines += ["", "Per test phrasing (each example's mean over the seeds named; for keypoints the first "
                  "sentence's):", "", "| task | seeds | phrasing | n | multi-task | single-task |",
                  "|---|---|---|---|---|---|"]
        for task, row in phrased.items():
            used = ", ".join(map(str, row.get("by_phrasing_seeds", [])))
            for template, cell in row["by_phrasing"].items():
                single = f"{cell['single']:.3f}" if "single" in cell else "-"
                lines.append(f"| {task} | {used} | {template} | {cell['n']} | {cell['multi']:.3f} | {single} |")
    return "\n".join(lines)


# the settings two invocations must share for their arms to be compared in one result file
COMPARABLE = ("config", "steps", "n_val", "n_test", "sample_steps", "text_scales", "image_scales", "train_overrides")


def start_results(path: Path, settings: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """The result file's contents to add arms to: the existing file when its COMPARABLE settings equal these
    (arms made in earlier sessions are kept), else a new one; a mismatch without `fresh` is an error."""
    if path.exists() and not fresh:
        old = json.loads(path.read_text())
        differ = {k: (old.get("settings", {}).get(k), settings[k]) for k in COMPARABLE
                  if old.get("settings", {}).get(k) != settings[k]}
        if differ:
            raise SystemExit(f"{path} was made with other settings {differ} (old, new): its arms cannot be compared "
                             "with these; pass --fresh to replace it or --result to write elsewhere")
        old["settings"] = {**old["settings"], **settings}
        return old
    return {"settings": settings, "seeds": {}}


def write_figure(results: dict[str, Any], path: Path) -> Path:
    """Per task (columns): the test metric of every arm beside the references (top), and the multi-task model's
    validation sweep over (s_T, s_I) for the first seed (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data_tools.training.metrics import save_figure
    from instruct.decode import METRICS
    from instruct.evaluate import draw_sweep

    seeds = sorted(results["seeds"], key=int)
    multi = results["seeds"][seeds[0]].get("multi")
    tasks = [t for t in TASKS if t in results.get("comparison", {})]
    fig, axes = plt.subplots(2 if multi else 1, len(tasks), figsize=(3.4 * len(tasks), 6.2 if multi else 3.2),
                             squeeze=False)
    refs = results.get("references", {})
    for k, task in enumerate(tasks):
        row = results["comparison"][task]
        bars = [("multi", row["multi"]), ("single", row.get("single")), ("no instr.", row["no_instruction"])]
        bars += [(name, (refs[name][task]["mean"], None)) for name in ("identity", "blur", "target")
                 if task in refs.get(name, {})]
        bars = [(name, pair) for name, pair in bars if pair is not None]
        ax = axes[0][k]
        ax.bar([n for n, _ in bars], [p[0] for _, p in bars], yerr=[p[1] or 0.0 for _, p in bars],
               color=[{"multi": "tab:blue", "single": "tab:orange", "no instr.": "tab:gray"}.get(n, "silver")
                      for n, _ in bars])
        ax.axhline(row["goal"], color="tab:red", linestyle="--", linewidth=1, label=f"goal {row['goal']:g}")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_title(f"{task}: {METRICS[task]} (test)")
        ax.tick_params(axis="x", labelrotation=45)
        ax.legend(fontsize=7)
        if multi and task in multi["tasks"]:
            fig.colorbar(draw_sweep(axes[1][k], multi["sweep"], task), ax=axes[1][k], shrink=0.8)
            axes[1][k].set_title(f"multi-task, validation sweep (seed {seeds[0]})", fontsize=8)
    fig.suptitle(f"{results['settings']['steps']} training steps per model; error bars: sd over seeds")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def main() -> None:
    from common import machine_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="instruct/small")
    parser.add_argument("--steps", type=int, default=8000, help="training steps of every model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="*", default=["multi", *TASKS], choices=["multi", *TASKS],
                        help="models to train (or reuse from --out) and score now: multi and single-task ones; "
                             "none: refresh the references and phrasings of the arms already scored")
    parser.add_argument("--n-val", type=int, default=16, help="validation examples per task")
    parser.add_argument("--n-test", type=int, default=32, help="test examples per task")
    parser.add_argument("--sample-steps", type=int, default=25)
    # (s_T, s_I) = (0.5, 0.5) is the plain conditional prediction eps(I, T): no guidance at all
    parser.add_argument("--text-scales", type=float, nargs="+", default=[0.5, 1.0, 3.0, 5.0, 7.5])
    parser.add_argument("--image-scales", type=float, nargs="+", default=[0.5, 1.25, 1.5])
    parser.add_argument("--out", default="runs/instruct/bench")
    parser.add_argument("--train-overrides", nargs="*", default=[], help="extra key=value for every model")
    parser.add_argument("--result", default="docs/results/instruct.json")
    parser.add_argument("--figure", default="docs/results/instruct_bench.png")
    parser.add_argument("--fresh", action="store_true", help="replace --result even if its settings differ")
    parser.add_argument("--render", action="store_true", help="print the tables of --result and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(Path(args.result).read_text())))
        return
    out, result_path = Path(args.out), Path(args.result)
    settings = {k: v for k, v in vars(args).items() if k not in ("render", "result", "figure", "fresh", "arms")}
    results = start_results(result_path, settings, args.fresh)
    eval_args = (args.n_val, args.n_test, args.text_scales, args.image_scales, args.sample_steps)
    for seed in args.seeds:
        arms = results["seeds"].setdefault(str(seed), {})
        for name in args.arms:
            started = time.time()
            tasks = TASKS if name == "multi" else (name,)
            model = train(args.config, tasks, seed, args.steps, out / f"{name}-seed{seed}", args.train_overrides)
            arms[name] = {**evaluate_arm(model, tasks, *eval_args), "machine": machine_line(),
                          "scored": time.strftime("%Y-%m-%d"), "minutes": round((time.time() - started) / 60, 1)}
            print(f"seed {seed} {name}: " + ", ".join(f"{t} {summary(v['values'])['mean']:.3f}"
                                                      for t, v in arms[name]["tasks"].items()), flush=True)
    first = min(results["seeds"], key=int)
    reference_model = out / f"multi-seed{first}" / "model"
    if (reference_model / "config.json").exists():  # else the references of an earlier invocation stay
        results["references"] = references(reference_model, args.n_test)
        results["test_phrasings"] = phrasings_on_test(reference_model, args.n_test)
    results["comparison"] = compare(results)
    from data_tools.files import atomic_write_json
    from instruct.evaluate import json_safe

    results = json_safe(results)
    atomic_write_json(result_path, results)
    if results["comparison"]:
        write_figure(results, Path(args.figure))
    print(render(results))


if __name__ == "__main__":
    main()
