"""The helpers behind the loader and training benchmark figures (benchmarks/bench_loader.py, bench_train.py,
common.py) and the trainer's bf16-without-AMX warning."""
from __future__ import annotations

import io
import logging
import multiprocessing as mp
import tarfile
import threading
import time

import numpy as np
import pytest
import torch

import data_tools.cpu as cpu_features
from data_tools.loading.pipeline import decode_clip
from data_tools.loading.sampling import ClipSamplingConfig
from data_tools.media.testclips import make_indexed_clip
from data_tools.training.config import TrainConfig
from data_tools.training.trainer import build_deepspeed_config

from bench_helpers import load_benchmark as _load


common = _load("common")
bench_loader = _load("bench_loader")
bench_train = _load("bench_train")

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve bf16\n"


# --- CPU flags (data_tools.cpu) and the benchmarks' record of them

def test_cpu_flags_reads_the_first_processor_and_arm_features(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(X86_CPUINFO)
    flags = cpu_features.cpu_flags(x86)
    assert {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"} <= flags and "flags" not in flags
    assert cpu_features.cpu_model(x86) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_features.has_amx_bf16(flags)
    arm = tmp_path / "arm"
    arm.write_text(ARM_CPUINFO)
    assert cpu_features.cpu_flags(arm) == frozenset({"fp", "asimd", "sve", "bf16"})
    assert not cpu_features.has_amx_bf16(cpu_features.cpu_flags(arm))
    assert cpu_features.cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_features.cpu_model(tmp_path / "missing") == "unknown CPU"


def test_cpu_info_and_machine_line_record_the_isa(monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda path=None: frozenset({"avx2", "avx512f", "avx512_bf16", "sse2"}))
    info = common.cpu_info()
    assert info["isa"] == ["avx2", "avx512f", "avx512_bf16"]  # in ISA_FLAGS order, unrelated flags dropped
    assert info["amx_bf16"] is False
    line = common.machine_line()
    assert "avx512_bf16" in line and "no AMX" in line
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda path=None: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    info = common.cpu_info()
    assert info["amx_bf16"] is True and "amx_tile" in info["isa"]
    assert "(AMX bf16)" in common.isa_line(info)


# --- the trainer's warning

def _ds(precision: str, caplog, device: str = "cpu") -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_tools.training.trainer"):
        build_deepspeed_config(TrainConfig(precision=precision), torch.device(device))
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_bf16_on_a_cpu_without_amx_warns(monkeypatch, caplog):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda path=None: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    messages = _ds("bf16", caplog)
    assert any("bf16" in m and "AMX" in m for m in messages), messages
    assert not _ds("fp32", caplog)  # fp32 is never warned about


def test_bf16_on_a_cpu_with_amx_or_on_a_gpu_does_not_warn(monkeypatch, caplog):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda path=None: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    assert not _ds("bf16", caplog)
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda path=None: frozenset())
    assert not _ds("bf16", caplog, device="cuda")  # the flags say nothing about a GPU's bf16


# --- bench_loader helpers

SMALL = ClipSamplingConfig(n_segments=2, num_frm=3, sample_rate=2, hr_size=(48, 64), lr_factor=4)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> tuple[bytes, dict]:
    path = make_indexed_clip(tmp_path_factory.mktemp("clip") / "c.mp4", num_frames=30, size=(72, 128),
                             texture=30.0)
    return path.read_bytes(), {"num_frames": 30, "height": 72, "width": 128, "fps": 25.0}


def test_xpretrain_decode_delivers_what_the_loader_delivers(small_clip):
    mp4, meta = small_clip
    ours = decode_clip(mp4, None, meta, SMALL, "decord", seed=3)
    theirs = bench_loader.xpretrain_decode(mp4, None, meta, SMALL, "decord", seed=3, threads=1)
    assert theirs["hr"].shape == ours["hr"].shape == (2, 48, 64, 3)
    assert theirs["lr"].shape == ours["lr"].shape == (2, 2, 12, 16, 3)
    assert theirs["hr"].dtype == np.uint8 and theirs["lr"].dtype == np.uint8
    np.testing.assert_array_equal(theirs["frame_indices"], ours["frame_indices"])  # same plan, same frames
    # same frames and crops, only the resampling filter differs
    for key in ("hr", "lr"):
        diff = np.abs(theirs[key].astype(np.int16) - ours[key].astype(np.int16)).mean()
        assert diff < 12, (key, diff)
    other = bench_loader.xpretrain_decode(mp4, None, meta, SMALL, "decord", seed=4, threads=1)
    assert not np.array_equal(other["frame_indices"], theirs["frame_indices"])  # the seed drives the plan


def _batch(n: int = 2, cfg: ClipSamplingConfig = SMALL) -> dict:
    g = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (n, cfg.n_segments, *cfg.hr_size, 3), dtype=torch.uint8, generator=g)
    lr_size = (cfg.hr_size[0] // cfg.lr_factor, cfg.hr_size[1] // cfg.lr_factor)
    lr = torch.randint(0, 256, (n, cfg.n_segments, cfg.num_frm - 1, *lr_size, 3), dtype=torch.uint8, generator=g)
    idx = torch.arange(cfg.n_segments * cfg.num_frm).view(1, cfg.n_segments, cfg.num_frm).repeat(n, 1, 1)
    return {"__key__": [f"k{i}" for i in range(n)], "meta": [{"num_frames": 30}] * n, "hr": hr, "lr": lr,
            "frame_indices": idx}


def test_check_batch_rejects_each_kind_of_bad_batch():
    bench_loader.check_batch(_batch(), SMALL)
    bad = _batch()
    bad["lr"] = bad["lr"][:, :, :1]
    with pytest.raises(AssertionError, match="lr: shape"):
        bench_loader.check_batch(bad, SMALL)
    bad = _batch()
    bad["hr"] = bad["hr"].float()
    with pytest.raises(AssertionError, match="dtype"):
        bench_loader.check_batch(bad, SMALL)
    bad = _batch()
    bad["hr"][1] = 0  # one blank sample in an otherwise good batch
    with pytest.raises(AssertionError, match=r"samples \[1\]"):
        bench_loader.check_batch(bad, SMALL)
    bad = _batch()
    bad["frame_indices"][0, 1, 2] = 30  # one past the clip's last frame
    with pytest.raises(AssertionError, match="frame_indices"):
        bench_loader.check_batch(bad, SMALL)


def test_per_clip_figures_and_cores_per_gpu():
    out = bench_loader.per_clip(cpu_seconds=10.0, clips=100, frames_per_clip=14)
    assert out["cpu_s_per_clip"] == 0.1
    assert out["cpu_ms_per_frame"] == pytest.approx(1000 * 0.1 / 14, abs=0.01)
    # cores per GPU = clips/s the GPU consumes x CPU-seconds per clip
    assert out["cores_per_gpu"] == {"eager": round(92.0 * 0.1, 1), "compile": round(127.0 * 0.1, 1)}
    assert bench_loader.ratio(9.0, 4.5) == 2.0


def test_stream_bytes_splits_main_and_proxy(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000000.tar", "w") as tar:
        for name, size in [("a.mp4", 1000), ("a.proxy.mp4", 150), ("a.json", 40), ("b.mp4", 3000),
                           ("b.proxy.mp4", 450)]:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    out = bench_loader.stream_bytes(shards)
    assert out == {"clips": 2, "main_bytes_per_clip": 2000, "proxy_bytes_per_clip": 300, "proxy_pct_of_main": 15.0}


def _spin(seconds: float, clock=time.process_time) -> None:
    end = clock() + seconds
    while clock() < end:
        pass


def test_cpu_tracker_keeps_the_time_of_a_child_that_exits_unreaped():
    # the loader's decode children die with their worker and nobody reaps them: rusage loses their time
    ctx = mp.get_context("fork")
    with bench_loader.CpuTracker(interval=0.02) as cpu:
        before = cpu.total()
        child = ctx.Process(target=_spin, args=(0.5,))
        child.start()
        child.join()
        time.sleep(0.05)
    gained = cpu.total() - before
    assert 0.35 <= gained <= 1.0, gained  # the child's 0.5 s less at most one poll, plus a little of ours


def test_cpu_tracker_leaves_out_skipped_threads():
    ident, started, spun, release = [], threading.Event(), threading.Event(), threading.Event()

    def busy():
        ident.append(threading.get_native_id())
        started.set()
        _spin(0.6, time.thread_time)
        spun.set()
        release.wait()  # skipping works on live threads: the tracker reads them from the process's thread list

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    started.wait()
    counted, skipped = bench_loader.CpuTracker(), bench_loader.CpuTracker(skip=(ident[0],))
    before_all, before_skip = counted.total(), skipped.total()
    spun.wait()
    after_all, after_skip = counted.total(), skipped.total()
    release.set()
    thread.join()
    assert after_all - before_all >= 0.3
    # read at the same moment, the two trackers differ by the skipped thread's own time (it spun 0.6 s), whatever
    # else the process and its children did meanwhile (in CI that once added 0.4 s to both)
    assert after_all - after_skip >= 0.45, (after_all, after_skip)


# --- bench_train helpers

def test_each_arm_changes_exactly_one_factor_from_the_baseline():
    assert bench_train.arm_overrides(bench_train.ARMS[bench_train.BASELINE]) == []
    seen = set()
    for arm, settings in bench_train.ARMS.items():
        if arm == bench_train.BASELINE:
            continue
        overrides = bench_train.arm_overrides(settings)
        assert len(overrides) == 1, (arm, overrides)
        key = overrides[0].split("=", 1)[0]
        assert key not in seen
        seen.add(key)
    assert bench_train.arm_overrides({"channels_last": False}) == [
        "model_overrides={video: {channels_last: false}}"]
    assert bench_train.arm_overrides({"workers": 0}) == ["data.num_workers=0"]


def test_vs_baseline_divides_by_the_baseline_and_skips_failures():
    runs = {"baseline": {"samples_per_s": 10.0}, "bf16": {"samples_per_s": 0.8}, "compile": {"error": "x"},
            "NCHW": {"samples_per_s": 12.5}}
    assert bench_train.vs_baseline(runs) == {"baseline": 1.0, "bf16": 0.08, "NCHW": 1.25}


def test_flops_per_sample_is_per_sample_and_plausible():
    one, two = bench_train.flops_per_sample("tiny", 1), bench_train.flops_per_sample("tiny", 2)
    assert two == pytest.approx(one, rel=0.01)  # divided by the batch, so independent of it
    # hdvila-tiny: ~0.25 GFLOP per sample forward + backward; far outside means the counter missed the model
    assert 0.05e9 < one < 2e9


def test_vs_baseline_in_cpu_terms_inverts_the_ratio():
    runs = {"baseline": {"cpu_s_per_sample": 0.2}, "bf16": {"cpu_s_per_sample": 2.0}, "x": {"error": "e"}}
    assert bench_train.vs_baseline(runs, "cpu_s_per_sample", lower_is_better=True) == {"baseline": 1.0, "bf16": 0.1}


def test_steady_cpu_per_sample_skips_the_first_window():
    marks = [(5, 100.0), (10, 110.0), (15, 120.0)]
    assert bench_train.steady_cpu_per_sample(marks, batch_size=4) == pytest.approx(20.0 / (10 * 4))
    assert bench_train.steady_cpu_per_sample(marks[:1], batch_size=4) is None


def test_cpu_at_each_log_marks_every_record_and_restores_the_writer(tmp_path):
    from data_tools.training.metrics import MetricsWriter

    original = MetricsWriter.write
    with bench_train.cpu_at_each_log([]) as marks:
        writer = MetricsWriter(tmp_path)
        writer.write({"step": 3, "loss": 1.0})
        writer.write({"step": 6, "loss": 0.5})
        writer.close()
    assert [m[0] for m in marks] == [3, 6] and marks[1][1] >= marks[0][1] > 0
    assert MetricsWriter.write is original
