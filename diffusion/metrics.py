"""Offline sample-quality metrics for the small image sets in `data_tools.image_datasets`.

No pretrained network ships inside any package we can install (see shared/reference/data.md), so the
Inception-based FID is out of reach. Instead the project trains its own fixed feature classifier per data
set (deterministic given the seed, cached on disk) and measures the Fréchet distance between Gaussians
fitted to its penultimate activations: an FID analogue ("digits-FD", diffusion.md §8.0). The sliced
Wasserstein distance in pixel space needs no network at all and backs it up.

Numbers from different classifiers (data set, resolution, architecture, seed, epochs) are not comparable;
`get_feature_classifier` keys its cache (`data_tools.cache.cached`) by all of them. A classifier is saved as a
shared pretrained folder (kind "diffusion-feature-classifier"); folders of the older layout
(weights.safetensors + config.json with weights_sha256) still load through a registered legacy reader.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data_tools.cache import cache_key, cached
from data_tools.distances import frechet_distance, sliced_wasserstein
from data_tools.pretrained import LEGACY_FORMATS, PretrainedFolder, PretrainedMixin
from data_tools.training.config import OptimConfig
from data_tools.training.small_fit import SmallFitConfig, fit_small, seeded, shuffled_batches, steps_for_epochs

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

# Training recipe per data set for get_feature_classifier; measured to reach >= 97% test accuracy.
DEFAULT_EPOCHS = {"digits": 60, "mnist5k": 15}
CONV_CHANNELS = (16, 32)
PRETRAINED_KIND = "diffusion-feature-classifier"
CACHE_VERSION = 3  # 1: the hand-written loop and its own folder layout; 2: biases left out of the decay


# ---------------------------------------------------------------------------------------------------------
# Feature classifier


class FeatureClassifier(PretrainedMixin, nn.Module):
    """A small classifier whose last hidden layer (after its ReLU) is the feature space for the FD.

    arch "mlp": flatten -> [Linear -> ReLU] per entry of `hidden` -> Linear(num_classes).
    arch "cnn": two 3x3 conv -> ReLU -> 2x2 max-pool blocks, then the same MLP head; for >= 16 px images,
    where a plain MLP on raw pixels is weaker and larger.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int = 10, hidden: Sequence[int] = (128,),
                 arch: str = "mlp", meta: dict | None = None):
        super().__init__()
        if arch not in ("mlp", "cnn"):
            raise ValueError(f"arch must be 'mlp' or 'cnn', got {arch!r}")
        if not hidden:
            raise ValueError("hidden needs at least one layer: its activations are the features")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.num_classes = int(num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        self.arch = arch
        # free-form facts about how it was trained (dataset, seed, accuracy...), saved with the weights
        self.meta: dict = dict(meta or {})
        c, h, w = self.in_shape
        layers: list[nn.Module] = []
        if arch == "cnn":
            c1, c2 = CONV_CHANNELS
            layers += [nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            flat = c2 * (h // 4) * (w // 4)
        else:
            flat = c * h * w
        layers.append(nn.Flatten())
        for width in self.hidden:
            layers += [nn.Linear(flat, width), nn.ReLU()]
            flat = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(flat, self.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.hidden[-1]

    @property
    def test_accuracy(self) -> float | None:
        return self.meta.get("test_accuracy")

    pretrained_kind = PRETRAINED_KIND

    def pretrained_config(self) -> dict[str, Any]:
        return {"in_shape": list(self.in_shape), "num_classes": self.num_classes, "hidden": list(self.hidden),
                "arch": self.arch}

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], meta: dict[str, Any]) -> "FeatureClassifier":
        return cls(config["in_shape"], config["num_classes"], config["hidden"], config["arch"], meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def _check(self, x: ArrayLike) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 2 and x.shape[1] == math.prod(self.in_shape):  # flattened images are fine too
            x = x.reshape(-1, *self.in_shape)
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"classifier expects images of shape [N, {', '.join(map(str, self.in_shape))}], "
                             f"got {tuple(x.shape)}; resize samples to the classifier's resolution")
        return x

    @torch.no_grad()
    def _batched(self, x: ArrayLike, fn, batch_size: int) -> torch.Tensor:
        x = self._check(x)
        was_training = self.training
        self.eval()
        try:
            outs = [fn(x[i: i + batch_size].to(self.head.weight.device)).cpu()
                    for i in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, x: ArrayLike, batch_size: int = 1024) -> torch.Tensor:
        """Penultimate activations [N, F] for images [N, C, H, W] in [-1, 1]."""
        return self._batched(x, self.body, batch_size)

    def predict_proba(self, x: ArrayLike, batch_size: int = 1024) -> torch.Tensor:
        return self._batched(x, lambda b: F.softmax(self(b), dim=1), batch_size)

    def predict(self, x: ArrayLike, batch_size: int = 1024) -> torch.Tensor:
        return self._batched(x, lambda b: self(b).argmax(dim=1), batch_size)

    def accuracy(self, x: ArrayLike, labels: ArrayLike) -> float:
        labels = torch.as_tensor(labels)
        return float((self.predict(x) == labels).float().mean())


def read_classifier_v0(path: Path) -> PretrainedFolder | None:
    """The feature-classifier folder written before the shared format: weights.safetensors + config.json
    (format_version 1, in_shape, num_classes, hidden, arch, meta, weights_sha256)."""
    path = Path(path)
    if not ((path / "weights.safetensors").is_file() and (path / "config.json").is_file()):
        return None
    try:
        record = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format_version") != 1 or "weights_sha256" not in record:
        return None
    config = {key: record[key] for key in ("in_shape", "num_classes", "hidden", "arch")}
    return PretrainedFolder(path, PRETRAINED_KIND, config, dict(record.get("meta") or {}),
                            weights={"model": path / "weights.safetensors"},
                            checksums={"model": record["weights_sha256"]})


LEGACY_FORMATS.register("diffusion-feature-classifier-v0", read_classifier_v0)


def _choose_arch(arch: str, in_shape: Sequence[int]) -> str:
    if arch == "auto":
        return "cnn" if min(in_shape[1:]) >= 16 else "mlp"
    return arch


def train_feature_classifier(images: ArrayLike, labels: ArrayLike, hidden: Sequence[int] = (128,),
                             epochs: int = 40, seed: int = 0, *, arch: str = "auto",
                             test_images: ArrayLike | None = None, test_labels: ArrayLike | None = None,
                             batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                             threads: int | None = 1, meta: dict | None = None) -> FeatureClassifier:
    """Train a FeatureClassifier with Adam on images [N, C, H, W] in [-1, 1].

    Deterministic given `seed`: init and shuffling draw from a seeded, forked RNG (the caller's global RNG
    is left as it was), and training runs on `threads` CPU threads (1 by default, because float reduction
    order, and so the weights, can change with the thread count). `threads=None` keeps torch's setting.
    If test images are given, the test accuracy is logged and stored in `.meta["test_accuracy"]`.
    """
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"expected images [N, C, H, W] and labels [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    num_classes = int(y.max()) + 1
    arch = _choose_arch(arch, x.shape[1:])
    cfg = SmallFitConfig(steps=steps_for_epochs(x.shape[0], batch_size, epochs), seed=seed, threads=threads,
                         optim=OptimConfig(name="adam", lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999),
                                           schedule="constant", warmup_steps=0,
                                           decay_all=True),  # L2 on every parameter, as trained before
                         desc="feature classifier")
    with seeded(seed, threads):
        model = FeatureClassifier(x.shape[1:], num_classes, hidden, arch)
    batches = shuffled_batches(x.shape[0], batch_size, torch.Generator().manual_seed(seed))

    def loss_fn(net: nn.Module, step: int) -> torch.Tensor:
        idx = next(batches)
        return F.cross_entropy(net(x[idx]), y[idx])

    fit_small(model, loss_fn, cfg)
    model.meta.update(meta or {})
    model.meta.update({"seed": seed, "epochs": epochs, "train_accuracy": model.accuracy(x, y)})
    if test_images is not None and test_labels is not None:
        model.meta["test_accuracy"] = model.accuracy(test_images, test_labels)
    log.info("feature classifier (%s, hidden=%s, %d epochs, seed %d): train acc %.4f, test acc %s",
             arch, list(hidden), epochs, seed, model.meta["train_accuracy"],
             f"{model.meta['test_accuracy']:.4f}" if "test_accuracy" in model.meta else "n/a")
    return model


def _cache_settings(dataset_name: str, size: int | None, hidden: Sequence[int], arch: str, epochs: int | None,
                    seed: int) -> dict[str, Any]:
    """Every setting the classifier depends on, resolved (native size, chosen arch, default epochs)."""
    from data_tools.image_datasets import IMAGE_DATASETS

    info = IMAGE_DATASETS.get(dataset_name)
    px = size or info.native_size
    return {"dataset": dataset_name, "size": px, "arch": _choose_arch(arch, (info.channels, px, px)),
            "hidden": [int(h) for h in hidden], "seed": seed,
            "epochs": DEFAULT_EPOCHS.get(dataset_name, 30) if epochs is None else epochs}


def classifier_cache_key(dataset_name: str, size: int | None = None, hidden: Sequence[int] = (128,),
                         arch: str = "auto", epochs: int | None = None, seed: int = 0) -> str:
    """The cache entry's folder name: `fd-classifier-<dataset>-size<px>-seed<seed>-<settings digest>-v<version>`."""
    settings = _cache_settings(dataset_name, size, hidden, arch, epochs, seed)
    return cache_key(f"fd-classifier-{dataset_name}", settings, CACHE_VERSION, readable=("size", "seed"))


def get_feature_classifier(dataset_name: str, cache_dir: str | Path, *, size: int | None = None,
                           hidden: Sequence[int] = (128,), arch: str = "auto", epochs: int | None = None,
                           seed: int = 0) -> FeatureClassifier:
    """The fixed classifier for a registered image set: loaded from `cache_dir` or trained once and saved.

    Trains on the data set's train split (same `seed` for split and training) and reports accuracy on the
    held-out test split. The cache entry is keyed by data set, resolution, architecture, width, epochs and
    seed, so a change in any of them trains a new classifier instead of silently reusing an old one; a
    damaged entry is trained again. (Entries of the older cache, named `<dataset>-<px>px-...-v1`, are not
    looked up: they are simply rebuilt under the new key.)
    """
    settings = _cache_settings(dataset_name, size, hidden, arch, epochs, seed)
    key = classifier_cache_key(dataset_name, size, hidden, arch, epochs, seed)

    def build() -> FeatureClassifier:
        from data_tools.image_datasets import load_image_dataset

        x_tr, y_tr = load_image_dataset(dataset_name, "train", size=size, seed=seed)
        x_te, y_te = load_image_dataset(dataset_name, "test", size=size, seed=seed)
        return train_feature_classifier(x_tr, y_tr, hidden, settings["epochs"], seed, arch=arch, test_images=x_te,
                                        test_labels=y_te, meta={"dataset": dataset_name, "cache_key": key})

    return cached(cache_dir, f"fd-classifier-{dataset_name}", settings, build=build,
                  load=lambda path: FeatureClassifier.from_pretrained(path).eval(),
                  save=lambda model, path: model.save_pretrained(path), version=CACHE_VERSION,
                  readable=("size", "seed"))


# ---------------------------------------------------------------------------------------------------------
# Summary and pictures


def sample_quality(samples: ArrayLike, reference: ArrayLike, classifier: FeatureClassifier,
                   swd_projections: int = 256, seed: int = 0) -> dict[str, float]:
    """Quick quality view of generated images against real ones (both [N, C, H, W] in [-1, 1]).

    fd                  Fréchet distance in the classifier's feature space (lower is better).
    swd                 sliced Wasserstein-2 in pixel space (lower is better).
    confidence          mean max class probability of the samples: low means unrecognisable digits.
    class_entropy       entropy (nats) of the samples' predicted-class histogram: diversity, log(K) = uniform.
    class_entropy_norm  class_entropy / log(K), 1.0 for perfectly balanced classes.
    """
    samples = torch.as_tensor(samples, dtype=torch.float32)
    reference = torch.as_tensor(reference, dtype=torch.float32)
    probs = classifier.predict_proba(samples)
    counts = torch.bincount(probs.argmax(dim=1), minlength=classifier.num_classes).double()
    hist = counts / counts.sum()
    entropy = float(-(hist[hist > 0] * hist[hist > 0].log()).sum())
    return {
        "fd": frechet_distance(classifier.features(samples), classifier.features(reference)),
        "swd": sliced_wasserstein(samples, reference, projections=swd_projections, seed=seed),
        "confidence": float(probs.max(dim=1).values.mean()),
        "class_entropy": entropy,
        "class_entropy_norm": entropy / math.log(classifier.num_classes),
        "n_samples": int(samples.shape[0]),
        "n_reference": int(reference.shape[0]),
    }
