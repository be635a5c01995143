"""Which frames to decode, at what size, and where to crop: HD-VILA segments and plain frame sampling.

A plan is computed before any decoding, from the clip's decodable frame count and native size, so that
the decoder returns every frame already at its target scale: the high-res keyframe from the main stream,
the low-res neighbours from the proxy stream (or from the main stream scaled inside the decoder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class ClipSamplingConfig:
    """HD-VILA sampling: `n_segments` x (1 high-res keyframe + `num_frm - 1` low-res neighbours)."""

    n_segments: int = 2
    num_frm: int = 7  # odd: the middle frame is the keyframe
    sample_rate: int = 12  # frames between neighbours; shrinks for short clips
    hr_size: tuple[int, int] = (640, 1024)  # keyframe crop (height, width) out of 720p
    lr_factor: int = 4  # neighbours are hr_size / lr_factor (160 x 256 by default)
    hflip_prob: float = 0.0
    random: bool = True  # train: random positions and crop; eval: evenly spaced, centre crop
    # Short side the decoder scales frames to before cropping; None keeps the native size (720p for a
    # 640x1024 crop, as HD-VILA did). Frames smaller than the crop are always scaled up to cover it.
    canvas_short_side: int | None = None
    # Centre each segment on an I-frame of the main stream (one per GOP, 1 s at ingest) instead of on any
    # frame: the keyframe then decodes alone instead of after half a GOP of 720p frames on average. Keyframe
    # positions become a 1 s grid; clips with no I-frame where a segment fits sample as usual.
    keyframes_on_iframes: bool = False


@dataclass
class FrameSamplingConfig:
    """Frame mode (diffusion, GANs): `num_frames` frames `stride` apart at `size`, cover-resized then cropped."""

    num_frames: int = 1
    stride: int = 1
    size: tuple[int, int] = (64, 64)
    hflip_prob: float = 0.0
    random: bool = True


def segment_indices(num_frames: int, n_segments: int, num_frm: int, sample_rate: int,
                    rng: np.random.Generator | None, iframes: Sequence[int] | None = None) -> np.ndarray:
    """[n_segments, num_frm] frame indices; the middle column holds the keyframes.

    Keyframe centres are uniform random (sorted) when `rng` is given, else evenly spaced. When the clip is
    too short for `sample_rate`, the rate shrinks; a clip shorter than `num_frm` frames repeats frames.
    With `iframes` (the stream's I-frame indices), centres are drawn from the I-frames where a whole segment
    fits, distinct while there are enough (evenly spaced ones move to the nearest); none fitting, as usual.
    """
    if num_frames <= 0:
        raise ValueError("clip has no decodable frames")
    if num_frm % 2 != 1:
        raise ValueError(f"num_frm must be odd (the middle frame is the keyframe), got {num_frm}")
    half_frames = num_frm // 2
    rate = sample_rate
    if half_frames and (num_frm - 1) * rate + 1 > num_frames:
        rate = max(0, (num_frames - 1) // (num_frm - 1))
    half = half_frames * rate
    lo, hi = half, num_frames - 1 - half  # inclusive range of valid centres
    if hi < lo:  # only possible when rate == 0 and the clip is empty-ish
        lo = hi = (num_frames - 1) // 2
    fitting = np.unique(np.asarray([k for k in (() if iframes is None else iframes) if lo <= k <= hi],
                                   dtype=np.int64))
    if fitting.size and rng is not None:
        centres = np.sort(rng.choice(fitting, size=n_segments, replace=fitting.size < n_segments))
    elif rng is not None:
        centres = np.sort(rng.integers(lo, hi + 1, size=n_segments))
    else:
        centres = np.floor(lo + (np.arange(n_segments) + 0.5) * (hi - lo + 1) / n_segments).astype(np.int64)
        if fitting.size:
            centres = fitting[np.abs(fitting[None, :] - centres[:, None]).argmin(axis=1)]
    offsets = (np.arange(num_frm) - half_frames) * rate
    return np.clip(centres[:, None] + offsets[None, :], 0, num_frames - 1).astype(np.int64)


def cover_size(height: int, width: int, crop: tuple[int, int], short_side: int | None = None) -> tuple[int, int]:
    """Frame size at its aspect ratio with the short side at `short_side` (default: native), never smaller
    than what covers `crop`."""
    scale = max(crop[0] / height, crop[1] / width)
    if short_side is not None:
        scale = max(scale, short_side / min(height, width))
    elif scale <= 1.0:
        return height, width
    if abs(scale - 1.0) < 1e-9:
        return height, width
    return max(crop[0], math.ceil(height * scale)), max(crop[1], math.ceil(width * scale))


def crop_offset(canvas: tuple[int, int], crop: tuple[int, int], align: int,
                rng: np.random.Generator | None) -> tuple[int, int]:
    """Top-left corner of the crop, a multiple of `align` so the low-res crop maps exactly."""
    spare_y, spare_x = (canvas[0] - crop[0]) // align, (canvas[1] - crop[1]) // align
    if rng is not None:
        return int(rng.integers(0, spare_y + 1)) * align, int(rng.integers(0, spare_x + 1)) * align
    return (spare_y // 2) * align, (spare_x // 2) * align


@dataclass
class ClipPlan:
    indices: np.ndarray  # [S, T]
    hr_canvas: tuple[int, int]  # decode size of the main stream (height, width)
    lr_canvas: tuple[int, int]
    hr_crop: tuple[int, int, int, int]  # y, x, h, w on the hr canvas
    lr_crop: tuple[int, int, int, int]
    flip: bool

    @property
    def keyframes(self) -> np.ndarray:
        return self.indices[:, self.indices.shape[1] // 2]

    @property
    def neighbours(self) -> np.ndarray:
        mid = self.indices.shape[1] // 2
        return np.concatenate([self.indices[:, :mid], self.indices[:, mid + 1:]], axis=1)


def plan_clip(num_frames: int, height: int, width: int, cfg: ClipSamplingConfig,
              rng: np.random.Generator | None, iframes: Sequence[int] | None = None) -> ClipPlan:
    """The clip's plan; `iframes` (the main stream's I-frame indices) is used when cfg.keyframes_on_iframes."""
    f = cfg.lr_factor
    hr_h, hr_w = cfg.hr_size
    if hr_h % f or hr_w % f:
        raise ValueError(f"hr_size {cfg.hr_size} must be divisible by lr_factor {f}")
    use_rng = rng if cfg.random else None
    indices = segment_indices(num_frames, cfg.n_segments, cfg.num_frm, cfg.sample_rate, use_rng,
                              iframes if cfg.keyframes_on_iframes else None)
    canvas = cover_size(height, width, cfg.hr_size, cfg.canvas_short_side)
    y, x = crop_offset(canvas, cfg.hr_size, f, use_rng)
    flip = bool(use_rng is not None and cfg.hflip_prob > 0 and use_rng.random() < cfg.hflip_prob)
    return ClipPlan(
        indices=indices,
        hr_canvas=canvas,
        lr_canvas=(canvas[0] // f, canvas[1] // f),
        hr_crop=(y, x, hr_h, hr_w),
        lr_crop=(y // f, x // f, hr_h // f, hr_w // f),
        flip=flip,
    )


@dataclass
class FramePlan:
    indices: np.ndarray  # [num_frames]
    canvas: tuple[int, int]
    crop: tuple[int, int, int, int]
    flip: bool


def plan_frames(num_frames: int, height: int, width: int, cfg: FrameSamplingConfig,
                rng: np.random.Generator | None) -> FramePlan:
    if num_frames <= 0:
        raise ValueError("clip has no decodable frames")
    use_rng = rng if cfg.random else None
    span = (cfg.num_frames - 1) * cfg.stride + 1
    stride = cfg.stride if span <= num_frames else max(0, (num_frames - 1) // max(1, cfg.num_frames - 1))
    span = (cfg.num_frames - 1) * stride + 1
    last_start = max(0, num_frames - span)
    start = int(use_rng.integers(0, last_start + 1)) if use_rng is not None else last_start // 2
    indices = np.clip(start + np.arange(cfg.num_frames) * stride, 0, num_frames - 1)
    # Cover the target with the short side, keeping the aspect ratio (resize happens in the decoder).
    scale = max(cfg.size[0] / height, cfg.size[1] / width)
    canvas = (max(cfg.size[0], round(height * scale)), max(cfg.size[1], round(width * scale)))
    y, x = crop_offset(canvas, cfg.size, 1, use_rng)
    flip = bool(use_rng is not None and cfg.hflip_prob > 0 and use_rng.random() < cfg.hflip_prob)
    return FramePlan(indices=indices.astype(np.int64), canvas=canvas, crop=(y, x, *cfg.size), flip=flip)


def apply_crop(frames: np.ndarray, crop: tuple[int, int, int, int], flip: bool) -> np.ndarray:
    """Crop [N, H, W, 3] frames (a view) and optionally mirror them; returns a contiguous array."""
    y, x, h, w = crop
    out = frames[:, y:y + h, x:x + w]
    if out.shape[1] != h or out.shape[2] != w:
        raise ValueError(f"crop {crop} does not fit frames of shape {frames.shape}")
    if flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)
