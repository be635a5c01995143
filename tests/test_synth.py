from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from data_tools.synth import (
    COLOURS,
    SHAPES,
    SynthConfig,
    all_caption_texts,
    event_state,
    heldout_combos,
    plan_corpus,
    synthesize_corpus,
)

H, W, FPS = 64, 96, 25
TINY = dict(num_videos=6, height=H, width=W, fps=FPS, events_per_video=2, event_seconds=2.0)

_CUE = re.compile(r"(\d+):(\d+):(\d+),(\d+) --> (\d+):(\d+):(\d+),(\d+)\n(.+)")


def _srt_cues(path: Path) -> list[tuple[float, float, str]]:
    cues = []
    for m in _CUE.finditer(path.read_text()):
        g = [int(x) for x in m.groups()[:8]]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append((start, end, m.group(9).strip()))
    return cues


def _metadata(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = synthesize_corpus(root, SynthConfig(seed=0, **TINY), progress=False)
    return root, summary


def test_layout_and_frame_counts(corpus):
    root, summary = corpus
    rows = _metadata(root)
    ids = {r["video_id"]: r["split"] for r in rows}
    assert summary["videos"] == {"train": 5, "heldout": 1}
    assert len(rows) == 6 * 2
    for split in ("train", "heldout"):
        mp4s = sorted(p.stem for p in (root / split).glob("*.mp4"))
        srts = sorted(p.stem for p in (root / split).glob("*.srt"))
        assert mp4s == srts == sorted(v for v, s in ids.items() if s == split)
    assert (root / "synth_config.json").is_file()
    for vid, split in ids.items():
        with av.open(str(root / split / f"{vid}.mp4")) as c:
            s = c.streams.video[0]
            assert (s.codec_context.width, s.codec_context.height) == (W, H)
            assert s.codec_context.pix_fmt == "yuv420p"
            assert s.average_rate == FPS
            assert sum(1 for _ in c.decode(video=0)) == 2 * 2 * FPS


def test_srt_cues_match_metadata(corpus):
    root, _ = corpus
    rows = _metadata(root)
    for vid in {r["video_id"] for r in rows}:
        events = sorted((r for r in rows if r["video_id"] == vid), key=lambda r: r["event"])
        cues = _srt_cues(root / events[0]["split"] / f"{vid}.srt")
        assert len(cues) == len(events) == 2
        for (start, end, text), ev in zip(cues, events):
            assert start == pytest.approx(ev["start"], abs=1e-3) and end == pytest.approx(ev["end"], abs=1e-3)
            assert end - start == pytest.approx(2.0, abs=1e-3)
            assert text == ev["text"] and text.endswith(".") and text.count(".") == 1
            for word in (ev["shape"], ev["colour"]):
                assert word in text


def test_heldout_combos_never_in_train(corpus):
    root, summary = corpus
    held = {tuple(c) for c in summary["heldout_combos"]}
    assert held == {tuple(c) for c in json.loads((root / "synth_config.json").read_text())["heldout_combos"]}
    assert len(held) == round(0.25 * len(SHAPES) * len(COLOURS))
    rows = _metadata(root)
    for r in rows:
        assert ((r["shape"], r["colour"]) in held) == (r["split"] == "heldout")
    # at full size every combo of the train pool is used and each held-out pair is a new composition
    rows, held2 = plan_corpus(SynthConfig(seed=0))
    assert set(held2) == held
    train_pairs = {(r["shape"], r["colour"]) for r in rows if r["split"] == "train"}
    assert train_pairs == {(s, c) for s in SHAPES for c in COLOURS} - held
    assert {s for s, _ in train_pairs} == set(SHAPES) and {c for _, c in train_pairs} == set(COLOURS)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.8])
def test_heldout_keeps_every_attribute_in_train(seed, fraction):
    held = set(heldout_combos(seed, fraction))
    assert held
    train = {(s, c) for s in SHAPES for c in COLOURS} - held
    assert {s for s, _ in train} == set(SHAPES) and {c for _, c in train} == set(COLOURS)
    assert heldout_combos(seed, fraction) == heldout_combos(seed, fraction)


def test_deterministic_by_seed(corpus, tmp_path):
    root, _ = corpus
    same = tmp_path / "same"
    synthesize_corpus(same, SynthConfig(seed=0, **TINY), progress=False)
    assert (same / "metadata.jsonl").read_bytes() == (root / "metadata.jsonl").read_bytes()
    for p in sorted(root.glob("*/*.srt")) + sorted(root.glob("*/*.mp4")):
        assert (same / p.relative_to(root)).read_bytes() == p.read_bytes(), p.name
    other = tmp_path / "other"
    synthesize_corpus(other, SynthConfig(seed=1, **TINY), progress=False)
    assert (other / "metadata.jsonl").read_bytes() != (root / "metadata.jsonl").read_bytes()
    texts = lambda d: [(d / "train" / "synth_train_0000.srt").read_text()]  # noqa: E731
    assert texts(other) != texts(root)


def test_rerun_with_fewer_videos_drops_stale_files(tmp_path):
    synthesize_corpus(tmp_path, SynthConfig(**{**TINY, "num_videos": 5, "event_seconds": 0.4}), progress=False)
    synthesize_corpus(tmp_path, SynthConfig(**{**TINY, "num_videos": 2, "event_seconds": 0.4}), progress=False)
    rows = _metadata(tmp_path)
    assert sorted(p.stem for p in tmp_path.glob("*/*.mp4")) == sorted({r["video_id"] for r in rows})


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    d = [np.abs(rgb.astype(int) - np.array(COLOURS[n])).sum() for n in names]
    return names[int(np.argmin(d))]


def test_pixels_show_named_colour_and_motion(corpus):
    root, _ = corpus
    rows = _metadata(root)
    for vid in sorted({r["video_id"] for r in rows}):
        events = [r for r in rows if r["video_id"] == vid]
        frames = _decode(root / events[0]["video"])
        for ev in events:
            f0, f1 = ev["frame_start"], ev["frame_end"]
            mid = (f0 + f1) // 2
            cx, cy, _ = event_state(ev, mid, H, W)
            patch = frames[mid][int(cy) - 1:int(cy) + 2, int(cx) - 1:int(cx) + 2].reshape(-1, 3).mean(0)
            assert _nearest_colour(patch) == ev["colour"], (vid, ev["event"], patch)
            assert np.abs(patch - np.array(ev["rgb"])).max() < 40

            # the shape's pixels move (or scale) the way the caption says
            def blob(frame):
                mask = np.abs(frame.astype(int) - np.array(ev["rgb"])).sum(-1) < 90
                ys, xs = np.nonzero(mask)
                return xs.mean(), ys.mean(), mask.sum()

            (x0, y0, a0), (x1, y1, a1) = blob(frames[f0 + 2]), blob(frames[f1 - 3])
            check = {
                "left": x1 < x0 - 10, "right": x1 > x0 + 10, "up": y1 < y0 - 10, "down": y1 > y0 + 10,
                "grows": a1 > 2 * a0, "shrinks": a0 > 2 * a1,
            }[ev["direction"]]
            assert check, (vid, ev["event"], ev["direction"], (x0, y0, a0), (x1, y1, a1))


def test_captions_come_from_the_enumerated_set(corpus):
    root, _ = corpus
    every = set(all_caption_texts())
    assert len(every) > 10_000
    assert all(r["text"] in every for r in _metadata(root))


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        synthesize_corpus(tmp_path, SynthConfig(height=63, width=96), progress=False)
    with pytest.raises(ValueError):
        plan_corpus(SynthConfig(num_videos=2, num_heldout_videos=3))


def test_encoder_failure_is_reported_and_leaves_no_partial_files(tmp_path):
    cfg = SynthConfig(**{**TINY, "num_videos": 1, "event_seconds": 0.2, "preset": "no-such-preset"})
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        synthesize_corpus(tmp_path, cfg, progress=False)
    assert not list(tmp_path.rglob("*.mp4")) and not list(tmp_path.rglob("*.tmp"))


FACTORIAL = dict(num_videos=40, num_heldout_videos=16, num_val_videos=8, heldout_design="factorial",
                 height=48, width=64, event_seconds=2.0)


@pytest.mark.parametrize("seed", [0, 3])
def test_factorial_design_puts_a_one_attribute_neighbour_beside_every_clip(seed):
    rows, held = plan_corpus(SynthConfig(seed=seed, **FACTORIAL))
    names = ("shape", "colour", "direction", "background")
    pairs = lambda split: {(r["shape"], r["colour"]) for r in rows if r["split"] == split}  # noqa: E731
    test_pairs, val_pairs, train_pairs = pairs("heldout"), pairs("val"), pairs("train")
    assert test_pairs == set(held) and len(test_pairs) == 8 and len(val_pairs) == 4
    assert not (test_pairs & val_pairs) and not (train_pairs & (test_pairs | val_pairs))  # unseen stays unseen
    assert {s for s, _ in train_pairs} == set(SHAPES) and {c for _, c in train_pairs} == set(COLOURS)
    for split, count in (("heldout", 32), ("val", 16)):
        clips = [tuple(r[n] for n in names) for r in rows if r["split"] == split]
        assert len(clips) == count and len(set(clips)) == count  # no clip twice
        gallery = set(clips)
        for clip in clips:
            for i in range(len(names)):
                # a gallery clip that differs from this one in attribute i alone
                assert any(other[i] != clip[i] and all(other[j] == clip[j] for j in range(len(names)) if j != i)
                           for other in gallery), (split, clip, names[i])
        # swapped bindings: both colours of the block with both shapes
        for shape, colour in {(c[0], c[1]) for c in clips}:
            assert {(s, c) for s, c, _, _ in clips if s == shape} != {(shape, colour)}


def test_factorial_design_rejects_partial_groups_and_val_without_it(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        plan_corpus(SynthConfig(**{**FACTORIAL, "num_heldout_videos": 15}))
    with pytest.raises(ValueError, match="factorial"):
        plan_corpus(SynthConfig(num_videos=10, num_val_videos=2))
    with pytest.raises(ValueError, match="heldout_design"):
        plan_corpus(SynthConfig(heldout_design="grid"))


def test_factorial_corpus_writes_the_val_split(tmp_path):
    cfg = SynthConfig(**{**FACTORIAL, "num_videos": 25, "num_heldout_videos": 8, "num_val_videos": 8,
                         "event_seconds": 0.4})
    summary = synthesize_corpus(tmp_path, cfg, progress=False)
    assert summary["videos"] == {"train": 9, "heldout": 8, "val": 8}
    assert len(list((tmp_path / "val").glob("*.mp4"))) == 8 and len(list((tmp_path / "val").glob("*.srt"))) == 8
    written = json.loads((tmp_path / "synth_config.json").read_text())
    assert sorted(map(tuple, written["val_combos"])) == sorted(map(tuple, summary["val_combos"]))
    assert summary["train_combos"] == len(SHAPES) * len(COLOURS) - 12


def test_factorial_training_groups_are_adjacent_and_use_only_training_pairs():
    cfg = SynthConfig(num_videos=224, num_heldout_videos=40, num_val_videos=24, heldout_design="factorial",
                      train_design="factorial", height=48, width=64, event_seconds=2.0)
    rows, _ = plan_corpus(cfg)
    unseen = {(r["shape"], r["colour"]) for r in rows if r["split"] != "train"}
    train = [r for r in rows if r["split"] == "train"]
    pairs = {(r["shape"], r["colour"]) for r in train}
    assert not pairs & unseen
    assert pairs == {(s, c) for s in SHAPES for c in COLOURS} - unseen  # the cover reaches every training pair
    for g in range(0, len(train), 16):  # consecutive events (so neighbouring shard samples) form one group
        group = [(r["shape"], r["colour"], r["direction"], r["background"]) for r in train[g:g + 16]]
        assert len(set(group)) == 16
        assert all(len({clip[i] for clip in group}) == 2 for i in range(4))
