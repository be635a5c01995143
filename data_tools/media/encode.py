"""Write frames to video files: H.264 mp4 through ffmpeg (imageio-ffmpeg's binary on a bare machine) and GIF."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable

import numpy as np

from .ffmpeg_bin import ffmpeg_exe


def encode_rgb24(frames: Iterable[np.ndarray], out_path: str | os.PathLike, *, width: int, height: int, fps: int,
                 preset: str = "veryfast", crf: int = 18, keyint: int | None = None, threads: int = 1) -> Path:
    """Pipe uint8 [H, W, 3] frames into ffmpeg -> libx264 yuv420p CFR mp4 (faststart), written atomically.
    Width and height must be even (yuv420p)."""
    if width % 2 or height % 2:
        raise ValueError(f"mp4 (yuv420p) needs an even size, got {width}x{height}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps),
        "-i", "pipe:0", "-an",
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-g", str(keyint or fps), "-threads", str(threads),
        # no wall-clock or version strings in the container, so reruns are byte-identical
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-movflags", "+faststart", "-f", "mp4", str(tmp),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        try:
            for frame in frames:
                proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except BrokenPipeError:
            pass  # ffmpeg died; its stderr below says why
        finally:
            proc.stdin.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        rc = proc.wait()
        if rc != 0:
            raise RuntimeError(f"ffmpeg failed (exit {rc}) writing {out_path}: {err.strip()[-2000:]}")
        os.replace(tmp, out_path)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def write_gif(frames: Iterable[np.ndarray], out_path: str | os.PathLike, fps: int = 10, loop: int = 0) -> Path:
    """uint8 [H, W, 3] frames -> an animated GIF (looping forever by default), written atomically."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    if not images:
        raise ValueError("no frames to write")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                       loop=loop)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
