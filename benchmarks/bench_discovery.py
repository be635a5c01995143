"""Discovery scales linearly: pair videos with their transcripts and give them ids over 1,000,000 synthetic
file names (pure name logic, no files), the work `hdvila data build` does on a folder before any probing.

Writes docs/benchmarks/discovery.md. Usage: python benchmarks/bench_discovery.py [--paths 1000000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import machine_line
from data_tools.files import atomic_write_json, atomic_write_text
from data_tools.ingest.sources import folder_video_ids, pair_videos


def synthetic_names(num_paths: int) -> list[str]:
    """About num_paths names: videos, exact-match transcripts, yt-dlp language-tagged subtitles, clutter."""
    names: list[str] = []
    i = 0
    while len(names) < num_paths:
        stem = f"video_{i:07d}"
        names.append(f"{stem}{('.mp4', '.mkv', '.webm')[i % 3]}")
        kind = i % 4
        if kind == 0:
            names.append(f"{stem}.srt")
        elif kind == 1:
            names.append(f"{stem}.en.vtt")
        elif kind == 2:
            names.append(f"{stem}.jpg")  # a thumbnail, no transcript
        i += 1
    return names[:num_paths]


def old_quadratic_ids(stems: list[str]) -> set[str]:
    """What discovery did before (issue 14): list.count inside a loop."""
    return {s for s in stems if stems.count(s) > 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paths", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs/benchmarks/discovery.md"))
    args = parser.parse_args()
    names = synthetic_names(args.paths)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        pairs = pair_videos(names)
        ids = folder_video_ids([video for video, _ in pairs])
        runs.append(time.perf_counter() - start)
    paired = sum(t is not None for _, t in pairs)
    assert len(ids) == len(set(ids)) == len(pairs)
    old_n = 20_000
    start = time.perf_counter()
    old_quadratic_ids([f"video_{i:07d}" for i in range(old_n)])
    old = time.perf_counter() - start
    best = min(runs)
    text = f"""# Discovery benchmark

Command: `python benchmarks/bench_discovery.py` (writes this page and discovery.json).
Machine: {machine_line()}.

Input: {len(names):,} synthetic file names in one folder ({len(pairs):,} videos, {paired:,} of them with a
transcript: exact `.srt` or a yt-dlp `.en.vtt`; the others have none, some a thumbnail). Timed: `pair_videos` (video -> transcript)
and `folder_video_ids` (ids, repeated stems disambiguated), the name logic of folder discovery; no file is
touched. Best of 3 runs.

| step | paths | seconds (each run) | best |
|---|---|---|---|
| pairing + ids (now, linear) | {len(names):,} | {', '.join(f'{r:.2f}' for r in runs)} | **{best:.2f} s** |
| old id check (`list.count` in a loop) | {old_n:,} | {old:.2f} | {old:.2f} s |

The old check was quadratic: {old_n:,} names took {old:.1f} s, so {len(names):,} would take about
{old * (len(names) / old_n) ** 2 / 3600:.0f} h; the linear version handles them in {best:.1f} s.
"""
    atomic_write_text(args.out, text)
    atomic_write_json(Path(args.out).with_suffix(".json"), {
        "machine": machine_line(), "paths": len(names), "videos": len(pairs), "with_transcript": paired,
        "runs_s": [round(r, 3) for r in runs], "best_s": round(best, 3),
        "old_quadratic": {"paths": old_n, "seconds": round(old, 3)}})
    print(text)


if __name__ == "__main__":
    main()
