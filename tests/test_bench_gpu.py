"""benchmarks/bench_gpu.py: its figures' arithmetic, and a CPU rehearsal of the whole script on a tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from bench_helpers import load_benchmark
from data_tools.config import load_config
from data_tools.ingest.build import build_shards
from data_tools.ingest.config import BuildConfig
from data_tools.ingest.transcripts import format_srt
from data_tools.media.testclips import make_indexed_clip

bench_gpu = load_benchmark("bench_gpu")


def test_profile_summary_groups_ops_and_measures_device_busy_time():
    class Event:
        def __init__(self, key, device_us, cpu_us, count=1):
            self.key, self.self_device_time_total, self.self_cpu_time_total, self.count = key, device_us, cpu_us, count

    events = [Event("aten::cudnn_batch_norm", 300_000, 10), Event("aten::convolution_backward", 200_000, 10),
              Event("aten::_efficient_attention_forward", 100_000, 10), Event("ProfilerStep*", 0, 900_000)]
    summary = bench_gpu.profile_summary(events, wall_s=1.2, steps=2)
    assert summary["timer"] == "device" and summary["busy_fraction"] == 0.5  # 0.6 s of kernels in 1.2 s
    assert summary["groups"] == {"batch norm": 0.5, "convolution": 0.3333, "attention": 0.1667,
                                 "Python and framework (outside ops)": 0.0}
    assert summary["top_ops"][0] == {"op": "aten::cudnn_batch_norm", "share": 0.5, "ms_per_step": 150.0, "calls": 1}
    on_cpu = bench_gpu.profile_summary([Event("ProfilerStep*", 0, 600), Event("aten::addmm", 0, 400)], 1.0, 1)
    assert on_cpu["timer"] == "cpu" and on_cpu["busy_fraction"] is None
    assert on_cpu["groups"] == {"Python and framework (outside ops)": 0.6, "matrix products": 0.4}


def test_peaks_rates_and_compile_time_arithmetic():
    assert bench_gpu.datasheet_peak_tflops("NVIDIA H200") == bench_gpu.datasheet_peak_tflops("NVIDIA H100 80GB HBM3")
    assert bench_gpu.datasheet_peak_tflops("NVIDIA GeForce RTX 4090") is None
    records = [{"samples_per_s": 2.0}, {"samples_per_s": 8.0}, {"samples_per_s": 12.0}]
    assert bench_gpu.steady_samples_per_s(records) == 10.0  # the first window is left out
    assert bench_gpu.steady_samples_per_s(records[:1]) == 2.0
    # 20 samples a window: 10 s in the first, 2 s in a steady one
    assert bench_gpu.compile_seconds(records, 20) == pytest.approx(8.0)
    assert bench_gpu.compile_seconds(records[:1], 20) is None
    run = bench_gpu.add_rates({"samples_per_s": 100.0}, flops=2e12, datasheet=1000.0, measured=800.0)
    assert run["model_tflops"] == 200.0 and run["mfu_datasheet"] == 0.2 and run["mfu_measured_peak"] == 0.25
    assert bench_gpu.add_rates({"samples_per_s": 1.0}, 1e12, None, 10.0)["mfu_datasheet"] is None


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_bench")
    src = root / "videos"
    src.mkdir()
    make_indexed_clip(src / "v.mp4", num_frames=100, size=(96, 128), fps=25, keyint=25)
    (src / "v.srt").write_text(format_srt([(0.0, 2.0, "One part."), (2.0, 4.0, "Another part.")]))
    cfg = load_config(BuildConfig, None, ["sentences.min_duration=1.0", "transcode.preset=ultrafast",
                                          "transcode.threads=1", "transcode.proxy_short_side=24"])
    build_shards([str(src)], root / "shards", cfg, progress=False)
    return root / "shards"


def test_cpu_rehearsal_writes_consistent_figures(shards, tmp_path):
    res = bench_gpu.main(["--sizes", "tiny", "--recipes", "stage1", "--modes", "eager", "--steps", "4",
                          "--log-every", "2", "--batch", "2", "--matmul-n", "128", "--shards", str(shards),
                          "--loader-workers", "1", "--loader-samples", "24", "--work", str(tmp_path / "work"),
                          "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "gpu.json").read_text()) == json.loads(json.dumps(res))
    (run,) = res["runs"]
    assert "error" not in run, run
    assert run["samples_per_s"] > 0 and run["peak_memory_gib"] > 0 and run["mfu_datasheet"] is None
    assert run["tflop_per_sample"] > 0
    assert run["model_tflops"] == pytest.approx(run["samples_per_s"] * run["tflop_per_sample"], rel=0.01)
    assert run["mfu_measured_peak"] == pytest.approx(run["model_tflops"] / res["matmul_peak_tflops"], rel=0.05)
    for arm in ("any_frame", "keyframes_on_iframes"):
        loader = res["loader"][arm]
        assert loader["samples"] == 24 and loader["skipped"] == 0 and loader["cpu_s_per_clip"] > 0
    page = (tmp_path / "out" / "gpu.md").read_text()
    assert "| tiny | stage1 | eager | 2 |" in page and "CPU cores per GPU" in page
    assert run["profile"]["steps"] == 3 and run["profile"]["timer"] == "cpu"  # stage1:eager is profiled
    assert abs(sum(run["profile"]["groups"].values()) - 1.0) < 0.01 and "### tiny stage1 eager" in page


def test_a_spent_budget_records_the_runs_it_skips(tmp_path):
    res = bench_gpu.main(["--sizes", "tiny", "--recipes", "stage1", "joint", "--budget-s", "1e-9",
                          "--matmul-n", "64", "--out", str(tmp_path)])
    assert [(r["recipe"], r["mode"]) for r in res["runs"]] == [("stage1", "eager"), ("joint", "eager"),
                                                               ("stage1", "compile"), ("joint", "compile")]
    assert all(r["error"].startswith("not run") for r in res["runs"])
    assert "not run" in (tmp_path / "gpu.md").read_text()


def test_a_run_out_of_memory_is_retried_at_half_the_batch(tmp_path, monkeypatch):
    batches = []

    def fake_run(size, recipe, compile_, batch, *rest):
        batches.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"size": size, "recipe": recipe, "mode": "eager", "batch": batch, "samples_per_s": 10.0,
                "peak_memory_gib": 1.0, "startup_and_compile_s": 0.0}

    monkeypatch.setattr(bench_gpu, "run_one", fake_run)
    monkeypatch.setattr(bench_gpu, "flops_per_sample", lambda cfg, device: 1e9)
    res = bench_gpu.main(["--sizes", "tiny", "--recipes", "stage1", "--modes", "eager", "--batch", "8",
                          "--matmul-n", "64", "--out", str(tmp_path)])
    assert batches == [8, 4, 2]
    (run,) = res["runs"]
    assert run["batch"] == 2 and run["model_tflops"] == pytest.approx(0.01)
