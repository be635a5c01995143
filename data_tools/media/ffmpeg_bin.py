"""Find an ffmpeg binary: $HDVILA_FFMPEG, then `ffmpeg` on PATH, then the one inside the imageio-ffmpeg wheel.

A fresh machine has no system ffmpeg; the imageio-ffmpeg wheel ships a static build with libx264,
so nothing here needs apt.
"""
from __future__ import annotations

import functools
import os
import shutil


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    explicit = os.environ.get("HDVILA_FFMPEG")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"HDVILA_FFMPEG={explicit} is not an executable")
        return explicit
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise FileNotFoundError("no ffmpeg on PATH and imageio-ffmpeg is not installed") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()
