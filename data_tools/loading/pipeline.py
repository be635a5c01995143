"""Webdataset loading: shard lists -> node/worker split -> tar samples -> decoded, tokenized training samples.

Two sample kinds share one pipeline:
- "clip": HD-VILA segments (high-res keyframes + low-res neighbours) and the tokenized caption;
- "frames": random frames (or short frame sequences) at one resolution, for diffusion and GAN training.

Decoding runs inside DataLoader workers. With `decode_timeout > 0` each sample is decoded in a watchdog
child process, so a decoder stuck in C code (decord can spin forever holding the GIL) is killed, the sample
is skipped and counted, and the worker lives on. Every skip is counted by reason in counters shared with
the main process (`dataset.counts()`).

Shards are untrusted input. A sample's JSON metadata never sizes an allocation on its own: frame count and
frame size are type- and range-checked against limits (`LoaderConfig.max_*`), checked against the stream
header the decoder reads, and the planned decode must fit `max_decode_bytes`; a violation skips the sample
as "bad_metadata". Tar members are read only when the loader uses them and only up to a size cap
(`max_video_member_bytes`, `max_meta_member_bytes`): a larger one (a compression bomb in a .tar.gz) is
streamed past, never held, and its sample is skipped as "oversize_member".
"""
from __future__ import annotations

import glob
import inspect
import itertools
import json
import math
import multiprocessing as mp
import os
import random
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..decoders import DEFAULT_BACKEND, DecodeError, DecodeTimeout, IsolatedRunner, open_video
from ..logs import get_logger
from .sampling import ClipSamplingConfig, FrameSamplingConfig, apply_crop, cover_size, plan_clip, plan_frames

log = get_logger(__name__)


@dataclass
class LoaderConfig:
    shards: list[str] = field(default_factory=list)  # paths, globs, brace patterns, pipe: URLs
    batch_size: int = 8  # per rank
    num_workers: int = 2
    resampled: bool = False  # sample shards with replacement; epoch length fixed by epoch_samples
    epoch_samples: int = 0  # resampled mode: samples per rank per epoch (required there)
    shuffle_shards: bool = True
    shuffle_buffer: int = 64  # samples; 0 keeps shard order
    seed: int = 0
    backend: str = DEFAULT_BACKEND
    decode_timeout: float = 30.0  # seconds per sample; 0 decodes in the worker without a watchdog
    decode_threads: int = 1
    max_text_len: int = 40
    tokenizer: str | None = None  # folder; None = the committed default vocabulary
    drop_last: bool = True
    # Limits on untrusted shard data (see the module docstring)
    max_video_member_bytes: int = 512 << 20  # per mp4 / proxy.mp4 tar member
    max_meta_member_bytes: int = 1 << 20  # per json / txt tar member
    max_frame_side: int = 8192  # pixels; metadata or stream header beyond it is refused
    max_aspect_ratio: float = 16.0  # long side / short side
    max_clip_frames: int = 1_000_000
    max_decode_bytes: int = 1 << 30  # decoded uint8 RGB frames of one sample, as planned

    def limits(self) -> "MetadataLimits":
        return MetadataLimits(max_side=self.max_frame_side, max_aspect=self.max_aspect_ratio,
                              max_frames=self.max_clip_frames, max_decode_bytes=self.max_decode_bytes)


def expand_shards(spec: str | Iterable[str]) -> list[str]:
    """Expand brace patterns ({000..009}) and globs in each entry; keep `pipe:`/URL entries as given."""
    items = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in items:
        for part in wds.shardlists.expand_urls(item) if "{" in item else [item]:
            if part.startswith("pipe:") or "://" in part:
                urls.append(part)
            elif any(ch in part for ch in "*?["):
                matched = sorted(glob.glob(part))
                if not matched:
                    raise FileNotFoundError(f"no shard matches {part!r}")
                urls.extend(matched)
            else:
                urls.append(part)
    if not urls:
        raise ValueError(f"empty shard list from {spec!r}")
    return urls


# ---------------------------------------------------------------------------------------------------------
# shard metadata: untrusted, checked before it sizes anything

class ShardMetadataError(ValueError):
    """A sample's metadata is malformed, beyond the limits, or contradicts the stream it describes."""


@dataclass(frozen=True)
class MetadataLimits:
    max_side: int = 8192
    max_aspect: float = 16.0
    max_frames: int = 1_000_000
    max_decode_bytes: int = 1 << 30


DEFAULT_LIMITS = MetadataLimits()
_DIM_KEYS = ("num_frames", "height", "width")


def _count(value: Any, name: str, hi: int) -> int:
    """A whole number in [1, hi]: ints, or floats with an integral value; never bools, strings, NaN, inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShardMetadataError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ShardMetadataError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
    if not 1 <= value <= hi:
        shown = value if abs(value) < 10 ** 12 else f"a {len(str(abs(value)))}-digit number"
        raise ShardMetadataError(f"{name} must be in [1, {hi}], got {shown}")
    return value


def check_dims(num_frames: Any, height: Any, width: Any,
               limits: MetadataLimits = DEFAULT_LIMITS) -> tuple[int, int, int]:
    """(num_frames, height, width) as ints within the limits, or ShardMetadataError."""
    n = _count(num_frames, "num_frames", limits.max_frames)
    h = _count(height, "height", limits.max_side)
    w = _count(width, "width", limits.max_side)
    if max(h, w) > limits.max_aspect * min(h, w):
        raise ShardMetadataError(f"frame size {h}x{w} is beyond the aspect ratio limit {limits.max_aspect:g}")
    return n, h, w


def check_shard_meta(meta: Any, limits: MetadataLimits = DEFAULT_LIMITS) -> tuple[int, int, int] | None:
    """Validate a shard sample's metadata before anything is sized from it.

    Returns (num_frames, height, width) when the metadata gives all three (None when it gives none of them:
    the stream is probed instead). Every size it holds (also the proxy's) must be a whole number within
    `limits`; anything else raises ShardMetadataError, and nothing else is raised.
    """
    if not isinstance(meta, dict):
        raise ShardMetadataError(f"metadata must be a JSON object, got {type(meta).__name__}")
    given = [k for k in _DIM_KEYS if k in meta]
    if given and len(given) < len(_DIM_KEYS):
        raise ShardMetadataError(f"metadata gives {given} but not all of {list(_DIM_KEYS)}")
    dims = check_dims(*(meta[k] for k in _DIM_KEYS), limits) if given else None
    if "proxy" in meta and meta["proxy"] is not None:
        proxy = meta["proxy"]
        if not isinstance(proxy, dict) or "height" not in proxy or "width" not in proxy:
            raise ShardMetadataError("proxy metadata must be an object with height and width")
        check_dims(1, proxy["height"], proxy["width"], limits)
    return dims


def _proxy_size(meta: dict, limits: MetadataLimits) -> tuple[int, int] | None:
    proxy = meta.get("proxy")
    if not isinstance(proxy, dict):
        return None
    _, h, w = check_dims(1, proxy.get("height"), proxy.get("width"), limits)
    return h, w


def check_decode_bytes(parts: Iterable[tuple[int, tuple[int, int]]], limits: MetadataLimits) -> int:
    """Bytes of the uint8 RGB frames a plan decodes: (frame count, (height, width)) per part, within limits."""
    total = sum(int(n) * int(h) * int(w) * 3 for n, (h, w) in parts)
    if total > limits.max_decode_bytes:
        raise ShardMetadataError(f"the planned decode needs {total} bytes, over the limit of "
                                 f"{limits.max_decode_bytes}")
    return total


# ---------------------------------------------------------------------------------------------------------
# decoding (module-level functions so that the watchdog child can run them)

def _native_meta(mp4: bytes, meta: dict, backend: str,
                 limits: MetadataLimits = DEFAULT_LIMITS) -> tuple[int, int, int]:
    dims = check_shard_meta(meta, limits)
    if dims is not None:
        return dims
    with open_video(mp4, backend=backend) as reader:  # the stream's own header, still within the limits
        return check_dims(reader.num_frames, reader.height, reader.width, limits)


def _open_checked(source, backend: str, size: tuple[int, int], num_frames: int, threads: int,
                  expect: tuple[int, int] | None):
    """open_video, then hold the metadata to the stream header: the size it declares (where the backend
    can tell) and a frame count the stream really has."""
    reader = open_video(source, backend=backend, size=size, num_frames_hint=num_frames, threads=threads)
    try:
        native = getattr(reader, "native_size", None)
        if expect is not None and native is not None and tuple(native) != tuple(expect):
            raise ShardMetadataError(f"metadata says {expect[0]}x{expect[1]}, the stream header "
                                     f"{native[0]}x{native[1]}")
        if reader.num_frames < num_frames:
            raise ShardMetadataError(f"metadata says {num_frames} frames, the stream has {reader.num_frames}")
    except BaseException:
        reader.close()
        raise
    return reader


_WARNED_NO_IFRAMES: set[str] = set()


def _iframes(reader) -> list[int] | None:
    """The reader's I-frame indices, or None (with a warning, once per backend) from a backend that cannot
    tell (ffmpeg): keyframes are then sampled as without keyframes_on_iframes."""
    keyframe_indices = getattr(reader, "keyframe_indices", None)
    if keyframe_indices is None:
        backend = getattr(reader, "backend", type(reader).__name__)
        if backend not in _WARNED_NO_IFRAMES:
            _WARNED_NO_IFRAMES.add(backend)
            log.warning("keyframes_on_iframes: the %s backend cannot list I-frames; keyframes go anywhere", backend)
        return None
    return list(keyframe_indices())


def decode_clip(mp4: bytes, proxy: bytes | None, meta: dict, cfg: ClipSamplingConfig, backend: str,
                seed: int, threads: int = 1, limits: MetadataLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """HD-VILA sample: hr [S, H, W, 3] keyframes and lr [S, T-1, h, w, 3] neighbours, uint8."""
    num_frames, height, width = _native_meta(mp4, meta, backend, limits)
    rng = np.random.default_rng(seed)
    canvas = cover_size(height, width, cfg.hr_size, cfg.canvas_short_side)
    lr_canvas = (canvas[0] // cfg.lr_factor, canvas[1] // cfg.lr_factor)
    check_decode_bytes([(cfg.n_segments, canvas), (cfg.n_segments * (cfg.num_frm - 1), lr_canvas)], limits)
    with _open_checked(mp4, backend, canvas, num_frames, threads, (height, width)) as reader:
        # the plan waits for the reader when keyframes go on I-frames: the stream says where they are
        iframes = _iframes(reader) if cfg.keyframes_on_iframes else None
        plan = plan_clip(num_frames, height, width, cfg, rng, iframes=iframes)
        hr = reader.get_frames(plan.keyframes.tolist())
    neighbours = plan.neighbours
    if neighbours.size:
        lr_source = proxy if proxy is not None else mp4
        expect = _proxy_size(meta, limits) if proxy is not None else (height, width)
        with _open_checked(lr_source, backend, plan.lr_canvas, num_frames, threads, expect) as reader:
            lr = reader.get_frames(neighbours.reshape(-1).tolist())
        lr = apply_crop(lr, plan.lr_crop, plan.flip).reshape(*neighbours.shape, *plan.lr_crop[2:], 3)
    else:
        lr = np.zeros((cfg.n_segments, 0, *plan.lr_crop[2:], 3), np.uint8)
    return {"hr": apply_crop(hr, plan.hr_crop, plan.flip), "lr": lr, "frame_indices": plan.indices}


def _resize_uint8(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, size, 3] uint8 with antialiased bilinear resampling."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def clip_from_frames(frames: Any, cfg: ClipSamplingConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """The HD-VILA sample of `decode_clip`, from frames already in memory: [T, H, W, 3] uint8 (numpy or torch).

    Same plan (segments, canvas, crop, flip); frames are resized here with antialiased bilinear filtering
    instead of inside the decoder, so pixels can differ slightly from decoding the file. Frames in memory have
    no I-frames, so `keyframes_on_iframes` does not apply here.
    """
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (0-255), got {x.dtype}")
    x = x.cpu()
    num_frames, height, width = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
    plan = plan_clip(num_frames, height, width, cfg, np.random.default_rng(seed))
    hr = _resize_uint8(x[torch.from_numpy(plan.keyframes)], plan.hr_canvas).numpy()
    neighbours = plan.neighbours
    if neighbours.size:
        lr = _resize_uint8(x[torch.from_numpy(neighbours.reshape(-1))], plan.lr_canvas).numpy()
        lr = apply_crop(lr, plan.lr_crop, plan.flip).reshape(*neighbours.shape, *plan.lr_crop[2:], 3)
    else:
        lr = np.zeros((cfg.n_segments, 0, *plan.lr_crop[2:], 3), np.uint8)
    return {"hr": apply_crop(hr, plan.hr_crop, plan.flip), "lr": lr, "frame_indices": plan.indices}


def decode_frames(mp4: bytes, proxy: bytes | None, meta: dict, cfg: FrameSamplingConfig, backend: str,
                  seed: int, threads: int = 1, limits: MetadataLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Frame mode: [F, H, W, 3] uint8 frames at cfg.size; reads the proxy when it is big enough."""
    num_frames, height, width = _native_meta(mp4, meta, backend, limits)
    rng = np.random.default_rng(seed)
    plan = plan_frames(num_frames, height, width, cfg, rng)
    check_decode_bytes([(plan.indices.size, plan.canvas)], limits)
    source, expect = mp4, (height, width)
    psize = _proxy_size(meta, limits)
    if proxy is not None and psize is not None and min(psize) >= min(plan.canvas):
        source, expect = proxy, psize  # decoding the small stream is much cheaper
    with _open_checked(source, backend, plan.canvas, num_frames, threads, expect) as reader:
        frames = reader.get_frames(plan.indices.tolist())
    return {"frames": apply_crop(frames, plan.crop, plan.flip), "frame_indices": plan.indices}


SAMPLE_DECODERS: dict[str, Callable] = {"clip": decode_clip, "frames": decode_frames}


# ---------------------------------------------------------------------------------------------------------
# per-worker state: the watchdog and the tokenizer, created lazily inside each worker process

_WORKER: dict[str, Any] = {"runner": None, "tokenizer": None, "pid": None}

# Why a sample was skipped (or "ok"); one shared counter per (worker, reason).
SKIP_REASONS = ("ok", "decode_error", "decode_timeout", "tar_error", "missing_mp4", "bad_metadata", "no_caption",
                "oversize_member")
# The tar members a sample is made of; others are streamed past unread.
_VIDEO_MEMBERS = ("mp4", "proxy.mp4")
_META_MEMBERS = ("json", "txt")
_OVERSIZE = "__oversize__"  # marks a sample that had a member over its size cap


def _pin_malloc_mmap_threshold(threshold: int = 1 << 20) -> None:
    """Serve allocations >= 1 MB with mmap, returned to the OS on free.

    glibc raises its mmap threshold dynamically after large frees, after which multi-MB frame buffers come
    from the heap and fragment it: a worker's RSS grew by ~50% over 1000 samples. Pinning the threshold
    keeps it flat (docs/benchmarks/loader.md). A no-op where glibc is absent.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _worker_state() -> dict[str, Any]:
    if _WORKER["pid"] != os.getpid():  # a fresh worker process: drop what the parent had
        _WORKER.update(runner=None, tokenizer=None, pid=os.getpid())
        if get_worker_info() is not None:  # leave the training process's allocator alone
            _pin_malloc_mmap_threshold()
    return _WORKER


def _runner(timeout: float) -> IsolatedRunner | None:
    if timeout <= 0:
        return None
    state = _worker_state()
    if state["runner"] is None:
        # In a DataLoader worker, fork is cheap and safe. In the main (training) process, forking would copy
        # the trainer (threads, communicators, device state) into the watchdog: start a clean one instead.
        method = "fork" if get_worker_info() is not None else "spawn"
        state["runner"] = IsolatedRunner(timeout=timeout, start_method=method)
    return state["runner"]


# ---------------------------------------------------------------------------------------------------------
# the dataset


def _seed_of(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts).encode())


class ShardedVideoDataset(IterableDataset):
    """An iterable over decoded samples of webdataset shards, split explicitly over ranks and workers.

    Non-resampled: each epoch, shards are shuffled with (seed, epoch), every rank takes shards
    rank::world_size, every worker takes its slice of those; each sample is seen exactly once per epoch
    (when there are at least world_size * num_workers shards). Resampled: each (rank, worker) draws shards
    with replacement from its own seeded stream and stops after its share of `epoch_samples`.
    """

    def __init__(self, cfg: LoaderConfig, kind: str, sampling: ClipSamplingConfig | FrameSamplingConfig,
                 rank: int | None = None, world_size: int | None = None, decode_fn: Callable | None = None,
                 caption_fn: Callable[[str, dict, str, int], str | None] | None = None):
        if kind not in SAMPLE_DECODERS:
            raise ValueError(f"kind must be one of {sorted(SAMPLE_DECODERS)}, got {kind!r}")
        # decode_fn(mp4, proxy, meta, sampling, backend, seed, threads) -> dict of arrays; default by kind
        self.decode_fn = decode_fn or SAMPLE_DECODERS[kind]
        try:  # decode functions that take `limits` get the configured ones
            self._pass_limits = "limits" in inspect.signature(self.decode_fn).parameters
        except (TypeError, ValueError):
            self._pass_limits = False
        # caption_fn(key, meta, shard_text, seed) -> the caption to train on, or None to skip the clip before
        # decoding it (retrieval datasets take captions from their annotation files, not from the shards)
        self.caption_fn = caption_fn
        if cfg.resampled and cfg.epoch_samples <= 0:
            raise ValueError("resampled loading needs epoch_samples > 0 (samples per rank per epoch)")
        self.cfg = cfg
        self.kind = kind
        self.sampling = sampling
        self.urls = expand_shards(cfg.shards)
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        if not cfg.resampled and len(self.urls) < self.world_size:
            raise ValueError(f"{len(self.urls)} shards cannot be split over {self.world_size} ranks")
        self.epoch = 0
        self._skip_batches = 0
        # Shared counters, written by the worker processes (one writer per slot), read by the trainer.
        self._slots = max(1, cfg.num_workers)
        self._counters = mp.get_context("fork").RawArray("q", self._slots * len(SKIP_REASONS))

    def counts(self) -> dict[str, int]:
        """Samples decoded ("ok") and skipped by reason, summed over workers and epochs so far."""
        totals = {reason: 0 for reason in SKIP_REASONS}
        for slot in range(self._slots):
            for r, reason in enumerate(SKIP_REASONS):
                totals[reason] += self._counters[slot * len(SKIP_REASONS) + r]
        return totals

    def skipped(self) -> int:
        return sum(v for k, v in self.counts().items() if k != "ok")

    def _count(self, reason: str) -> None:
        info = get_worker_info()
        slot = info.id if info is not None else 0
        self._counters[slot * len(SKIP_REASONS) + SKIP_REASONS.index(reason)] += 1

    def _tar_handler(self, exc: Exception) -> bool:
        """webdataset handler: count a broken tar member or shard and go on."""
        self._count("tar_error")
        log.warning("skipping unreadable shard data: %s", exc)
        return True

    def _tar_members(self, streams: Iterator[dict]) -> Iterator[dict]:
        """The used members of each opened shard (plain or compressed tar, read as a stream), each within its
        size cap; an oversize member is streamed past unread and leaves a marker on its sample. {} after
        each shard, so that samples of two shards never merge."""
        caps = {**{ext: self.cfg.max_video_member_bytes for ext in _VIDEO_MEMBERS},
                **{ext: self.cfg.max_meta_member_bytes for ext in _META_MEMBERS}}
        for source in streams:
            url = source["url"]
            try:
                with tarfile.open(fileobj=source["stream"], mode="r|*") as tar:
                    for info in tar:
                        tar.members = []  # a stream of millions of members: keep no index
                        if not info.isreg() or os.path.basename(info.name).startswith("__"):
                            continue
                        prefix, ext = wds.tariterators.base_plus_ext(info.name)
                        if prefix is None or (ext := ext.lower()) not in caps:
                            continue
                        if info.size > caps[ext]:
                            log.warning("%s: member %s has %d bytes, over the cap of %d; its sample is skipped",
                                        url, info.name, info.size, caps[ext])
                            yield {"fname": f"{prefix}.{_OVERSIZE}.{ext}", "data": b"", "__url__": url}
                            continue
                        data = tar.extractfile(info).read()
                        yield {"fname": info.name, "data": data, "__url__": url}
            except Exception as exc:  # a truncated or corrupt shard: count it, go on with the next one
                self._tar_handler(exc)
            finally:
                close = getattr(source["stream"], "close", None)
                if close is not None:
                    close()
            yield {}

    def _tar_samples(self, src: Iterator[dict]) -> Iterator[dict]:
        streams = wds.tariterators.url_opener(src, handler=self._tar_handler)
        return wds.tariterators.group_by_keys(self._tar_members(streams), handler=self._tar_handler)

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating each epoch (workers are re-created per epoch unless persistent)."""
        self.epoch = int(epoch)
        self._skip_batches = 0

    def skip_batches(self, batches: int) -> None:
        """Resume mid-epoch: the next iteration starts at batch `batches` of this epoch, reading the samples
        before it from the tars but decoding none of them.

        DataLoader takes batch k from worker k % W, and a new DataLoader starts at worker 0, so worker w
        takes over the stream of worker (w + batches) % W and drops the batches that stream had delivered.
        Exact when every worker still had batches left at that point (always true in resampled mode, where
        workers get equal shares; in epoch mode it needs shards of equal size spread evenly over workers)
        and no sample in the skipped part failed to decode (a failure shifts later batches by one).
        """
        self._skip_batches = int(batches)

    # --- stages
    def _shards(self, worker: int, num_workers: int) -> Iterator[dict]:
        if self.cfg.resampled:
            rng = random.Random(_seed_of(self.cfg.seed, self.epoch, self.rank, worker))
            while True:
                yield {"url": rng.choice(self.urls)}
        urls = list(self.urls)
        if self.cfg.shuffle_shards:
            random.Random(_seed_of(self.cfg.seed, self.epoch)).shuffle(urls)
        mine = urls[self.rank::self.world_size]
        for url in mine[worker::num_workers]:
            yield {"url": url}

    def _shuffle(self, samples: Iterator[dict], worker: int) -> Iterator[dict]:
        size = self.cfg.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        rng = random.Random(_seed_of(self.cfg.seed, self.epoch, self.rank, worker, "samples"))
        buffer: list[dict] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= size:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, raw: dict) -> dict | None:
        key = raw.get("__key__", "?")
        if any(name.startswith(_OVERSIZE) for name in raw):
            self._count("oversize_member")
            return None
        mp4 = raw.get("mp4")
        if mp4 is None:
            self._count("missing_mp4")
            return None
        limits = self.cfg.limits()
        try:
            meta = json.loads(raw["json"]) if "json" in raw else {}
            text = raw["txt"].decode("utf-8").strip() if "txt" in raw else ""
            check_shard_meta(meta, limits)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ShardMetadataError, JSONDecodeError
            self._count("bad_metadata")
            log.warning("sample %s: bad metadata: %s; skipped", key, str(exc)[:300])
            return None
        # the shard's file name, not its full path: the same shards give the same draws wherever they live
        seed = _seed_of(self.cfg.seed, self.epoch, key, str(raw.get("__url__", "")).rsplit("/", 1)[-1])
        if self.caption_fn is not None:
            text = self.caption_fn(key, meta, text, seed)
            if text is None:
                self._count("no_caption")
                return None
        fn = self.decode_fn
        args = (mp4, raw.get("proxy.mp4"), meta, self.sampling, self.cfg.backend, seed, self.cfg.decode_threads)
        kwargs = {"limits": limits} if self._pass_limits else {}
        try:
            runner = _runner(self.cfg.decode_timeout)
            arrays = runner.call(fn, *args, **kwargs) if runner is not None else fn(*args, **kwargs)
        except DecodeTimeout:
            self._count("decode_timeout")
            log.warning("sample %s: decoding timed out after %.0f s; skipped", key, self.cfg.decode_timeout)
            return None
        except ShardMetadataError as exc:
            self._count("bad_metadata")
            log.warning("sample %s: %s; skipped", key, exc)
            return None
        except (DecodeError, ValueError, IndexError, TypeError, KeyError, AttributeError, ArithmeticError,
                MemoryError) as exc:
            self._count("decode_error")
            log.warning("sample %s: %s; skipped", key, exc)
            return None
        sample: dict[str, Any] = {"__key__": key, "text": text, "meta": meta}
        for name, arr in arrays.items():
            sample[name] = torch.from_numpy(arr)
        if self.kind == "clip":
            state = _worker_state()
            if state["tokenizer"] is None:
                from ..tokenizer import load_tokenizer

                state["tokenizer"] = load_tokenizer(self.cfg.tokenizer)
            tok = state["tokenizer"]
            enc = tok([text], max_len=self.cfg.max_text_len)
            sample["input_ids"] = torch.from_numpy(enc["input_ids"][0])
            sample["attention_mask"] = torch.from_numpy(enc["attention_mask"][0])
        self._count("ok")
        return sample

    def __iter__(self) -> Iterator[dict]:
        _worker_state()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # After skip_batches(n), this worker continues the stream that worker (worker + n) % W had.
        skip = self._skip_batches
        stream = (worker + skip) % num_workers
        skipped_batches = skip // num_workers + (1 if stream < skip % num_workers else 0)
        skip_samples = skipped_batches * self.cfg.batch_size
        raw = wds.DataPipeline(
            lambda: self._shards(stream, num_workers),
            self._tar_samples,
            lambda src: self._shuffle(src, stream),
        )
        samples = itertools.islice(iter(raw), skip_samples, None)
        decoded = (s for s in map(self._decode, samples) if s is not None)
        if self.cfg.resampled:  # islice stops without decoding a sample past the epoch's share
            per_worker, extra = divmod(self.cfg.epoch_samples, num_workers)
            decoded = itertools.islice(decoded, max(0, per_worker + (1 if stream < extra else 0) - skip_samples))
        yield from decoded


def collate(samples: list[dict]) -> dict:
    """Stack tensors; keep keys, texts and metadata as lists."""
    batch: dict[str, Any] = {
        "__key__": [s["__key__"] for s in samples],
        "text": [s["text"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    for name in ("hr", "lr", "frames", "frame_indices", "input_ids", "attention_mask"):
        if name in samples[0]:
            batch[name] = torch.stack([s[name] for s in samples])
    return batch


class VideoDataLoader(DataLoader):
    """A DataLoader whose `skip_batches(n)` reaches the dataset, so the trainer resumes without decoding."""

    def skip_batches(self, batches: int) -> None:
        self.dataset.skip_batches(batches)


def make_loader(cfg: LoaderConfig, kind: str, sampling: ClipSamplingConfig | FrameSamplingConfig,
                rank: int | None = None, world_size: int | None = None, decode_fn: Callable | None = None,
                caption_fn: Callable | None = None) -> tuple[VideoDataLoader, ShardedVideoDataset]:
    """A DataLoader over the shards (decoding in its worker processes) and the dataset (for set_epoch)."""
    dataset = ShardedVideoDataset(cfg, kind, sampling, rank=rank, world_size=world_size, decode_fn=decode_fn,
                                  caption_fn=caption_fn)
    loader = VideoDataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        drop_last=cfg.drop_last,
        persistent_workers=False,  # fresh workers per epoch pick up set_epoch()
        prefetch_factor=2 if cfg.num_workers > 0 else None,
        multiprocessing_context="fork" if cfg.num_workers > 0 else None,
    )
    return loader, dataset
