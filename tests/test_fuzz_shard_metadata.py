"""Property-based fuzzing of the shard metadata path: whatever a sample's JSON holds, validation either gives
sizes within the limits or a ShardMetadataError, the planned decode never exceeds max_decode_bytes, and the
loader's sample step never raises: each sample ends in exactly one count."""
from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_tools.loading.pipeline import (LoaderConfig, MetadataLimits, ShardedVideoDataset, ShardMetadataError,
                                         check_decode_bytes, check_shard_meta)
from data_tools.loading.sampling import ClipSamplingConfig, FrameSamplingConfig, plan_clip, plan_frames

FUZZ = settings(max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
LIMITS = MetadataLimits(max_side=8192, max_aspect=16.0, max_frames=1_000_000, max_decode_bytes=256 << 20)

numbers = st.one_of(
    st.integers(min_value=-3, max_value=70000),
    st.integers(),  # arbitrary size
    st.sampled_from([0, -1, 1, 2, 8192, 8193, 200000, 2 ** 31, 2 ** 63, 10 ** 400, -(10 ** 400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 96.0, 96.5, 1e300, float("inf"), float("nan")]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8), st.lists(st.integers(), max_size=3))
proxies = st.one_of(scalars, st.dictionaries(st.sampled_from(["height", "width", "x"]), scalars, max_size=3))
metas = st.one_of(
    st.dictionaries(st.sampled_from(["num_frames", "height", "width", "proxy", "fps", "key"]),
                    st.one_of(scalars, proxies), max_size=6),
    st.fixed_dictionaries({"num_frames": numbers, "height": numbers, "width": numbers},
                          optional={"proxy": proxies}),
    scalars,  # not an object at all
)
CLIP = [ClipSamplingConfig(), ClipSamplingConfig(n_segments=4, num_frm=7, hr_size=(96, 128), canvas_short_side=360),
        ClipSamplingConfig(n_segments=2, num_frm=3, hr_size=(48, 64), random=False)]
FRAMES = [FrameSamplingConfig(), FrameSamplingConfig(num_frames=16, stride=2, size=(256, 256))]


def _planned_bytes(dims) -> None:
    """Every plan from validated sizes is either refused by the byte check or within its limit."""
    n, h, w = dims
    rng = np.random.default_rng(0)
    for cfg in CLIP:
        plan = plan_clip(n, h, w, cfg, rng)
        parts = [(plan.keyframes.size, plan.hr_canvas), (plan.neighbours.size, plan.lr_canvas)]
        try:
            assert check_decode_bytes(parts, LIMITS) <= LIMITS.max_decode_bytes
        except ShardMetadataError:
            pass
    for cfg in FRAMES:
        plan = plan_frames(n, h, w, cfg, rng)
        try:
            assert check_decode_bytes([(plan.indices.size, plan.canvas)], LIMITS) <= LIMITS.max_decode_bytes
        except ShardMetadataError:
            pass


@FUZZ
@given(metas)
@example({"num_frames": 20, "height": 1, "width": 200000})
@example({"num_frames": 20, "height": 0, "width": 128})
@example({"num_frames": 20, "height": 96, "width": 10 ** 400})
@example({"num_frames": 1, "height": 1, "width": 16})
@example({"num_frames": 10 ** 6, "height": 8192, "width": 8192})
def test_validation_gives_sizes_within_limits_or_a_metadata_error(meta):
    try:
        dims = check_shard_meta(meta, LIMITS)
    except ShardMetadataError:
        return
    if dims is None:
        return
    n, h, w = dims
    assert all(type(v) is int for v in dims)
    assert 1 <= n <= LIMITS.max_frames and 1 <= h <= LIMITS.max_side and 1 <= w <= LIMITS.max_side
    assert max(h, w) <= LIMITS.max_aspect * min(h, w)
    _planned_bytes(dims)


def _recording_decode(mp4, proxy, meta, sampling, backend, seed, threads, limits):
    # What reaches the decoder has passed validation with the configured limits.
    check_shard_meta(meta, limits)
    return {"frames": np.zeros((1, 1, 1, 3), np.uint8)}


def _dataset() -> ShardedVideoDataset:
    cfg = LoaderConfig(shards=["never-opened.tar"], num_workers=0, decode_timeout=0,
                       max_frame_side=LIMITS.max_side, max_decode_bytes=LIMITS.max_decode_bytes)
    return ShardedVideoDataset(cfg, "frames", FrameSamplingConfig(), decode_fn=_recording_decode)


DATASET = _dataset()


def _step(raw: dict) -> None:
    before = DATASET.counts()
    out = DATASET._decode(raw)  # must not raise, whatever the sample holds
    after = DATASET.counts()
    assert sum(after.values()) == sum(before.values()) + 1  # one sample, one count
    decoded = after["ok"] - before["ok"] == 1
    assert decoded == (out is not None)
    if not decoded:
        assert after["bad_metadata"] - before["bad_metadata"] == 1  # the only way this sample can fail
    else:
        assert out["__key__"] == raw["__key__"]


@FUZZ
@given(metas)
def test_loader_step_never_raises_on_any_metadata(meta):
    try:
        blob = json.dumps(meta).encode()
    except (ValueError, OverflowError):
        return
    _step({"__key__": "k", "mp4": b"\0" * 16, "json": blob, "txt": b"caption"})


@FUZZ
@given(st.binary(max_size=256))
@example(b"[" * 100000)  # nesting deep enough for RecursionError
@example(b'{"num_frames": 1e999, "height": 1, "width": 1}')
@example(b"\xff\xfe{}")
def test_loader_step_never_raises_on_any_json_bytes(blob):
    _step({"__key__": "k", "mp4": b"\0" * 16, "json": blob, "txt": blob})
