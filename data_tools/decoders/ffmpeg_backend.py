"""ffmpeg-subprocess backend: the slow, simple reference (oracle) and the fallback for files the
in-process decoders choke on. Every call is a separate, time-bounded ffmpeg process, so a bad file
can cost a timeout but never hang or crash the caller.

Frames are chosen with the `select` filter on the decoded-frame counter n (display order), which is
the frame index for the constant-frame-rate clips ingest writes; no seeking, so no seek inaccuracy.

An ffmpeg process dies with the process that started it (parent-death signal) and, inside an IsolatedRunner
child, is in that child's process group, which the watchdog kills as a whole. A clip that cannot be piped
(index at the end of the file) is handed over in an anonymous memory file (memfd), so no spooled copy can be
left behind in TMPDIR; only where memfd is missing does it go to a temp file (inside an IsolatedRunner child,
the per-child folder that the runner removes).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import struct
import subprocess
import tempfile
import weakref
from fractions import Fraction

import numpy as np

from ..media.ffmpeg_bin import ffmpeg_exe
from .base import BaseReader, DecodeError, DecodeTimeout
from .isolation import die_with_parent

PROBE_TIMEOUT_S = 60.0
DECODE_TIMEOUT_S = 120.0


def check_available() -> None:
    ffmpeg_exe()


_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"styp"}


def pipe_friendly(data: bytes) -> bool:
    """False for an mp4/mov whose moov comes after mdat (not faststart): ffmpeg cannot read it from a pipe."""
    if len(data) < 8 or data[4:8] not in _ISO_BOXES:
        return True  # not ISO-BMFF (mkv, webm, ts...): streamable formats
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1 and pos + 16 <= len(data):
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        if kind == b"moov":
            return True
        if kind == b"mdat" or size < 8:
            return False
        pos += size
    return False


def _select_expr(indices: list[int]) -> str:
    """select= expression for sorted unique indices, runs collapsed to between()."""
    parts, start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"eq(n\\,{start})" if start == prev else f"between(n\\,{start}\\,{prev})")
        if i is not None:
            start = prev = i
    return "+".join(parts)


def _last_error(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


class FFmpegReader(BaseReader):
    backend = "ffmpeg"
    timeout = DECODE_TIMEOUT_S  # per get_frames call; the reader raises DecodeTimeout past it

    def __init__(self, source, size: tuple[int, int] | None, num_frames_hint: int | None, threads: int) -> None:
        super().__init__(source)
        self._exe = ffmpeg_exe()
        self._threads = threads
        self._stdin: bytes | None = None
        self._tmp: str | None = None
        self._memfd: int | None = None
        self._cleanup = None
        if isinstance(source, bytes):
            if pipe_friendly(source):
                self._input, self._stdin = "pipe:0", source
            elif hasattr(os, "memfd_create"):
                self._memfd = os.memfd_create("hdvila-ffmpeg-clip")  # close-on-exec; passed to ffmpeg by number
                self._cleanup = weakref.finalize(self, os.close, self._memfd)
                _write_all(self._memfd, source)
                self._input = f"file:/dev/fd/{self._memfd}"  # ffmpeg reopens it: seekable, offset 0
            else:
                fd, self._tmp = tempfile.mkstemp(prefix="hdvila-ffmpeg-", suffix=".mp4")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(source)
                self._cleanup = weakref.finalize(self, _unlink, self._tmp)
                self._input = self._tmp
        else:
            self._input = "file:" + os.path.abspath(source)  # "file:" so names with ':' are not protocols
        try:
            self._probe(size, num_frames_hint)
        except BaseException:
            self.close()
            raise

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Run ffmpeg on the input; `args` go after `-i INPUT`."""
        cmd = [self._exe, "-hide_banner", "-nostats", "-threads", str(self._threads), "-noautorotate",
               "-i", self._input, *args]
        if self._stdin is None:
            cmd.insert(1, "-nostdin")
        try:
            return subprocess.run(cmd, input=self._stdin, stdin=None if self._stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout,
                                  pass_fds=() if self._memfd is None else (self._memfd,),
                                  preexec_fn=functools.partial(die_with_parent, os.getpid()))
        except subprocess.TimeoutExpired:  # run() has already killed ffmpeg
            raise DecodeTimeout(f"ffmpeg took over {timeout:.0f} s on {self.label}") from None

    def _probe(self, size, num_frames_hint) -> None:
        """One demux-only pass (stream copy into framecrc): size, timebase, packet timestamps."""
        proc = self._run(["-map", "0:v:0", "-c", "copy", "-f", "framecrc", "pipe:1"], PROBE_TIMEOUT_S)
        text = proc.stdout.decode(errors="replace")
        if proc.returncode != 0 or "#media_type" not in text:
            raise DecodeError(f"ffmpeg cannot read {self.label}: {_last_error(proc.stderr)}")
        tb, dims, pts = None, None, []
        for line in text.splitlines():
            if line.startswith("#tb"):
                tb = Fraction(line.split(":", 1)[1].strip())
            elif line.startswith("#dimensions"):
                w, h = line.split(":", 1)[1].strip().split("x")
                dims = (int(h), int(w))
            elif line and not line.startswith("#"):
                fields = [f.strip() for f in line.split(",")]
                if int(fields[4]) > 0:
                    pts.append(int(fields[2]))
        if dims is None:
            raise DecodeError(f"ffmpeg: {self.label} has no video stream")
        if not pts:
            raise DecodeError(f"ffmpeg: {self.label} has no video packets")
        self.native_size = dims
        self.height, self.width = size if size is not None else dims
        self.fps = self._rate(tb, pts, proc.stderr.decode(errors="replace"))
        self.num_frames = min(len(pts), num_frames_hint) if num_frames_hint else len(pts)

    def _rate(self, tb: Fraction | None, pts: list[int], stderr: str) -> float:
        if tb is not None and len(pts) >= 2:
            span = (max(pts) - min(pts)) * tb
            if span > 0:
                rate = (len(pts) - 1) / span
                snapped = rate.limit_denominator(1001)  # 30000/1001 and friends come out exact
                return float(snapped if abs(snapped - rate) < rate * Fraction(1, 2000) else rate)
        m = re.search(r"Video:.*?, ([\d.]+) fps", stderr)
        if m:
            return float(m.group(1))
        raise DecodeError(f"ffmpeg: cannot tell the frame rate of {self.label}")

    def _decode_sorted(self, indices: list[int]) -> np.ndarray:
        # Same swscale settings as the pyav backend; at native size this is only the yuv->rgb step.
        vf = f"select={_select_expr(indices)},scale={self.width}:{self.height}:flags=bilinear,format=rgb24"
        proc = self._run(["-map", "0:v:0", "-an", "-sn", "-dn", "-filter_threads", str(max(1, self._threads)),
                          "-vf", vf, "-fps_mode", "passthrough", "-frames:v", str(len(indices)),
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], self.timeout)
        frame_bytes = self.height * self.width * 3
        got = len(proc.stdout) // frame_bytes
        if proc.returncode != 0 and got < len(indices):
            raise DecodeError(f"ffmpeg failed decoding {self.label}: {_last_error(proc.stderr)}")
        if got < len(indices):
            raise DecodeError(f"ffmpeg: frames {indices[got:got + 8]} of {self.label} could not be decoded "
                              f"(got {got} of {len(indices)})")
        data = np.frombuffer(proc.stdout, np.uint8, count=len(indices) * frame_bytes)
        return data.reshape(len(indices), self.height, self.width, 3).copy()  # bytes are read-only

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()
        self._stdin = None
        super().close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def open_reader(source, size, num_frames_hint, threads) -> FFmpegReader:
    return FFmpegReader(source, size, num_frames_hint, threads)
