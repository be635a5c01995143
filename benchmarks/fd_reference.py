"""Reference levels of the digits FD that docs/results/diffusion.md is read against (no training of denoisers).

    python benchmarks/fd_reference.py [--json docs/results/diffusion.json] [--draws 10]

Same feature classifier, split and held-out set as every benchmark evaluation (`diffusion/digits-dit`:
digits at 8x8, split seed 0, 20% held out per class). Written to the JSON under "fd_reference":

- halves: two disjoint random halves of all 1,797 real digits (899 vs 898), over `--draws` random splits:
  what two samples of the real distribution score against each other (the old "real-vs-real 0.76").
- train1000_vs_heldout: 1,000 training digits drawn without replacement vs the 359 held-out ones, over
  `--draws` draws: the score of a generator that reproduces the training set exactly, at the evaluation's
  sample count (1,000 samples vs 359 held-out). The closest thing to a floor for the benchmark's numbers.
- train_vs_heldout: all 1,438 training digits vs the held-out ones (one number).
- noise: 1,000 images of independent uniform [-1, 1] pixels vs the held-out ones, noise seeds 0..draws-1.
Runs in about a minute (most of it training the cached classifier once).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from diffusion_stats import mean_std  # noqa: E402

CLASSIFIER_CACHE = "runs/diffusion/feature-classifiers"  # the config's eval.classifier_cache
EVAL_SAMPLES = 1000  # the config's eval.samples


def fd_reference(draws: int = 10, cache: str = CLASSIFIER_CACHE) -> dict:
    import torch

    from data_tools.distances import frechet_distance
    from data_tools.image_datasets import load_image_dataset
    from diffusion.metrics import get_feature_classifier

    torch.set_num_threads(1)
    train, _ = load_image_dataset("digits", "train", seed=0)
    held, _ = load_image_dataset("digits", "test", seed=0)
    classifier = get_feature_classifier("digits", str(REPO / cache), seed=0)
    f_train = classifier.features(train).numpy()
    f_held = classifier.features(held).numpy()
    f_all = np.concatenate([f_train, f_held])

    halves, subsets, noise = [], [], []
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        order = rng.permutation(len(f_all))
        half = len(f_all) // 2
        halves.append(frechet_distance(f_all[order[:half]], f_all[order[half:]]))
        pick = rng.choice(len(f_train), EVAL_SAMPLES, replace=False)
        subsets.append(frechet_distance(f_train[pick], f_held))
        gen = torch.Generator().manual_seed(draw)
        images = torch.rand((EVAL_SAMPLES, *train.shape[1:]), generator=gen) * 2 - 1
        noise.append(frechet_distance(classifier.features(images).numpy(), f_held))

    def summary(values: list[float]) -> dict:
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "n": len(values), "values": [float(v) for v in values]}

    return {"command": "python benchmarks/fd_reference.py", "draws": draws,
            "classifier_test_accuracy": classifier.test_accuracy, "n_train": len(f_train), "n_heldout": len(f_held),
            "halves": summary(halves), "train1000_vs_heldout": summary(subsets),
            "train_vs_heldout": float(frechet_distance(f_train, f_held)), "noise": summary(noise)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(REPO / "docs" / "results" / "diffusion.json"))
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    from data_tools.files import atomic_write_json

    ref = fd_reference(args.draws)
    path = Path(args.json)
    report = json.loads(path.read_text()) if path.exists() else {}
    report["fd_reference"] = ref
    atomic_write_json(path, report)
    for key in ("halves", "train1000_vs_heldout", "noise"):
        print(f"{key}: {ref[key]['mean']:.3f} ± {ref[key]['std']:.3f} (n={ref[key]['n']})")
    print(f"train_vs_heldout: {ref['train_vs_heldout']:.3f}; wrote {path}")


if __name__ == "__main__":
    main()
