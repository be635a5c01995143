"""Decoding output images back to predictions (issue 16): the true target scores perfectly, the unchanged source
and wrong colours score wrong, and partial or noisy outputs land in between."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_tools.synth import COLOURS
from instruct.decode import (EDIT_REST_MAE, METRICS, PSNR_MAX, SEG_IGNORE_BELOW, as_uint8_image, decode_keypoints, psnr,
                             score, summarise)
from instruct.tasks import (KEYPOINT_COLOURS, MARK_COLOURS, InstructDataConfig, InstructExample, blend_mask,
                            disk_mask, make_eval_set)


@pytest.fixture(scope="module", params=[32, 64])
def examples(request) -> list[InstructExample]:
    return make_eval_set(InstructDataConfig(size=request.param), 40, "val", seed=0)


def _of(examples, task, **meta):
    return [e for e in examples if e.task == task and all(e.meta.get(k) == v for k, v in meta.items())]


def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise + 0.5, 0, 255).astype(np.uint8)


def test_true_target_scores_perfectly(examples):
    for ex in examples:
        s = score(ex, ex.target)
        assert s["task"] == ex.task and s["metric"] == METRICS[ex.task]
        if ex.task == "restore":
            assert s["value"] > 10 and s["psnr"] == PSNR_MAX
        else:
            assert s["value"] == 1.0, (ex.task, ex.meta.get("kind"), s)


def test_unchanged_source_scores_wrong(examples):
    for ex in examples:
        s = score(ex, ex.source)
        if ex.task == "segment":
            assert s["value"] == (1.0 if ex.meta["absent"] else 0.0)  # doing nothing is right only when absent
        elif ex.task == "restore":
            assert s["value"] == 0.0
        else:
            assert s["value"] == 0.0, (ex.task, s)
        if ex.task == "edit":
            assert s["rest_ok"] == 1.0 and s["attribute_ok"] == 0.0


def test_segment_wrong_colour_partial_mask_and_absent(examples):
    present = _of(examples, "segment", absent=False)
    assert len(present) > 20
    for ex in present:
        mask, mark = ex.meta["mask"], ex.meta["mark"]
        for other, rgb in MARK_COLOURS.items():
            if other != mark:
                assert score(ex, blend_mask(ex.source, mask, rgb))["value"] == 0.0, (mark, other)
        half = mask & (np.arange(mask.shape[0])[:, None] < np.median(np.nonzero(mask)[0]))  # the upper rows
        partial = score(ex, blend_mask(ex.source, half, ex.meta["rgb"]))["value"]
        assert 0 < partial < 1 and partial == pytest.approx(half.sum() / mask.sum(), abs=0.05)
        # marking the whole picture: every pixel that could show the blend counts against the object's share
        everything = score(ex, blend_mask(ex.source, np.ones_like(mask), ex.meta["rgb"]))["value"]
        visible = np.sqrt(((ex.source - np.asarray(ex.meta["rgb"], float)) ** 2).sum(-1)) >= SEG_IGNORE_BELOW
        assert everything == pytest.approx((mask & visible).sum() / visible.sum(), abs=1e-6)
        assert everything < 1 or not (visible & ~mask).any()  # (white on a white background cannot show)
    absent = _of(examples, "segment", absent=True)
    assert absent
    for ex in absent:
        scene = ex.meta["scene"]
        marked = blend_mask(ex.source, scene.masks()[0], ex.meta["rgb"])  # marks some other object
        assert score(ex, marked)["value"] == 0.0 and score(ex, ex.target)["absent"] == 1.0


def test_keypoint_wrong_colour_and_displacement(examples):
    kps = _of(examples, "keypoint")
    for ex in kps:
        m = ex.meta
        size, r = ex.source.shape[0], m["radius"]
        # every disk in a colour that was not asked for: nothing found
        unused = [c for c in KEYPOINT_COLOURS if c not in m["colours"]]
        recoloured = ex.source.copy()
        for k, (x, y) in enumerate(m["points"]):
            recoloured[disk_mask(size, x, y, r)] = KEYPOINT_COLOURS[unused[k % len(unused)]]
        assert score(ex, recoloured)["value"] == 0.0
        # ... yet every point is marked (the colour-blind diagnostic), as by the target itself
        assert score(ex, recoloured)["marked"] == score(ex, ex.target)["marked"] == len(m["points"])
        # disks moved by 2.5 radii (past the tolerance) are wrong; by a third of a pixel still right
        for shift, expect in ((2.5 * r, 0.0), (0.34, 1.0)):
            moved = ex.source.copy()
            for (x, y), c in zip(m["points"], m["colours"]):
                moved[disk_mask(size, x + shift, y, r)] = KEYPOINT_COLOURS[c]
            s = score(ex, moved)
            assert s["value"] == expect, (shift, s)
        # only the first point drawn: PCK = 1 / K
        first = ex.source.copy()
        first[disk_mask(size, *m["points"][0], r)] = m["rgb"][0]
        assert score(ex, first)["value"] == pytest.approx(1 / len(m["points"]))


def test_keypoint_blob_centroid_ignores_small_strays():
    src = np.full((32, 32, 3), 100, np.uint8)
    out = src.copy()
    out[disk_mask(32, 10.0, 20.0, 2)] = (255, 0, 0)
    out[2, 30] = (255, 0, 0)  # a stray pixel of the same colour
    pts = decode_keypoints(src, out, [(255, 0, 0), (0, 255, 0)])
    assert pts[0] == pytest.approx((10.0, 20.0), abs=0.3) and np.isnan(pts[1]).all()


def test_restore_gain_orders_outputs(examples):
    for ex in _of(examples, "restore"):
        half = ((ex.source.astype(np.float32) + ex.target) / 2 + 0.5).astype(np.uint8)
        s_half, s_full = score(ex, half)["value"], score(ex, ex.target)["value"]
        assert 0 < s_half < s_full
        assert score(ex, ex.source)["psnr_input"] == pytest.approx(psnr(ex.source, ex.target))


def test_edit_wrong_colour_left_object_and_changed_rest(examples):
    edits = _of(examples, "edit")
    kinds = {e.meta["kind"] for e in edits}
    assert kinds == {"recolour", "remove", "bigger"}
    for ex in edits:
        m = ex.meta
        scene = m["scene"]
        i = scene.index(m["shape"], m["colour"])
        if m["kind"] == "recolour":
            for other in COLOURS:
                if other not in (m["new_colour"], m["colour"]):
                    s = score(ex, scene.recoloured(i, other).render())
                    assert s["value"] == 0.0 and s["attribute_ok"] == 0.0
        # right change but the rest of the picture disturbed: wrong
        spoiled = ex.target.copy()
        outside = ~m["region"]
        spoiled[outside] = np.clip(spoiled[outside].astype(int) + 3 * EDIT_REST_MAE, 0, 255)
        s = score(ex, spoiled)
        assert s["attribute_ok"] == 1.0 and s["rest_ok"] == 0.0 and s["value"] == 0.0


def test_scores_survive_mild_output_noise(examples):
    scores = [score(ex, _noisy(ex.target, 4.0, k)) for k, ex in enumerate(examples) if ex.task != "restore"]
    summary = summarise(scores)
    assert summary["segment"]["iou_present"] > 0.95 and summary["segment"]["absent_acc"] == 1.0
    assert summary["keypoint"]["pck"] == 1.0 and summary["edit"]["edit_acc"] == 1.0


def test_float_outputs_and_bad_inputs(examples):
    ex = examples[0]
    as_float = torch.from_numpy(ex.target).permute(2, 0, 1).float() / 127.5 - 1.0
    np.testing.assert_array_equal(as_uint8_image(as_float), ex.target)
    assert score(ex, as_float) == score(ex, ex.target)
    with pytest.raises(ValueError, match="differs"):
        score(ex, ex.target[:-1])
    with pytest.raises(ValueError, match="unknown task"):
        score(InstructExample(ex.source, ex.target, "x", "depth", {}), ex.target)


def test_summarise(examples):
    scores = [score(ex, ex.source) for ex in examples]
    summary = summarise(scores)
    assert set(summary) == {"segment", "keypoint", "restore", "edit"}
    assert all(s["n"] == 40 for s in summary.values())
    seg = summary["segment"]
    n_absent = sum(e.meta.get("absent", False) for e in examples)
    assert seg["iou"] == pytest.approx(n_absent / 40) and seg["iou_present"] == 0.0 and seg["absent_acc"] == 1.0
    assert summary["keypoint"]["pck"] == summary["keypoint"]["pck_points"] == 0.0
    assert summary["keypoint"]["marked_points"] == summary["keypoint"]["changed_share"] == 0.0
    # the shortcut the diagnostic cannot see through, shown by changed_share: change every pixel
    kps = [ex for ex in examples if ex.task == "keypoint"]
    everything = summarise([score(ex, 255 - ex.source) for ex in kps])["keypoint"]
    assert everything["marked_points"] > 0.9 and everything["changed_share"] > 0.9
    assert set(summary["restore"]) >= {"psnr_gain", "psnr_gain/denoise", "psnr_gain/deblur", "psnr_gain/watermark"}
    assert summary["edit"]["rest_acc"] == 1.0 and summary["edit"]["attribute_acc"] == 0.0
    assert summarise([]) == {}


def test_marking_every_object_is_caught_by_iou_with_others(examples):
    """An output that marks every object, whichever was named, is right on lone objects only."""
    present = _of(examples, "segment", absent=False)
    crowded = [e for e in present if len(e.meta["scene"].objects) > 1]
    assert crowded
    every = [blend_mask(e.source, e.meta["scene"].masks().any(0), e.meta["rgb"]) for e in present]
    summary = summarise(score(e, o) for e, o in zip(present, every))["segment"]
    assert summary["iou_with_others"] < 0.6 and summary["iou_with_others"] < summary["iou_present"] - 0.1
    assert summarise(score(e, e.target) for e in present)["segment"]["iou_with_others"] == 1.0
