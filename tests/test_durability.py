"""Atomic writes are durable and `atomic_directory` never leaves its path missing.

* atomic_open fsyncs the file, renames it, then fsyncs the folder (else the rename can be lost on power loss);
* atomic_directory fsyncs every file and folder of the new tree before publishing it, and publishes by
  swapping old and new (renameat2 RENAME_EXCHANGE) or, where that is unavailable, by a two-step whose gap a
  reader or the next writer repairs (`recover_atomic_directory`).

Writers are SIGKILLed in a subprocess at each step; afterwards the old or the new complete folder is at the
path (after recovery for the two-step).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data_tools import files
from data_tools.files import atomic_directory, atomic_open, recover_atomic_directory

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _record_fsyncs(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_atomic_open_fsyncs_file_then_parent_folder(tmp_path, monkeypatch):
    seen = _record_fsyncs(monkeypatch)
    target = tmp_path / "sub" / "out.json"
    with atomic_open(target, "w") as fh:
        fh.write("{}")
    assert target.read_text() == "{}"
    folder = str(target.parent)
    assert folder in seen, f"parent folder never fsynced: {seen}"
    file_syncs = [i for i, p in enumerate(seen) if Path(p).parent == target.parent and p != folder]
    assert file_syncs and file_syncs[0] < seen.index(folder), "the file must be flushed before the rename"
    assert seen[-1] == folder, "the folder is fsynced after the rename"


def test_atomic_directory_fsyncs_every_file_and_folder_then_the_parent(tmp_path, monkeypatch):
    seen = _record_fsyncs(monkeypatch)
    target = tmp_path / "index"
    with atomic_directory(target) as tmp:
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "deep" / "er").mkdir(parents=True)
        (tmp / "deep" / "er" / "b.bin").write_bytes(b"b")
        tmp_name = tmp.name
    synced = {os.path.relpath(p, tmp_path / tmp_name) for p in seen if tmp_name in p}
    assert {"a.bin", "deep", os.path.join("deep", "er"), os.path.join("deep", "er", "b.bin"), "."} <= synced
    assert seen[-1] == str(tmp_path), "the parent folder is fsynced after the publishing rename"
    assert (target / "deep" / "er" / "b.bin").read_bytes() == b"b"


def test_atomic_directory_replaces_and_recovers_nothing_when_clean(tmp_path):
    target = tmp_path / "d"
    for version in ("1", "2", "3"):
        with atomic_directory(target) as tmp:
            (tmp / "version").write_text(version)
    assert (target / "version").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "no temporary or old folder left behind"


# --- writers killed at each step

WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from data_tools import files

    target, step, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "exchange"
    if not exchange:
        files._rename_exchange = lambda a, b: False  # as on a filesystem or kernel without RENAME_EXCHANGE

    def hook(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    files._step_hook = hook
    with files.atomic_directory(target) as tmp:
        for i in range(20):
            (tmp / f"part-{i}").write_text("new")
        (tmp / "COMPLETE").write_text("new")
        if step == "body":
            os.kill(os.getpid(), signal.SIGKILL)
""")

# the steps a writer passes, and which version must be at the path after a kill there
STEPS = {"body": "old", "fsynced": "old", "moved-aside": "old", "published": "new"}


def _write_old(target: Path) -> None:
    with atomic_directory(target) as tmp:
        for i in range(20):
            (tmp / f"part-{i}").write_text("old")
        (tmp / "COMPLETE").write_text("old")


def _complete_version(target: Path) -> str:
    versions = {p.read_text() for p in target.iterdir()}
    assert len(versions) == 1, f"a mix of versions at {target}: {versions}"
    assert (target / "COMPLETE").is_file() and len(list(target.iterdir())) == 21
    return versions.pop()


@pytest.mark.parametrize("exchange", ["exchange", "two-step"])
@pytest.mark.parametrize("step", list(STEPS))
def test_writer_killed_at_each_step_leaves_old_or_new_complete(tmp_path, step, exchange):
    if exchange == "exchange" and step == "moved-aside":
        pytest.skip("the exchange has no step between moving the old folder aside and publishing")
    if exchange == "exchange" and not files._rename_exchange_available(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) unavailable here")
    target = tmp_path / "folder"
    _write_old(target)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", WRITER, str(target), step, exchange], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    if exchange == "exchange":
        assert target.is_dir(), "the exchange never leaves the path missing"
    recover_atomic_directory(target)  # what a reader or the next writer does
    assert _complete_version(target) == STEPS[step]
    # the next writer works and leaves no old folder behind
    with atomic_directory(target) as tmp:
        for i in range(20):
            (tmp / f"part-{i}").write_text("next")
        (tmp / "COMPLETE").write_text("next")
    assert _complete_version(target) == "next"
    assert not list(tmp_path.glob(".folder.old-*"))


def test_two_step_gap_is_repaired_by_reader(tmp_path, monkeypatch):
    """Between the fallback's renames the path is missing; recover_atomic_directory restores the old folder."""
    target = tmp_path / "folder"
    _write_old(target)
    monkeypatch.setattr(files, "_rename_exchange", lambda a, b: False)
    seen = {}

    def hook(name):
        if name == "moved-aside":
            seen["missing"] = not target.exists()
            raise KeyboardInterrupt  # stop the writer here, like a kill, but in-process

    monkeypatch.setattr(files, "_step_hook", hook)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "COMPLETE").write_text("new")
    assert seen["missing"]
    # the writer's own clean-up puts the old folder back on an exception
    assert _complete_version(target) == "old"


def test_recover_restores_old_folder_and_drops_stale_ones(tmp_path):
    target = tmp_path / "folder"
    _write_old(target)
    os.rename(target, tmp_path / ".folder.old-deadbeef")
    assert not target.exists()
    recover_atomic_directory(target)
    assert _complete_version(target) == "old"
    (tmp_path / ".folder.old-cafef00d").mkdir()  # a leftover of a writer killed after publishing
    recover_atomic_directory(target)
    assert not list(tmp_path.glob(".folder.old-*"))
    assert _complete_version(target) == "old"
