"""Frame decoders behind one small protocol (`open_video`), plus process isolation for decoders
that can hang while holding the GIL."""
from __future__ import annotations

from .base import (DEFAULT_BACKEND, DecodeError, DecodeTimeout, VideoReader, available_backends, decode_frames, open_video,
                   register_backend)
from .isolation import IsolatedRunner

__all__ = ["DEFAULT_BACKEND", "DecodeError", "DecodeTimeout", "VideoReader", "open_video", "available_backends", "register_backend",
           "decode_frames", "IsolatedRunner"]
