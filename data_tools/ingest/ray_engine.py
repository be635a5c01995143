"""The `ray` engine of `hdvila data build`: the same build, with the plan and the cuts as Ray Core tasks.

The driver discovers the inputs, sends the videos to plan tasks (probe + sentence spans) in chunks, assigns shards
itself (`build.assign_shards`, so keys match the local engine's), then runs one task per clip and, once a shard's
clips are all cut, one task that writes and publishes that shard. What runs in the tasks is `build.plan_video`,
`build.cut_sample` and `build.publish_shard`, the local engine's own functions.

- Back-pressure: at most `max_open_shards` shards have clips in flight or cut but unwritten, so the object store
  holds a bounded number of clips whatever the corpus size.
- A worker that dies loses only the task it ran: Ray reruns that clip's cut (or that shard's write) up to
  `max_retries` times. A clip whose workers keep dying leaves its shard unpublished; the report says so, the build
  fails, and rerunning the command builds just the missing shards. Bad inputs are report entries, as locally.
- Ray is optional: this module is imported only when the engine is asked for.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

from tqdm.auto import tqdm

from ..files import remove_stale_temporaries
from ..logs import get_logger
from .build import BuildFailed, PlannedVideo, ShardTask, cut_sample, plan_video, publish_shard
from .config import BuildConfig, TranscodeConfig
from .sources import VideoJob

log = get_logger(__name__)

CUT_TASK_NAME = "hdvila-ingest-cut"  # Ray titles a worker process "ray::NAME" while it runs the task
WRITE_TASK_NAME = "hdvila-ingest-write-shard"
PLAN_TASK_NAME = "hdvila-ingest-plan"


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("the ray engine needs Ray: pip install 'hdvila[ray]' (or 'ray>=2.9'), "
                           "or build with the local engine") from exc
    return ray


def _plan_chunk(jobs: list[VideoJob], cfg: BuildConfig) -> list[PlannedVideo]:
    return [plan_video(job, cfg) for job in jobs]


def _write_shard_from_refs(task: ShardTask, sample_refs: list, out_dir: str) -> dict:
    import ray

    # one clip's bytes at a time; a clip whose task failed for good raises here and the shard stays unpublished
    return publish_shard(task, (ray.get(ref) for ref in sample_refs), out_dir)


def _caused_by(exc: BaseException | None, kinds: tuple) -> bool:
    """Whether `exc`, or what it wraps (a RayTaskError's cause, an exception's __cause__), is one of `kinds`."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kinds):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return False


def _reason(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:300]}"


class RayEngine:
    """Connects to (or starts) Ray for one build; use as a context manager."""

    def __init__(self, address: str | None = None, workers: int = 1, max_retries: int = 3,
                 max_open_shards: int | None = None):
        self.address = address
        self.workers = max(1, workers)
        self.max_retries = max_retries
        self.max_open_shards = max_open_shards
        self.cpus = 1
        self._ray: Any = None
        self._started_here = False

    def __enter__(self) -> RayEngine:
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
            if self.address is None:  # a Ray instance of this machine for this build only, never a running one
                options["num_cpus"] = self.workers
            ray.init(address=self.address or "local", **options)
            self._started_here = True
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        log.info("ray engine: %d CPUs in the cluster", self.cpus)
        return self

    def check_fits(self, threads: int) -> None:
        """A cut task asks for `threads` CPUs: refuse now if no node has that many, rather than wait forever."""
        largest = max((node["Resources"].get("CPU", 0) for node in self._ray.nodes() if node.get("Alive")),
                      default=0)
        if threads > largest:
            raise BuildFailed(f"a cut task needs {threads} CPUs (transcode.threads) but the largest Ray node has "
                              f"{largest:g}: lower transcode.threads or give the Ray instance more (--workers)")

    def __exit__(self, *exc_info) -> None:
        if self._started_here:
            self._ray.shutdown()

    def plan(self, jobs: list[VideoJob], cfg: BuildConfig, progress: bool = True) -> list[PlannedVideo]:
        """plan_video of every job, in job order, as Ray tasks of a few videos each."""
        ray = self._ray
        remote = ray.remote(_plan_chunk).options(num_cpus=1, max_retries=self.max_retries, name=PLAN_TASK_NAME)
        size = max(1, min(64, math.ceil(len(jobs) / (4 * self.cpus))))
        chunks = deque((start, jobs[start:start + size]) for start in range(0, len(jobs), size))
        results: list[PlannedVideo | None] = [None] * len(jobs)
        pending: dict[Any, int] = {}
        with tqdm(total=len(jobs), desc="probe", unit="video", disable=not progress, leave=False) as bar:
            while chunks or pending:
                while chunks and len(pending) < 2 * self.cpus:
                    start, chunk = chunks.popleft()
                    pending[remote.remote(chunk, cfg)] = start
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    start = pending.pop(ref)
                    planned = ray.get(ref)  # a plan task never raises for an input; if Ray fails it, stop
                    results[start:start + len(planned)] = planned
                    bar.update(len(planned))
        return results  # type: ignore[return-value]

    def _open_shard_limit(self, todo: list[ShardTask]) -> int:
        if self.max_open_shards is not None:
            return max(1, self.max_open_shards)
        per_shard = max((len(t.clips) for t in todo), default=1)
        return max(2, math.ceil(2 * self.cpus / per_shard) + 1)  # enough clips queued to keep every CPU busy

    def cut(self, todo: list[ShardTask], out_dir: str, tcfg: TranscodeConfig, threads: int,
            progress: bool = True) -> list[dict]:
        """Cut and publish every shard of `todo`; returns report entries for shards that could not be built."""
        ray = self._ray
        cut = ray.remote(cut_sample).options(num_cpus=threads, max_retries=self.max_retries, name=CUT_TASK_NAME)
        write = ray.remote(_write_shard_from_refs).options(num_cpus=0.25, max_retries=self.max_retries,
                                                           name=WRITE_TASK_NAME)
        # what a dead worker or node leaves: work lost, not wrong, and a rerun redoes it
        lost_work = tuple(getattr(ray.exceptions, name) for name in (
            "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError", "OutOfMemoryError",
            "TaskUnschedulableError", "LocalRayletDiedError") if hasattr(ray.exceptions, name))
        limit = self._open_shard_limit(todo)
        queue = deque(todo)
        open_shards: dict[int, tuple[ShardTask, list]] = {}
        left: dict[int, int] = {}
        cutting: dict[Any, int] = {}  # clip task -> shard index
        writing: dict[Any, ShardTask] = {}
        unbuilt: list[dict] = []
        with tqdm(total=sum(len(t.clips) for t in todo), desc="cut+encode", unit="clip",
                  disable=not progress) as bar:
            while queue or cutting or writing:
                while queue and len(open_shards) < limit:
                    task = queue.popleft()
                    refs = [cut.remote(clip, tcfg, threads) for clip in task.clips]
                    open_shards[task.index] = (task, refs)
                    left[task.index] = len(refs)
                    cutting.update((ref, task.index) for ref in refs)
                # fetch_local=False: the driver only learns that a clip is done; its bytes go to the writer
                pending = list(cutting) + list(writing)
                ready, rest = ray.wait(pending, num_returns=1, fetch_local=False)
                if rest:  # and whatever else is done already, in the same pass
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)[0]
                for ref in ready:
                    if ref in writing:
                        task = writing.pop(ref)
                        del open_shards[task.index]
                        try:
                            ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            if not _caused_by(exc, lost_work):
                                # the machinery's own failure (disk full, a bug): stop, as the local engine does
                                for other in list(cutting) + list(writing):
                                    ray.cancel(other)
                                raise
                            log.error("shard %05d was not built: %s", task.index, _reason(exc))
                            unbuilt.append({"input": f"shard {task.index:05d}", "stage": "shard",
                                            "shard": task.index,
                                            "reason": f"not built, a rerun builds it: {_reason(exc)}"})
                        continue
                    index = cutting.pop(ref)
                    bar.update(1)
                    left[index] -= 1
                    if left[index] == 0:
                        task, refs = open_shards[index]
                        writing[write.remote(task, refs, out_dir)] = task
        removed = remove_stale_temporaries(out_dir)  # what killed and retried writers left behind
        if removed:
            log.info("removed %d temporary files of retried shard writers", removed)
        return unbuilt
