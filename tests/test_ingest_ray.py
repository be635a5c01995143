"""The ray engine of `hdvila data build`, on a 2-CPU Ray instance started inside the tests: the same shards and report
as the local engine, a killed worker retried (or its shard left unpublished and reported), a killed driver resumed."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

from data_tools.config import load_config
from data_tools.ingest.build import BuildFailed, build_shards
from data_tools.ingest.config import BuildConfig
from data_tools.ingest.ray_engine import CUT_TASK_NAME
from data_tools.ingest.transcripts import format_srt
from data_tools.media.testclips import make_indexed_clip

SETTINGS = ["sentences.min_duration=1.0", "shards.samples_per_shard=3", "transcode.preset=veryfast",
            "transcode.threads=1", "workers=2"]
TIMINGS = ("seconds",)  # the only report and stats fields allowed to differ between two builds


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, object_store_memory=200 * 2**20)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Six good videos of three sentences, one file that is not a video, one video without a transcript."""
    folder = tmp_path_factory.mktemp("in")
    make_indexed_clip(folder / "v0.mp4", num_frames=10 * 25, size=(240, 320), fps=25, keyint=125)
    srt = format_srt([(0.0, 3.0, "It counts up."), (3.0, 6.0, "It goes on."), (6.0, 9.0, "It ends.")])
    for i in range(6):
        if i:
            os.symlink(folder / "v0.mp4", folder / f"v{i}.mp4")
        (folder / f"v{i}.srt").write_text(srt)
    (folder / "junk.mp4").write_bytes(b"this is not a video\n" * 100)
    (folder / "junk.srt").write_text(srt)
    os.symlink(folder / "v0.mp4", folder / "untold.mp4")
    return folder


def settings() -> BuildConfig:
    return load_config(BuildConfig, None, SETTINGS)


@pytest.fixture(scope="module")
def local_build(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    report = build_shards([str(inputs)], out, settings(), progress=False)
    assert report["clips_written"] == 18 and len(report["shards"]) == 6
    return out


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMINGS}


def assert_same_build(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.iterdir() if p.name[0].isdigit())
    assert sorted(p.name for p in out.iterdir() if p.name[0].isdigit()) == names
    for name in names:
        if name.endswith("_stats.json"):
            mine, theirs = (json.loads((folder / name).read_text()) for folder in (out, reference))
            assert without_timings(mine) == without_timings(theirs), name
        else:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    mine, theirs = (json.loads((folder / "build_report.json").read_text()) for folder in (out, reference))
    mine.pop("shards_skipped_as_finished")
    theirs.pop("shards_skipped_as_finished")
    assert without_timings(mine) == without_timings(theirs)
    assert not list(out.glob(".*.tmp"))


class WorkerKiller(threading.Thread):
    """SIGKILLs the first Ray worker process it sees cutting a clip, as an OOM killer or a lost node would."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            for proc in psutil.process_iter(["cmdline"]):
                if (proc.info["cmdline"] or [""])[0].strip() == f"ray::{CUT_TASK_NAME}":
                    os.kill(proc.pid, signal.SIGKILL)
                    self.killed = proc.pid
                    break
            time.sleep(0.002)


def test_ray_build_is_the_local_build(inputs, local_build, ray_address, tmp_path):
    out = tmp_path / "ray"
    report = build_shards([str(inputs)], out, settings(), progress=False, engine="ray", ray_address=ray_address)
    assert report["clips_written"] == 18 and report["shards_skipped_as_finished"] == 0
    # bad inputs are reported the same way: the same entries, in the same order
    reasons = {Path(f["input"]).stem: f["reason"] for f in report["failures"]}
    assert "not a media container" in reasons["junk"] and "no transcript" in reasons["untold"]
    assert_same_build(out, local_build)


def test_a_killed_worker_costs_only_its_clip(inputs, local_build, ray_address, tmp_path):
    out = tmp_path / "ray"
    killer = WorkerKiller()
    killer.start()
    try:
        build_shards([str(inputs)], out, settings(), progress=False, engine="ray", ray_address=ray_address)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no cut task was seen running"
    assert not psutil.pid_exists(killer.killed) or psutil.Process(killer.killed).status() == psutil.STATUS_ZOMBIE
    assert_same_build(out, local_build)  # Ray reran the killed clip's task; nothing else was redone


def test_a_clip_whose_worker_dies_for_good_leaves_its_shard_unpublished(inputs, local_build, ray_address, tmp_path):
    out = tmp_path / "ray"
    killer = WorkerKiller()
    killer.start()
    try:
        with pytest.raises(BuildFailed, match="run the same command again"):
            build_shards([str(inputs)], out, settings(), progress=False, engine="ray", ray_address=ray_address,
                         ray_max_retries=0)
    finally:
        killer.stop.set()
        killer.join()
    report = json.loads((out / "build_report.json").read_text())
    lost = [f for f in report["failures"] if f["stage"] == "shard"]
    assert len(lost) == 1 and "a rerun builds it" in lost[0]["reason"]
    shard = lost[0]["input"].split()[-1]
    assert not (out / f"{shard}.tar").exists() and not (out / f"{shard}_stats.json").exists()
    assert len(report["shards"]) == 5 and not list(out.glob(".*.tmp"))
    again = build_shards([str(inputs)], out, settings(), progress=False, engine="ray", ray_address=ray_address)
    assert again["shards_skipped_as_finished"] == 5
    assert_same_build(out, local_build)


def test_a_killed_driver_resumes(inputs, local_build, ray_address, tmp_path):
    out = tmp_path / "ray"
    env = dict(os.environ)  # keeps RAY_AUTH_MODE, which ray.init set here: the cluster wants its token
    cmd = [sys.executable, "-m", "hdvila.cli", "--quiet", "data", "build", str(inputs), *SETTINGS[:-1],
           "--workers", "2", "--engine", "ray", "--address", ray_address, "--out", str(out)]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "00000.tar").exists() and time.time() < deadline and driver.poll() is None:
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    published = {p.name for p in out.glob("*.tar")}
    assert "00000.tar" in published and len(published) < 6, "the kill came too late to test resuming"
    for tar in out.glob("*.tar"):  # a killed driver leaves no shard without its stats
        assert (out / f"{tar.stem}_stats.json").exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((out / "build_report.json").read_text())
    assert report["shards_skipped_as_finished"] >= 1
    assert_same_build(out, local_build)


def test_the_local_engine_runs_without_ray(inputs, tmp_path):
    script = f"""
import sys
sys.modules["ray"] = None  # as if Ray were not installed
from data_tools.config import load_config
from data_tools.ingest.build import build_shards
from data_tools.ingest.config import BuildConfig
cfg = load_config(BuildConfig, None, {SETTINGS!r})
report = build_shards([{str(inputs)!r}], {str(tmp_path / 'local')!r}, cfg, progress=False)
assert report["clips_written"] == 18, report
try:
    build_shards([{str(inputs)!r}], {str(tmp_path / 'ray')!r}, cfg, progress=False, engine="ray")
except RuntimeError as exc:
    print(exc)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the ray engine needs Ray: pip install" in done.stdout


def test_unknown_engines_a_stray_address_and_tasks_too_big_for_any_node_are_refused(inputs, ray_address, tmp_path):
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        build_shards([str(inputs)], tmp_path / "out", settings(), progress=False, engine="spark")
    wide = settings()
    wide.transcode.threads = 4  # each cut task would wait forever for 4 CPUs on a 2-CPU cluster
    with pytest.raises(BuildFailed, match="needs 4 CPUs .* largest Ray node has 2"):
        build_shards([str(inputs)], tmp_path / "wide", wide, progress=False, engine="ray", ray_address=ray_address)
    cli = subprocess.run([sys.executable, "-m", "hdvila.cli", "data", "build", str(inputs), "--out",
                          str(tmp_path / "out"), "--address", "auto"], capture_output=True, text=True)
    assert cli.returncode != 0 and "--address is for --engine ray" in cli.stderr
