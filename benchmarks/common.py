"""Shared set-up for the data benchmarks: a 720p corpus (Big Buck Bunny + synthetic clips) built into shards."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

# the ingest stack (webdataset, PyAV, ffmpeg) is imported where it is used: machine_line alone must work on a
# bare GPU machine

# HD-VILA-100M clips average 13.4 s; each synthetic source holds two sentences of that length.
CLIP_SECONDS = 13.4
# Scrolling texture that gives ~1.5-2.5 Mbit/s after the ingest's CRF 23 encode, like YouTube 720p; the flat
# shapes corpus of `hdvila data synth` compresses to ~0.05 Mbit/s and would flatter every decoder.
TEXTURE = 30.0


def cpu_info() -> dict:
    """CPU model, cores and the instruction-set flags that decide training speed (data_tools.cpu reads them)."""
    from data_tools.cpu import ISA_FLAGS, cpu_flags, cpu_model

    flags = cpu_flags()
    return {"model": cpu_model(), "cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags],
            "amx_bf16": "amx_bf16" in flags}


def isa_line(info: dict) -> str:
    amx = "AMX bf16" if info["amx_bf16"] else "no AMX"
    return f"ISA {' '.join(info['isa']) or 'unknown'} ({amx})"


def machine_line() -> str:
    info = cpu_info()
    return (f"{info['cores']} cores ({info['model']}; {isa_line(info)}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_hdvila(args: list[str], log_path: Path, threads: int, cwd: Path | None = None) -> None:
    """`hdvila ARGS` in its own process on `threads` OpenMP threads, its output in `log_path`; a failure raises
    with the command and the log's path. The launcher's variables are dropped: each run is a world of one."""
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for key in LAUNCHER_VARIABLES:
        env.pop(key, None)
    cmd = [sys.executable, "-m", "hdvila.cli", "--quiet", "--log-level", "WARNING", *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=cwd or Path(__file__).resolve().parents[1], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")


def load_average() -> float:
    """The 1-minute load average: other work on the machine shows here and skews wall-clock figures."""
    return round(os.getloadavg()[0], 2)


def source_corpus(root: Path, num_synth_videos: int) -> list[str]:
    """Folders to ingest: BBB 720p with one sentence over the whole clip, and textured synthetic 720p videos."""
    from data_tools.corpus import real_corpus_videos
    from data_tools.ingest.transcripts import format_srt
    from data_tools.media.testclips import make_indexed_clip

    real = root / "real"
    if not real.exists():
        real.mkdir(parents=True)
        bbb = real_corpus_videos()["bigbuckbunny"]
        os.symlink(bbb, real / "bigbuckbunny.mp4")
        (real / "bigbuckbunny.srt").write_text(format_srt([(0.0, 5.28, "A big rabbit wakes up in a meadow.")]))
    synth = root / "synth"
    if not (synth / "done").exists():
        synth.mkdir(parents=True, exist_ok=True)
        for i in range(num_synth_videos):
            make_indexed_clip(synth / f"textured{i:02d}.mp4", num_frames=int(2 * CLIP_SECONDS * 25) + 2,
                              size=(720, 1280), fps=25, keyint=250, crf=18, texture=TEXTURE)
            (synth / f"textured{i:02d}.srt").write_text(format_srt([
                (0.0, CLIP_SECONDS, "The numbered blocks count up over a moving texture."),
                (CLIP_SECONDS, 2 * CLIP_SECONDS, "The counting goes on while the texture drifts.")]))
        (synth / "done").write_text("")
    return [str(real), str(synth)]


def build_corpus_shards(root: Path, num_synth_videos: int, overrides: list[str], workers: int = 2) -> Path:
    from data_tools.config import load_config
    from data_tools.ingest.build import build_shards
    from data_tools.ingest.config import BuildConfig

    out = root / ("shards-" + "-".join(o.replace("=", "_").replace(".", "_") for o in overrides) if overrides
                  else "shards")
    if not (out / "build_report.json").exists():
        cfg = load_config(BuildConfig, None, ["sentences.min_duration=2.0", f"workers={workers}"] + overrides)
        build_shards(source_corpus(root, num_synth_videos), out, cfg)
    return out


def ffmpeg_null_decode_seconds(paths: list[str], processes: int) -> float:
    """Wall time of `ffmpeg -threads 1 -i clip -f null -` over all clips, `processes` at a time."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from data_tools.media import ffmpeg_exe

    def run(path: str) -> None:
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-threads", "1", "-i", path, "-map", "0:v:0",
                        "-f", "null", "-"], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(processes) as pool:
        list(pool.map(run, paths))
    return time.perf_counter() - start
