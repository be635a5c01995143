"""Frame-accurate cut of one span and transcode to H.264 (plus an optional low-res proxy), in one ffmpeg call.

Why not stream copy (as the HD-VILA reference did): copies snap to keyframes, so a clip's first frame is
not the frame at the span start. Here the input is seeked with `-ss` before `-i` (fast keyframe seek,
then ffmpeg decodes and drops frames up to the exact position), timestamps restart at zero, and the
output is constant frame rate with a fixed keyframe interval so that later sparse seeks stay cheap.
"""
from __future__ import annotations

import math
import os
import functools
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from ..decoders.isolation import die_with_parent
from ..media import ProbeError, VideoInfo, count_video_packets, ffmpeg_exe
from .config import TranscodeConfig


class TranscodeError(RuntimeError):
    """ffmpeg failed or produced an unusable clip; the message says why."""


@dataclass
class ClipMedia:
    mp4: bytes
    proxy: bytes | None
    num_frames: int  # counted in the written stream
    width: int
    height: int
    proxy_width: int | None
    proxy_height: int | None
    fps: str  # exact output rate, e.g. "25/1"
    first_source_frame: int  # index of the source frame the clip starts at
    keyint: int  # frames between keyframes


def _even(x: float) -> int:
    """Nearest even integer not above x (yuv420p needs even sizes; never upscale by rounding)."""
    return max(2, int(x + 1e-6) // 2 * 2)


def output_size(width: int, height: int, max_short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at most `max_short_side`, never upscaled, both even."""
    short = min(width, height)
    scale = min(1.0, max_short_side / short)
    return _even(width * scale), _even(height * scale)


def proxy_size(width: int, height: int, proxy_short_side: int | None) -> tuple[int, int] | None:
    """Size of the low-res proxy, or None when the main stream is already small enough to be its own proxy."""
    if not proxy_short_side or min(width, height) < 2 * proxy_short_side:
        return None
    scale = proxy_short_side / min(width, height)
    return _even(width * scale), _even(height * scale)


def output_rate(info: VideoInfo, cfg: TranscodeConfig) -> Fraction:
    if cfg.fps:
        return Fraction(cfg.fps).limit_denominator(1001)
    return Fraction(info.fps_fraction)


def frame_span(start: float, end: float, src_rate: Fraction, out_rate: Fraction) -> tuple[int, float, int]:
    """First source frame at `start`, the seek position that keeps it, and the output frame count.

    The seek lands half a frame before the first kept frame, so rounding in ffmpeg's timestamp
    arithmetic cannot move the cut by one frame in either direction.
    """
    first = int(math.floor(start * src_rate + 1e-6))
    seek = max(0.0, (first - 0.5) / float(src_rate))
    n_out = max(1, int(round((end - first / float(src_rate)) * float(out_rate))))
    return first, seek, n_out


def build_command(src: str, dst: str, dst_proxy: str | None, info: VideoInfo, start: float, end: float,
                  cfg: TranscodeConfig, threads: int) -> tuple[list[str], dict]:
    """ffmpeg arguments (compiled with ffmpeg-python) and what the clip will contain."""
    src_rate = Fraction(info.fps_fraction)
    rate = output_rate(info, cfg)
    first, seek, n_out = frame_span(start, end, src_rate, rate)
    width, height = output_size(info.width, info.height, cfg.max_short_side)
    proxy_wh = proxy_size(width, height, cfg.proxy_short_side) if dst_proxy else None
    keyint = max(1, int(round(cfg.keyint_seconds * float(rate))))
    if cfg.proxy_keyint is not None and int(cfg.proxy_keyint) < 1:
        raise ValueError(f"transcode.proxy_keyint must be at least 1 frame (or null), got {cfg.proxy_keyint}")
    proxy_keyint = keyint if cfg.proxy_keyint is None else int(cfg.proxy_keyint)

    video = ffmpeg.input(src, ss=f"{seek:.6f}").video.setpts("PTS-STARTPTS")
    video = video.filter("scale", width, height, flags="bicubic").filter("format", "yuv420p")
    common = {
        "vcodec": "libx264",
        "pix_fmt": "yuv420p",
        "r": f"{rate.numerator}/{rate.denominator}",
        "fps_mode": "cfr",
        "g": keyint,
        "keyint_min": keyint,
        "sc_threshold": 0,
        "frames:v": n_out,
        "movflags": "+faststart",
        "map_metadata": -1,
        "fflags": "+bitexact",
        "flags:v": "+bitexact",
        "threads": threads,
        "an": None,
        "sn": None,
        "dn": None,
    }
    if proxy_wh:
        split = video.split()
        main_in, proxy_in = split[0], split[1]
        outputs = [
            ffmpeg.output(main_in, dst, preset=cfg.preset, crf=cfg.crf, **common),
            ffmpeg.output(proxy_in.filter("scale", proxy_wh[0], proxy_wh[1], flags="area"), dst_proxy,
                          preset=cfg.preset, crf=cfg.proxy_crf, **{**common, "g": proxy_keyint,
                                                                   "keyint_min": proxy_keyint}),
        ]
        stream = ffmpeg.merge_outputs(*outputs)
    else:
        stream = ffmpeg.output(video, dst, preset=cfg.preset, crf=cfg.crf, **common)
    stream = stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error").overwrite_output()
    args = stream.compile(cmd=ffmpeg_exe())
    plan = {
        "first_source_frame": first,
        "num_frames": n_out,
        "width": width,
        "height": height,
        "proxy": proxy_wh,
        "fps": f"{rate.numerator}/{rate.denominator}",
        "keyint": keyint,
        "proxy_keyint": proxy_keyint if proxy_wh else None,
    }
    return args, plan


def cut_clip(src: str | os.PathLike, info: VideoInfo, start: float, end: float, cfg: TranscodeConfig,
             threads: int = 1, workdir: str | None = None) -> ClipMedia:
    """Cut [start, end) of `src` frame-accurately and return the encoded bytes."""
    with tempfile.TemporaryDirectory(prefix="cut_", dir=workdir) as tmp:
        dst = str(Path(tmp) / "clip.mp4")
        dst_proxy = str(Path(tmp) / "proxy.mp4") if cfg.proxy_short_side else None
        args, plan = build_command(str(src), dst, dst_proxy, info, start, end, cfg, threads)
        try:
            # die_with_parent: an ffmpeg whose worker was killed (OOM killer, a lost Ray task) stops with it
            proc = subprocess.run(args, capture_output=True, timeout=cfg.timeout_s, check=False,
                                  preexec_fn=functools.partial(die_with_parent, os.getpid()))
        except subprocess.TimeoutExpired:
            raise TranscodeError(f"ffmpeg took longer than {cfg.timeout_s:.0f} s") from None
        if proc.returncode != 0 or not os.path.exists(dst):
            message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            tail = message[-1] if message else f"exit code {proc.returncode}"
            raise TranscodeError(f"ffmpeg failed: {tail}")
        try:
            frames = count_video_packets(dst)
        except ProbeError:
            raise TranscodeError("no decodable frames in the span (truncated or corrupt source?)") from None
        # A source that ends early (truncated file) yields fewer frames than the span asks for.
        if frames < plan["num_frames"] - 1:
            raise TranscodeError(
                f"source ended early: got {frames} of {plan['num_frames']} frames (truncated file?)")
        proxy = None
        if plan["proxy"]:
            proxy = Path(dst_proxy).read_bytes()
        return ClipMedia(
            mp4=Path(dst).read_bytes(),
            proxy=proxy,
            num_frames=frames,
            width=plan["width"],
            height=plan["height"],
            proxy_width=plan["proxy"][0] if plan["proxy"] else None,
            proxy_height=plan["proxy"][1] if plan["proxy"] else None,
            fps=plan["fps"],
            first_source_frame=plan["first_source_frame"],
            keyint=plan["keyint"],
        )
