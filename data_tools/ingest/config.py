"""Config of `hdvila data build` (the packaged config `data/build` holds the defaults as a file)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SentenceConfig:
    """How transcript cues become clip spans."""

    min_duration: float = 4.0  # shorter sentences merge with a neighbour or widen to this
    max_duration: float = 20.0  # longer ones split at word boundaries (HD-VILA-100M averages 13.4 s)
    max_words: int = 80  # a sentence with more words is split as well
    merge_short: bool = True


@dataclass
class TranscodeConfig:
    """Frame-accurate cut + H.264 transcode of each span."""

    max_short_side: int = 720  # downscale so the short side is at most this; never upscale
    fps: float | None = None  # null keeps the source's average rate (always written as constant frame rate)
    keyint_seconds: float = 1.0  # fixed GOP, so sparse seeks decode at most this much
    crf: int = 23
    preset: str = "veryfast"
    proxy_short_side: int | None = 180  # low-res proxy stream for neighbour frames; null disables it
    proxy_crf: int = 26
    # Frames between the proxy's I-frames; null = the main stream's GOP. 1 makes the proxy intra-only: every
    # neighbour frame then decodes alone (about 2.5x less loader CPU on the proxy for 2.4x its bytes).
    proxy_keyint: int | None = None
    threads: int = 0  # encoder threads per job; 0 = cores // workers
    timeout_s: float = 600.0  # per ffmpeg call


@dataclass
class ShardConfig:
    samples_per_shard: int = 100  # video2dataset's HD-VILA recipe; ~1 GB at 720p
    absolute_source_paths: bool = False  # record sources relative to their input root (true: absolute paths)


@dataclass
class LimitsConfig:
    """Inputs are untrusted: each must be a regular file no larger than its cap, or it is reported."""

    max_transcript_bytes: int = 64 * 2**20  # a 10-hour SRT is about 2 MiB
    max_manifest_bytes: int = 4 * 2**30  # manifests and clip_text files are read whole
    max_video_bytes: int = 256 * 2**30


@dataclass
class BuildConfig:
    sentences: SentenceConfig = field(default_factory=SentenceConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    workers: int = 1
    video_root: str | None = None  # where HD-VILA-100M / manifest video paths are resolved
    clip_text: str | None = None  # optional JSONL {clip_id, text} for HD-VILA-100M inputs
