"""Reproductions in miniature of the two diffusion-training papers, on 8x8 sklearn digits (CPU, no downloads).

    python benchmarks/bench_diffusion.py --experiment all --jobs 2          # ~90 min on 2 cores
    python benchmarks/bench_diffusion.py --experiment minsnr --seeds 1 --steps 400 --quick

Every run is `hdvila diffusion train --config diffusion/digits-dit` with overrides, so the
numbers come from the same trainer, sampler and metric users get. All arms share the sampler (DDIM, 50
steps, the same cosine grid on λ in [-10, 10], x0 clipped to [-1, 1]) and the evaluation (Fréchet distance
of 1,000 samples from a fixed noise seed to the 359 held-out real digits, in the features of a classifier
the project trains on the training digits; lower is better). Only the training differs.

Experiments:
- minsnr: {ε, x0, v} x {constant weight, Min-SNR-5}, cosine schedule, seeds 0..S-1.
- sampling: after `schedule`, how a Laplace-trained model should be sampled: the exported v-prediction models
  (pure Laplace, floored Laplace, cosine; seed 0) evaluated with the shared grid and with grids restricted to
  where the training density lives (SAMPLING_GRIDS). No training.
- lrsweep: the same six arms at three more learning rates (3e-4, 3e-3, 1e-2), seed 0; the config's 1e-3 is
  the minsnr experiment's seed 0 (the Min-SNR gain depends on the rate).
- schedule: {cosine, Laplace(0, 0.5) with a 10% cosine floor, cosine re-weighted to that Laplace density}
  x {ε, x0, v}, seeds 0..S-1; single-seed extras for v: pure Laplace(0, 0.5), Cauchy(0, 1), shifted cosine
  (μ=1).
Results: docs/results/diffusion.md (+ .json and fd_curves_*.png).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_line  # noqa: E402
from diffusion.process import TARGETS  # noqa: E402  (the one list of prediction targets)

CONFIG = "diffusion/digits-dit"
WEIGHTINGS = {"constant": ["weighting.name=constant"],
              "min_snr5": ["weighting.name=min_snr", "weighting.params={gamma: 5.0}"]}
LAPLACE_FLOORED = "{mu: 0.0, b: 0.5, floor: 0.1, floor_schedule: cosine}"
# the cosine arm of the schedule experiment is the minsnr experiment's constant-weight arm (same runs)
SCHEDULES = {
    "laplace+floor": ["schedule.name=laplace", f"schedule.params={LAPLACE_FLOORED}"],
    "cosine->laplace weights": ["schedule.name=cosine", "weighting.name=importance",
                                f"weighting.params={{target_schedule: {{name: laplace, params: {LAPLACE_FLOORED}}}}}"],
}
SCHEDULE_EXTRAS = {
    "laplace (no floor)": ["schedule.name=laplace", "schedule.params={mu: 0.0, b: 0.5}"],
    "cauchy": ["schedule.name=cauchy", "schedule.params={mu: 0.0, gamma: 1.0}"],
    "shifted cosine": ["schedule.name=shifted_cosine", "schedule.params={mu: 1.0}"],
}

# (label, sampler overrides) for the sampling study; the Laplace(0, 0.5) density puts 1.7e-4 of its mass below -4
SAMPLING_GRIDS = {
    "cosine [-10, 10] (shared)": {"grid": "cosine", "logsnr_min": -10.0, "logsnr_max": 10.0},
    "cosine [-4, 10]": {"grid": "cosine", "logsnr_min": -4.0, "logsnr_max": 10.0},
    "cosine [-4, 4]": {"grid": "cosine", "logsnr_min": -4.0, "logsnr_max": 4.0},
    "density quantiles [-10, 10]": {"grid": "schedule", "logsnr_min": -10.0, "logsnr_max": 10.0},
    "density quantiles [-4, 4]": {"grid": "schedule", "logsnr_min": -4.0, "logsnr_max": 4.0},
}
SAMPLING_MODELS = {"laplace (no floor)": "schedule/v__laplace_(no_floor)/seed0",
                   "laplace+floor": "schedule/v__laplace+floor/seed0",
                   "cosine": "minsnr/v__constant/seed0"}


def sampling_study(out: Path) -> dict[str, dict[str, float]]:
    """FD of each trained model under each sampling grid (same noise seed and sample count as training evals)."""
    import torch

    from diffusion.pipeline import evaluate_model

    torch.set_num_threads(2)
    study = {}
    for label, folder in SAMPLING_MODELS.items():
        model_dir = out / folder / "model"
        if not model_dir.is_dir():
            print(f"sampling: {model_dir} missing; run --experiment schedule first")
            continue
        study[label] = {}
        for grid_label, overrides in SAMPLING_GRIDS.items():
            sampler = {f"sampler.{key}": value for key, value in overrides.items()}
            study[label][grid_label] = evaluate_model(model_dir, overrides=sampler, progress=False)["fd"]
            print(f"sampling: {label} with {grid_label}: FD {study[label][grid_label]:.3f}", flush=True)
    return study


def run_one(out: Path, overrides: list[str], steps: int, val_every: int) -> Path:
    """One training run in its own process (1 OpenMP thread); skipped when it already finished."""
    metrics = out / "metrics.jsonl"
    if metrics.exists() and any(json.loads(line).get("step") == steps for line in metrics.read_text().splitlines()
                                if line.strip()):
        return out
    cmd = [sys.executable, "-m", "hdvila.cli", "--quiet", "--log-level", "WARNING", "diffusion", "train",
           "--config", CONFIG, f"output_dir={out}", f"train.max_steps={steps}", f"train.val_every={val_every}",
           f"train.save_every={steps}", f"train.log_every={val_every}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "run.log", "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}; see {out / 'run.log'}")
    return out


def fd_curve(run: Path) -> tuple[list[int], list[float]]:
    steps, fds = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if "val/fd" in record:
                steps.append(int(record["step"]))
                fds.append(float(record["val/fd"]))
    return steps, fds


def plan(experiment: str, seeds: int, lrs: list[float]) -> list[tuple[str, str, int, list[str]]]:
    """(experiment, arm, seed, overrides) for every run."""
    runs = []
    if experiment in ("minsnr", "all"):
        for target in TARGETS:
            for weighting, extra in WEIGHTINGS.items():
                for seed in range(seeds):
                    runs.append(("minsnr", f"{target}/{weighting}", seed, [f"target={target}", *extra]))
    if experiment in ("lrsweep", "all"):
        for target in TARGETS:
            for weighting, extra in WEIGHTINGS.items():
                for lr in lrs:
                    runs.append(("lrsweep", f"{target}/{weighting}/lr{lr:g}", 0,
                                 [f"target={target}", *extra, f"optim.lr={lr}"]))
    if experiment in ("schedule", "all"):
        for target in TARGETS:
            for name, extra in SCHEDULES.items():
                for seed in range(seeds):
                    runs.append(("schedule", f"{target}/{name}", seed, [f"target={target}", *extra]))
        for name, extra in SCHEDULE_EXTRAS.items():
            target = "v"
            runs.append(("schedule", f"{target}/{name}", 0, [f"target={target}", *extra]))
    return runs


def summarise(results: dict[str, dict[str, list[tuple[list[int], list[float]]]]]) -> dict:
    """Per arm: steps, FD mean and sample std over seeds at each evaluation, and the per-seed curves."""
    table = {}
    for experiment, arms in results.items():
        table[experiment] = {}
        for arm, curves in arms.items():
            steps = curves[0][0]
            fds = np.array([c[1] for c in curves if c[0] == steps])
            # sample std (ddof=1), and every seed's curve so speed-ups can get error bars and tests later
            std = fds.std(axis=0, ddof=1) if len(fds) > 1 else np.zeros(fds.shape[1])
            table[experiment][arm] = {"steps": steps, "fd_mean": fds.mean(axis=0).tolist(),
                                      "fd_std": std.tolist(), "fd_std_ddof": 1, "seeds": len(fds),
                                      "final_per_seed": fds[:, -1].tolist(), "fd_per_seed": fds.tolist()}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="all", choices=("minsnr", "lrsweep", "schedule", "sampling", "all"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--lrs", default="3e-4,3e-3,1e-2", help="extra rates; the config's own is the minsnr run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-diffusion")
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "diffusion.json"))
    parser.add_argument("--quick", action="store_true", help="a short smoke run; results not written to docs/")
    args = parser.parse_args()
    out = Path(args.out)
    lrs = [float(v) for v in args.lrs.split(",")]
    import hdvila  # noqa: F401  (registers the packaged recipe configs)
    from data_tools.config import resolve_config

    base_lr = float(__import__("yaml").safe_load(resolve_config(CONFIG).read_text())["optim"]["lr"])
    runs = plan(args.experiment, args.seeds, lrs)
    started = time.time()

    # train the feature classifier once, before parallel runs would race to build it
    subprocess.run([sys.executable, "-c", "from diffusion.metrics import get_feature_classifier; "
                    "get_feature_classifier('digits', 'runs/diffusion/feature-classifiers')"], cwd=REPO, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "2"})

    def launch(item):
        experiment, arm, seed, overrides = item
        folder = out / experiment / arm.replace("/", "__").replace(" ", "_").replace(">", "") / f"seed{seed}"
        run_one(folder, [*overrides, f"train.seed={seed}"], args.steps, args.val_every)
        return item, folder

    results: dict[str, dict[str, list]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done, ((experiment, arm, seed, _), folder) in enumerate(pool.map(launch, runs), start=1):
            results.setdefault(experiment, {}).setdefault(arm, []).append(fd_curve(folder))
            print(f"[{done}/{len(runs)}] {experiment} {arm} seed {seed}: final FD "
                  f"{results[experiment][arm][-1][1][-1]:.3f} ({(time.time() - started) / 60:.1f} min)", flush=True)
    # runs shared between experiments: listed once, reported in both
    for target in TARGETS:
        if f"{target}/constant" in results.get("minsnr", {}):
            if "schedule" in results:
                results["schedule"][f"{target}/cosine"] = results["minsnr"][f"{target}/constant"]
            for weighting in WEIGHTINGS:
                if "lrsweep" in results and f"{target}/{weighting}" in results["minsnr"]:
                    results["lrsweep"][f"{target}/{weighting}/lr{base_lr:g}"] = results["minsnr"][f"{target}/{weighting}"][:1]
    table = summarise(results)
    sampling = sampling_study(out) if args.experiment in ("sampling", "all") else None
    report = {"machine": machine_line(), "steps": args.steps, "val_every": args.val_every, "seeds": args.seeds,
              "lrs": sorted([*lrs, base_lr]), "minutes": round((time.time() - started) / 60, 1), "arms": table,
              "command": "python benchmarks/bench_diffusion.py " + " ".join(sys.argv[1:])}
    if args.quick:
        print(json.dumps(report, indent=1)[:3000])
        return
    path = Path(args.report)
    previous = json.loads(path.read_text()) if path.exists() else {}
    if args.experiment == "sampling":  # no training: keep the training runs' header
        report = {**previous, "sampling": sampling,
                  "sampling_command": "python benchmarks/bench_diffusion.py " + " ".join(sys.argv[1:])}
    else:
        previous_arms = previous.get("arms", {})
        previous_arms.update(table)  # experiments run separately accumulate in one report
        report["arms"] = previous_arms
        report["sampling"] = sampling if sampling is not None else previous.get("sampling")
    from data_tools.files import atomic_write_json

    atomic_write_json(path, report)
    print(f"wrote {path}; render with benchmarks/report_diffusion.py")


if __name__ == "__main__":
    main()
