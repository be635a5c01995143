"""Render docs/results/diffusion.md and its plots from the JSON that bench_diffusion.py writes.

    python benchmarks/report_diffusion.py [--json docs/results/diffusion.json]

Everything here is computed from the JSON (tables, steps-to-reach, goal verdicts), so rerunning the benchmark
and this script gives a report that cannot disagree with its numbers. The interpretation lives in
docs/diffusion.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion.process import TARGETS  # the one list of prediction targets

REPO = Path(__file__).resolve().parent.parent
TARGET_NAMES = {"eps": "ε", "x0": "x0", "v": "v"}
SCHEDULE_ARMS = ("cosine", "laplace+floor", "cosine->laplace weights")
SCHEDULE_EXTRAS = ("laplace (no floor)", "cauchy", "shifted cosine")


def steps_to_reach(steps: list[int], fds: list[float], level: float) -> int | None:
    """First evaluated step whose FD is at or below `level` (None if never)."""
    return next((step for step, fd in zip(steps, fds) if fd <= level), None)


def fmt(mean: float, std: float | None = None, seeds: int = 1) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std is not None and seeds > 1 else f"{mean:.2f}"


def minsnr_section(arms: dict) -> tuple[list[str], dict]:
    lines = ["| target | constant: final FD | Min-SNR-5: final FD | Min-SNR-5 reaches constant's final FD at | "
             "speed-up | constant reaches Min-SNR's final FD at |", "|---|---|---|---|---|---|"]
    verdict = {}
    for target in TARGETS:
        const, minsnr = arms.get(f"{target}/constant"), arms.get(f"{target}/min_snr5")
        if not const or not minsnr:
            continue
        final_step = const["steps"][-1]
        level = const["fd_mean"][-1]
        reach = steps_to_reach(minsnr["steps"], minsnr["fd_mean"], level)
        back = steps_to_reach(const["steps"], const["fd_mean"], minsnr["fd_mean"][-1])
        speedup = final_step / reach if reach else None
        verdict[target] = speedup
        lines.append(f"| {TARGET_NAMES[target]} | {fmt(level, const['fd_std'][-1], const['seeds'])} | "
                     f"{fmt(minsnr['fd_mean'][-1], minsnr['fd_std'][-1], minsnr['seeds'])} | "
                     f"{reach if reach else 'never'} | {f'{speedup:.2f}x' if speedup else '-'} | "
                     f"{back if back else 'never'} |")
    met = sum(1 for s in verdict.values() if s is not None and s >= 2.0)
    lines += ["", f"Goal (Min-SNR reaches the constant arm's final FD in at most half the steps for at least two of "
              f"the three targets): **{'met' if met >= 2 else 'not met'}** ({met} of {len(verdict)} targets at "
              "≥ 2x). Steps are resolved to the evaluation interval, so speed-ups are coarse."]
    return lines, verdict


def lrsweep_section(arms: dict, lrs: list[float]) -> list[str]:
    header = "| target | weighting | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best |"
    lines = [header, "|" + "---|" * (len(lrs) + 3)]
    best = {}
    for target in TARGETS:
        for weighting in ("constant", "min_snr5"):
            finals = {lr: arms[key]["fd_mean"][-1] for lr in lrs
                      if (key := f"{target}/{weighting}/lr{lr:g}") in arms}
            if not finals:
                continue
            best_lr = min(finals, key=finals.get)
            best[(target, weighting)] = best_lr
            cells = " | ".join(f"{finals[lr]:.2f}" if lr in finals else "-" for lr in lrs)
            lines.append(f"| {TARGET_NAMES[target]} | {weighting} | {cells} | {best_lr:g} |")
    lines += ["", "Final FD, seed 0. At each arm's own best rate:", "",
              "| target | constant (best lr): final FD | Min-SNR-5 (best lr) reaches it at | speed-up |",
              "|---|---|---|---|"]
    for target in TARGETS:
        if (target, "constant") not in best or (target, "min_snr5") not in best:
            continue
        const = arms[f"{target}/constant/lr{best[(target, 'constant')]:g}"]
        minsnr = arms[f"{target}/min_snr5/lr{best[(target, 'min_snr5')]:g}"]
        reach = steps_to_reach(minsnr["steps"], minsnr["fd_mean"], const["fd_mean"][-1])
        speedup = f"{const['steps'][-1] / reach:.2f}x" if reach else "-"
        lines.append(f"| {TARGET_NAMES[target]} | {const['fd_mean'][-1]:.2f} (lr {best[(target, 'constant')]:g}) | "
                     f"{reach if reach else 'never'} (lr {best[(target, 'min_snr5')]:g}) | "
                     f"{speedup} |")
    return lines


def schedule_section(arms: dict) -> list[str]:
    lines = ["| target | " + " | ".join(SCHEDULE_ARMS) + " |", "|" + "---|" * (len(SCHEDULE_ARMS) + 1)]
    laplace_wins = sampling_wins = compared = 0
    for target in TARGETS:
        row = [arms.get(f"{target}/{name}") for name in SCHEDULE_ARMS]
        if any(r is None for r in row):
            continue
        compared += 1
        finals = [r["fd_mean"][-1] for r in row]
        laplace_wins += finals[1] < finals[0]
        sampling_wins += finals[1] < finals[2]
        lines.append(f"| {TARGET_NAMES[target]} | " + " | ".join(
            fmt(r["fd_mean"][-1], r["fd_std"][-1], r["seeds"]) for r in row) + " |")
    lines += ["", f"Goal (Laplace lower FD than cosine for at least two targets): "
              f"**{'met' if laplace_wins >= 2 else 'not met'}** ({laplace_wins} of {compared}). "
              f"Sampling beats re-weighting (Laplace sampled vs cosine weighted to Laplace's objective): "
              f"**{'yes' if sampling_wins >= 2 else 'no'}** ({sampling_wins} of {compared} targets). "
              "Differences smaller than the ± (std over seeds) are not evidence either way."]
    extras = [(name, arms[f"v/{name}"]) for name in ("cosine", "laplace+floor", *SCHEDULE_EXTRAS) if f"v/{name}" in arms]
    if extras:
        lines += ["", "v-prediction, seed 0, every schedule (final FD; the cosine and floored-Laplace rows are "
                  "their seed-0 runs):", "", "| schedule | final FD | best FD (step) |", "|---|---|---|"]
        for name, arm in extras:
            finals = arm.get("final_per_seed", [arm["fd_mean"][-1]])
            best_i = min(range(len(arm["fd_mean"])), key=arm["fd_mean"].__getitem__) if arm["seeds"] == 1 else None
            best = f"{arm['fd_mean'][best_i]:.2f} ({arm['steps'][best_i]})" if best_i is not None else "-"
            lines.append(f"| {name} | {finals[0]:.2f} | {best} |")
    return lines


def sampling_section(sampling: dict) -> list[str]:
    grids = list(next(iter(sampling.values())).keys())
    lines = ["| model (v-prediction, seed 0) | " + " | ".join(grids) + " |", "|" + "---|" * (len(grids) + 1)]
    for model, row in sampling.items():
        lines.append(f"| {model} | " + " | ".join(f"{row[g]:.2f}" for g in grids) + " |")
    return lines


def plot_curves(arms: dict, groups: dict[str, list[tuple[str, str]]], path: Path, title: str) -> None:
    """One panel per group; each line is an arm's mean FD, the band ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, (panel, lines) in zip(axes[0], groups.items()):
        for key, label in lines:
            if key not in arms:
                continue
            arm = arms[key]
            mean, std = arm["fd_mean"], arm["fd_std"]
            ax.plot(arm["steps"], mean, marker="o", ms=3, label=f"{label} (n={arm['seeds']})")
            ax.fill_between(arm["steps"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel("training step")
        ax.set_ylabel("FD (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(REPO / "docs" / "results" / "diffusion.json"))
    args = parser.parse_args()
    source = Path(args.json)
    report = json.loads(source.read_text())
    arms = report["arms"]
    folder = source.parent
    lines = ["# Diffusion training papers in miniature", "",
             "Generated by `benchmarks/report_diffusion.py` from `diffusion.json`; what the numbers mean and how to "
             "sample a Laplace-trained model: [../diffusion.md](../diffusion.md).", "",
             f"- Command: `{report['command']}` then `python benchmarks/report_diffusion.py`",
             f"- Machine: {report['machine']}; the last invocation took {report['minutes']} min (finished runs "
             "are reused, so a rerun only trains what is missing)",
             f"- Every run: `hdvila diffusion train --config diffusion/digits-dit` + overrides: 8x8 "
             f"sklearn digits (1,438 train / 359 held-out), a 1M-parameter DiT, batch 128, {report['steps']} steps, "
             "Adam lr 1e-3 unless swept, EMA 0.995.",
             f"- Evaluation every {report['val_every']} steps, identical for all arms: 1,000 samples from the EMA "
             "weights, DDIM 50 steps on the cosine logSNR grid over [-10, 10] from a fixed noise seed, Fréchet "
             "distance to the held-out digits in the features of a classifier trained on the training digits.", ""]
    if "minsnr" in arms:
        table, _ = minsnr_section(arms["minsnr"])
        lines += ["## Min-SNR-γ (γ = 5) vs constant weight, cosine schedule", "",
                  f"Mean ± std over {report['seeds']} seeds.", "", *table, "",
                  "![FD against steps](fd_curves_minsnr.png)", ""]
        plot_curves(arms["minsnr"], {TARGET_NAMES[t]: [(f"{t}/constant", "constant"), (f"{t}/min_snr5", "Min-SNR-5")]
                                     for t in TARGETS}, folder / "fd_curves_minsnr.png",
                    "Min-SNR-5 vs constant weight (mean ± std over seeds)")
    if "lrsweep" in arms:
        lines += ["## Learning-rate sweep (seed 0)", "", *lrsweep_section(arms["lrsweep"], report["lrs"]), ""]
    if "schedule" in arms:
        lines += ["## Noise schedule: Laplace(0, 0.5) vs cosine vs cosine re-weighted to Laplace", "",
                  "The Laplace arm samples λ from 0.9 Laplace(0, 0.5) + 0.1 cosine (a 10% density floor, so the "
                  "tails the shared sampler visits are trained); the re-weighted arm samples cosine and weights "
                  "each loss by p_Laplace+floor(λ) / p_cosine(λ), the same expected objective. Final FD, mean ± "
                  f"std over {report['seeds']} seeds.", "", *schedule_section(arms["schedule"]), "",
                  "![FD against steps](fd_curves_schedule.png)", ""]
        plot_curves(arms["schedule"], {TARGET_NAMES[t]: [(f"{t}/{name}", name) for name in SCHEDULE_ARMS]
                                       for t in TARGETS}, folder / "fd_curves_schedule.png",
                    "Schedules (mean ± std over seeds)")
    if report.get("sampling"):
        lines += ["## Sampling a Laplace-trained model", "",
                  "FD of the exported seed-0 models under different DDIM-50 grids (no retraining; `hdvila "
                  "diffusion eval --grid ... --logsnr-min ... --logsnr-max ...`). 'density quantiles' spaces the "
                  "grid at equal quantiles of the model's own training density.", "",
                  *sampling_section(report["sampling"]), ""]
    out = folder / "diffusion.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
