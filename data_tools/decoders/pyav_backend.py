"""PyAV backend: sparse, frame-accurate access with keyframe-aware seeking.

A demux pass (no decoding) lists every packet's timestamp and keyframe flag. For each requested frame
in ascending order it then decodes forward from where the decoder already is when no keyframe lies
between, and otherwise seeks to the keyframe at or before the target. Decoded frames are mapped to
indices from their pts, so B-frame reordering and edit-list offsets cannot shift the result.

Two shortcuts keep sparse reads cheap: opening probes the stream without decoding a frame (FFmpeg's probe
otherwise decodes the first one, a whole I-frame at 720p), and a requested keyframe whose successor needs a
seek anyway is decoded alone: its packet, then the decoder drained, instead of feeding the frames behind it
until the B-frame reordering delay lets it out.
"""
from __future__ import annotations

import bisect
import io
from fractions import Fraction

import numpy as np

from .base import BaseReader, DecodeError, short_message


def check_available() -> None:
    import av  # noqa: F401


class PyAVReader(BaseReader):
    backend = "pyav"

    def __init__(self, source, size: tuple[int, int] | None, num_frames_hint: int | None, threads: int) -> None:
        super().__init__(source)
        import av
        from av.video.reformatter import VideoReformatter

        self._av = av
        self._reformatter = VideoReformatter()
        self._threads = threads
        # Changing skip_frame between packets is only safe without frame threading.
        self._skip_nonref = threads == 1
        self._target = 0  # frame being looked for; packets before it may be skipped
        self._frames = None  # frame generator of the current decode run
        # Index of the last frame decoded in this run; -1 = at the stream start; None = unknown (seek first).
        self._pos: int | None = -1
        self.seeks = 0  # counters for tests and benchmarks
        self.frames_decoded = 0
        self._source = source
        self._container = self._open()
        try:
            self._setup(size, num_frames_hint)
        except BaseException:
            self._container.close()
            raise

    def _open(self, probe_decodes: bool = False):
        src = io.BytesIO(self._source) if isinstance(self._source, bytes) else str(self._source)
        # skip_frame applies to the probe's own decoder only: the stream's codec context starts afresh.
        options = None if probe_decodes else {"skip_frame": "all"}
        try:
            container = self._av.open(src, mode="r", options=options)
        except self._av.error.FFmpegError as exc:
            raise DecodeError(f"pyav cannot open {self.label}: {short_message(exc)}") from None
        videos = container.streams.video
        ctx = videos[0].codec_context if videos else None
        if not probe_decodes and ctx is not None and not (ctx.width and ctx.height):
            container.close()  # a container whose header lacks the size: let the probe decode to find it
            return self._open(probe_decodes=True)
        return container

    def _select_stream(self):
        videos = self._container.streams.video
        if not videos:
            raise DecodeError(f"pyav: {self.label} has no video stream")
        st = self._stream = videos[0]
        st.codec_context.thread_count = self._threads
        if self._threads != 1:
            st.codec_context.thread_type = "AUTO"
        return st

    def _reopen(self) -> None:
        """Start over from a fresh container: the one reliable way back to frame 0 when timestamp
        seeking misbehaves (MPEG-TS lands late even for the first keyframe)."""
        self._container.close()
        self._container = self._open()
        self._select_stream()
        self._frames = None
        self._pos = -1
        self.seeks += 1

    def _setup(self, size, num_frames_hint) -> None:
        st = self._select_stream()
        ctx = st.codec_context
        rate = st.average_rate or st.guessed_rate or st.base_rate
        if not rate or rate <= 0:
            raise DecodeError(f"pyav: {self.label} has no frame rate")
        if not ctx.width or not ctx.height:
            raise DecodeError(f"pyav: {self.label} video stream has no resolution")
        self._rate = Fraction(rate)
        self._tb = Fraction(st.time_base)
        self.fps = float(self._rate)
        self._size = size
        self.native_size = (int(ctx.height), int(ctx.width))
        self.height, self.width = size if size is not None else (int(ctx.height), int(ctx.width))
        meta = int(st.frames or 0)
        if not meta and st.duration is not None:
            meta = int(round(float(st.duration * self._tb * self._rate)))
        self._keys: list[int] | None = None  # keyframe indices, ascending
        self._leading_frames = False  # _keys[0] is frame 0 standing in for a missing first keyframe
        self._lone_keyframes = True  # off after a lone-keyframe decode whose seek did not land on it
        self._key_ts: list[tuple[int, int]] = []  # (pts, dts) of each keyframe
        self._seek_by_dts = False
        self._first_pts = st.start_time if st.start_time is not None else 0
        if num_frames_hint:
            self.num_frames = min(meta, num_frames_hint) if meta else num_frames_hint
        else:
            count = self._scan()
            self.num_frames = min(meta, count) if meta else count

    def _index_of(self, pts: int) -> int:
        return round((pts - self._first_pts) * self._tb * self._rate)

    def _scan(self) -> int:
        """Demux every packet once: count them, find the first pts and the keyframes. Returns the count."""
        packets = []
        try:
            for pkt in self._container.demux(self._stream):
                if pkt.size and pkt.pts is not None:
                    packets.append((pkt.pts, pkt.dts if pkt.dts is not None else pkt.pts, pkt.is_keyframe))
        except self._av.error.FFmpegError as exc:
            raise DecodeError(f"pyav: demuxing {self.label} failed: {short_message(exc)}") from None
        if not packets:
            raise DecodeError(f"pyav: {self.label} has no video packets")
        self._first_pts = min(p[0] for p in packets)
        # Seek targets per keyframe: its pts (mov, mkv index by pts and land exactly on it) and its dts
        # (MPEG-TS seeks by dts; by pts it lands one keyframe late). pts first; dts once pts misses.
        keys = sorted((self._index_of(pts), pts, dts) for pts, dts, key in packets if key)
        self._leading_frames = not keys or keys[0][0] > 0
        if self._leading_frames:
            # Leading frames before the first keyframe: start from the very first packet.
            start = min(p[1] for p in packets)
            keys.insert(0, (0, start, start))
        self._keys = [k[0] for k in keys]
        self._key_ts = [(k[1], k[2]) for k in keys]
        self._frames, self._pos = None, None  # the demuxer is at the end: next decode must seek
        return len(packets)

    def _seek_key(self, k: int) -> None:
        """Seek to keyframe number k of self._keys and reset the decode run."""
        try:
            ts = self._key_ts[k][1 if self._seek_by_dts else 0]
            self._container.seek(ts, backward=True, any_frame=False, stream=self._stream)
            self.seeks += 1
        except self._av.error.FFmpegError as exc:
            raise DecodeError(f"pyav: seeking in {self.label} failed: {short_message(exc)}") from None
        self._frames, self._pos = None, None

    def _iter_frames(self):
        ctx = self._stream.codec_context
        last = -1
        for packet in self._container.demux(self._stream):
            if self._skip_nonref:
                # Disposable (non-reference) frames before the target are never output nor referenced:
                # let the decoder drop them unparsed. Decided per packet, from its own pts.
                before = packet.pts is not None and self._index_of(packet.pts) < self._target
                ctx.skip_frame = "NONREF" if before else "DEFAULT"
            for frame in packet.decode():  # the final empty packet flushes the decoder
                idx = self._index_of(frame.pts) if frame.pts is not None else last + 1
                last = idx
                yield idx, frame

    def _next(self):
        if self._frames is None:
            self._frames = self._iter_frames()
        try:
            idx, frame = next(self._frames)
        except StopIteration:
            self._frames, self._pos = None, None
            return None
        except self._av.error.FFmpegError as exc:
            self._frames, self._pos = None, None
            raise DecodeError(f"pyav: decoding {self.label} failed: {short_message(exc)}") from None
        self._pos = idx
        self.frames_decoded += 1
        return idx, frame

    def _key_at_or_before(self, t: int) -> int:
        """Position in self._keys of the last keyframe <= t."""
        return max(0, bisect.bisect_right(self._keys, t) - 1)

    def _to_rgb(self, frame) -> np.ndarray:
        if self._size is not None:
            frame = self._reformatter.reformat(frame, width=self.width, height=self.height, format="rgb24",
                                               interpolation="BILINEAR", threads=self._threads)
        else:
            frame = self._reformatter.reformat(frame, format="rgb24", threads=self._threads)
        return frame.to_ndarray()

    def keyframe_indices(self) -> list[int]:
        """Indices of the frames that decode on their own (I-frames), ascending."""
        if self._keys is None:
            self._scan()
        return [k for k in self._keys[1 if self._leading_frames else 0:] if k < self.num_frames]

    def _decode_sorted(self, indices: list[int]) -> np.ndarray:
        if self._keys is None:
            self._scan()  # opened with a hint: learn the keyframes on first use
        out = np.empty((len(indices), self.height, self.width, 3), np.uint8)
        for i, t in enumerate(indices):
            following = indices[i + 1] if i + 1 < len(indices) else None
            out[i] = self._decode_one(t, following)
        return out

    def _decode_keyframe_alone(self, t: int, k: int) -> np.ndarray | None:
        """Seek to keyframe t (number k), decode its packet and drain the decoder: one frame decoded, none of
        those behind it. None when the seek does not land on t (the caller then takes the general path)."""
        self._seek_key(k)
        ctx = self._stream.codec_context
        if self._skip_nonref:
            ctx.skip_frame = "DEFAULT"
        frames = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.pts is None or self._index_of(packet.pts) != t:
                    break
                frames = [*packet.decode(), *ctx.decode(None)]  # decode(None) drains the reordering delay
                break
        except self._av.error.FFmpegError as exc:
            raise DecodeError(f"pyav: decoding {self.label} failed: {short_message(exc)}") from None
        finally:
            self._frames, self._pos = None, None  # a drained decoder takes packets again only after a seek
        for frame in frames:
            if frame.pts is not None and self._index_of(frame.pts) == t:
                self.frames_decoded += 1
                return self._to_rgb(frame)
        self._lone_keyframes = False  # seeks land elsewhere in this file: stop paying for a wasted try
        return None

    def _decode_one(self, t: int, following: int | None = None) -> np.ndarray:
        self._target = t
        k = self._key_at_or_before(t)
        # A keyframe is decoded alone when the next request lies past the next keyframe (a seek either way).
        if self._lone_keyframes and self._keys[k] == t and not (k == 0 and self._leading_frames):
            next_key = self._keys[k + 1] if k + 1 < len(self._keys) else None
            if following is None or (next_key is not None and following >= next_key):
                frame = self._decode_keyframe_alone(t, k)
                if frame is not None:
                    return frame
        # Decode forward when the decoder already is at or past the target's keyframe (or just before
        # it); otherwise jump to that keyframe.
        forward = self._pos is not None and self._pos < t and self._keys[k] <= self._pos + 1
        if not forward:
            self._seek_key(k)
        check_landing, reopened = not forward, False
        while True:
            got = self._next()
            late = got is None or got[0] > t
            if check_landing and late and not reopened:
                # The seek landed after the target: retry by dts, then back off one keyframe at a time,
                # and in the end start over from the top.
                if not self._seek_by_dts:
                    self._seek_by_dts = True
                elif k > 0:
                    k -= 1
                else:
                    self._reopen()
                    reopened = True
                    continue
                self._seek_key(k)
                continue
            check_landing = False
            if got is None:
                raise DecodeError(f"pyav: frame {t} of {self.label} could not be decoded (stream ended)")
            idx, frame = got
            if idx == t:
                return self._to_rgb(frame)
            if idx > t:
                raise DecodeError(f"pyav: frame {t} of {self.label} is missing (decoder jumped to frame {idx})")

    def close(self) -> None:
        if not self._closed:
            self._frames = None
            self._container.close()
        super().close()


def open_reader(source, size, num_frames_hint, threads) -> PyAVReader:
    return PyAVReader(source, size, num_frames_hint, threads)
