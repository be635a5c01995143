"""Loading crafted shards: metadata that would size a huge decode, lying metadata, oversize tar members.

Every bad sample is skipped and counted under its reason, and the good samples after it are still read.
"""
import gzip
import io
import json
import tarfile
import tracemalloc

import pytest

from data_tools.loading.pipeline import LoaderConfig, make_loader
from data_tools.loading.sampling import ClipSamplingConfig, FrameSamplingConfig
from data_tools.media.testclips import make_indexed_clip

SMALL_CLIP = ClipSamplingConfig(n_segments=2, num_frm=3, sample_rate=2, hr_size=(48, 64), lr_factor=4)
GOOD_META = {"num_frames": 20, "height": 96, "width": 128}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "clip.mp4"
    make_indexed_clip(path, num_frames=20, size=(96, 128), fps=25, keyint=10)
    return path.read_bytes()


def write_shard(path, samples, gz=False):
    """samples: (key, {ext: bytes}) in order; a plain or gzip'ed tar, as webdataset reads either."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return path


def sample(clip, meta, text="a caption."):
    return {"mp4": clip, "json": json.dumps(meta).encode(), "txt": text.encode()}


def loader_cfg(path, **kw):
    base = dict(shards=[str(path)], batch_size=1, num_workers=0, decode_timeout=0, backend="pyav",
                shuffle_buffer=0, shuffle_shards=False, drop_last=False)
    base.update(kw)
    return LoaderConfig(**base)


def keys_of(loader):
    return [key for batch in loader for key in batch["__key__"]]


HOSTILE_META = {
    "wide_1px": {"num_frames": 20, "height": 1, "width": 200000},  # a 458 GiB frame at 720p crops
    "zero_height": {"num_frames": 20, "height": 0, "width": 128},  # ZeroDivisionError in the plan
    "huge_width": {"num_frames": 20, "height": 96, "width": 10 ** 400},  # OverflowError
    "negative": {"num_frames": 20, "height": -96, "width": 128},
    "infinite_frames": {"num_frames": float("inf"), "height": 96, "width": 128},
    "nan_side": {"num_frames": 20, "height": float("nan"), "width": 128},
    "string_side": {"num_frames": 20, "height": "96", "width": 128},
    "bool_side": {"num_frames": 20, "height": True, "width": 128},
    "zero_frames": {"num_frames": 0, "height": 96, "width": 128},
    "lies_about_size": {"num_frames": 20, "height": 48, "width": 64},  # sane, but not what the stream says
    "more_frames_than_the_stream": {"num_frames": 400, "height": 96, "width": 128},
    "partial": {"height": 96},
    "bad_proxy": {**GOOD_META, "proxy": {"height": "x", "width": [1]}},
}


@pytest.mark.parametrize("kind", ["clip", "frames"])
@pytest.mark.parametrize("timeout", [0, 20.0], ids=["in_worker", "isolated"])
def test_hostile_metadata_is_skipped_counted_and_the_rest_is_read(clip, tmp_path, kind, timeout):
    samples = [("good0", sample(clip, GOOD_META))]
    for i, meta in enumerate(HOSTILE_META.values()):
        samples.append((f"bad{i:02d}", sample(clip, meta)))
        samples.append((f"good{i + 1}", sample(clip, GOOD_META)))
    shard = write_shard(tmp_path / "crafted.tar", samples)
    sampling = SMALL_CLIP if kind == "clip" else FrameSamplingConfig(num_frames=2, stride=2, size=(32, 32))
    loader, dataset = make_loader(loader_cfg(shard, decode_timeout=timeout), kind, sampling)
    keys = keys_of(loader)
    assert keys == [f"good{i}" for i in range(len(HOSTILE_META) + 1)]
    counts = dataset.counts()
    assert counts["bad_metadata"] == len(HOSTILE_META)
    assert counts["ok"] == len(keys) and dataset.skipped() == len(HOSTILE_META)


def test_metadata_within_the_stream_header_but_over_the_limits_is_skipped(clip, tmp_path):
    # The clip really is 96x128; a loader limited to 64 px sides refuses it instead of decoding it.
    shard = write_shard(tmp_path / "s.tar", [("big", sample(clip, GOOD_META)), ("nometa", sample(clip, {}))])
    loader, dataset = make_loader(loader_cfg(shard, max_frame_side=64), "clip", SMALL_CLIP)
    assert keys_of(loader) == []
    assert dataset.counts()["bad_metadata"] == 2  # also when the size comes from probing the stream


def keys_and_peak_memory(loader) -> tuple[list[str], int]:
    """The sample keys a loader yields and the peak of Python allocations while it ran."""
    tracemalloc.start()
    try:
        keys = keys_of(loader)
        return keys, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_an_oversize_tar_member_is_skipped_without_being_read(clip, tmp_path, gz):
    bomb = bytes(24 << 20)  # 24 MiB of zeros: ~24 KiB gzip'ed
    samples = [("good0", sample(clip, GOOD_META)),
               ("bomb", {**sample(clip, GOOD_META), "mp4": bomb, "proxy.mp4": bomb}),
               ("jsonbomb", {**sample(clip, GOOD_META), "json": b" " * (2 << 20) + b"{}"}),
               ("good1", sample(clip, GOOD_META))]
    shard = write_shard(tmp_path / ("s.tar.gz" if gz else "s.tar"), samples, gz=gz)
    cfg = loader_cfg(shard, max_video_member_bytes=4 << 20, max_meta_member_bytes=1 << 20)
    loader, dataset = make_loader(cfg, "clip", SMALL_CLIP)
    keys, peak = keys_and_peak_memory(loader)
    assert keys == ["good0", "good1"]
    counts = dataset.counts()
    assert counts["oversize_member"] == 2
    # a sample with an oversize member is skipped whole, counted once
    assert counts["missing_mp4"] == 0 and counts["bad_metadata"] == 0 and counts["tar_error"] == 0
    assert counts["ok"] == 2
    assert peak < len(bomb) // 2  # never held whole


def test_members_the_loader_does_not_use_are_not_read(clip, tmp_path):
    junk = bytes(6 << 20)
    shard = write_shard(tmp_path / "s.tar", [("a", {**sample(clip, GOOD_META), "junk.bin": junk}),
                                             ("b", sample(clip, GOOD_META))])
    loader, dataset = make_loader(loader_cfg(shard, max_video_member_bytes=4 << 20), "clip", SMALL_CLIP)
    keys, peak = keys_and_peak_memory(loader)
    assert keys == ["a", "b"] and dataset.counts()["oversize_member"] == 0
    assert peak < len(junk) // 2


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_every_backend_holds_metadata_to_the_stream_header(clip, tmp_path, backend):
    samples = [("good0", sample(clip, GOOD_META)),
               ("lies", sample(clip, HOSTILE_META["lies_about_size"])),
               ("wide", sample(clip, HOSTILE_META["wide_1px"])),
               ("more_frames", sample(clip, {**GOOD_META, "num_frames": 400})),
               ("good1", sample(clip, GOOD_META))]
    shard = write_shard(tmp_path / "s.tar", samples)
    loader, dataset = make_loader(loader_cfg(shard, backend=backend), "clip", SMALL_CLIP)
    assert keys_of(loader) == ["good0", "good1"]
    assert dataset.counts()["bad_metadata"] == 3
