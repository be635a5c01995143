"""Images as tensors, shared by every generator (diffusion, GANs): [-1, 1] float [N, C, H, W] <-> uint8,
image folders, in-memory mini-batches, video frames as images, and PNG grids."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .decoders import DEFAULT_BACKEND
from .files import atomic_open

log = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def resize_images(images: torch.Tensor, size: int | Sequence[int], clamp: bool = True) -> torch.Tensor:
    """Antialiased bilinear resize of [N, C, H, W]; the result is clamped back into [-1, 1] unless `clamp` is
    False (a differentiable resize of network inputs, whose gradient must not stop at the range ends)."""
    hw = as_hw(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    out = F.interpolate(images, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(-1.0, 1.0) if clamp else out  # the antialias kernel can overshoot slightly at sharp strokes


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
        self.size = as_hw(size)
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
        return read_image_file(path, self.size, self.channels)

    def __len__(self) -> int:
        return self._uint8.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return from_uint8_images(self._uint8[i].unsqueeze(0))[0]

    def tensors(self) -> torch.Tensor:
        """All images at once, [N, C, H, W] in [-1, 1]."""
        return from_uint8_images(self._uint8)


def read_image_file(path: str | Path, size: int | Sequence[int] | None = None, channels: int = 3) -> np.ndarray:
    """One image file as uint8 [H, W, C]: EXIF rotation applied, transparent pixels on white, and with `size`
    cover-resized (aspect kept) and centre-cropped to it. PIL's errors (a missing or unreadable file) pass
    through."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # composite transparent pixels onto white instead of whatever colour hides under alpha 0
            rgba = im.convert("RGBA")
            im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im.alpha_composite(rgba)
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None:
            im = _cover_resize_crop(im, as_hw(size))
        arr = np.array(im, dtype=np.uint8)  # a writable copy (asarray of a PIL image is read-only)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _cover_resize_crop(im, size: tuple[int, int]):
    from PIL import Image

    h, w = size
    scale = max(w / im.width, h / im.height)
    new_w, new_h = max(w, math.ceil(im.width * scale - 1e-6)), max(h, math.ceil(im.height * scale - 1e-6))
    if (new_w, new_h) != im.size:
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)  # PIL antialiases when shrinking
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return im.crop((left, top, left + w, top + h))


# ---------------------------------------------------------------------------------------------------------
# Batches and grids


class ArrayBatches:
    """Shuffled mini-batches of an in-memory image tensor; a new seeded order every epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(images) < batch_size * world_size:
            raise ValueError(f"{len(images)} images cannot fill a batch of {batch_size} on {world_size} ranks")
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images) // (self.batch_size * self.world_size)

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        mine = order[self.rank::self.world_size]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = mine[start:start + self.batch_size]
            yield {"images": self.images[idx], "labels": self.labels[idx]}


def video_frame_loader(shards: Sequence[str], size: int, batch_size: int, *, num_workers: int = 2,
                       epoch_samples: int = 2048, seed: int = 0, backend: str = DEFAULT_BACKEND, hflip_prob: float = 0.5):
    """(DataLoader, dataset) of single frames [B, 1, size, size, 3] uint8 from video shards built by
    `hdvila data build`: resampled shards, random frames, the shared data layer's decoders and skip reports.
    Turn a batch into images with `frames_to_images(batch["frames"])`; `dataset.set_epoch` reshuffles."""
    from .loading.pipeline import LoaderConfig, make_loader
    from .loading.sampling import FrameSamplingConfig

    if not shards:
        raise ValueError("video frames need shards (built by `hdvila data build`)")
    cfg = LoaderConfig(shards=list(shards), batch_size=batch_size, num_workers=num_workers, resampled=True,
                       epoch_samples=epoch_samples, seed=seed, backend=backend,
                       decode_timeout=0 if num_workers == 0 else 30.0)
    return make_loader(cfg, "frames", FrameSamplingConfig(num_frames=1, size=(size, size), hflip_prob=hflip_prob))


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] video frames (the data layer's frame mode) -> float [B*F, 3, H, W] in [-1, 1]."""
    return from_uint8_images(frames.flatten(0, 1))


def save_image_grid(images: ArrayLike, path: str | Path, nrow: int | None = None, scale: int = 4,
                    padding: int = 1) -> Path:
    """Tile images [N, C, H, W] in [-1, 1] into one PNG, written atomically.

    `nrow` images per row (default ceil(sqrt(N))). Tiles are separated by `padding` mid-grey pixels, also
    round the border, and the whole grid is upscaled `scale`x with nearest neighbour so 8x8 digits stay
    crisp: the PNG is scale * (cols*W + (cols+1)*padding) wide and scale * (rows*H + (rows+1)*padding) high.
    """
    from PIL import Image

    u = to_uint8_images(images)  # [N, H, W, C]
    n, h, w, c = u.shape
    if n == 0:
        raise ValueError("no images to save")
    if c not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {c}")
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got {scale}, {padding}")
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, c), 128, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[top: top + h, left: left + w] = u[i]
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid)  # 2-D uint8 -> "L", HxWx3 -> "RGB"
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        img.save(fh, format="PNG")
    return path
