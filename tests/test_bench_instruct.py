"""The helpers behind docs/results/instruct.json (benchmarks/bench_instruct.py): choosing guidance on
validation, the multi- vs single-task comparison and its statistics, the references and the tables."""
from __future__ import annotations

import numpy as np
import pytest

from bench_helpers import load_benchmark


def _load():
    return load_benchmark("bench_instruct")


def test_choose_scales_takes_the_best_validation_mean_per_task():
    bench = _load()
    sweep = [{"text_scale": 1.0, "image_scale": 1.25, "means": {"segment": 0.4, "edit": 0.9}},
             {"text_scale": 5.0, "image_scale": 1.25, "means": {"segment": 0.7, "edit": 0.5}},
             {"text_scale": 7.5, "image_scale": 0.5, "means": {"segment": 0.7, "edit": 0.1}}]
    assert bench.choose_scales(sweep, "segment") == {"text_scale": 5.0, "image_scale": 1.25, "val": 0.7}  # first tie
    assert bench.choose_scales(sweep, "edit")["text_scale"] == 1.0


def test_paired_test_and_its_undefined_cases():
    bench = _load()
    a, b = [0.9, 0.8, 0.85, 0.95], [0.5, 0.6, 0.55, 0.5]
    res = bench.paired(a, b)
    assert res["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b)) and res["p"] < 0.01 and res["t"] > 0
    assert bench.paired([1.0, 1.0], [0.0, 0.0]) is None  # no spread in the differences
    assert bench.paired([1.0], [0.0]) is None


def _arm(task: str, values, blank, summary=None) -> dict:
    return {"tasks": {task: {"scales": {"text_scale": 5.0, "image_scale": 1.25, "val": 0.5}, "values": values,
                             "no_instruction": blank, "summary": summary or {"n": len(values)}}}}


def test_compare_checks_goals_the_ten_percent_rule_and_tests_over_seeds():
    bench = _load()
    seeds = {}
    for seed, shift in ((0, 0.0), (1, 0.02)):
        multi = _arm("segment", [0.70 + shift, 0.74 + shift, 0.72 + shift], [0.2, 0.1, 0.3],
                     {"iou_present": 0.6, "n": 3})
        multi["tasks"].update(_arm("edit", [0.5, 0.6, 0.4], [0.0, 0.0, 0.0])["tasks"])
        seeds[seed] = {"multi": multi, "segment": _arm("segment", [0.75, 0.8, 0.78], [0.2, 0.2, 0.2]),
                       "edit": _arm("edit", [0.9, 0.8, 1.0], [0.0, 0.0, 0.0])}
    results = {"seeds": seeds, "settings": {"steps": 10}}
    rows = bench.compare(results)
    seg, edit = rows["segment"], rows["edit"]
    assert seg["goal_met"] and seg["within_10pct"]  # 0.73 >= 0.7 and >= 0.9 * 0.777
    assert not edit["goal_met"] and not edit["within_10pct"]  # 0.5 < 0.8 and < 0.9 * 0.9
    assert seg["multi"][0] == pytest.approx(np.mean([0.72, 0.74])) and seg["multi"][1] > 0
    assert len(seg["paired_by_seed"]) == 2 and seg["welch_over_seeds"]["n_a"] == 2
    results["comparison"] = rows
    results["references"] = {"identity": {"segment": {"mean": 0.2, "summary": {"iou_present": 0.0}}}}
    table = bench.render(results)
    assert "| segment (IoU) | 0.7 | 0.730 +- 0.014 | 0.777 +- 0.000 | 0.94 |" in table
    assert "| segment: iou_present | 0.600 | 0.000 | - | - |" in table


def test_gaussian_blur_reference_keeps_shape_and_smooths():
    bench = _load()
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    blurred = bench.gaussian_blur(noisy)
    assert blurred.shape == noisy.shape and blurred.dtype == np.uint8
    assert blurred.astype(float).std() < noisy.astype(float).std()
    flat = np.full((8, 8, 3), 77, dtype=np.uint8)
    assert np.array_equal(bench.gaussian_blur(flat), flat)
