"""SPO in miniature (docs/results/spo.md): step-wise preference pairs against trajectory-level DPO, at equal
denoiser evaluations, with the ablations and the baselines a sceptic asks for.

    python benchmarks/bench_spo.py                       # base, preference models, lr sweep, 3 seeds, report
    python benchmarks/bench_spo.py --quick --runs DIR    # a tiny end-to-end pass (the test uses it)
    python benchmarks/bench_spo.py --tilt --kl 1 3 10    # the FD yardstick: KL-optimal tilts of the base, and SPO
                                                         # with a KL anchor (docs/results/spo_tilt.md)
    python benchmarks/bench_spo.py --more-seeds 4 5 6    # random vs winner continue on more seeds (spo_continue.md)

Stages (finished runs are reused, so a rerun only trains what is missing):
1. base: `hdvila diffusion train --config spo/digits-base` (class-conditional 8x8 digits, DDIM eta=1, 10 steps).
2. preference models: `hdvila spo spm-train --config spo/spm` (the step-aware model and the final-image scorer,
   from labelled pairs of the base model's own samples).
3. learning-rate sweep, training seed 0, scored on the VALIDATION noise seed: for SPO and for trajectory DPO, the
   learning rate with the largest hidden-aesthetic value at the compute budget among those that keep class
   accuracy within 2 points of the base.
4. main runs, training seeds 1..3, scored on the TEST noise seed (never used for a choice): SPO (random
   continue), SPO winner-continue, SPO with the final-image scorer, SPO with a coin-flip scorer (chance), SPO with
   the hidden aesthetic itself as scorer (the shortcut's ceiling), trajectory DPO.
5. report: curves against denoiser evaluations, the goal (SPO reaches DPO's final aesthetic gain with at most a
   third of its evaluations, class accuracy within 2 points, FD within 10%), Welch tests, sample grids.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import run_hdvila as hdvila  # noqa: E402
from diffusion_stats import fmt_p, mean_std, welch  # noqa: E402

VAL_SEED = 1234  # noise seed of the samples the sweep chooses on
TEST_SEED = 2024  # noise seed of the samples the main runs are reported on
SWEEP_SEED = 0
ARMS = {  # arm -> overrides of spo/digits (the SPM folder is filled in)
    "spo": {},
    "spo-winner": {"continue_rule": "winner"},
    "spo-final-image": {"scorer": "{spm}/final-image"},
    "spo-coinflip": {"scorer": "coinflip"},
    "spo-oracle": {"scorer": "oracle-crispness"},
    "trajectory-dpo": {"method": "trajectory_dpo"},
}
LR_OF = {"trajectory-dpo": "trajectory_dpo"}  # arms whose learning rate is the DPO sweep's (the rest: SPO's)
METRICS = ("crispness", "centring", "class_accuracy", "fd")


# ------------------------------------------------------------------------------------------------ runs

def ensure_base(root: Path, quick: bool, threads: int) -> Path:
    model = root / "base" / "model"
    if not (model / "model.safetensors").exists():
        extra = ["train.max_steps=300", "train.val_every=0", "train.save_every=0"] if quick else []
        hdvila(["diffusion", "train", "--config", "spo/digits-base", f"output_dir={root / 'base'}", *extra],
               root / "base.log", threads)
    return model


def ensure_spm(root: Path, base: Path, quick: bool, threads: int) -> Path:
    out = root / "spm"
    if not (out / "report.json").exists():
        extra = ["samples_per_prompt=40", "fit.steps=60"] if quick else []
        hdvila(["spo", "spm-train", "--config", "spo/spm", f"base={base}", f"output_dir={out}", *extra],
               root / "spm.log", threads)
    return out


def run_arm(out: Path, arm: str, base: Path, spm: Path, seed: int, lr: float, steps: int, eval_seed: int,
            val_every: int, samples: int, threads: int, extra: dict | None = None) -> Path:
    record = out / "metrics.jsonl"
    if (out / "model" / "model.safetensors").exists() and record.exists():
        return out
    overrides = {"scorer": str(spm / "step-aware"), **ARMS[arm], **(extra or {})}
    overrides = {k: str(v).replace("{spm}", str(spm)) for k, v in overrides.items()}
    args = ["spo", "train", "--config", "spo/digits", f"base={base}", f"output_dir={out}", f"train.seed={seed}",
            f"optim.lr={lr}", f"train.max_steps={steps}", f"train.val_every={val_every}",
            f"train.log_every={val_every}", f"eval.seed={eval_seed}", f"eval.samples={samples}",
            *[f"{k}={v}" for k, v in overrides.items()]]
    hdvila(args, out / "run.log", threads)
    return out


def curve(run: Path) -> dict[str, list[float]]:
    """The run's evaluations against denoiser evaluations, starting at the base model (nfe 0)."""
    base = json.loads((run / "base_eval.json").read_text())
    points = {"nfe": [0.0], **{m: [float(base[m])] for m in METRICS}}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "val/nfe" in record and "val/crispness" in record:
            points["nfe"].append(float(record["val/nfe"]))
            for m in METRICS:
                points[m].append(float(record[f"val/{m}"]))
    return points


def value_at(points: dict[str, list[float]], metric: str, nfe: float) -> float | None:
    """Linear interpolation of a metric at `nfe`; None beyond the run's last evaluation."""
    xs, ys = points["nfe"], points[metric]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= nfe <= x1:
            return y0 + (y1 - y0) * (nfe - x0) / (x1 - x0) if x1 > x0 else y1
    return None


def nfe_to_reach(points: dict[str, list[float]], metric: str, level: float) -> float | None:
    """First NFE (interpolated) at which the metric reaches `level` from below; None if it never does."""
    xs, ys = points["nfe"], points[metric]
    if ys[0] >= level:
        return 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= level:
            return x1 if y1 == y0 or y0 >= level else x0 + (x1 - x0) * (level - y0) / (y1 - y0)
    return None


def nfe_per_step(run: Path) -> float:
    points = curve(run)
    last_step = max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line)
    return points["nfe"][-1] / last_step


# ------------------------------------------------------------------------------------------------ stages

def sweep(root: Path, base: Path, spm: Path, lrs: list[float], budget: float, probe_steps: dict[str, int],
          samples: int, val_every: int, threads: int) -> dict:
    """Seed-0 runs per method and learning rate, scored on the validation noise seed; choose per method."""
    results: dict = {"runs": {}, "chosen": {}}
    for arm in ("spo", "trajectory-dpo"):
        candidates = []
        for lr in lrs:
            run = run_arm(root / "sweep" / f"{arm}-lr{lr:g}", arm, base, spm, SWEEP_SEED, lr, probe_steps[arm],
                          VAL_SEED, val_every, samples, threads)
            points = curve(run)
            at = {m: value_at(points, m, budget) for m in METRICS}
            reached = at["crispness"] is not None
            if not reached:  # the run fell short of the budget: its last evaluation stands in, flagged
                at = {m: points[m][-1] for m in METRICS}
            ok = at["class_accuracy"] >= points["class_accuracy"][0] - 0.02  # False for NaN (a diverged run)
            results["runs"][f"{arm}-lr{lr:g}"] = {"lr": lr, "at_budget": at, "reached_budget": reached,
                                                 "class_accuracy_ok": ok, "nfe_per_step": nfe_per_step(run)}
            print(f"sweep {arm} lr {lr:g}: {at} (reached budget: {reached})", flush=True)
            if ok:
                candidates.append((at["crispness"], lr, nfe_per_step(run)))
        if not candidates:
            raise RuntimeError(f"no learning rate keeps {arm}'s class accuracy within 2 points")
        _, lr, per_step = max(candidates)
        results["chosen"][arm] = {"lr": lr, "nfe_per_step": per_step}
    return results


def main_runs(root: Path, base: Path, spm: Path, chosen: dict, seeds: list[int], budget: float, samples: int,
              val_every: int, threads: int, arms: list[str]) -> dict:
    runs: dict = {}
    for arm in arms:
        method = "trajectory-dpo" if arm in LR_OF else "spo"
        lr, per_step = chosen[method]["lr"], chosen[method]["nfe_per_step"]
        steps = max(val_every, int(math.ceil(1.15 * budget / per_step / val_every)) * val_every)
        for seed in seeds:
            started = time.time()
            run = run_arm(root / "main" / f"{arm}-seed{seed}", arm, base, spm, seed, lr, steps, TEST_SEED,
                          val_every, samples, threads)
            runs.setdefault(arm, {})[seed] = {"path": str(run), "curve": curve(run), "lr": lr, "steps": steps}
            print(f"main {arm} seed {seed}: {time.time() - started:.0f} s", flush=True)
    return runs


# ------------------------------------------------------------------------------------------------ more seeds

CONTINUE_ARMS = ("spo", "spo-winner")


def run_more_seeds(root: Path, out: Path, seeds: list[int], budget: float, samples: int, val_every: int,
                   jobs: int) -> None:
    """Random against winner continue on more training seeds, at the published protocol (spo.json's learning
    rate and step count, the test noise seed), pooled with the published seeds: docs/results/spo_continue.md.

    The three published seeds left this comparison underpowered (p = 0.30); the extra seeds were added after
    seeing that, so the report gives the published seeds' test beside the pooled one."""
    from concurrent.futures import ThreadPoolExecutor

    from common import machine_line
    from data_tools.files import atomic_write_json

    published = json.loads((out / "spo.json").read_text())
    base = ensure_base(root, False, 1)
    spm = ensure_spm(root, base, False, 1)
    plan = [(arm, seed) for seed in seeds for arm in CONTINUE_ARMS]
    settings = {arm: published["runs"][arm][str(published["seeds"][0])] for arm in CONTINUE_ARMS}

    def one(arm_seed):
        arm, seed = arm_seed
        started = time.time()
        run = run_arm(root / "main" / f"{arm}-seed{seed}", arm, base, spm, seed, settings[arm]["lr"],
                      settings[arm]["steps"], TEST_SEED, val_every, samples, 1)
        print(f"{arm} seed {seed}: {time.time() - started:.0f} s", flush=True)
        return arm, seed, curve(run)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        new = list(pool.map(one, plan))
    curves = {arm: {int(seed): r["curve"] for seed, r in published["runs"][arm].items()} for arm in CONTINUE_ARMS}
    for arm, seed, points in new:
        curves[arm][seed] = points
    at_budget = {arm: {seed: {m: value_at(c, m, budget) for m in METRICS} for seed, c in sorted(by_seed.items())}
                 for arm, by_seed in curves.items()}
    old = [int(x) for x in published["seeds"]]

    def compare(which: list[int]) -> dict:
        return {m: welch(_known([at_budget["spo"][x][m] for x in which]),
                         _known([at_budget["spo-winner"][x][m] for x in which])) for m in ("crispness", "fd")}

    every = sorted(set(old) | set(seeds))
    results = {"machine": machine_line(), "budget": budget, "published_seeds": old, "added_seeds": seeds,
               "settings": {arm: {"lr": v["lr"], "steps": v["steps"]} for arm, v in settings.items()},
               "at_budget": {arm: {str(k): v for k, v in d.items()} for arm, d in at_budget.items()},
               "published_test": compare(old), "pooled_test": compare(every),
               "added_only_test": compare(sorted(seeds))}
    atomic_write_json(out / "spo_continue.json", results)
    write_continue_report(results, out / "spo_continue.md")
    print(f"wrote {out / 'spo_continue.md'}")


def write_continue_report(results: dict, path: Path) -> None:
    def cell(arm, seeds, metric, digits):
        values = _known([results["at_budget"][arm][str(x)][metric] for x in seeds])  # None: short of the budget
        if not values:
            return "n/a"
        mean, std = mean_std(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"

    old, added = results["published_seeds"], results["added_seeds"]
    every = sorted(set(old) | set(added))
    lines = ["# SPO: random against winner continue, more seeds", "",
             "Generated by `python benchmarks/bench_spo.py --more-seeds ...`; the published runs are in "
             "[spo.md](spo.md).",
             "", f"- Machine: {results['machine']}.",
             f"- Protocol as published: learning rate {results['settings']['spo']['lr']:g}, "
             f"{results['settings']['spo']['steps']} steps, crispness and FD at {results['budget']:,.0f} denoiser "
             f"rows on the test noise seed {TEST_SEED}. Seeds {old} are the published runs; seeds {added} were "
             "added because the published test was underpowered, so the published seeds' test is kept beside "
             "the pooled one. ± is the sample sd over seeds; tests are two-sided Welch.", "",
             "| seeds | random continue: crispness | winner continue: crispness | p | random: FD | winner: FD | p |",
             "|---|---|---|---|---|---|---|"]
    for label, seeds, test in (("published " + str(old), old, results["published_test"]),
                               ("added " + str(added), added, results["added_only_test"]),
                               ("all " + str(every), every, results["pooled_test"])):
        lines.append(f"| {label} | {cell('spo', seeds, 'crispness', 4)} | {cell('spo-winner', seeds, 'crispness', 4)}"
                     f" | {fmt_p(test['crispness']['p'] if test['crispness'] else None)} | "
                     f"{cell('spo', seeds, 'fd', 2)} | {cell('spo-winner', seeds, 'fd', 2)} | "
                     f"{fmt_p(test['fd']['p'] if test['fd'] else None)} |")
    lines += ["", "Per seed (crispness at the budget):", "", "| seed | random | winner |", "|---|---|---|"]
    lines += [f"| {x} | {cell('spo', [x], 'crispness', 4)} | {cell('spo-winner', [x], 'crispness', 4)} |"
              for x in every]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ tilt

TILT_POOL_SEED = 4242  # noise seed of the base model's pool (neither the validation nor the test seed)
TILT_GAINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08)


def tilt_frontier(base: Path, spm: Path, pool_per_class: int, draws: int, per_class: int = 50) -> dict:
    """FD at each crispness gain for the KL-optimal tilts (`spo.tilt`): the base model's pool tilted by the
    hidden aesthetic, the same pool tilted by the labellers' utility (what the preference model learnt, confounder
    included), and the real training digits tilted by the aesthetic (a perfect model's tilt). Each point is the
    mean ± sd over `draws` evaluation-shaped sets of `per_class` images per class, scored like every run."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from data_tools.distances import frechet_distance
    from data_tools.image_datasets import load_image_dataset
    from diffusion.pipeline import DiffusionPipeline
    from spo.evaluate import PolicyJudge, SPOEvalConfig
    from spo.policy import DenoiserPolicy
    from spo.preference import PreferenceLabeller, centring, stroke_crispness
    from spo.tilt import effective_size, solve_tilt, tilted_draw

    judge = PolicyJudge(SPOEvalConfig(samples=500, seed=TEST_SEED))
    policy = DenoiserPolicy.from_pipeline(DiffusionPipeline.from_pretrained(base), 10)
    base_eval = judge(policy, policy.model)  # the base as the runs see it: 500 test-noise samples
    pool, pool_classes = judge.samples(policy, policy.model, n=10 * pool_per_class, seed=TILT_POOL_SEED)
    real, real_classes = load_image_dataset("digits", split="train")
    labeller = PreferenceLabeller.from_dict(json.loads((spm / "report.json").read_text())["labeller"])
    sources = {  # name -> (images, classes, tilt reward)
        "base tilted by the aesthetic": (pool, pool_classes, stroke_crispness(pool)),
        "base tilted by the labellers' utility": (pool, pool_classes, labeller.utility(pool)),
        "real digits tilted by the aesthetic": (real, real_classes, stroke_crispness(real)),
    }
    rng = np.random.default_rng(0)
    frontier: dict = {}
    feats_ref = judge.classifier.features(judge.reference)
    for name, (images, classes, reward) in sources.items():
        # every per-image quantity once per source; a draw only indexes them
        crisp, classes_np, reward = stroke_crispness(images).numpy(), classes.numpy(), reward.numpy()
        cent = centring(images).numpy()
        correct = (judge.classifier.predict(images) == classes).numpy()
        feats = judge.classifier.features(images)
        points = []
        for gain in tqdm(TILT_GAINS, desc=name, leave=False):
            target = base_eval["crispness"] + gain
            try:
                lam = solve_tilt(crisp, classes_np, target, reward)
            except ValueError:
                continue  # beyond what reweighting this pool reaches
            draws_idx = [tilted_draw(reward, classes_np, lam, per_class, rng) for _ in range(draws)]
            fds = [frechet_distance(feats[torch.as_tensor(idx)], feats_ref) for idx in draws_idx]
            got = [float(crisp[idx].mean()) for idx in draws_idx]
            points.append({"gain": gain, "lambda": lam, "effective_size": effective_size(reward, classes_np, lam),
                           "crispness": float(np.mean(got)),
                           "centring": float(np.mean([cent[idx].mean() for idx in draws_idx])),
                           "class_accuracy": float(np.mean([correct[idx].mean() for idx in draws_idx])),
                           "fd": mean_std(fds)})
        frontier[name] = points
    return {"base": base_eval, "pool_per_class": pool_per_class, "draws": draws, "per_class": per_class,
            "pool_seed": TILT_POOL_SEED, "real_train_images": int(len(real)), "frontier": frontier}


def plot_tilt(tilt: dict, published: dict | None, path: Path) -> None:
    """FD against crispness: the tilts' frontiers, and every published run's evaluations (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, points in tilt["frontier"].items():
        x = [p["crispness"] for p in points]
        mean = np.array([p["fd"][0] for p in points])
        sd = np.array([p["fd"][1] or 0.0 for p in points])
        (line,) = ax.plot(x, mean, "o-", lw=2, label=f"{name} (KL-optimal)")
        ax.fill_between(x, mean - sd, mean + sd, alpha=0.15, color=line.get_color())
    if published:
        for arm in ("spo", "spo-winner", "spo-final-image", "trajectory-dpo"):
            by_seed = published["runs"].get(arm, {})
            curves = [r["curve"] for r in by_seed.values()]
            if curves:
                n = min(len(c["crispness"]) for c in curves)
                crisp = np.mean([c["crispness"][:n] for c in curves], axis=0)
                fd = np.mean([c["fd"][:n] for c in curves], axis=0)
                ax.plot(crisp, fd, ".--", alpha=0.7, label=f"{arm} (published runs, mean of seeds)")
    for run in tilt.get("kl_anchor", {}).get("runs", []):
        c = run["curve"]
        ax.plot(c["crispness"], c["fd"], "-", lw=0.8, alpha=0.8,
                label=f"SPO, kl anchor {run['weight']:g} (seed {SWEEP_SEED}, validation noise)")
    base = tilt["base"]
    ax.axhline(1.1 * base["fd"], color="k", ls=":", lw=1, label="the goal: base FD + 10%")
    ax.set_xlabel("stroke crispness (hidden aesthetic)")
    ax.set_ylabel("FD to held-out real digits")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("What a crispness gain costs in FD: KL-optimal tilts against the runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier_fd(points: list[dict], crispness: float) -> float | None:
    """A frontier's mean FD at a crispness, interpolated between its drawn points; None outside them."""
    xs = [p["crispness"] for p in points]
    if not points or not xs[0] <= crispness <= xs[-1]:
        return None
    import numpy as np

    return float(np.interp(crispness, xs, [p["fd"][0] for p in points]))


def compare_with_tilt(tilt: dict, published: dict) -> dict:
    """Each published seed's FD where SPO reached DPO's final gain (and DPO's own at its budget) beside the tilts'
    FD at that crispness, with paired t-tests of run minus aesthetic tilt over the seeds where both exist."""
    from scipy import stats

    per_seed = []
    for e in published["analysis"]["goal"]["per_seed"]:
        if e.get("spo_fd_there") is None:
            continue
        at = tilt["base"]["crispness"] + e["dpo_final_gain"]
        per_seed.append({"seed": e["seed"], "gain": e["dpo_final_gain"], "spo_fd": e["spo_fd_there"],
                         "dpo_fd": e["dpo_fd_final"],
                         "tilt_aesthetic": frontier_fd(tilt["frontier"]["base tilted by the aesthetic"], at),
                         "tilt_utility": frontier_fd(tilt["frontier"]["base tilted by the labellers' utility"], at)})
    result: dict = {"per_seed": per_seed}
    for key, arm in (("spo_vs_tilt", "spo_fd"), ("dpo_vs_tilt", "dpo_fd")):
        diffs = [e[arm] - e["tilt_aesthetic"] for e in per_seed if e["tilt_aesthetic"] is not None]
        if len(diffs) >= 2:
            mean, sd = mean_std(diffs)
            result[key] = {"mean": mean, "sd": sd, "n": len(diffs),
                           "p": float(stats.ttest_1samp(diffs, 0.0).pvalue)}
    return result


def write_tilt_report(tilt: dict, path: Path) -> None:
    base = tilt["base"]
    lines = ["# SPO's FD goal against the KL-optimal tilt", "",
             "Generated by `python benchmarks/bench_spo.py --tilt`; see [spo.md](spo.md) for the runs and "
             "[../spo.md](../spo.md) for the design.", "",
             f"- Machine: {tilt['machine']}.",
             f"- Base (test noise seed {TEST_SEED}, 500 samples): crispness {base['crispness']:.4f}, FD "
             f"{base['fd']:.2f}; the goal allows FD {1.1 * base['fd']:.2f}.",
             f"- Pool: {tilt['pool_per_class']} base samples per class (noise seed {tilt['pool_seed']}); "
             f"{tilt['real_train_images']} real training digits. Each point: {tilt['draws']} sets of "
             f"{tilt['per_class']} per class drawn without replacement with weights exp(λ·reward), λ solved so the "
             "tilted mean crispness is the base's plus the gain; FD to the held-out digits as every run is scored. "
             "± is the sd over draws. Where the effective pool (Kish) is under twice the draw, the draw is "
             "forced by the pool more than by the tilt (marked *), and its crispness falls short of the gain asked.",
             "",
             "| tilt | gain asked | λ | effective pool per class | crispness drawn | centring | class acc. % | FD | "
             "FD / base FD |", "|---|---|---|---|---|---|---|---|---|"]
    for name, points in tilt["frontier"].items():
        for p in points:
            fd, sd = p["fd"]
            forced = "*" if p["effective_size"] < 2 * tilt["per_class"] else ""
            lines.append(f"| {name} | {p['gain']:+.3f} | {p['lambda']:.1f} | {p['effective_size']:.0f}{forced} | "
                         f"{p['crispness']:.4f} | "
                         f"{p['centring']:.3f} | {p['class_accuracy'] * 100:.1f} | {fd:.2f} ± {sd:.2f} | "
                         f"{fd / base['fd']:.2f} |")
    if tilt.get("at_goal"):
        lines += ["", "The published runs (spo.md) at the goal's point, where SPO reaches trajectory DPO's final "
                  "gain, against the KL-optimal tilt of the base at the same crispness (interpolated):", "",
                  "| seed | gain | SPO's FD there | DPO's FD at its budget | tilt by the aesthetic | tilt by the "
                  "labellers' utility |", "|---|---|---|---|---|---|"]
        for e in tilt["at_goal"]["per_seed"]:
            cells = " | ".join("beyond the pool" if v is None else f"{v:.2f}" for v in (e["tilt_aesthetic"],
                                                                                      e["tilt_utility"]))
            lines.append(f"| {e['seed']} | {e['gain']:+.4f} | {e['spo_fd']:.2f} | {e['dpo_fd']:.2f} | {cells} |")
        for key, label in (("spo_vs_tilt", "SPO"), ("dpo_vs_tilt", "trajectory DPO")):
            test = tilt["at_goal"].get(key)
            if test:
                lines.append(f"\n{label} minus the aesthetic tilt, paired over seeds: {test['mean']:+.2f} ± "
                             f"{test['sd']:.2f} FD, paired t-test p = {fmt_p(test['p'])} (two-sided).")
    anchor = tilt.get("kl_anchor")
    if anchor:
        levels = anchor["levels"]
        lines += ["", "## SPO with a KL anchor", "",
                  f"`kl: w` adds w · KL(π_θ ‖ π_ref) of the pairs' transitions to SPO's loss. Runs on the learning "
                  f"rate sweep's protocol (training seed {SWEEP_SEED}, validation noise seed {VAL_SEED}, lr "
                  f"{anchor['lr']:g}, {anchor['steps']} steps); FD where each run first reaches a crispness, "
                  "beside the aesthetic tilt's FD there. The tilt's base is scored on the test noise (crispness "
                  f"{tilt['base']['crispness']:.4f}, FD {tilt['base']['fd']:.2f}); on the validation noise the base "
                  f"scores crispness {anchor['runs'][0]['curve']['crispness'][0]:.4f}, FD "
                  f"{anchor['runs'][0]['curve']['fd'][0]:.2f}.", "",
                  "| kl weight | best crispness in the budget | " + " | ".join(f"FD at {x:.2f}" for x in levels) + " |",
                  "|---|---|" + "---|" * len(levels)]
        for run in anchor["runs"]:
            cells = " | ".join("not reached" if run["fd_at"][str(x)] is None else f"{run['fd_at'][str(x)]:.2f}"
                               for x in levels)
            lines.append(f"| {run['weight']:g} | {run['best_crispness']:.4f} | {cells} |")
        frontier = tilt["frontier"]["base tilted by the aesthetic"]
        cells = " | ".join("beyond the pool" if frontier_fd(frontier, x) is None else f"{frontier_fd(frontier, x):.2f}"
                           for x in levels)
        lines.append(f"| aesthetic tilt of the base | – | {cells} |")
    lines += ["", "![tilt](spo_tilt.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


KL_LEVELS = (0.77, 0.78, 0.79, 0.80, 0.81)  # crispness levels at which the KL-anchored runs' FD is read


def kl_anchor_runs(root: Path, base: Path, spm: Path, published: dict, weights: list[float], budget: float,
                   samples: int, val_every: int, jobs: int) -> dict:
    """SPO with the `kl` anchor to the reference at each weight (0: SPO as published), on the learning-rate
    sweep's protocol (training seed 0, validation noise, SPO's chosen learning rate and step count): FD where each
    run first reaches each crispness level, and its best crispness within the budget."""
    from concurrent.futures import ThreadPoolExecutor

    lr = published["sweep"]["chosen"]["spo"]["lr"]
    steps = published["runs"]["spo"][str(published["seeds"][0])]["steps"]

    def one(weight):
        run = run_arm(root / "kl" / f"spo-kl{weight:g}", "spo", base, spm, SWEEP_SEED, lr, steps, VAL_SEED,
                      val_every, samples, 1, extra={"kl": weight})
        points = curve(run)
        reach = {str(level): nfe_to_reach(points, "crispness", level) for level in KL_LEVELS}
        fd_at = {k: (None if n is None or n > budget else value_at(points, "fd", n)) for k, n in reach.items()}
        best = max(c for n, c in zip(points["nfe"], points["crispness"]) if n <= budget)
        return {"weight": weight, "curve": points, "fd_at": fd_at, "best_crispness": best,
                "at_budget": {m: value_at(points, m, budget) for m in METRICS}}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return {"lr": lr, "steps": steps, "levels": list(KL_LEVELS), "runs": list(pool.map(one, weights))}


def run_tilt(root: Path, out: Path, quick: bool, threads: int, kl_weights: list[float] | None = None,
             budget: float = 400_000, samples: int = 500, val_every: int = 20, jobs: int = 2) -> None:
    from common import machine_line
    from data_tools.files import atomic_write_json

    base = ensure_base(root, quick, threads)
    spm = ensure_spm(root, base, quick, threads)
    tilt = tilt_frontier(base, spm, pool_per_class=60 if quick else 5000, draws=3 if quick else 20,
                         per_class=5 if quick else 50)
    tilt["machine"] = machine_line()
    published_path = out / "spo.json"
    published = json.loads(published_path.read_text()) if published_path.exists() else None
    if published:
        tilt["at_goal"] = compare_with_tilt(tilt, published)
        if kl_weights:
            tilt["kl_anchor"] = kl_anchor_runs(root, base, spm, published, sorted({0.0, *kl_weights}), budget,
                                               samples, val_every, jobs)
    atomic_write_json(out / "spo_tilt.json", tilt)
    plot_tilt(tilt, published, out / "spo_tilt.png")
    write_tilt_report(tilt, out / "spo_tilt.md")
    print(f"wrote {out / 'spo_tilt.md'}")


# ------------------------------------------------------------------------------------------------ analysis

def _known(values: list) -> list[float]:
    """Per-seed values without the seeds whose run stopped short of the point asked for."""
    return [v for v in values if v is not None]


def analyse(runs: dict, budget: float, seeds: list[int]) -> dict:
    base = {m: runs["spo"][seeds[0]]["curve"][m][0] for m in METRICS}
    at_budget = {arm: {m: [value_at(r["curve"], m, budget) for r in by_seed.values()] for m in METRICS}
                 for arm, by_seed in runs.items()}
    goal: dict = {"per_seed": []}
    for seed in seeds:
        spo, dpo = runs["spo"][seed]["curve"], runs["trajectory-dpo"][seed]["curve"]
        dpo_gain = value_at(dpo, "crispness", budget) - base["crispness"]
        reach = nfe_to_reach(spo, "crispness", base["crispness"] + dpo_gain)
        # reach 0: DPO ended no better than the base, which SPO "reaches" without training (no ratio to report)
        entry = {"seed": seed, "dpo_final_gain": dpo_gain, "spo_nfe_to_reach": reach,
                 "ratio": budget / reach if reach else None}
        entry["dpo_fd_final"] = value_at(dpo, "fd", budget)
        if reach is not None:
            entry.update({f"spo_{m}_there": value_at(spo, m, reach) for m in ("class_accuracy", "fd")})
        goal["per_seed"].append(entry)
    ratios = [e["ratio"] for e in goal["per_seed"] if e["ratio"]]
    goal["ratio_mean_std"] = mean_std(ratios) if ratios else None
    if len(ratios) >= 2:
        from scipy import stats

        test = stats.ttest_1samp([math.log(r) for r in ratios], math.log(3.0), alternative="greater")
        goal["ratio_above_3_p"] = float(test.pvalue)  # one-sided t-test of log ratio > log 3
    reached = [e for e in goal["per_seed"] if e["spo_nfe_to_reach"] is not None]
    # a seed where DPO gained nothing (ratio None) does not count against SPO
    goal["speed_met"] = len(reached) == len(seeds) and all(e["ratio"] is None or e["ratio"] >= 3 for e in reached)
    goal["class_accuracy_met"] = all(e["spo_class_accuracy_there"] >= base["class_accuracy"] - 0.02 for e in reached)
    goal["fd_met"] = all(e["spo_fd_there"] <= 1.1 * base["fd"] for e in reached)
    # the fair question behind the FD goal: at the same aesthetic gain, does SPO cost more FD than DPO?
    goal["fd_at_equal_gain"] = welch([e["spo_fd_there"] for e in reached], [e["dpo_fd_final"] for e in reached])
    tests = {}
    for a, b in (("spo", "trajectory-dpo"), ("spo", "spo-winner"), ("spo", "spo-final-image"),
                 ("spo", "spo-coinflip"), ("spo-oracle", "spo")):
        if a in runs and b in runs:
            tests[f"{a} vs {b}"] = {m: welch(_known(at_budget[a][m]), _known(at_budget[b][m]))
                                    for m in ("crispness", "fd")}
    # SPO against DPO where SPO has spent a third of the budget: is it already ahead?
    third = {m: [value_at(runs["spo"][s]["curve"], m, budget / 3) for s in seeds] for m in METRICS}
    tests["spo at budget/3 vs trajectory-dpo at budget"] = {m: welch(_known(third[m]),
                                                                    _known(at_budget["trajectory-dpo"][m]))
                                                            for m in ("crispness", "fd")}
    # the best crispness along each run up to the budget: an arm that peaks and then collapses shows here
    peak = {arm: [max((c, n) for n, c in zip(r["curve"]["nfe"], r["curve"]["crispness"]) if n <= budget)
                  for r in by_seed.values()] for arm, by_seed in runs.items()}
    return {"base": base, "at_budget": at_budget, "peak": peak, "spo_at_third": third, "goal": goal, "tests": tests}


def plot(runs: dict, budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, budget, 41)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for arm, by_seed in runs.items():
        color = None
        for ax, metric in zip(axes, ("crispness", "fd", "class_accuracy")):
            values = np.array([[np.nan if value_at(r["curve"], metric, x) is None else value_at(r["curve"], metric, x)
                                for x in grid] for r in by_seed.values()])
            mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0, ddof=1)
            (line,) = ax.plot(grid / 1e3, mean, label=arm, color=color)
            color = line.get_color()
            ax.fill_between(grid / 1e3, mean - std, mean + std, alpha=0.15, color=color)
        for i, r in enumerate(by_seed.values()):  # the trade-off: each run's evaluations in (crispness, FD)
            axes[3].plot(r["curve"]["crispness"], r["curve"]["fd"], ".-", ms=3, alpha=0.6, color=color,
                         label=arm if i == 0 else None)
    for ax, title in zip(axes, ("hidden aesthetic (stroke crispness) ↑", "FD to held-out digits ↓",
                                "class accuracy ↑")):
        ax.set_title(title)
        ax.set_xlabel("denoiser evaluations (thousands of rows)")
        ax.grid(alpha=0.3)
    axes[3].set_title("trade-off: FD against crispness, every evaluation")
    axes[3].set_xlabel("crispness")
    axes[3].set_ylabel("FD")
    axes[3].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SPO vs trajectory DPO on 8x8 digits (mean ± sample sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(base: Path, runs: dict, seed: int, path: Path) -> None:
    """Rows of 10 classes: the base model, SPO and trajectory DPO at the end of their runs, same noise."""
    import torch

    from data_tools.images import save_image_grid
    from diffusion.pipeline import DiffusionPipeline
    from spo.collect import sample_chain
    from spo.policy import DenoiserPolicy

    rows = []
    for folder in (base, *(Path(runs[arm][seed]["path"]) / "model" for arm in ("spo", "trajectory-dpo"))):
        policy = DenoiserPolicy.from_pipeline(DiffusionPipeline.from_pretrained(folder), 10)
        generator = torch.Generator().manual_seed(TEST_SEED)
        rows.append(sample_chain(policy, policy.model, torch.arange(40) % 10, generator)[1])
    save_image_grid(torch.cat(rows), path, nrow=20, scale=6)


def write_report(results: dict, path: Path) -> None:
    a = results["analysis"]
    g = a["goal"]
    budget = results["budget"]
    lines = ["# SPO in miniature: step-wise preference pairs against trajectory-level DPO", "",
             *(["**QUICK RUN: tiny settings that check the pipeline and prove nothing.**", ""] if results["quick"]
               else []),
             "Generated by `python benchmarks/bench_spo.py`; the design is in [../spo.md](../spo.md).", "",
             f"- Machine: {results['machine']}; torch {results['versions']['torch']}, diffusers "
             f"{results['versions']['diffusers']}, peft {results['versions']['peft']}; {results['minutes']:.1f} min "
             "for the last invocation (finished runs are reused).",
             f"- Base: class-conditional 8x8 digits, 1M-parameter DiT (`spo/digits-base`), DDIM eta=1, 10 steps, "
             f"guidance 2. Budget {budget:,.0f} denoiser rows per run (a guided prediction of one image is 2 rows; "
             "a backward pass counts as 2 rows; the reference model's rows count too).",
             f"- Training seeds {results['seeds']} for the main runs; the learning rate was chosen on seed "
             f"{SWEEP_SEED} with samples from validation noise seed {VAL_SEED}; the main runs are scored on "
             f"test noise seed {TEST_SEED} ({results['samples']} samples per evaluation), used for no choice.",
             "- Spread: sample standard deviation over seeds; tests: two-sided Welch t-tests on per-seed values.",
             "", "## Preference models", ""]
    spm = results["spm_report"]
    lines += [f"{spm['pairs_train']} training and {spm['pairs_val']} validation pairs of the base model's own samples "
              f"(same prompt); {spm['ties'] * 100:.1f}% ties; the labels agree with the hidden aesthetic's order on "
              f"{spm['labels_agree_with_hidden'] * 100:.1f}% of decided pairs (the rest is the layout confounder and "
              "label noise). Accuracy on validation pairs, after one denoising step from the same noise:", "",
              "| step (logSNR) | " + " | ".join(f"{name}: labels / hidden" for name in spm["models"]) + " |",
              "|---|" + "---|" * len(spm["models"])]
    names = list(spm["models"])
    for i, row in enumerate(spm["models"][names[0]]):
        where = "clean" if row["step"] is None else f"{row['step']} ({row['logsnr']:.1f})"
        cells = [f"{spm['models'][n][i]['label_accuracy'] * 100:.1f} / "
                 f"{spm['models'][n][i]['hidden_accuracy'] * 100:.1f}" for n in names]
        lines.append(f"| {where} | " + " | ".join(cells) + " |")
    lines += ["", "## Learning rates (seed 0, validation noise)", "",
              "| run | lr | crispness at budget | class acc. | FD | reached budget |", "|---|---|---|---|---|---|"]
    for name, r in results["sweep"]["runs"].items():
        at = r["at_budget"]
        lines.append(f"| {name} | {r['lr']:g} | {at['crispness']:.4f} | {at['class_accuracy'] * 100:.1f} | "
                     f"{at['fd']:.2f} | {r['reached_budget']} |")
    chosen = results["sweep"]["chosen"]
    lines += ["", f"Chosen: SPO lr {chosen['spo']['lr']:g}, trajectory DPO lr {chosen['trajectory-dpo']['lr']:g} "
              "(largest crispness at the budget with class accuracy within 2 points of the base).", "",
              f"## Results at the budget ({budget:,.0f} rows), test noise", "",
              f"Base model: crispness {a['base']['crispness']:.4f}, centring {a['base']['centring']:.3f}, class "
              f"accuracy {a['base']['class_accuracy'] * 100:.1f}%, FD {a['base']['fd']:.2f}.", "",
              "| arm | crispness | gain over base | centring | class acc. % | FD | best crispness on the way (at rows) |",
              "|---|---|---|---|---|---|---|"]

    def fmt(values, digits=4, scale=1.0):
        values = [v * scale for v in values if v is not None]
        if not values:
            return "n/a"
        mean, std = mean_std(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"

    for arm, at in a["at_budget"].items():
        gains = [c - a["base"]["crispness"] for c in at["crispness"] if c is not None]
        peaks = a["peak"][arm]
        lines.append(f"| {arm} | {fmt(at['crispness'])} | {fmt(gains)} | {fmt(at['centring'], 3)} | "
                     f"{fmt(at['class_accuracy'], 1, 100)} | {fmt(at['fd'], 2)} | {fmt([c for c, _ in peaks])} "
                     f"({', '.join(f'{n / 1e3:.0f}k' for _, n in peaks)}) |")
    lines += ["", "Comparisons at the budget (Welch, two-sided):", "", "| comparison | crispness p | FD p |",
              "|---|---|---|"]
    for name, t in a["tests"].items():
        lines.append(f"| {name} | {fmt_p(t['crispness']['p'] if t['crispness'] else None)} | "
                     f"{fmt_p(t['fd']['p'] if t['fd'] else None)} |")
    lines += ["", "## The goal", "", "| seed | DPO's gain at the budget | SPO reaches it at (rows) | ratio | SPO class "
              "acc. there | SPO FD there | DPO's FD at the budget |", "|---|---|---|---|---|---|---|"]
    for e in g["per_seed"]:
        reach = f"{e['spo_nfe_to_reach']:,.0f}" if e["spo_nfe_to_reach"] else "never"
        ratio = f"{e['ratio']:.1f}x" if e["ratio"] else "n/a"
        acc = f"{e['spo_class_accuracy_there'] * 100:.1f}" if e["spo_nfe_to_reach"] else "n/a"
        fd = f"{e['spo_fd_there']:.2f}" if e["spo_nfe_to_reach"] else "n/a"
        lines.append(f"| {e['seed']} | {e['dpo_final_gain']:+.4f} | {reach} | {ratio} | {acc} | {fd} | "
                     f"{e['dpo_fd_final']:.2f} |")
    if g.get("ratio_mean_std"):
        mean, std = g["ratio_mean_std"]
        lines += ["", f"Speed-up {mean:.1f}x ± {std:.1f} (sample sd); one-sided t-test of log ratio > log 3: "
                      f"p = {fmt_p(g.get('ratio_above_3_p'))}."]
    lines += ["", f"- SPO reaches DPO's final gain with at most a third of its evaluations: "
                  f"**{'met' if g['speed_met'] else 'not met'}**",
              "- class accuracy within 2 points of the base there: "
              f"**{'met' if g['class_accuracy_met'] else 'not met'}**",
              f"- FD not worse than the base's by more than 10% there: **{'met' if g['fd_met'] else 'not met'}**",
              "- at equal gain, SPO's FD against DPO's (Welch, two-sided): p = "
              f"{fmt_p(g['fd_at_equal_gain']['p'] if g['fd_at_equal_gain'] else None)}",
              *(["- what the FD goal asks against the least FD any reweighting of the base pays for the gain: "
                 "[spo_tilt.md](spo_tilt.md)"] if (path.parent / "spo_tilt.md").exists() else []),
              *(["- random against winner continue on more seeds: [spo_continue.md](spo_continue.md)"]
                if (path.parent / "spo_continue.md").exists() else []),
              "", "![curves](spo_curves.png)", "",
              "Samples (the same noise, digits 0-9 twice per row): two rows each of the base model, SPO and "
              f"trajectory DPO, at the end of their seed-{results['seeds'][0]} runs.", "", "![samples](spo_samples.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/spo/bench")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    parser.add_argument("--budget", type=float, default=400_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--val-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline, proves nothing")
    parser.add_argument("--tilt", action="store_true",
                        help="only the FD yardstick: the base model's KL-optimal tilts (docs/results/spo_tilt.md)")
    parser.add_argument("--more-seeds", type=int, nargs="+", default=None,
                        help="only random against winner continue on these extra training seeds (spo_continue.md)")
    parser.add_argument("--jobs", type=int, default=2, help="--more-seeds, --kl: runs at once, one thread each")
    parser.add_argument("--kl", type=float, nargs="+", default=None,
                        help="--tilt: also SPO with these KL-anchor weights on the sweep's protocol (and weight 0)")
    args = parser.parse_args()
    if args.more_seeds:
        run_more_seeds(Path(args.runs), Path(args.out), args.more_seeds, args.budget, args.samples, args.val_every,
                       args.jobs)
        return
    if args.tilt:
        run_tilt(Path(args.runs), Path(args.out), args.quick, args.threads, args.kl, args.budget, args.samples,
                 args.val_every, args.jobs)
        return
    if args.quick:
        args.seeds, args.lrs, args.budget, args.samples, args.val_every = args.seeds[:2], args.lrs[:1], 12_000, 60, 2
    started = time.time()
    root = Path(args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = ensure_base(root, args.quick, args.threads)
    spm = ensure_spm(root, base, args.quick, args.threads)
    # sweep lengths from measured rows per step (SPO ~1,700, trajectory DPO ~2,850 at batch 16), with a margin
    probe = {"spo": int(math.ceil(1.15 * args.budget / 1500 / args.val_every)) * args.val_every,
             "trajectory-dpo": int(math.ceil(1.15 * args.budget / 2600 / args.val_every)) * args.val_every}
    if args.quick:
        probe = {"spo": 8, "trajectory-dpo": 6}
    swept = sweep(root, base, spm, args.lrs, args.budget, probe, args.samples, args.val_every, args.threads)
    runs = main_runs(root, base, spm, swept["chosen"], args.seeds, args.budget, args.samples, args.val_every,
                     args.threads, args.arms)
    import diffusers
    import peft
    import torch

    from common import machine_line

    results = {"budget": args.budget, "seeds": args.seeds, "samples": args.samples, "quick": args.quick,
               "machine": machine_line(), "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                                       "peft": peft.__version__},
               "spm_report": json.loads((spm / "report.json").read_text()), "sweep": swept, "runs": runs,
               "analysis": analyse(runs, args.budget, args.seeds), "minutes": (time.time() - started) / 60}
    from data_tools.files import atomic_write_json

    atomic_write_json(out / "spo.json", results)
    plot(runs, args.budget, out / "spo_curves.png")
    sample_grid(base, runs, args.seeds[0], out / "spo_samples.png")
    write_report(results, out / "spo.md")
    print(f"wrote {out / 'spo.md'} in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
