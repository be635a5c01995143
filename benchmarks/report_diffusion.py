"""Render docs/results/diffusion.md and its plots from the JSON that bench_diffusion.py writes.

    python benchmarks/report_diffusion.py [--json docs/results/diffusion.json]

Everything here is computed from the JSON (tables, steps-to-reach, goal verdicts), so rerunning the benchmark
and this script gives a report that cannot disagree with its numbers. The interpretation lives in
docs/diffusion.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from diffusion.process import TARGETS  # noqa: E402  (the one list of prediction targets)
from diffusion_stats import fmt_mean_std, fmt_p, std_ddof1_from_ddof0, steps_to_reach, welch  # noqa: E402

TARGET_NAMES = {"eps": "ε", "x0": "x0", "v": "v"}
SCHEDULE_ARMS = ("cosine", "laplace+floor", "cosine->laplace weights")
SCHEDULE_EXTRAS = ("laplace (no floor)", "cauchy", "shifted cosine")


ALPHA = 0.05  # a "better than" needs Welch p below this; otherwise the page says the difference is not shown
# claims the JSON cannot back with per-seed data; printed by main() and listed on the page
MISSING: list[str] = []


def sample_std(arm: dict) -> list[float]:
    """The arm's FD std over seeds at each evaluation, as the sample std (ddof=1). Runs before the switch to
    ddof=1 recorded the population std; converting it is exact (a factor sqrt(n / (n - 1)))."""
    if arm.get("fd_std_ddof") == 1 or arm["seeds"] < 2:
        return list(arm["fd_std"])
    return [std_ddof1_from_ddof0(s, arm["seeds"]) for s in arm["fd_std"]]


def final(arm: dict) -> str:
    return fmt_mean_std(arm.get("final_per_seed", [arm["fd_mean"][-1]]))


def better(a: dict, b: dict) -> tuple[str, bool]:
    """Welch test of a's final FD vs b's (per-seed values): ("p" text, a lower and p < ALPHA)."""
    test = welch(a.get("final_per_seed", []), b.get("final_per_seed", []))
    if test is None:
        return "n/a (1 seed)", False
    lower = sum(a["final_per_seed"]) / len(a["final_per_seed"]) < sum(b["final_per_seed"]) / len(b["final_per_seed"])
    return fmt_p(test["p"]), lower and test["p"] < ALPHA


def minsnr_section(arms: dict) -> tuple[list[str], dict]:
    lines = ["| target | constant: final FD | Min-SNR-5: final FD | Welch p | Min-SNR-5 reaches constant's final FD at | "
             "speed-up | constant reaches Min-SNR's final FD at |", "|---|---|---|---|---|---|---|"]
    verdict, shown = {}, 0
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
        p, lower = better(minsnr, const)
        shown += lower
        lines.append(f"| {TARGET_NAMES[target]} | {final(const)} | {final(minsnr)} | {p} | "
                     f"{reach if reach else 'never'} | {f'{speedup:.2f}x' if speedup else '-'} | "
                     f"{back if back else 'never'} |")
    met = sum(1 for s in verdict.values() if s is not None and s >= 2.0)
    lines += ["", f"Min-SNR-5's final FD is lower than constant weight's with Welch p < {ALPHA} for **{shown} of "
              f"{len(verdict)}** targets (two-sided Welch t-test on the per-seed final FDs).", "",
              f"Goal (Min-SNR reaches the constant arm's final FD in at most half the steps for at least two of "
              f"the three targets): **{'met' if met >= 2 else 'not met'}** ({met} of {len(verdict)} targets at "
              "≥ 2x). Steps are resolved to the evaluation interval, so speed-ups are coarse, and they are read "
              "off the seed-mean curves: the per-seed curves were not recorded by this run, so the speed-ups "
              "have no error bars or test."]
    if "speed-ups" not in " ".join(MISSING):
        MISSING.append("Min-SNR speed-ups (steps to reach an FD): per-seed FD curves not recorded, only their "
                       "mean and std; no error bar or p-value")
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
    MISSING.append("learning-rate sweep: seed 0 only; its comparisons have no error bars or p-values")
    lines += ["", "Final FD, seed 0 (one seed: no error bars, and no difference in this table is tested). At each "
              "arm's own best rate:", "",
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
    lines = ["| target | " + " | ".join(SCHEDULE_ARMS) + " | p: Laplace vs cosine | p: Laplace vs re-weighted | "
             "p: cosine vs re-weighted |", "|" + "---|" * (len(SCHEDULE_ARMS) + 4)]
    laplace_wins = sampling_wins = compared = 0
    shown = {"laplace<cosine": 0, "laplace<reweighted": 0, "cosine<reweighted": 0}
    for target in TARGETS:
        row = [arms.get(f"{target}/{name}") for name in SCHEDULE_ARMS]
        if any(r is None for r in row):
            continue
        compared += 1
        finals = [r["fd_mean"][-1] for r in row]
        laplace_wins += finals[1] < finals[0]
        sampling_wins += finals[1] < finals[2]
        tests = []
        for key, (a, b) in {"laplace<cosine": (row[1], row[0]), "laplace<reweighted": (row[1], row[2]),
                            "cosine<reweighted": (row[0], row[2])}.items():
            p, lower = better(a, b)
            shown[key] += lower
            tests.append(p)
        lines.append(f"| {TARGET_NAMES[target]} | " + " | ".join(final(r) for r in row) + " | " + " | ".join(tests)
                     + " |")
    lines += ["", f"Goal (Laplace lower FD than cosine for at least two targets): "
              f"**{'met' if laplace_wins >= 2 else 'not met'}** ({laplace_wins} of {compared} lower in the mean; "
              f"{shown['laplace<cosine']} of {compared} with Welch p < {ALPHA}). "
              f"Sampling beats re-weighting (Laplace sampled vs cosine weighted to Laplace's objective): "
              f"lower in the mean for {sampling_wins} of {compared} targets, with p < {ALPHA} for "
              f"**{shown['laplace<reweighted']} of {compared}**. Plain cosine beats the re-weighted arm with "
              f"p < {ALPHA} for {shown['cosine<reweighted']} of {compared}. p: two-sided Welch t-test on the "
              "per-seed final FDs; with 3 seeds a p above 0.05 means the difference is not shown, not that "
              "there is none."]
    MISSING.append("schedule extras (pure Laplace, Cauchy, shifted cosine): seed 0 only; no error bars or "
                   "p-values")
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
    MISSING.append("sampling study: one model (seed 0) per row and one evaluation per cell; no error bars or "
                   "p-values")
    return lines


def reference_section(ref: dict) -> list[str]:
    """Where the FD scale starts and ends, measured with the benchmark's classifier (benchmarks/fd_reference.py)."""
    def cell(key: str) -> str:
        r = ref[key]
        return f"{r['mean']:.2f} ± {r['std']:.2f} (n={r['n']})"

    return [f"Measured by `{ref['command']}` with the same feature classifier (held-out accuracy "
            f"{ref['classifier_test_accuracy']:.3f}) and held-out set; mean ± sample std over {ref['draws']} random "
            "draws.", "",
            "| comparison | FD |", "|---|---|",
            f"| {EVAL_SAMPLES_TEXT} training digits vs the {ref['n_heldout']} held-out ones (a generator that copies "
            f"the training set, at the evaluation's sample count) | {cell('train1000_vs_heldout')} |",
            f"| all {ref['n_train']:,} training digits vs the held-out ones (the old \"real-vs-real 0.76\") | "
            f"{ref['train_vs_heldout']:.2f} |",
            f"| two disjoint random halves of all {ref['n_train'] + ref['n_heldout']:,} digits | {cell('halves')} |",
            f"| 1,000 images of uniform [-1, 1] noise vs the held-out digits | {cell('noise')} |", "",
            "An FD near the first row is as good as this protocol can tell apart; differences well below its ± are "
            "within the noise of the reference set itself."]


EVAL_SAMPLES_TEXT = "1,000"


def plot_curves(arms: dict, groups: dict[str, list[tuple[str, str]]], path: Path, title: str) -> None:
    """One panel per group; each line is an arm's mean FD, the band ± sample std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, (panel, lines) in zip(axes[0], groups.items()):
        for key, label in lines:
            if key not in arms:
                continue
            arm = arms[key]
            mean, std = arm["fd_mean"], sample_std(arm)
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
    MISSING.clear()
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
             "distance to the held-out digits in the features of a classifier trained on the training digits.",
             "- Error bars: mean ± sample standard deviation (ddof=1) over seeds; every comparison of two "
             "multi-seed arms carries a two-sided Welch t-test p-value on the per-seed final FDs.", ""]
    if report.get("fd_reference"):
        lines += ["## Reference levels of the FD", "", *reference_section(report["fd_reference"]), ""]
    else:
        MISSING.append("FD reference levels: run benchmarks/fd_reference.py")
    if "minsnr" in arms:
        table, _ = minsnr_section(arms["minsnr"])
        lines += ["## Min-SNR-γ (γ = 5) vs constant weight, cosine schedule", "",
                  f"Final FD, mean ± sample std over {report['seeds']} seeds.", "", *table, "",
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
                  f"sample std over {report['seeds']} seeds.", "", *schedule_section(arms["schedule"]), "",
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
    if MISSING:
        lines += ["## Not backed by per-seed data", "",
                  "These figures come from one seed, or from seed means only, so they carry no error bar or test:",
                  "", *[f"- {item}" for item in MISSING], ""]
    out = folder / "diffusion.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    for item in MISSING:
        print(f"no per-seed data: {item}")


if __name__ == "__main__":
    main()
