"""spo.tilt: the KL-optimal tilt that serves as the FD yardstick of the SPO miniature."""
from __future__ import annotations

import numpy as np
import pytest

from spo.tilt import effective_size, solve_tilt, tilted_draw, tilted_mean


def _pool(seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = np.repeat(np.arange(3), 400)
    measure = rng.normal(loc=classes * 0.5, scale=1.0)  # class means 0, 0.5, 1
    return measure, classes


def test_untilted_mean_is_the_class_average():
    measure, classes = _pool()
    expected = np.mean([measure[classes == c].mean() for c in range(3)])
    assert tilted_mean(measure, classes, 0.0) == pytest.approx(expected)


def test_gaussian_tilt_shifts_the_mean_by_lambda_times_variance():
    # for N(m, 1) tilted by exp(λ x) the tilted law is N(m + λ, 1): a closed form to check the weights against
    rng = np.random.default_rng(1)
    measure = rng.normal(size=200_000)
    classes = np.zeros_like(measure, dtype=int)
    assert tilted_mean(measure, classes, 0.3) == pytest.approx(0.3, abs=0.02)
    assert solve_tilt(measure, classes, 0.3) == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize("target", [0.2, 0.9, 0.4])
def test_solve_tilt_hits_the_target_both_ways(target):
    measure, classes = _pool()
    lam = solve_tilt(measure, classes, target)
    assert tilted_mean(measure, classes, lam) == pytest.approx(target, abs=1e-6)
    assert (lam > 0) == (target > tilted_mean(measure, classes, 0.0))


def test_tilt_by_another_reward_reaches_the_measure_s_target():
    # tilting by a noisy proxy of the measure: λ is larger than tilting by the measure itself
    measure, classes = _pool()
    proxy = measure + np.random.default_rng(2).normal(scale=1.0, size=measure.shape)
    direct = solve_tilt(measure, classes, 1.0)
    via_proxy = solve_tilt(measure, classes, 1.0, proxy)
    assert tilted_mean(measure, classes, via_proxy, proxy) == pytest.approx(1.0, abs=1e-6)
    assert via_proxy > direct > 0


def test_unreachable_target_is_refused():
    measure, classes = _pool()
    with pytest.raises(ValueError, match="outside"):
        solve_tilt(measure, classes, measure.max() + 1.0)


def test_tilted_draw_is_per_class_without_replacement_and_follows_the_tilt():
    measure, classes = _pool()
    rng = np.random.default_rng(3)
    flat = tilted_draw(measure, classes, 0.0, 50, rng)
    assert len(flat) == 150 and len(np.unique(flat)) == 150
    assert np.bincount(classes[flat]).tolist() == [50, 50, 50]
    lam = solve_tilt(measure, classes, tilted_mean(measure, classes, 0.0) + 0.5)
    tilted = np.concatenate([tilted_draw(measure, classes, lam, 50, rng) for _ in range(20)])
    untilted = np.concatenate([tilted_draw(measure, classes, 0.0, 50, rng) for _ in range(20)])
    # drawing without replacement flattens the tilt a little, so the drawn gain is most, not all, of the 0.5
    assert 0.35 < measure[tilted].mean() - measure[untilted].mean() < 0.55
    with pytest.raises(ValueError, match="fewer"):
        tilted_draw(measure, classes, 0.0, 401, rng)


def test_effective_size_is_the_pool_untilted_and_shrinks_with_the_tilt():
    measure, classes = _pool()
    assert effective_size(measure, classes, 0.0) == pytest.approx(400.0)
    assert effective_size(measure, classes, 2.0) < effective_size(measure, classes, 0.5) < 400.0
