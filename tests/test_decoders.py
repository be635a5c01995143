"""Decoder backends (frame accuracy, counts, errors) and IsolatedRunner (timeouts, crashes) on real clips."""
from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pytest

from data_tools.decoders import (DecodeError, DecodeTimeout, IsolatedRunner, available_backends, decode_frames,
                                 open_video, register_backend)
from data_tools.decoders import base as decoders_base
from data_tools.decoders.ffmpeg_backend import pipe_friendly
from data_tools.media import ffmpeg_exe
from data_tools.media.testclips import make_indexed_clip, read_frame_index, render_index_frame

BACKENDS = ["decord", "pyav", "ffmpeg"]
SIZE = (96, 128)
QUARTER = (24, 32)


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def decoder_clips(tmp_path_factory):
    """Indexed H.264 clips with B-frames: 25 fps / keyint 12, and NTSC 30000/1001 fps / keyint 10."""
    root = tmp_path_factory.mktemp("decoder_clips")
    return {
        "pal": (make_indexed_clip(root / "pal.mp4", 60, size=SIZE, fps=25, keyint=12), 60, 25.0),
        "ntsc": (make_indexed_clip(root / "ntsc.mp4", 50, size=SIZE, fps="30000/1001", keyint=10), 50, 30000 / 1001),
    }


@pytest.fixture(scope="module")
def pal_clip(decoder_clips):
    return decoder_clips["pal"][0]


def _index_lists(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [rng.randrange(n) for _ in range(15)],  # random, unsorted, may repeat
        [n - 1, 0, n // 2, n // 2, 1, n - 2, 0],  # edges, repeats, backwards jumps
        list(range(10, 22)),  # a contiguous run across a keyframe
        sorted(rng.sample(range(n), 8)),  # sparse ascending, the sampler's usual request
    ]


def _read_indices(frames: np.ndarray) -> list[int]:
    return [read_frame_index(f) for f in frames]


# ------------------------------------------------------------------------------------------ testclips

def test_index_frames_survive_downscaling_and_reject_garbage():
    for k in (0, 1, 37, 4095, 65535):
        frame = render_index_frame(k, (96, 128))
        assert read_frame_index(frame) == k
        small = frame.reshape(24, 4, 32, 4, 3).mean(axis=(1, 3)).astype(np.uint8)  # 1/4 by area averaging
        assert read_frame_index(small) == k
    with pytest.raises(ValueError):
        read_frame_index(np.full((96, 128, 3), 128, np.uint8))
    with pytest.raises(ValueError):
        render_index_frame(1 << 16, (96, 128))


def test_clip_has_b_frames_and_fixed_gop(pal_clip):
    import av

    with av.open(str(pal_clip)) as c:
        stream = c.streams.video[0]
        packets = [p for p in c.demux(stream) if p.size]
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keys == [0, 12, 24, 36, 48]
    assert any(p.dts < p.pts for p in packets), "expected reordered (B-)frames"


def test_proxy_clip_matches_main_clip(tmp_path):
    main, proxy = tmp_path / "main.mp4", tmp_path / "proxy.mp4"
    make_indexed_clip(main, 20, size=SIZE, fps="24000/1001", keyint=8, proxy_path=proxy, texture=30)
    with open_video(proxy, backend="pyav") as p, open_video(main, backend="pyav") as m:
        assert (p.height, p.width) == QUARTER and p.num_frames == m.num_frames == 20
        assert p.fps == m.fps == pytest.approx(24000 / 1001)
        assert _read_indices(p.get_frames(range(20))) == _read_indices(m.get_frames(range(20))) == list(range(20))


# ------------------------------------------------------------------------------------------- decoders

def test_all_backends_available():
    assert set(BACKENDS) <= set(available_backends())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", ["pal", "ntsc"])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
@pytest.mark.parametrize("size", [None, QUARTER], ids=["native", "quarter"])
def test_frame_accuracy(decoder_clips, backend, clip, as_bytes, size):
    path, n, fps = decoder_clips[clip]
    source = path.read_bytes() if as_bytes else path
    with open_video(source, backend=backend, size=size) as reader:
        assert reader.num_frames == n
        assert reader.fps == pytest.approx(fps, rel=1e-6)
        assert (reader.height, reader.width) == (size or SIZE)
        for indices in _index_lists(n, seed=sum(map(ord, backend + clip))):
            frames = reader.get_frames(indices)
            assert frames.dtype == np.uint8 and frames.shape == (len(indices), *(size or SIZE), 3)
            assert _read_indices(frames) == indices
        assert reader.get_frames([]).shape == (0, *(size or SIZE), 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_frames_hint_caps_and_out_of_range_raises(pal_clip, backend):
    with open_video(pal_clip, backend=backend, num_frames_hint=30) as reader:
        assert reader.num_frames == 30
        assert _read_indices(reader.get_frames([29, 3])) == [29, 3]
        with pytest.raises(IndexError):
            reader.get_frames([30])
    with open_video(pal_clip, backend=backend, num_frames_hint=1000) as reader:
        assert reader.num_frames == 60  # a hint never exceeds what the file holds
        with pytest.raises(IndexError):
            reader.get_frames([0, 60])
        with pytest.raises(IndexError):
            reader.get_frames([-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_keep_frame_accuracy(pal_clip, backend):
    indices = [59, 3, 40, 41, 13, 3]
    with open_video(pal_clip, backend=backend, threads=2) as reader:
        assert _read_indices(reader.get_frames(indices)) == indices


@pytest.mark.parametrize("size", [None, QUARTER], ids=["native", "quarter"])
def test_backends_agree_on_pixels(pal_clip, size):
    """Same bits (colour order, range, scaling) from every backend, not just the same frame."""
    indices = [0, 17, 59]
    ref = decode_frames(pal_clip, indices, backend="ffmpeg", size=size).astype(np.int16)
    for backend in ("decord", "pyav"):
        diff = np.abs(decode_frames(pal_clip, indices, backend=backend, size=size).astype(np.int16) - ref)
        assert diff.max() <= 8 and diff.mean() < 0.5, (backend, diff.max(), diff.mean())


def test_pyav_seeks_only_across_keyframes(pal_clip):
    with open_video(pal_clip, backend="pyav") as reader:
        seeks0, decoded0 = reader.seeks, reader.frames_decoded
        assert _read_indices(reader.get_frames([49, 50, 52])) == [49, 50, 52]
        assert reader.seeks - seeks0 == 1  # one jump to keyframe 48, then forward
        assert reader.frames_decoded - decoded0 <= 5
        seeks0 = reader.seeks
        assert _read_indices(reader.get_frames([1, 5])) == [1, 5]  # behind the decoder: must seek back
        assert reader.seeks - seeks0 == 1
        seeks0, decoded0 = reader.seeks, reader.frames_decoded
        assert _read_indices(reader.get_frames([2, 30, 57])) == [2, 30, 57]
        assert reader.seeks - seeks0 == 3  # backwards, then two GOPs skipped by seeking
        assert reader.frames_decoded - decoded0 < 20  # far from the 56 a linear decode would need


def test_pyav_recovers_when_a_seek_lands_late(pal_clip):
    """Demuxers that index differently (MPEG-TS seeks by dts) can land after the target keyframe."""
    with open_video(pal_clip, backend="pyav") as reader:
        reader._key_ts = [reader._key_ts[-1]] * len(reader._key_ts)  # every seek now lands on frame 48
        assert _read_indices(reader.get_frames([30, 3, 47, 50])) == [30, 3, 47, 50]


def test_pyav_decodes_a_lone_keyframe_alone(pal_clip):
    """A keyframe whose successor needs a seek anyway costs one decoded frame, with the same pixels."""
    with open_video(pal_clip, backend="pyav") as reader:
        assert reader.keyframe_indices() == [0, 12, 24, 36, 48]
        decoded0 = reader.frames_decoded
        alone = reader.get_frames([0, 24, 48])
        assert _read_indices(alone) == [0, 24, 48]
        assert reader.frames_decoded - decoded0 == 3
        # the decoder works on after being drained: forward runs, backward seeks, a keyframe inside a run
        assert _read_indices(reader.get_frames([13, 24, 25, 47])) == [13, 24, 25, 47]
        assert _read_indices(reader.get_frames([1])) == [1]
    with open_video(pal_clip, backend="pyav") as reader:  # the general path: decoded forward up to each one
        forward = reader.get_frames([23, 24, 47, 48])[[1, 3]]
    assert np.array_equal(alone[1:], forward)
    with open_video(pal_clip, backend="pyav") as reader:  # a seek that lands elsewhere falls back
        reader._key_ts = [reader._key_ts[-1]] * len(reader._key_ts)
        assert _read_indices(reader.get_frames([24, 0])) == [24, 0]


@pytest.mark.parametrize("container, backends", [
    ("mkv", ["decord", "pyav", "ffmpeg"]),
    ("ts", ["pyav", "ffmpeg"]),  # decord is not frame-accurate on MPEG-TS; ingest writes mp4
])
def test_other_containers(pal_clip, tmp_path, container, backends):
    import subprocess

    path = tmp_path / f"clip.{container}"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(pal_clip), "-c", "copy", str(path)], check=True)
    indices = [33, 2, 59, 14, 14, 47]
    for backend in backends:
        with open_video(path.read_bytes(), backend=backend) as reader:
            assert reader.num_frames == 60
            assert _read_indices(reader.get_frames(indices)) == indices, backend


def test_ffmpeg_bytes_without_faststart_use_a_memory_file(pal_clip, tmp_path):
    import subprocess

    slow = tmp_path / "slow.mp4"  # moov after mdat: cannot be read from a pipe
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(pal_clip), "-c", "copy", str(slow)], check=True)
    data = slow.read_bytes()
    assert pipe_friendly(pal_clip.read_bytes()) and not pipe_friendly(data)
    reader = open_video(data, backend="ffmpeg", size=QUARTER)
    fd = reader._memfd  # an anonymous memory file: nothing in TMPDIR that a killed process could leave
    assert fd is not None and reader._tmp is None and os.fstat(fd).st_size == len(data)
    assert _read_indices(reader.get_frames([7, 0, 59])) == [7, 0, 59]
    reader.close()
    with pytest.raises(OSError):
        os.fstat(fd)


CORRUPT = {
    "random": np.random.default_rng(0).bytes(20000),
    "text": b"this is a caption file, not a video\n" * 50,
    "header_only": None,  # first 300 bytes of a real clip, filled in below
    "empty": b"",
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_input_raises_decode_error(pal_clip, backend, kind):
    data = pal_clip.read_bytes()[:300] if kind == "header_only" else CORRUPT[kind]
    with pytest.raises(DecodeError):
        with open_video(data, backend=backend) as reader:
            reader.get_frames(range(reader.num_frames))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_paths_raise_decode_error(tmp_path, backend):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    for path in (text, tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(DecodeError):
            open_video(path, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_clip_fails_cleanly(pal_clip, backend):
    data = pal_clip.read_bytes()
    with pytest.raises(DecodeError):
        with open_video(data[: len(data) * 6 // 10], backend=backend) as reader:
            reader.get_frames(range(reader.num_frames))


def test_open_video_argument_errors(pal_clip):
    with pytest.raises(ValueError, match="unknown decoder backend"):
        open_video(pal_clip, backend="nope")
    with pytest.raises(ValueError):
        open_video(pal_clip, backend="pyav", size=(0, 32))
    with pytest.raises(TypeError):
        open_video(12345, backend="pyav")


def test_register_backend(pal_clip, monkeypatch):
    calls = []

    def factory(source, size, num_frames_hint, threads):
        calls.append((size, num_frames_hint, threads))
        return decoders_base._factory("pyav")(source, size, num_frames_hint, threads)

    register_backend("mine", factory)
    try:
        assert "mine" in available_backends()
        with open_video(pal_clip, backend="mine", size=QUARTER, num_frames_hint=20, threads=1) as reader:
            assert _read_indices(reader.get_frames([4])) == [4]
        assert calls == [(QUARTER, 20, 1)]
    finally:
        decoders_base.DECODER_BACKENDS.unregister("mine")
    assert "mine" not in available_backends()
    with pytest.raises(ValueError, match="did you mean 'pyav'"):
        open_video(pal_clip, backend="pyva")


# ---------------------------------------------------------------------------------------- isolation
# Functions run in the child must be importable module-level functions.

def _arrays(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (2, 64, 96, 3), dtype=np.uint8), rng.integers(0, 255, (5, 16, 24, 3), dtype=np.uint8)]


def _raise_value_error(message: str):
    raise ValueError(message)


def _hold_gil(seconds: float):
    # PyDLL calls keep the GIL, like decord spinning in C++: no Python-level timeout can interrupt this.
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


def _kill_self(sig: int):
    faulthandler.disable()  # pytest's handler would print a traceback for the deliberate SIGSEGV
    os.kill(os.getpid(), sig)


def _exit_now(code: int):
    os._exit(code)


def _runner_in_daemon_worker(queue):
    # Like a DataLoader worker: a daemonic forked process that creates its runner lazily.
    with IsolatedRunner(timeout=10) as runner:
        queue.put((os.getpid(), runner.call(os.getppid)))


def _call_inherited_runner(runner, queue):
    queue.put(runner.call(os.getppid))
    runner.close()  # kills only the child this process started


@pytest.fixture
def runner():
    with IsolatedRunner(timeout=1.5) as r:
        yield r


def test_runner_returns_same_arrays_as_in_process(runner, pal_clip):
    out = runner.call(_arrays, 3)
    for got, want in zip(out, _arrays(3)):
        assert got.flags.writeable and np.array_equal(got, want)
    frames = runner.call(decode_frames, str(pal_clip), [9, 2, 9], backend="decord", size=QUARTER)
    assert np.array_equal(frames, decode_frames(str(pal_clip), [9, 2, 9], backend="decord", size=QUARTER))
    assert runner.pid != os.getpid() and runner.call(os.getppid) == os.getpid()


def test_runner_reraises_child_exceptions(runner):
    with pytest.raises(ValueError, match="bad caption"):
        runner.call(_raise_value_error, "bad caption")
    with pytest.raises(DecodeError, match="cannot open"):
        runner.call(decode_frames, b"not a video at all" * 10, [0], backend="pyav")
    pid = runner.pid
    assert runner.call(len, [1, 2, 3]) == 3 and runner.pid == pid  # exceptions do not cost a restart


def test_runner_kills_a_call_that_holds_the_gil(runner):
    pid = runner.pid or runner.call(os.getpid)
    t0 = time.monotonic()
    with pytest.raises(DecodeTimeout):
        runner.call(_hold_gil, 30)
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 1.5 + 2.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert runner.call(len, "abcd") == 4
    assert runner.pid != pid and runner.restarts == 1


@pytest.mark.parametrize("how, expect", [
    ((_kill_self, signal.SIGKILL), "SIGKILL"),
    ((_kill_self, signal.SIGSEGV), "SIGSEGV"),
    ((_exit_now, 3), "exit code 3"),
])
def test_runner_reports_child_death_and_recovers(runner, how, expect):
    fn, arg = how
    with pytest.raises(DecodeError, match=f"decoder process died.*{expect}"):
        runner.call(fn, arg)
    assert runner.call(len, [0]) == 1


def test_runner_works_inside_a_daemonic_forked_worker():
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_runner_in_daemon_worker, args=(queue,), daemon=True)
    worker.start()
    worker_pid, parent_of_child = queue.get(timeout=20)
    worker.join(10)
    assert parent_of_child == worker_pid and worker.exitcode == 0


def test_forked_copy_of_a_runner_starts_its_own_child(runner):
    parent_child = runner.call(os.getpid)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_call_inherited_runner, args=(runner, queue), daemon=True)
    proc.start()
    assert queue.get(timeout=20) == proc.pid  # the copy's child belongs to the forked process
    proc.join(10)
    assert runner.call(os.getpid) == parent_child  # and ours was left alone


def test_runner_max_calls_recycles_the_child():
    with IsolatedRunner(timeout=5, max_calls=2) as r:
        pids = [r.call(os.getpid) for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_runner_close_kills_child_and_refuses_calls():
    r = IsolatedRunner(timeout=5)
    pid = r.call(os.getpid)
    r.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError):
        r.call(len, [])


def test_runner_spawn_start_method(pal_clip):
    with IsolatedRunner(timeout=20, start_method="spawn") as r:
        frames = r.call(decode_frames, pal_clip.read_bytes(), [5, 1], backend="pyav")
        assert _read_indices(frames) == [5, 1]
        with pytest.raises(DecodeTimeout):
            r.timeout = 1.0
            r.call(time.sleep, 10)
        assert r.call(len, [1]) == 1


def test_decord_widths_its_scaler_breaks_on_still_decode_correctly(tmp_path):
    """decord 0.6 fails to scale to some widths (24, 48 px); the reader falls back to PyAV for them."""
    path = tmp_path / "clip.mp4"
    make_indexed_clip(path, num_frames=30, size=(72, 96), fps=25, keyint=10)
    with open_video(path.read_bytes(), backend="decord", size=(18, 24)) as reader:
        frames = reader.get_frames([3, 17, 4])
    assert frames.shape == (3, 18, 24, 3)
    assert [read_frame_index(f) for f in frames] == [3, 17, 4]
