"""Media helpers: locating ffmpeg, probing containers, the video file extensions every reader accepts."""
from .ffmpeg_bin import ffmpeg_exe
from .probe import ProbeError, VideoInfo, count_video_packets, probe_video

# Container suffixes (lower case) that folder scans, manifests and shard readers treat as videos.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")

__all__ = ["VIDEO_EXTENSIONS", "ffmpeg_exe", "probe_video", "count_video_packets", "VideoInfo", "ProbeError"]
