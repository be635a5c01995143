"""The decoder protocol, its errors, and the backend registry behind `open_video`."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..registry import Registry


class DecodeError(RuntimeError):
    """The source cannot be decoded (not a video, corrupt data, missing frames); the message says why."""


class DecodeTimeout(DecodeError):
    """Decoding took longer than its time limit and was killed."""


@runtime_checkable
class VideoReader(Protocol):
    num_frames: int  # frames that can actually be decoded
    fps: float
    height: int  # output size: the requested size, else native
    width: int
    # Optional (not required of registered backends): `native_size`, the (height, width) the container's
    # stream header declares, or None where the backend cannot tell without decoding. The loader holds
    # untrusted shard metadata to it. `keyframe_indices()`, the I-frames' indices, lets the sampler put
    # keyframes on them (the built-in decord and PyAV readers have it).

    def get_frames(self, indices: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> "VideoReader": ...

    def __exit__(self, *exc) -> None: ...


Factory = Callable[..., VideoReader]  # factory(source, size, num_frames_hint, threads)


class _BuiltinBackend:
    """A built-in backend's module, imported on first use so that importing this package never loads decord or
    av; `load` checks its dependencies and returns its factory."""

    def __init__(self, module: str):
        self.module = module

    def load(self) -> Factory:
        module = importlib.import_module(self.module)
        module.check_available()  # raises ImportError/FileNotFoundError with the missing piece
        return module.open_reader


_BUILTIN = ("decord", "pyav", "ffmpeg")
# The default everywhere: PyAV uses 1.62x less CPU than decord per HD-VILA sample on 720p H.264 (its own seek
# logic, non-reference frames skipped, lone keyframes decoded alone; docs/benchmarks/loader_levers.md).
DEFAULT_BACKEND = "pyav"
DECODER_BACKENDS: Registry[Factory | _BuiltinBackend] = Registry("decoder backend")
for _name in _BUILTIN:
    DECODER_BACKENDS.register(_name, _BuiltinBackend(f"data_tools.decoders.{_name}_backend"))


def register_backend(name: str, factory: Factory) -> None:
    """Add or replace a backend; `factory(source, size, num_frames_hint, threads)` returns a VideoReader."""
    if not callable(factory):
        raise TypeError("factory must be callable")
    DECODER_BACKENDS.register(name, factory, replace=True)


def _factory(name: str) -> Factory:
    entry = DECODER_BACKENDS.get(name)  # RegistryError (a ValueError) names the known backends
    if isinstance(entry, _BuiltinBackend):
        entry = entry.load()
        DECODER_BACKENDS.register(name, entry, replace=True)
    return entry


def available_backends() -> list[str]:
    """Backends whose dependencies are present on this machine (registered ones count as present)."""
    names = []
    for name in [*_BUILTIN, *(n for n in DECODER_BACKENDS.list() if n not in _BUILTIN)]:
        try:
            _factory(name)
        except (ImportError, OSError):
            continue
        names.append(name)
    return names


def source_label(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def short_message(exc: BaseException, limit: int = 300) -> str:
    """First line of an exception, clipped: decord puts C++ stack traces (and even the input bytes) in it."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def _check_source(source) -> None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DecodeError("empty input (0 bytes)")
        return
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
    p = Path(source)
    if not p.exists():
        raise DecodeError(f"{p}: file does not exist")
    if p.is_dir():
        raise DecodeError(f"{p}: is a directory, not a video file")
    if p.stat().st_size == 0:
        raise DecodeError(f"{p}: file is empty (0 bytes)")


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be (height, width) with positive values, got {size!r}")
    return h, w


def open_video(source: str | os.PathLike | bytes, backend: str = DEFAULT_BACKEND, size: tuple[int, int] | None = None,
               num_frames_hint: int | None = None, threads: int = 1) -> VideoReader:
    """Open a video for random frame access.

    size=(height, width) makes the decoder itself output frames at that size. num_frames_hint (e.g.
    the count stored at ingest) caps num_frames and lets backends skip counting packets.
    Any failure to open becomes DecodeError. A reader is not thread-safe: one per thread or worker.
    """
    factory = _factory(backend)
    size = _check_size(size)
    if num_frames_hint is not None and int(num_frames_hint) <= 0:
        raise ValueError(f"num_frames_hint must be positive, got {num_frames_hint}")
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    _check_source(source)
    try:
        reader = factory(source, size, None if num_frames_hint is None else int(num_frames_hint), max(0, int(threads)))
    except DecodeError:
        raise
    except Exception as exc:  # library errors vary (av.error.*, decord RuntimeError, OSError); unify them
        raise DecodeError(f"{backend} cannot open {source_label(source)}: {type(exc).__name__}: "
                          f"{short_message(exc)}") from exc
    if reader.num_frames <= 0:
        reader.close()
        raise DecodeError(f"{backend}: {source_label(source)} has no decodable frames")
    return reader


class BaseReader:
    """Shared plumbing for the built-in readers: index checks, output assembly, context manager."""

    backend = "base"
    num_frames: int
    fps: float
    height: int
    width: int
    native_size: tuple[int, int] | None = None

    def __init__(self, source) -> None:
        self.label = source_label(source)
        self._closed = False

    def _check_indices(self, indices: Sequence[int]) -> np.ndarray:
        if self._closed:
            raise DecodeError(f"{self.backend}: reader for {self.label} is closed")
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_frames):
            bad = idx[(idx < 0) | (idx >= self.num_frames)]
            raise IndexError(f"frame indices {bad[:8].tolist()} out of range [0, {self.num_frames}) in {self.label}")
        return idx

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB frames in the order of `indices` (which may repeat and be unsorted)."""
        idx = self._check_indices(indices)
        if idx.size == 0:
            return np.empty((0, self.height, self.width, 3), np.uint8)
        unique, inverse = np.unique(idx, return_inverse=True)
        frames = self._decode_sorted(unique.tolist())
        if frames.shape[1:] != (self.height, self.width, 3):
            raise DecodeError(f"{self.backend}: decoded frames of shape {frames.shape[1:]}, expected "
                              f"{(self.height, self.width, 3)} in {self.label}")
        if len(unique) == len(idx) and np.all(unique == idx):
            return frames
        return frames[inverse.reshape(-1)]

    def _decode_sorted(self, indices: list[int]) -> np.ndarray:
        """Frames for sorted, unique, in-range indices."""
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.label} frames={self.num_frames} fps={self.fps:.3f} "
                f"out={self.height}x{self.width}>")


def decode_frames(source: str | os.PathLike | bytes, indices: Sequence[int], backend: str = DEFAULT_BACKEND,
                  size: tuple[int, int] | None = None, num_frames_hint: int | None = None,
                  threads: int = 1) -> np.ndarray:
    """Open, read `indices`, close: a module-level function, so IsolatedRunner can run it in its child."""
    with open_video(source, backend=backend, size=size, num_frames_hint=num_frames_hint, threads=threads) as reader:
        return reader.get_frames(indices)
