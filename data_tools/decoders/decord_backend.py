"""decord backend: fast C++ random access. Known to spin forever (holding the GIL) on containers that
over-report their frame count, so training reads go through IsolatedRunner or pass num_frames_hint."""
from __future__ import annotations

import io

import numpy as np

from .base import BaseReader, DecodeError, short_message


def check_available() -> None:
    import decord  # noqa: F401


def _to_numpy(arr) -> np.ndarray:
    # Whatever bridge someone set globally (torch, ...), hand back numpy.
    if hasattr(arr, "asnumpy"):
        return arr.asnumpy()
    if hasattr(arr, "numpy"):
        return arr.numpy()
    return np.asarray(arr)


class DecordReader(BaseReader):
    backend = "decord"

    def __init__(self, source, size: tuple[int, int] | None, num_frames_hint: int | None, threads: int) -> None:
        super().__init__(source)
        import decord

        uri = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        h, w = size if size is not None else (-1, -1)
        try:
            self._vr = decord.VideoReader(uri, ctx=decord.cpu(0), width=w, height=h, num_threads=threads)
            count = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except Exception as exc:  # DECORDError, RuntimeError, AssertionError (zero frames) ...
            raise DecodeError(f"decord cannot open {self.label}: {short_message(exc)}") from None
        self.num_frames = min(count, num_frames_hint) if num_frames_hint else count
        self._shape = size  # native size is only known after decoding a frame
        self._source, self._size, self._threads = source, size, threads
        self._fallback = None
        self._native: tuple[int, int] | None | bool = False  # False: not looked up yet

    def _native_shape(self) -> tuple[int, int]:
        if self._shape is None:
            frame = self._decode_sorted([0])
            self._shape = (int(frame.shape[1]), int(frame.shape[2]))
        return self._shape

    @property
    def native_size(self) -> tuple[int, int] | None:
        """The stream header's (height, width). decord scales before handing frames out and has no header
        call, so the header is read with PyAV (demuxer only, nothing decoded); None without PyAV."""
        if self._native is False:
            self._native = None
            if self._size is None:
                self._native = self._native_shape()
            else:
                try:
                    import av

                    src = io.BytesIO(self._source) if isinstance(self._source, bytes) else str(self._source)
                    with av.open(src, mode="r") as container:
                        ctx = container.streams.video[0].codec_context
                        if ctx.height and ctx.width:
                            self._native = (int(ctx.height), int(ctx.width))
                except Exception:  # no PyAV, or it cannot read what decord could: unknown, not an error
                    self._native = None
        return self._native

    @property
    def height(self) -> int:
        return self._native_shape()[0]

    @property
    def width(self) -> int:
        return self._native_shape()[1]

    def keyframe_indices(self) -> list[int]:
        """Indices of the frames that decode on their own (I-frames), ascending."""
        try:
            keys = _to_numpy(self._vr.get_key_indices())
        except Exception as exc:
            raise DecodeError(f"decord cannot list the keyframes of {self.label}: {short_message(exc)}") from None
        return sorted(int(k) for k in keys if 0 <= int(k) < self.num_frames)

    def _decode_sorted(self, indices: list[int]) -> np.ndarray:
        if self._fallback is not None:
            return self._fallback.get_frames(indices)
        try:
            frames = _to_numpy(self._vr.get_batch(indices))
        except Exception as exc:  # DECORDError, RuntimeError, IndexError from decord's own checks
            if self._size is not None and "must exactly match" in str(exc):
                # decord 0.6's scaler breaks on some output widths (e.g. 24 or 48 px: "DECORDArrayCopyFromTo:
                # The size must exactly match"); PyAV scales the same frames correctly.
                from .pyav_backend import open_reader as open_pyav

                self._fallback = open_pyav(self._source, self._size, self.num_frames, self._threads)
                return self._fallback.get_frames(indices)
            raise DecodeError(f"decord failed on {self.label} frames {indices[:8]}: {short_message(exc)}") from None
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != len(indices):
            raise DecodeError(f"decord returned {frames.dtype} {frames.shape} for {len(indices)} frames of {self.label}")
        if self._shape is None:
            self._shape = (int(frames.shape[1]), int(frames.shape[2]))
        return frames

    def close(self) -> None:
        if not self._closed:
            self._vr = None  # decord frees its handle in __del__
            if self._fallback is not None:
                self._fallback.close()
        super().close()


def open_reader(source, size, num_frames_hint, threads) -> DecordReader:
    return DecordReader(source, size, num_frames_hint, threads)
