"""Media helpers: locating ffmpeg, probing containers."""
from .ffmpeg_bin import ffmpeg_exe
from .probe import ProbeError, VideoInfo, count_video_packets, probe_video

__all__ = ["ffmpeg_exe", "probe_video", "count_video_packets", "VideoInfo", "ProbeError"]
