"""Probe a video container: duration, frame rate, codec, resolution, frame count.

Uses PyAV (the same libavformat that ffprobe wraps), because a fresh machine has no ffprobe binary and
the imageio-ffmpeg wheel ships only ffmpeg. Every failure becomes a ProbeError with a readable reason.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av


class ProbeError(RuntimeError):
    """The input is not a readable video; the message says why in plain words."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration: float  # seconds, of the video stream
    fps: float  # average frame rate
    fps_fraction: str  # exact rational, e.g. "30000/1001"
    codec: str
    width: int
    height: int
    num_frames: int  # from the container header (may over-report); see count_video_packets
    start_time: float  # seconds; first video timestamp
    has_audio: bool
    size_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def _open(source: str | os.PathLike | bytes):
    if isinstance(source, (bytes, bytearray, memoryview)):
        return av.open(io.BytesIO(bytes(source)), mode="r")
    return av.open(str(source), mode="r")


def probe_video(source: str | os.PathLike | bytes) -> VideoInfo:
    """Read the container header and return VideoInfo, or raise ProbeError with a reason."""
    label = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    size = len(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
    if size is None:
        p = Path(source)
        if not p.exists():
            raise ProbeError("file does not exist")
        if p.is_dir():
            raise ProbeError("path is a directory, not a video file")
        size = p.stat().st_size
    if size == 0:
        raise ProbeError("file is empty (0 bytes)")
    try:
        container = _open(source)
    except av.error.InvalidDataError:
        raise ProbeError("not a media container (invalid data: random bytes, text or a truncated header)") from None
    except av.error.FFmpegError as exc:
        raise ProbeError(f"cannot open as media: {exc}") from None
    try:
        videos = [s for s in container.streams if s.type == "video"]
        has_audio = any(s.type == "audio" for s in container.streams)
        if not videos:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ProbeError(f"no video stream (streams: {', '.join(kinds)})")
        stream = videos[0]
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise ProbeError("video stream has no resolution (corrupt header)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise ProbeError("video stream has no frame rate")
        rate = Fraction(rate)
        tb = stream.time_base
        if stream.duration is not None and tb is not None:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        start = float(stream.start_time * tb) if (stream.start_time is not None and tb is not None) else 0.0
        frames = int(stream.frames or round(duration * float(rate)))
        if duration <= 0 or frames <= 0:
            raise ProbeError("video stream has zero duration or no frames")
        return VideoInfo(
            path=label,
            duration=duration,
            fps=float(rate),
            fps_fraction=f"{rate.numerator}/{rate.denominator}",
            codec=ctx.name or "unknown",
            width=int(ctx.width),
            height=int(ctx.height),
            num_frames=frames,
            start_time=start,
            has_audio=has_audio,
            size_bytes=int(size),
        )
    finally:
        container.close()


def count_video_packets(source: str | os.PathLike | bytes) -> int:
    """Count video packets by demuxing (no decoding). For the CFR H.264 clips that ingest writes,
    one packet is one frame, so this is the decodable frame count at a fraction of a decode's cost."""
    try:
        container = _open(source)
    except av.error.FFmpegError as exc:
        raise ProbeError(f"cannot open as media: {exc}") from None
    try:
        if not container.streams.video:
            raise ProbeError("no video stream")
        stream = container.streams.video[0]
        return sum(1 for pkt in container.demux(stream) if pkt.size > 0)
    finally:
        container.close()
