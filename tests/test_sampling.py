import numpy as np
import pytest

from data_tools.loading.sampling import (
    ClipSamplingConfig, FrameSamplingConfig, apply_crop, cover_size, plan_clip, plan_frames, segment_indices,
)


def test_eval_segments_evenly_spaced_with_full_rate():
    idx = segment_indices(335, n_segments=2, num_frm=7, sample_rate=12, rng=None)
    assert idx.shape == (2, 7)
    assert np.all(np.diff(idx, axis=1) == 12)
    centres = idx[:, 3]
    # evenly spaced centres over the valid range [36, 298]
    assert centres[0] < centres[1] and 36 <= centres.min() and centres.max() <= 298
    assert abs((centres[0] - 36) - (298 - centres[1])) <= 1


def test_random_segments_stay_in_range_and_sorted():
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = segment_indices(100, 3, 7, 12, rng)
        assert idx.min() >= 0 and idx.max() <= 99
        assert np.all(np.diff(idx[:, 3]) >= 0)
        assert np.all(np.diff(idx, axis=1) == 12)


def test_rate_shrinks_for_short_clips_and_repeats_when_tiny():
    idx = segment_indices(40, 1, 7, 12, None)
    assert np.all(np.diff(idx, axis=1) == 6)  # (40 - 1) // 6
    tiny = segment_indices(4, 2, 7, 12, None)
    assert tiny.min() >= 0 and tiny.max() <= 3


def test_keyframes_on_iframes_draw_distinct_fitting_iframes():
    iframes = list(range(0, 300, 25))  # 1 s GOPs at 25 fps; a segment of 7 at rate 12 needs 36 frames each side
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        idx = segment_indices(300, 2, 7, 12, rng, iframes=iframes)
        centres = idx[:, 3].tolist()
        assert all(c in iframes and 36 <= c <= 263 for c in centres)
        assert centres[0] < centres[1]  # distinct while there are enough
        assert np.all(np.diff(idx, axis=1) == 12)
        seen.update(centres)
    assert seen == {c for c in iframes if 36 <= c <= 263}  # every fitting I-frame is drawn
    even = segment_indices(300, 2, 7, 12, None, iframes=iframes)[:, 3]
    plain = segment_indices(300, 2, 7, 12, None)[:, 3]
    assert even.tolist() == [min(iframes, key=lambda k: abs(k - c)) for c in plain]
    # one fitting I-frame for two segments: both take it; none fitting: as without I-frames
    assert segment_indices(80, 2, 7, 12, rng, iframes=[0, 40, 79])[:, 3].tolist() == [40, 40]
    assert np.array_equal(segment_indices(300, 2, 7, 12, None, iframes=[0, 299])[:, 3], plain)


def test_plan_uses_iframes_only_when_asked():
    iframes = [50, 100, 150, 200]
    on = plan_clip(300, 720, 1280, ClipSamplingConfig(keyframes_on_iframes=True), np.random.default_rng(1), iframes)
    off = plan_clip(300, 720, 1280, ClipSamplingConfig(), np.random.default_rng(1), iframes)
    assert set(on.keyframes.tolist()) <= set(iframes)
    assert np.array_equal(off.indices, plan_clip(300, 720, 1280, ClipSamplingConfig(), np.random.default_rng(1)).indices)


def test_even_num_frm_rejected():
    with pytest.raises(ValueError, match="odd"):
        segment_indices(100, 1, 6, 2, None)


def test_clip_plan_lr_crop_is_hr_crop_over_factor():
    cfg = ClipSamplingConfig(hr_size=(640, 1024), lr_factor=4, hflip_prob=1.0)
    rng = np.random.default_rng(3)
    for _ in range(50):
        plan = plan_clip(300, 720, 1280, cfg, rng)
        assert plan.hr_canvas == (720, 1280) and plan.lr_canvas == (180, 320)
        y, x, h, w = plan.hr_crop
        assert (plan.lr_crop[0] * 4, plan.lr_crop[1] * 4) == (y, x)
        assert y + h <= 720 and x + w <= 1280 and y % 4 == 0 and x % 4 == 0
        assert plan.flip
    assert plan.keyframes.shape == (2,) and plan.neighbours.shape == (2, 6)


def test_small_sources_are_covered_not_cropped_out_of_bounds():
    assert cover_size(144, 176, (640, 1024)) == (838, 1024)
    plan = plan_clip(120, 144, 176, ClipSamplingConfig(), np.random.default_rng(0))
    y, x, h, w = plan.hr_crop
    assert y + h <= plan.hr_canvas[0] and x + w <= plan.hr_canvas[1]
    ly, lx, lh, lw = plan.lr_crop
    assert ly + lh <= plan.lr_canvas[0] and lx + lw <= plan.lr_canvas[1]


def test_frame_plan_and_crop_flip():
    cfg = FrameSamplingConfig(num_frames=3, stride=2, size=(32, 32), hflip_prob=1.0)
    plan = plan_frames(50, 72, 128, cfg, np.random.default_rng(1))
    assert np.all(np.diff(plan.indices) == 2) and plan.canvas == (32, 57)
    frames = np.arange(3 * 32 * 57 * 3, dtype=np.uint8).reshape(3, 32, 57, 3)
    out = apply_crop(frames, plan.crop, plan.flip)
    y, x, h, w = plan.crop
    np.testing.assert_array_equal(out, frames[:, y:y + h, x:x + w][:, :, ::-1])
    with pytest.raises(ValueError, match="does not fit"):
        apply_crop(frames, (0, 50, 32, 32), False)


def test_canvas_short_side_scales_down_but_still_covers_the_crop():
    assert cover_size(240, 320, (128, 192), short_side=144) == (144, 192)
    assert cover_size(720, 1280, (640, 1024), short_side=720) == (720, 1280)
    # a short side too small for the crop is raised until the crop fits
    assert cover_size(240, 320, (128, 192), short_side=96) == (144, 192)
    plan = plan_clip(100, 240, 320, ClipSamplingConfig(hr_size=(128, 192), canvas_short_side=144), None)
    assert plan.hr_canvas == (144, 192) and plan.lr_canvas == (36, 48)
