"""Synthetic H.264 clips whose frames carry their own index, for decoder tests and benchmarks.

Frame k shows k as a 4x4 grid of solid black/white blocks (16 bits, bit 0 top-left, row-major) on a
mid-grey frame with a thin moving bar in the margins. Each block is large and flat, so the index
survives x264 at sane CRFs and a downscale of the whole frame to 1/4 (or smaller) size; reading only
the centre of each block keeps it robust to ringing and to blur at block edges.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from .ffmpeg_bin import ffmpeg_exe

GRID = 4  # blocks per side
BITS = GRID * GRID
MAX_INDEX = (1 << BITS) - 1
_MARGIN = 0.08  # fraction of each side left as a grey border around the grid
_BLACK, _WHITE, _GREY = 16, 235, 128  # video-range levels, so yuv420p round trips do not clip


def _grid_box(h: int, w: int) -> tuple[float, float, float, float]:
    """(top, left, cell_h, cell_w) of the bit grid inside an h x w frame, in float pixels."""
    top, left = _MARGIN * h, _MARGIN * w
    return top, left, (h - 2 * top) / GRID, (w - 2 * left) / GRID


def make_texture(size: tuple[int, int], amplitude: float, seed: int = 0) -> np.ndarray:
    """Smooth random texture (float32 [h, w], values within +-amplitude): bilinear upsampling of coarse
    noise, so it compresses like natural detail rather than like white noise."""
    h, w = size
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-amplitude, amplitude, size=(h // 8 + 2, w // 8 + 2)).astype(np.float32)
    ys, xs = np.linspace(0, coarse.shape[0] - 1.001, h), np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def render_index_frame(index: int, size: tuple[int, int], texture: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB [h, w, 3] frame that encodes `index`; `texture` (from make_texture) is scrolled by the
    index and added everywhere, to give benchmarks realistic bitrates and motion."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} does not fit in {BITS} bits")
    h, w = size
    frame = np.full((h, w, 3), _GREY, np.uint8)
    # A bar sweeping along the top border gives the encoder real motion (B-frames, non-zero residuals)
    # without touching the grid.
    bar_w = max(2, w // 16)
    x0 = (index * 3) % max(1, w - bar_w)
    frame[: max(1, int(_MARGIN * h) - 1), x0:x0 + bar_w] = (200, 60, 40)
    top, left, ch, cw = _grid_box(h, w)
    for bit in range(BITS):
        r, c = divmod(bit, GRID)
        y0, y1 = int(round(top + r * ch)), int(round(top + (r + 1) * ch))
        x0b, x1b = int(round(left + c * cw)), int(round(left + (c + 1) * cw))
        frame[y0:y1, x0b:x1b] = _WHITE if (index >> bit) & 1 else _BLACK
    if texture is not None:
        moved = np.roll(texture, (index, 2 * index), axis=(0, 1))
        frame = np.clip(frame + moved[:, :, None], 0, 255).astype(np.uint8)
    return frame


def read_frame_index(frame: np.ndarray) -> int:
    """Decode the index drawn by render_index_frame from an RGB (or grey) frame of any size.

    Raises ValueError when a block is neither clearly dark nor clearly bright (not an indexed frame,
    or a badly damaged one), so a wrong frame is never silently read as some index.
    """
    arr = np.asarray(frame)
    if arr.ndim == 3:
        arr = arr.astype(np.float32).mean(axis=2)
    elif arr.ndim != 2:
        raise ValueError(f"expected [H, W] or [H, W, C], got shape {arr.shape}")
    h, w = arr.shape
    top, left, ch, cw = _grid_box(h, w)
    value = 0
    for bit in range(BITS):
        r, c = divmod(bit, GRID)
        # Middle half of the block; at least one pixel even on tiny frames.
        cy, cx = top + (r + 0.5) * ch, left + (c + 0.5) * cw
        y0, y1 = int(cy - ch / 4), max(int(cy - ch / 4) + 1, int(round(cy + ch / 4)))
        x0, x1 = int(cx - cw / 4), max(int(cx - cw / 4) + 1, int(round(cx + cw / 4)))
        mean = float(arr[y0:y1, x0:x1].mean())
        if mean > 170:
            value |= 1 << bit
        elif mean >= 80:
            raise ValueError(f"block {bit} is ambiguous (mean level {mean:.0f}); not an indexed frame")
    return value


def _rate_arg(fps: float | str) -> str:
    """ffmpeg rate string; rationals like "30000/1001" pass through exactly."""
    rate = Fraction(str(fps)) if isinstance(fps, str) else Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return f"{rate.numerator}/{rate.denominator}"


def _x264_args(keyint: int | None, crf: int, preset: str) -> list[str]:
    args = ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-fps_mode", "cfr", "-movflags", "+faststart"]
    if keyint is not None:
        args += ["-g", str(keyint), "-keyint_min", str(keyint), "-sc_threshold", "0"]
    return args


def make_indexed_clip(path: str | os.PathLike, num_frames: int, size: tuple[int, int] = (96, 128),
                      fps: float | str = 25, keyint: int | None = 25, crf: int = 18,
                      proxy_path: str | os.PathLike | None = None,
                      proxy_size: tuple[int, int] | None = None, texture: float = 0.0,
                      preset: str = "veryfast") -> Path:
    """Write an H.264 mp4 of `num_frames` indexed frames (size = (height, width)) and return its path.

    keyint=None leaves x264's default GOP (and scene-cut keyframes). With proxy_path, the same
    frames are also written downscaled to proxy_size (default 1/4 size) by the same ffmpeg call.
    The "veryfast" preset still uses B-frames (3, with pyramid), which is what decoders must handle.
    """
    if num_frames < 1 or num_frames > MAX_INDEX + 1:
        raise ValueError(f"num_frames must be in [1, {MAX_INDEX + 1}], got {num_frames}")
    h, w = size
    if h % 2 or w % 2:
        raise ValueError(f"size must be even for yuv420p, got {size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = _rate_arg(fps)
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", rate, "-i", "pipe:0"]
    cmd += ["-map", "0:v", *_x264_args(keyint, crf, preset), "-r", rate, str(path)]
    if proxy_path is not None:
        ph, pw = proxy_size or (max(2, h // 8 * 2), max(2, w // 8 * 2))
        Path(proxy_path).parent.mkdir(parents=True, exist_ok=True)
        cmd += ["-map", "0:v", "-vf", f"scale={pw}:{ph}:flags=area", *_x264_args(keyint, crf, preset),
                "-r", rate, str(proxy_path)]
    tex = make_texture((h, w), texture) if texture > 0 else None
    # stderr goes to a file: a full pipe would block ffmpeg while we block writing its stdin.
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=errlog)
        try:
            for k in range(num_frames):
                proc.stdin.write(render_index_frame(k, (h, w), tex).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg died; its stderr below says why
        code = proc.wait()
        errlog.seek(0)
        err = errlog.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {err.strip()[-2000:]}")
    return path
