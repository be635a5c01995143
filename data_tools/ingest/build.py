"""`hdvila data build`: videos + transcripts (or manifests) -> 720p webdataset shards and a report.

Stages: discover inputs -> probe each video -> plan sentence spans -> assign clips to shards in a fixed
order -> cut + transcode shards in parallel processes -> build_report.json. Bad inputs become report entries;
the job goes on: any exception while discovering, probing, planning or cutting one input, of any type, is a
report entry (input, stage, reason); only a failure of the build machinery itself (writing a shard, a crashed
worker process) stops the build. Finished shards are skipped on a rerun, so a killed build resumes where it stopped.

Two engines run the same steps: `local` (threads to probe, processes to cut; the default) and `ray`
(data_tools.ingest.ray_engine: the plan and every clip's cut are Ray tasks). Both call the per-video and per-clip
functions below and assign shards here, so their shards are byte-identical for the same inputs and settings.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from ..config import save_config, to_dict
from ..files import atomic_write_json, atomic_write_text, remove_stale_temporaries
from ..logs import get_logger
from ..media import ProbeError, VideoInfo, probe_video
from .config import BuildConfig, TranscodeConfig
from .shards import ShardWriter, read_shard_stats, sample_key, shard_is_finished
from .sources import ClipRequest, InputProblem, VideoJob, discover_inputs, plan_clips
from .transcode import TranscodeError, cut_clip

log = get_logger(__name__)


class BuildFailed(RuntimeError):
    """No clip could be written at all."""


@dataclass
class PlannedClip:
    key: str
    video_path: str
    video_id: str
    clip_id: str
    start: float
    end: float
    text: str
    transcript_source: str
    info: dict  # VideoInfo as a dict (picklable, small)
    source: str = ""  # what the shard records as the source: relative to the input root, or absolute


@dataclass
class ShardTask:
    index: int
    clips: list[PlannedClip] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    """A readable reason for an unexpected exception: its type and message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _probe_job(job: VideoJob) -> tuple[VideoJob, VideoInfo | None, str | None]:
    try:
        return job, probe_video(job.video_path), None
    except ProbeError as exc:
        return job, None, str(exc)
    except Exception as exc:  # one odd video must not cost the build
        log.warning("unexpected error probing %s: %s", job.video_path, _reason(exc))
        return job, None, _reason(exc)


@dataclass
class PlannedVideo:
    """What probing and planning one video gives: its clips (keys not yet assigned) and its problems."""

    clips: list[PlannedClip]
    problems: list[InputProblem]


def plan_video(job: VideoJob, cfg: BuildConfig) -> PlannedVideo:
    """Probe one video and turn its transcript or spans into clips; every failure is a report entry."""
    job, info, error = _probe_job(job)
    if info is None:
        return PlannedVideo([], [InputProblem(input=job.video_path, stage="probe", reason=error or "unknown")])
    try:
        clips, clip_problems = plan_clips(job, info.duration, cfg.sentences, cfg.limits)
        items = [_planned_clip(job, info, clip, cfg.shards.absolute_source_paths) for clip in clips]
    except Exception as exc:  # a bug or an input nobody foresaw: report this video, plan the others
        log.warning("unexpected error planning %s: %s", job.video_path, _reason(exc))
        return PlannedVideo([], [InputProblem(input=job.transcript_path or job.video_path, stage="plan",
                                              reason=_reason(exc))])
    return PlannedVideo(items, list(clip_problems))


def plan_videos_locally(jobs: list[VideoJob], cfg: BuildConfig, progress: bool = True) -> list[PlannedVideo]:
    # Probing reads container headers only; threads are enough.
    with ThreadPoolExecutor(max_workers=max(1, min(8, cfg.workers * 2))) as pool:
        return list(tqdm(pool.map(lambda job: plan_video(job, cfg), jobs), total=len(jobs), desc="probe",
                         unit="video", disable=not progress, leave=False))


def discover_jobs(inputs: list[str], cfg: BuildConfig) -> tuple[list[VideoJob], list[InputProblem]]:
    """The videos to plan, in the build's fixed order, and the problems found while listing them."""
    jobs, problems = discover_inputs(inputs, video_root=cfg.video_root, clip_text=cfg.clip_text, limits=cfg.limits)
    return sorted(jobs, key=lambda j: (j.video_id, j.video_path)), list(problems)


def assign_shards(jobs: list[VideoJob], planned: list[PlannedVideo], problems: list[InputProblem],
                  cfg: BuildConfig) -> tuple[list[ShardTask], list[InputProblem], dict[str, int]]:
    """Number the clips in job order and cut the sequence into shards: the one place keys are decided."""
    if len(planned) != len(jobs):
        raise ValueError(f"{len(planned)} plans for {len(jobs)} videos")
    counts = {"videos_found": len(jobs), "videos_ok": 0}
    clips: list[PlannedClip] = []
    problems = list(problems)
    for video in planned:
        problems.extend(video.problems)
        counts["videos_ok"] += bool(video.clips)
        clips.extend(video.clips)
    per_shard = cfg.shards.samples_per_shard
    shards: list[ShardTask] = []
    for i, item in enumerate(clips):
        shard_index, position = divmod(i, per_shard)
        if shard_index == len(shards):
            shards.append(ShardTask(index=shard_index))
        item.key = sample_key(shard_index, position)
        shards[shard_index].clips.append(item)
    counts["clips_planned"] = len(clips)
    return shards, problems, counts


def plan_build(inputs: list[str], cfg: BuildConfig, progress: bool = True
               ) -> tuple[list[ShardTask], list[InputProblem], dict[str, int]]:
    """Everything before cutting: deterministic given the inputs and the config."""
    jobs, problems = discover_jobs(inputs, cfg)
    return assign_shards(jobs, plan_videos_locally(jobs, cfg, progress), problems, cfg)


def _planned_clip(job: VideoJob, info: VideoInfo, clip: ClipRequest, absolute_source: bool = False) -> PlannedClip:
    return PlannedClip(
        key="",
        video_path=job.video_path,
        video_id=job.video_id,
        clip_id=clip.clip_id,
        start=float(clip.start),
        end=float(clip.end),
        text=clip.text,
        transcript_source=job.transcript_source,
        info=info.to_dict(),
        source=job.video_path if absolute_source or not job.source else job.source,
    )


def _encoder_threads(cfg: BuildConfig) -> int:
    if cfg.transcode.threads > 0:
        return cfg.transcode.threads
    return max(1, (os.cpu_count() or 1) // max(1, cfg.workers))


def _sample(clip: PlannedClip, media: Any) -> tuple[dict[str, bytes | str], dict[str, Any]]:
    """The shard members (mp4, txt, json, proxy) and the parquet row of one cut clip."""
    source = clip.source or clip.video_path
    meta = {
        "key": clip.key,
        "clip_id": clip.clip_id,
        "video_id": clip.video_id,
        "source": source,
        "span": [clip.start, clip.end],
        "source_frames": [media.first_source_frame, media.first_source_frame + media.num_frames],
        "fps": media.fps,
        "num_frames": media.num_frames,
        "width": media.width,
        "height": media.height,
        "keyint": media.keyint,
        "proxy": ({"width": media.proxy_width, "height": media.proxy_height}
                  if media.proxy is not None else None),
        "transcript_source": clip.transcript_source,
        "source_info": {k: clip.info[k] for k in ("width", "height", "fps_fraction", "codec", "duration")},
    }
    files: dict[str, bytes | str] = {"mp4": media.mp4, "txt": clip.text, "json": json.dumps(meta, sort_keys=True)}
    if media.proxy is not None:
        files["proxy.mp4"] = media.proxy
    row = {
        "clip_id": clip.clip_id, "video_id": clip.video_id, "source": source,
        "start": clip.start, "end": clip.end,
        "duration": media.num_frames / float(Fraction(media.fps)),
        "num_frames": media.num_frames, "fps": media.fps, "width": media.width,
        "height": media.height, "text": clip.text, "transcript_source": clip.transcript_source,
    }
    return files, row


def cut_sample(clip: PlannedClip, tcfg: TranscodeConfig, threads: int
               ) -> tuple[dict[str, bytes | str], dict[str, Any]] | dict[str, Any]:
    """Cut and encode one clip: its shard members and parquet row, or its report entry if the input is bad."""
    try:  # everything that depends on this clip's input; writing the shard is the machinery's
        media = cut_clip(clip.video_path, VideoInfo(**clip.info), clip.start, clip.end, tcfg, threads=threads)
        return _sample(clip, media)
    except Exception as exc:  # one bad clip must not cost the shard: report it and go on
        if not isinstance(exc, (TranscodeError, ProbeError, OSError)):
            log.exception("unexpected error on %s [%s, %s]", clip.video_path, clip.start, clip.end)
        reason = str(exc) if isinstance(exc, (TranscodeError, ProbeError)) else _reason(exc)
        return {"input": clip.video_path, "clip_id": clip.clip_id, "stage": "transcode",
                "span": [clip.start, clip.end], "reason": reason}


def publish_shard(task: ShardTask, samples: Iterable, out_dir: str) -> dict:
    """Write the cut samples of one shard, in order, and publish it; `samples` yields `cut_sample` results.

    Samples are consumed one at a time, so a shard never needs to fit in memory. If anything raises, nothing of
    the shard becomes visible."""
    started = time.time()
    writer = ShardWriter(out_dir, task.index)
    failures: list[dict] = []
    try:
        for clip, result in zip(task.clips, samples, strict=True):
            if isinstance(result, dict):
                failures.append(result)
            else:
                files, row = result
                writer.write(clip.key, files, row)
        stats = {"shard": task.index, "planned": len(task.clips), "successes": len(writer.rows),
                 "failed": len(failures), "failures": failures, "seconds": round(time.time() - started, 3)}
        writer.close(stats)
    except BaseException:
        writer.abort()
        raise
    return stats


def write_shard(task: ShardTask, out_dir: str, tcfg: TranscodeConfig, threads: int,
                counter: Any = None) -> dict:
    """Cut every clip of one shard and publish the shard. Runs in a worker process."""

    def samples() -> Iterator:
        for clip in task.clips:
            yield cut_sample(clip, tcfg, threads)
            if counter is not None:
                with counter.get_lock():
                    counter.value += 1

    return publish_shard(task, samples(), out_dir)


_COUNTER = None


def _init_worker(counter) -> None:
    global _COUNTER
    _COUNTER = counter
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _run_shard(task: ShardTask, out_dir: str, tcfg: TranscodeConfig, threads: int) -> dict:
    return write_shard(task, out_dir, tcfg, threads, _COUNTER)


def build_fingerprint(inputs: list[str], cfg: BuildConfig) -> str:
    """What decides the shards' content: the inputs and every setting but the parallelism."""
    settings = to_dict(cfg)
    settings.pop("workers", None)
    settings["transcode"].pop("threads", None)
    blob = json.dumps({"inputs": [str(Path(i).resolve()) for i in inputs], "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_same_build(out: Path, inputs: list[str], cfg: BuildConfig) -> None:
    """Resuming is only sound into a folder built from the same inputs and settings."""
    marker = out / "build_fingerprint.txt"
    fingerprint = build_fingerprint(inputs, cfg)
    if marker.exists() and marker.read_text().strip() != fingerprint and any(out.glob("*_stats.json")):
        raise BuildFailed(f"{out} holds shards of a build with other inputs or settings; "
                          "use another --out, or delete the folder to rebuild")
    atomic_write_text(marker, fingerprint + "\n")


ENGINES = ("local", "ray")


def _unfinished(shards: list[ShardTask], out: Path) -> list[ShardTask]:
    todo = [s for s in shards if not shard_is_finished(out, s.index)]
    if len(todo) < len(shards):
        log.info("%d of %d shards are already finished; building the other %d", len(shards) - len(todo),
                 len(shards), len(todo))
    return todo


def _cut_locally(todo: list[ShardTask], out: Path, cfg: BuildConfig, threads: int, progress: bool) -> None:
    ctx = mp.get_context("fork")
    counter = ctx.Value("l", 0)
    total = sum(len(s.clips) for s in todo)
    with tqdm(total=total, desc="cut+encode", unit="clip", disable=not progress) as bar:
        if cfg.workers <= 1:
            _init_worker(counter)
            for task in todo:
                write_shard(task, str(out), cfg.transcode, threads, counter)
                bar.update(counter.value - bar.n)
            return
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(counter,)) as pool:
            pending = {pool.submit(_run_shard, t, str(out), cfg.transcode, threads) for t in todo}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is not None:  # a crashed worker is a bug: stop now, not hours later
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise fut.exception()
                bar.update(counter.value - bar.n)


def build_shards(inputs: list[str], out_dir: str | os.PathLike, cfg: BuildConfig, progress: bool = True,
                 engine: str = "local", ray_address: str | None = None, ray_max_retries: int = 3) -> dict:
    """Run the whole build; returns the report (also written to OUT/build_report.json).

    engine "ray" runs the plan and the cuts as Ray tasks: on the cluster at `ray_address` ("auto", HOST:PORT),
    or on a Ray instance of `cfg.workers` CPUs started for this build when it is None; a task whose worker dies
    is rerun up to `ray_max_retries` times."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    out = Path(out_dir).resolve()  # Ray's workers may run elsewhere, in another working directory
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temporaries(out)
    if removed:
        log.info("removed %d partial files left by an earlier, interrupted build", removed)
    _check_same_build(out, inputs, cfg)
    save_config(cfg, out / "build_config.yaml")
    started = time.time()
    unbuilt: list[dict] = []
    if engine == "ray":
        from .ray_engine import RayEngine

        # "cores // workers" means nothing across machines: each cut task asks Ray for its encoder threads, 1
        # unless transcode.threads says otherwise (pin it in both engines to compare their output byte for byte)
        threads = cfg.transcode.threads or 1
        with RayEngine(address=ray_address, workers=cfg.workers, max_retries=ray_max_retries) as ray_engine:
            ray_engine.check_fits(threads)
            jobs, problems = discover_jobs(inputs, cfg)
            shards, problems, counts = assign_shards(jobs, ray_engine.plan(jobs, cfg, progress), problems, cfg)
            todo = _unfinished(shards, out)
            unbuilt = ray_engine.cut(todo, str(out), cfg.transcode, threads, progress)
    else:
        shards, problems, counts = plan_build(inputs, cfg, progress=progress)
        todo = _unfinished(shards, out)
        _cut_locally(todo, out, cfg, _encoder_threads(cfg), progress)
    skipped = len(shards) - len(todo)
    failures = [asdict(p) for p in problems]
    written = 0
    shard_files = []
    lost = {entry["shard"] for entry in unbuilt}
    for shard in shards:
        if shard.index in lost:
            continue  # its workers kept dying: reported, and a rerun builds it
        stats = read_shard_stats(out, shard.index)
        written += stats["successes"]
        failures.extend(stats["failures"])
        shard_files.append(f"{shard.index:05d}.tar")
    failures.extend({k: v for k, v in entry.items() if k != "shard"} for entry in unbuilt)
    report = {
        **counts,
        "clips_written": written,
        "clips_failed": sum(1 for f in failures if f.get("stage") == "transcode"),
        "problems": len(failures),
        "shards": shard_files,
        "shards_skipped_as_finished": skipped,
        "seconds": round(time.time() - started, 2),
        "config": to_dict(cfg),
        "failures": failures,
    }
    atomic_write_json(out / "build_report.json", report)
    if unbuilt:
        raise BuildFailed(f"{len(unbuilt)} shards were not built because their workers kept dying (see "
                          f"{out / 'build_report.json'}); run the same command again to build them")
    if written == 0:
        raise BuildFailed(f"no clip could be written ({len(failures)} problems; see {out / 'build_report.json'})")
    return report
