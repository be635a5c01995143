"""Ingest throughput: `hdvila data build` vs running the bare ffmpeg cut+transcode commands on the same spans
with the same parallelism. The difference is the project's overhead (probing, planning, frame counting,
tar/parquet writing). Goal: <= 10%.

Writes docs/benchmarks/ingest.md and ingest.json. Usage: python benchmarks/bench_ingest.py
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine_line, source_corpus
from data_tools.config import load_config
from data_tools.ingest.build import build_shards, plan_build
from data_tools.ingest.config import BuildConfig
from data_tools.ingest.transcode import build_command
from data_tools.files import atomic_write_json, atomic_write_text
from data_tools.media import VideoInfo


def bare_ffmpeg_seconds(inputs: list[str], cfg: BuildConfig, scratch: Path) -> tuple[float, int]:
    shards, _, _ = plan_build(inputs, cfg, progress=False)
    clips = [c for s in shards for c in s.clips]
    threads = cfg.transcode.threads

    def run(i_clip):
        i, clip = i_clip
        args, _ = build_command(clip.video_path, str(scratch / f"{i}.mp4"), str(scratch / f"{i}.proxy.mp4"),
                                VideoInfo(**clip.info), clip.start, clip.end, cfg.transcode, threads)
        subprocess.run(args, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(cfg.workers) as pool:
        list(pool.map(run, enumerate(clips)))
    return time.perf_counter() - start, len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synth-videos", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hdvila-bench"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks"))
    args = parser.parse_args()
    work = Path(args.work)
    inputs = source_corpus(work, args.synth_videos)
    cfg = load_config(BuildConfig, None, ["sentences.min_duration=2.0", "workers=2", "transcode.threads=1",
                                          "shards.samples_per_shard=8"])
    ours, bare = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        scratch = work / "bare"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        seconds, n = bare_ffmpeg_seconds(inputs, cfg, scratch)
        bare.append(seconds)
        out = work / "ingest-bench-shards"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        report = build_shards(inputs, out, cfg, progress=False)
        ours.append(time.perf_counter() - start)
        assert report["clips_written"] == n
    best_ours, best_bare = min(ours), min(bare)
    res = {
        "machine": machine_line(),
        "clips": n,
        "workers": cfg.workers,
        "bare_ffmpeg_s": [round(s, 2) for s in bare],
        "hdvila_build_s": [round(s, 2) for s in ours],
        "bare_clips_per_s": round(n / best_bare, 3),
        "hdvila_clips_per_s": round(n / best_ours, 3),
        "overhead_pct": round(100.0 * (best_ours / best_bare - 1.0), 1),
    }
    out_dir = Path(args.out)
    atomic_write_json(out_dir / "ingest.json", res)
    atomic_write_text(out_dir / "ingest.md", f"""# Ingest benchmark

Command: `python benchmarks/bench_ingest.py` (writes this page and `ingest.json`).
Machine: {res['machine']}; no GPU.

Inputs: Big Buck Bunny 720p plus {args.synth_videos} synthetic textured 720p videos (2 sentences of 13.4 s each);
{res['clips']} clips. Both sides run {res['workers']} processes with one encoder thread each, and the same
ffmpeg arguments (frame-accurate seek, 720p H.264 veryfast CRF 23, 1 s GOP, plus the 180p proxy stream).
Best of {args.repeats} interleaved runs.

| pipeline | wall s (each run) | clips/s (best) |
|---|---|---|
| bare ffmpeg commands | {', '.join(map(str, res['bare_ffmpeg_s']))} | {res['bare_clips_per_s']} |
| `hdvila data build` | {', '.join(map(str, res['hdvila_build_s']))} | {res['hdvila_clips_per_s']} |

Overhead of the project's ingest over the bare commands: **{res['overhead_pct']}%** (goal <= 10%).
""")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
