"""The decoder watchdog leaves nothing behind: no process (its child, the child's ffmpeg) and no temp file,
whether the watchdog kills a stuck decode or the worker that owns the watchdog is itself SIGKILLed."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import tempfile
import time

import psutil
import pytest

from data_tools.decoders import DecodeTimeout, IsolatedRunner, open_video
from data_tools.media import ffmpeg_exe
from data_tools.media.testclips import make_indexed_clip

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def moov_at_end(tmp_path_factory):
    """A clip whose index (moov) follows its data: the ffmpeg backend must spool it to a file."""
    root = tmp_path_factory.mktemp("leaks")
    fast = make_indexed_clip(root / "fast.mp4", num_frames=10, size=(48, 64), fps=25, keyint=5)
    slow = root / "slow.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(fast), "-c", "copy", str(slow)], check=True)
    return slow.read_bytes()


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """TMPDIR pointed at an empty folder; a fake ffmpeg that records its pid and hangs."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    pidfile = tmp_path / "pids"
    pidfile.write_text("")
    exe = tmp_path / "hanging-ffmpeg"
    exe.write_text(f"#!/bin/sh\necho ffmpeg $$ >> {pidfile}\nexec sleep 120\n")
    exe.chmod(0o755)
    yield tmpdir, pidfile, str(exe)
    for pid in _pids(pidfile).values():  # never leave our own strays behind, even when a test fails
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pids(pidfile) -> dict[str, int]:
    out = {}
    for line in pidfile.read_text().splitlines():
        name, pid = line.split()
        out[name] = int(pid)
    return out


def _decode_with_hanging_ffmpeg(data: bytes, exe: str, pidfile: str):
    """Runs in the decoder child: the ffmpeg backend on `data`, with an ffmpeg that never answers."""
    from data_tools.decoders import ffmpeg_backend

    with open(pidfile, "a") as fh:
        fh.write(f"decoder {os.getpid()}\n")
    ffmpeg_backend.ffmpeg_exe = lambda: exe
    with open_video(data, backend="ffmpeg") as reader:
        return reader.num_frames


def _files_under(folder) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]


def _gone(pids, timeout: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to `timeout` s (zombies count as gone)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def _wait_for(pidfile, names, timeout: float = 30.0) -> dict[str, int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = _pids(pidfile)
        if set(names) <= set(pids):
            return pids
        time.sleep(0.05)
    raise AssertionError(f"only {_pids(pidfile)} started within {timeout} s")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_watchdog_kills_the_ffmpeg_of_a_stuck_decode_and_removes_its_temp_file(moov_at_end, sandbox,
                                                                                 start_method):
    tmpdir, pidfile, exe = sandbox
    with IsolatedRunner(timeout=30, start_method=start_method) as runner:
        runner.call(_ids)  # started, with this module imported: the limit below is all the decode's
        runner.timeout = 1.5
        with pytest.raises(DecodeTimeout):
            runner.call(_decode_with_hanging_ffmpeg, moov_at_end, exe, str(pidfile))
        pids = _pids(pidfile)
        assert set(pids) == {"decoder", "ffmpeg"}
        assert _gone(pids.values()) == []
        assert _files_under(tmpdir) == []  # the spooled clip went with its child
        assert runner.call(len, [1, 2]) == 2  # and the runner carries on with a fresh child
    assert os.listdir(tmpdir) == []  # closing removes the child's temp folder


def _worker(data: bytes, exe: str, pidfile: str, start_method: str):
    # Like a DataLoader worker: a forked process owning the runner, killed without warning mid-decode.
    with IsolatedRunner(timeout=600, start_method=start_method) as runner:
        runner.call(_decode_with_hanging_ffmpeg, data, exe, pidfile)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_sigkilled_worker_leaves_no_decoder_no_ffmpeg_and_no_file(moov_at_end, sandbox, start_method):
    tmpdir, pidfile, exe = sandbox
    ctx = mp.get_context("fork")
    worker = ctx.Process(target=_worker, args=(moov_at_end, exe, str(pidfile), start_method), daemon=True)
    worker.start()
    try:
        pids = _wait_for(pidfile, ["decoder", "ffmpeg"])
        assert psutil.Process(pids["decoder"]).ppid() == worker.pid
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
    assert _gone(pids.values()) == []  # the decoder died with its worker, and its ffmpeg with it
    assert _files_under(tmpdir) == []  # the clip was never spooled to a file that could outlive them
    # The folder the dead worker had made for its child is swept by the next runner that starts one.
    with IsolatedRunner(timeout=10) as runner:
        assert runner.call(len, "ab") == 2
    assert os.listdir(tmpdir) == []


def _hang(seconds: float):
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1e6))  # holds the GIL, like decord spinning in C++


def _child_pid_of_hang(pidfile: str):
    with open(pidfile, "a") as fh:
        fh.write(f"decoder {os.getpid()}\n")
    _hang(120)


def _owner_of_stuck_child(pidfile: str):
    with IsolatedRunner(timeout=600) as runner:
        runner.call(_child_pid_of_hang, pidfile)


def test_a_hung_child_dies_with_its_sigkilled_owner(tmp_path):
    pidfile = tmp_path / "pids"
    pidfile.write_text("")
    worker = mp.get_context("fork").Process(target=_owner_of_stuck_child, args=(str(pidfile),), daemon=True)
    worker.start()
    try:
        pid = _wait_for(pidfile, ["decoder"])["decoder"]
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
    try:
        assert _gone([pid]) == []  # not re-parented to init, still spinning
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_decoder_children_lead_their_own_process_group(tmp_path):
    with IsolatedRunner(timeout=10) as runner:
        pid, pgid, sid = runner.call(_ids)
        assert pid == runner.pid and pgid == pid and sid == pid
        folder = runner.call(tempfile.gettempdir)
        assert os.path.isdir(folder) and folder != tempfile.gettempdir()
    assert not os.path.exists(folder)


def _ids():
    return os.getpid(), os.getpgid(0), os.getsid(0)


_PIDFILE = {}


def _recording_hang_backend(source, size, num_frames_hint, threads):
    with open(_PIDFILE["path"], "a") as fh:
        fh.write(f"decoder {os.getpid()}\n")
    _hang(120)


def test_sigkilled_dataloader_worker_takes_its_decoder_along(tmp_path, moov_at_end):
    import io
    import json
    import tarfile

    from data_tools.decoders import register_backend
    from data_tools.decoders.base import DECODER_BACKENDS
    from data_tools.loading.pipeline import LoaderConfig, make_loader
    from data_tools.loading.sampling import FrameSamplingConfig

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("a.mp4", moov_at_end), ("a.json", json.dumps({}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pidfile = tmp_path / "pids"
    pidfile.write_text("")
    _PIDFILE["path"] = str(pidfile)
    register_backend("recording_hang", _recording_hang_backend)
    try:
        cfg = LoaderConfig(shards=[str(shard)], batch_size=1, num_workers=1, decode_timeout=600,
                           backend="recording_hang", shuffle_buffer=0)
        loader, _ = make_loader(cfg, "frames", FrameSamplingConfig(size=(16, 16)))
        batches = iter(loader)  # workers start prefetching at once
        # DataLoader's SIGCHLD handler would raise "worker killed" at a random point of this test
        previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            pid = _wait_for(pidfile, ["decoder"])["decoder"]
            worker = batches._workers[0]
            assert psutil.Process(pid).ppid() == worker.pid
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(10)
            assert _gone([pid]) == []
        finally:
            batches._shutdown_workers()
            signal.signal(signal.SIGCHLD, previous)
            for p in _pids(pidfile).values():
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        DECODER_BACKENDS.unregister("recording_hang")
