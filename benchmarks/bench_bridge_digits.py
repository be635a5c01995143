"""The bridge on real images (docs/results/bridge_digits.md): unpaired translation MNIST-5k -> sklearn digits at
16 px, and Gaussian -> digits, with FR-SDSB (`bridge/digits`: flow matching at half-bridge 0, then IPF on the
coupled cache).

    python benchmarks/bench_bridge_digits.py --seeds 0            # the runs (reused when finished) and the report
    python benchmarks/bench_bridge_digits.py --quick --runs DIR   # tiny settings: checks the plumbing, proves nothing

Scored after every half-bridge (`bridge.evaluate`) on 1,000 prior draws walked to the data end (held-out MNIST
images drawn with replacement, or Gaussian noise): FD in the digits classifier's features against 1,000 draws of
the held-out digits, the share of translations that the digits classifier reads as the source image's class
(`class_kept`), and the transport cost E||x_0 - x_N||^2 (pixels in [-1, 1]). Beside them, the levels that need no
model: chance (10%); the untranslated MNIST image itself (a bridge that moves nothing), read by the same
classifier; training digits against the held-out ones (the FD floor: a bridge that reproduced its training set);
Gaussian noise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import machine_line, run_hdvila  # noqa: E402
from diffusion_stats import mean_std  # noqa: E402

TASKS = {
    "translation": [],  # MNIST-5k (prior end) -> digits, the config as it is
    "gaussian": ["prior.kind=gaussian", "prior.name=gaussian"],
}
QUICK = ["train.max_steps=20", "cache_trajectories=64", "eval.samples=200", "half_bridges=2"]


def run(root: Path, name: str, overrides: list[str], threads: int) -> list[dict]:
    out = root / name
    if not (out / "ipf.json").exists() or not _finished(out, overrides):
        run_hdvila(["bridge", "train", "--config", "bridge/digits", f"output_dir={out}", *overrides],
                   root / f"{name}.log", threads)
    return json.loads((out / "ipf.json").read_text())["history"]


def _finished(out: Path, overrides: list[str]) -> bool:
    import yaml

    wanted = next((int(o.split("=")[1]) for o in overrides if o.startswith("half_bridges=")), None)
    if wanted is None:
        wanted = yaml.safe_load((REPO / "hdvila/configs/bridge/digits.yaml").read_text())["half_bridges"]
    history = json.loads((out / "ipf.json").read_text())["history"]
    return bool(history) and history[-1]["half_bridge"] == wanted - 1


def eval_samples(overrides: list[str]) -> int:
    import hdvila  # noqa: F401  (registers the recipe configs)
    from bridge.ipf import BridgeConfig
    from data_tools.config import load_config

    return load_config(BridgeConfig, "bridge/digits", [o for o in overrides if o.startswith("eval.")]).eval.samples


def references(samples: int, seed: int = 1234) -> dict:
    """What needs no model, on as many held-out images as the bridge's evaluation."""
    import torch

    from bridge.ends import EndConfig, sample_end, sample_labelled_images
    import hdvila  # noqa: F401  (registers the recipe configs)
    from bridge.evaluate import class_kept, data_classifier
    from bridge.ipf import BridgeConfig
    from data_tools.config import load_config
    from diffusion.metrics import sample_quality

    cfg = load_config(BridgeConfig, "bridge/digits", [])
    classifier = data_classifier(cfg)
    g = torch.Generator().manual_seed(seed)
    mnist, labels = sample_labelled_images(cfg.prior, samples, g, split="test")
    digits_train = sample_end(cfg.data, samples, g, split="train")
    digits_test = sample_end(cfg.data, samples, g, split="test")
    noise = sample_end(EndConfig(kind="gaussian", size=cfg.data.size), samples, g)

    def fd(images):
        return float(sample_quality(images.clamp(-1, 1), digits_test, classifier)["fd"])

    return {"classifier_test_accuracy": classifier.test_accuracy,
            "identity": {"data_fd": fd(mnist), "class_kept": class_kept(classifier, mnist, labels)},
            "train_vs_test_digits": {"data_fd": fd(digits_train)},
            "gaussian_noise": {"data_fd": fd(noise)},
            "chance_class_kept": 0.1}


def grid(root: Path, name: str, out: Path, n: int = 12, seed: int = 7) -> Path:
    """Rows: the prior image, the flow-matching model's output (half-bridge 0), the last bridge's output; the same
    walk noise for both networks."""
    import torch

    from bridge.ends import sample_end
    from bridge.ipf import simulate
    from bridge.networks import BridgeNet
    from bridge.pipeline import BridgeRun
    from data_tools.images import save_image_grid

    bridge = BridgeRun.from_dir(root / name)
    first = BridgeNet.from_pretrained(root / name / "ipf00-backward" / "net").eval()
    start = sample_end(bridge.config.prior, n, torch.Generator().manual_seed(seed), split="test")
    rows = [start]
    for net in (first, bridge.nets["backward"]):
        rows.append(simulate(bridge.config, net, "backward", start, torch.Generator().manual_seed(seed + 1),
                             last_noise=False)[0])
    return save_image_grid(torch.cat(rows).clamp(-1, 1), out, nrow=n)


def write_report(results: dict, path: Path) -> None:
    refs = results["references"]
    lines = ["# The bridge on real digits", "",
             *(["**QUICK RUN: tiny settings that check the pipeline and prove nothing.**", ""] if results["quick"]
               else []),
             "Generated by `python benchmarks/bench_bridge_digits.py`; design in [../bridge.md](../bridge.md).", "",
             f"- Machine: {results['machine']}; {results['minutes']:.1f} min for the last invocation.",
             "- `bridge/digits`: FR-SDSB, flow reference, N = 8, γ 1e-4 -> 1e-3, the core's digits UNet (0.70M) at "
             "16 px; half-bridge 0 is flow matching between independent pairs, then IPF on the coupled cache. "
             f"Seeds {results['seeds']}; mean ± sample sd where there are several.",
             f"- Evaluation: {results['eval_samples']} prior draws (held-out MNIST images with replacement, or "
             "noise) walked to the data end; FD against as many draws of the held-out digits, and the class, in the "
             f"digits classifier (held-out accuracy {refs['classifier_test_accuracy']:.3f}).", "",
             "Levels that need no model: chance keeps the class 10% of the time; the untranslated MNIST image "
             f"(a bridge that moves nothing) has FD {refs['identity']['data_fd']:.1f} and the digits classifier "
             f"reads its class {100 * refs['identity']['class_kept']:.1f}% of the time; training digits against "
             f"the held-out ones: FD {refs['train_vs_test_digits']['data_fd']:.2f} (the floor); Gaussian noise: FD "
             f"{refs['gaussian_noise']['data_fd']:.1f}.", ""]

    def cell(values, digits=2, scale=1.0) -> str:
        if not values:
            return "-"
        mean, sd = mean_std([scale * v for v in values])
        return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")

    for task, by_seed in results["tasks"].items():
        title = {"translation": "MNIST-5k -> digits (unpaired translation)", "gaussian": "Gaussian -> digits"}[task]
        lines += [f"## {title}", "", "| half-bridge | trained | data FD | class kept % | transport cost | prior SWD |",
                  "|---|---|---|---|---|---|"]
        histories = list(by_seed.values())
        for i, row in enumerate(histories[0][:min(len(h) for h in histories)]):
            values = {key: [h[i][key] for h in histories if key in h[i]]
                      for key in ("data_fd", "class_kept", "transport_cost", "prior_swd")}
            lines.append(f"| {row['half_bridge']} | {row['direction']} | {cell(values['data_fd'])} | "
                         f"{cell(values['class_kept'], 1, 100.0)} | {cell(values['transport_cost'], 1)} | "
                         f"{cell(values['prior_swd'], 3)} |")
        lines.append("")
        if task in results.get("grids", {}):
            lines += [f"![{task}]({Path(results['grids'][task]).name})", "",
                      "Rows: the prior image, the flow-matching model (half-bridge 0), the bridge after the last "
                      "half-bridge (the same walk noise).", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=None, help="default runs/bridge/digits-bench (-quick with --quick)")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.time()
    root = Path(args.runs or ("runs/bridge/digits-bench" + ("-quick" if args.quick else "")))
    extra = QUICK if args.quick else []
    results: dict = {"seeds": args.seeds, "quick": args.quick, "tasks": {}, "grids": {},
                     "eval_samples": eval_samples(extra)}
    for task in args.tasks:
        for seed in args.seeds:
            t0 = time.time()
            name = f"{task}-seed{seed}"
            results["tasks"].setdefault(task, {})[seed] = run(root, name, [*TASKS[task], *extra, f"train.seed={seed}"],
                                                              args.threads)
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        results["grids"][task] = str(grid(root, f"{task}-seed{args.seeds[0]}",
                                          out_dir / f"bridge_digits_{task}.png"))
    results["references"] = references(results["eval_samples"])
    results["machine"] = machine_line()
    results["minutes"] = (time.time() - started) / 60
    from data_tools.files import atomic_write_json

    atomic_write_json(Path(args.out) / "bridge_digits.json", results)
    write_report(results, Path(args.out) / "bridge_digits.md")
    print(f"wrote {Path(args.out) / 'bridge_digits.md'} in {results['minutes']:.1f} min")


if __name__ == "__main__":
    main()
