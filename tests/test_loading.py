"""Loading: exact-once node/worker splitting, resampled epochs, HD-VILA samples, frame mode, bad samples."""
import ctypes
import io
import os
import tarfile

import numpy as np
import pytest
import torch

from data_tools.config import load_config
from data_tools.decoders import open_video, register_backend
from data_tools.ingest.build import build_shards
from data_tools.ingest.config import BuildConfig
from data_tools.loading.pipeline import LoaderConfig, decode_clip, expand_shards, make_loader
from data_tools.loading.sampling import ClipSamplingConfig, FrameSamplingConfig
from data_tools.ingest.transcripts import format_srt
from data_tools.media.testclips import make_indexed_clip, read_frame_index

NUM_VIDEOS, CLIPS_PER_VIDEO = 4, 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading")
    src = root / "videos"
    src.mkdir()
    make_indexed_clip(src / "base.mp4", num_frames=200, size=(96, 128), fps=25, keyint=25)
    for v in range(NUM_VIDEOS):
        os.symlink(src / "base.mp4", src / f"video{v}.mp4")
        cues = [(2.0 * c, 2.0 * c + 2.0, f"Video {v} part {c}.") for c in range(CLIPS_PER_VIDEO)]
        (src / f"video{v}.srt").write_text(format_srt(cues))
    cfg = load_config(BuildConfig, None, ["sentences.min_duration=1.0", "shards.samples_per_shard=2",
                                          "transcode.preset=ultrafast", "transcode.threads=1",
                                          "transcode.proxy_short_side=24", "transcode.crf=18"])
    report = build_shards([str(src)], root / "shards", cfg, progress=False)
    assert report["clips_written"] == NUM_VIDEOS * CLIPS_PER_VIDEO
    return root / "shards"


def loader_cfg(folder, **kw):
    base = dict(shards=[str(folder / "*.tar")], batch_size=1, num_workers=2, decode_timeout=0,
                backend="pyav", shuffle_buffer=4, drop_last=False)
    base.update(kw)
    return LoaderConfig(**base)


SMALL_CLIP = ClipSamplingConfig(n_segments=2, num_frm=3, sample_rate=4, hr_size=(96, 128), lr_factor=4)


def keys_of(loader):
    return [key for batch in loader for key in batch["__key__"]]


def test_expand_shards_globs_braces_and_pipes(shards):
    all_tars = sorted(str(p) for p in shards.glob("*.tar"))
    assert expand_shards(str(shards / "*.tar")) == all_tars
    assert expand_shards(str(shards / "0000{0..2}.tar")) == all_tars[:3]
    assert expand_shards([f"pipe:cat {all_tars[0]}"]) == [f"pipe:cat {all_tars[0]}"]
    with pytest.raises(FileNotFoundError):
        expand_shards(str(shards / "nope*.tar"))


def test_two_ranks_two_workers_see_every_sample_exactly_once_per_epoch(shards):
    expected = NUM_VIDEOS * CLIPS_PER_VIDEO
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader, dataset = make_loader(loader_cfg(shards), "clip", SMALL_CLIP, rank=rank, world_size=2)
            dataset.set_epoch(epoch)
            seen.append(keys_of(loader))
        both = seen[0] + seen[1]
        assert len(both) == expected and len(set(both)) == expected
        assert not set(seen[0]) & set(seen[1])


def test_epochs_shuffle_differently_but_reproducibly(shards):
    def order(epoch):
        loader, dataset = make_loader(loader_cfg(shards, num_workers=0), "clip", SMALL_CLIP)
        dataset.set_epoch(epoch)
        return keys_of(loader)
    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))


def test_resampled_mode_has_a_fixed_epoch_length(shards):
    cfg = loader_cfg(shards, resampled=True, epoch_samples=7, batch_size=1)
    loader, _ = make_loader(cfg, "clip", SMALL_CLIP, rank=1, world_size=2)
    keys = keys_of(loader)
    assert len(keys) == 7
    with pytest.raises(ValueError, match="epoch_samples"):
        make_loader(loader_cfg(shards, resampled=True), "clip", SMALL_CLIP)


def test_hdvila_sample_is_frame_accurate_and_decoded_small(shards):
    loader, _ = make_loader(loader_cfg(shards, batch_size=3, num_workers=0, shuffle_buffer=0), "clip",
                            ClipSamplingConfig(n_segments=2, num_frm=5, sample_rate=6, hr_size=(96, 128),
                                               lr_factor=4, random=True))
    batch = next(iter(loader))
    assert batch["hr"].shape == (3, 2, 96, 128, 3) and batch["hr"].dtype.is_floating_point is False
    assert batch["lr"].shape == (3, 2, 4, 24, 32, 3)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 40)
    for b in range(3):
        first = batch["meta"][b]["source_frames"][0]
        idx = batch["frame_indices"][b].numpy()
        for s in range(2):
            assert read_frame_index(batch["hr"][b, s].numpy()) == first + idx[s, 2]
            neighbours = [first + i for i in np.delete(idx[s], 2)]
            assert [read_frame_index(f) for f in batch["lr"][b, s].numpy()] == neighbours
        assert batch["text"][b].startswith("Video ")


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_keyframes_on_iframes_puts_every_keyframe_on_an_iframe(shards, backend):
    """Ingested clips have 1 s GOPs (I-frames at 0 and 25 of 50 frames); only 25 leaves room for a segment."""
    cfg = ClipSamplingConfig(n_segments=2, num_frm=5, sample_rate=6, hr_size=(96, 128), lr_factor=4,
                             keyframes_on_iframes=True)
    loader, _ = make_loader(loader_cfg(shards, batch_size=4, num_workers=0, shuffle_buffer=0, backend=backend),
                            "clip", cfg)
    batch = next(iter(loader))
    for b in range(4):
        first = batch["meta"][b]["source_frames"][0]
        idx = batch["frame_indices"][b].numpy()
        assert idx[:, 2].tolist() == [25, 25]
        assert np.all(np.diff(idx, axis=1) == 6)
        for s in range(2):
            assert read_frame_index(batch["hr"][b, s].numpy()) == first + 25
            assert [read_frame_index(f) for f in batch["lr"][b, s].numpy()] == [first + i for i in np.delete(idx[s], 2)]


def test_frame_mode_returns_frames_at_the_requested_size(shards):
    cfg = FrameSamplingConfig(num_frames=2, stride=3, size=(24, 24))
    loader, _ = make_loader(loader_cfg(shards, batch_size=4, num_workers=0), "frames", cfg)
    batch = next(iter(loader))
    assert batch["frames"].shape == (4, 2, 24, 24, 3)
    assert np.all(np.diff(batch["frame_indices"].numpy(), axis=1) == 3)


def _corrupt_copy(shards, out):
    """A copy of shard 0 whose second sample's mp4 is random bytes, plus a truncated shard."""
    members = []
    with tarfile.open(shards / "00000.tar") as tar:
        for m in tar.getmembers():
            members.append((m.name, tar.extractfile(m).read()))
    out.mkdir()
    with tarfile.open(out / "bad.tar", "w") as tar:
        for name, data in members:
            if name.startswith("00000_0001") and name.endswith(".mp4"):
                data = np.random.default_rng(0).bytes(len(data))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = (shards / "00001.tar").read_bytes()
    (out / "truncated.tar").write_bytes(whole[: len(whole) // 2 + 100])
    return out


def test_bad_samples_are_skipped_and_counted(shards, tmp_path):
    bad = _corrupt_copy(shards, tmp_path / "bad")
    cfg = loader_cfg(bad, num_workers=0, shards=[str(bad / "bad.tar"), str(bad / "truncated.tar")])
    loader, dataset = make_loader(cfg, "clip", SMALL_CLIP)
    keys = keys_of(loader)
    totals = dataset.counts()
    assert keys[0] == "00000_0000" and "00000_0001" not in keys
    assert totals["decode_error"] == 1 and totals["tar_error"] >= 1 and totals["ok"] == len(keys)
    # the readable part of the truncated shard still yields its complete samples
    assert "00001_0000" in keys
    # its cut-off last sample has no mp4 left
    assert totals["missing_mp4"] == 1
    assert dataset.skipped() == sum(v for k, v in totals.items() if k != "ok")


_HANG_ON = {}


def _hanging_backend(source, size, num_frames_hint, threads):
    data = source if isinstance(source, (bytes, bytearray)) else open(source, "rb").read()
    if hash(bytes(data[:4096])) in _HANG_ON.get("hashes", ()):
        ctypes.PyDLL(None).sleep(60)  # blocks in C while holding the GIL, like a stuck decord
    return open_video(source, backend="pyav", size=size, num_frames_hint=num_frames_hint, threads=threads)


def test_a_stuck_decoder_is_killed_and_the_worker_survives(shards):
    with tarfile.open(shards / "00000.tar") as tar:
        poison = tar.extractfile("00000_0001.mp4").read()
    _HANG_ON["hashes"] = {hash(poison[:4096])}
    register_backend("hang_on_poison", _hanging_backend)
    cfg = loader_cfg(shards, shards=[str(shards / "00000.tar"), str(shards / "00001.tar")], num_workers=1,
                     backend="hang_on_poison", decode_timeout=2.0)
    loader, dataset = make_loader(cfg, "clip", SMALL_CLIP)
    keys = keys_of(loader)
    assert sorted(keys) == ["00000_0000", "00001_0000", "00001_0001"]
    assert dataset.counts()["decode_timeout"] == 1 and dataset.counts()["ok"] == 3


@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_skip_batches_resumes_the_same_stream_without_decoding(shards, resampled, workers):
    def loader(skip=0):
        cfg = loader_cfg(shards, batch_size=2, num_workers=workers, resampled=resampled,
                         epoch_samples=10 if resampled else 0)
        ld, dataset = make_loader(cfg, "clip", SMALL_CLIP)
        dataset.set_epoch(1)
        if skip:
            ld.skip_batches(skip)
        return ld, dataset

    full, _ = loader()
    batches = [b["__key__"] for b in full]
    for skip in (1, 3):
        resumed, dataset = loader(skip)
        assert [b["__key__"] for b in resumed] == batches[skip:]
        assert dataset.counts()["ok"] == sum(len(b) for b in batches[skip:])  # skipped samples were not decoded


def test_caption_hook_replaces_texts_and_skips_clips_before_decoding(shards):
    decoded = []

    def counting_decode(mp4, proxy, meta, sampling, backend, seed, threads):
        decoded.append(meta["key"])
        return decode_clip(mp4, proxy, meta, sampling, backend, seed, threads)

    def caption(key, meta, text, seed):
        # keep only video 1's clips, with an annotation-style caption
        return f"annotated {text.lower()}" if meta["video_id"] == "video1" else None

    loader, dataset = make_loader(loader_cfg(shards, batch_size=2, num_workers=0, shuffle_buffer=0), "clip",
                                  SMALL_CLIP, decode_fn=counting_decode, caption_fn=caption)
    texts = [t for batch in loader for t in batch["text"]]
    assert sorted(texts) == [f"annotated video 1 part {c}." for c in range(CLIPS_PER_VIDEO)]
    assert len(decoded) == CLIPS_PER_VIDEO  # the other videos' clips were never decoded
    counts = dataset.counts()
    assert counts["ok"] == CLIPS_PER_VIDEO and counts["no_caption"] == (NUM_VIDEOS - 1) * CLIPS_PER_VIDEO


def test_synthetic_batches_have_the_loader_batches_shapes_and_types(shards):
    from data_tools.loading.synthetic import SyntheticClips, synthetic_clip_batch

    real = next(iter(make_loader(loader_cfg(shards, batch_size=3, num_workers=0), "clip", SMALL_CLIP)[0]))
    fake = synthetic_clip_batch(3, SMALL_CLIP, max_text_len=40, vocab_size=500, seed=1)
    assert set(fake) == set(real)
    for key, value in real.items():
        if isinstance(value, torch.Tensor):
            assert fake[key].shape == value.shape and fake[key].dtype == value.dtype, key
    ids, mask = fake["input_ids"], fake["attention_mask"]
    assert int(ids[mask.bool()].min()) >= 100 and int(ids.max()) < 500 and bool((ids[~mask.bool()] == 0).all())
    assert fake["hr"].float().std() > 50  # random pixels, not a blank frame
    assert torch.equal(synthetic_clip_batch(3, SMALL_CLIP, 40, 500, seed=1)["hr"], fake["hr"])
    source = SyntheticClips(3, SMALL_CLIP, 40, 500, batches_per_epoch=4)
    assert len(list(source)) == 4
    source.skip_batches(3)
    assert len(list(source)) == 1  # a resumed epoch continues where it stopped
    source.set_epoch(1)
    assert len(list(source)) == 4
    with pytest.raises(ValueError):
        synthetic_clip_batch(3, SMALL_CLIP, 40, vocab_size=50)
    bert = synthetic_clip_batch(8, SMALL_CLIP, 40, 30522, special_ids=(0, 100, 101, 102, 103))
    assert int(bert["input_ids"][bert["attention_mask"].bool()].min()) >= 104  # no [CLS]/[SEP]/[MASK] in texts

