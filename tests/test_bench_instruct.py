"""The helpers behind docs/results/instruct.json (benchmarks/bench_instruct.py): choosing guidance on
validation, the multi- vs single-task comparison and its statistics, the references and the tables."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench_helpers import load_benchmark


def _load():
    return load_benchmark("bench_instruct")


def test_choose_scales_takes_the_best_validation_mean_per_task():
    bench = _load()
    def row(s_t, s_i, iou, edit):  # the shape of instruct.evaluate.guidance_sweep's rows
        return {"text_scale": s_t, "image_scale": s_i,
                "summary": {"segment": {"iou": iou, "iou_present": 0.0, "n": 4}, "edit": {"edit_acc": edit, "n": 4}}}

    sweep = [row(1.0, 1.25, 0.4, 0.9), row(5.0, 1.25, 0.7, 0.5), row(7.5, 0.5, 0.7, 0.1)]
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


def _results() -> dict:
    seeds = {}
    for seed, shift in (("0", 0.0), ("1", 0.02)):
        multi = _arm("segment", [0.70 + shift, 0.74 + shift, 0.72 + shift], [0.2, 0.1, 0.3],
                     {"iou_present": 0.6, "n": 3})
        multi["tasks"]["segment"]["seen_combinations"] = [0.4 + 5 * shift] * 2  # seeds 0.4 and 0.5
        multi["tasks"].update(_arm("edit", [0.5, 0.6, 0.4], [0.0, 0.0, 0.0])["tasks"])
        multi["tasks"].update(_arm("restore", [-0.5, -0.3, -0.4], [0.0, 0.0, 0.0])["tasks"])
        seeds[seed] = {"multi": multi, "segment": _arm("segment", [0.75, 0.8, 0.78], [0.2, 0.2, 0.2]),
                       "edit": _arm("edit", [0.9, 0.8, 1.0], [0.0, 0.0, 0.0]),
                       "restore": _arm("restore", [-0.42, -0.38, -0.35], [0.0, 0.0, 0.0])}
    return {"seeds": seeds, "settings": {"steps": 10}}


def test_compare_checks_goals_the_ten_percent_rule_and_tests_over_seeds():
    bench = _load()
    results = _results()
    rows = bench.compare(results)
    seg, edit, restore = rows["segment"], rows["edit"], rows["restore"]
    assert seg["goal_met"] and seg["within_10pct"]  # 0.73 >= 0.7 and >= 0.9 * 0.777
    assert not edit["goal_met"] and not edit["within_10pct"]  # 0.5 < 0.8 and < 0.9 * 0.9
    # a negative PSNR gain: within 10% of its size (-0.4 >= -0.383 - 0.038), not 0.9 x a negative number
    assert restore["within_10pct"] and not restore["goal_met"]
    assert seg["multi"][0] == pytest.approx(np.mean([0.72, 0.74])) and seg["multi"][1] > 0
    assert len(seg["paired_by_seed"]) == 2 and seg["welch_over_seeds"]["n_a"] == 2
    # each example's mean over the two seeds, paired: multi (0.71, 0.75, 0.73) against single (0.75, 0.8, 0.78)
    assert seg["paired_seed_means"]["mean_diff"] == pytest.approx(0.73 - np.mean([0.75, 0.8, 0.78]))
    assert "keypoint" not in rows  # no arm scored it
    results["comparison"] = rows
    results["references"] = {"identity": {"segment": {"mean": 0.2, "summary": {"iou_present": 0.0}}}}
    table = bench.render(results)
    assert "| segment (IoU) | 0.7 | 0.730 +- 0.014 | yes | 0.777 +- 0.000 | 0.94 | yes |" in table
    # paired p per seed, over seed means, Welch over seeds; seen pairs, no instruction
    per_seed = [bench.paired(results["seeds"][s]["multi"]["tasks"]["segment"]["values"],
                             results["seeds"][s]["segment"]["tasks"]["segment"]["values"])["p"] for s in "01"]
    pooled, welch_p = seg["paired_seed_means"]["p"], seg["welch_over_seeds"]["p"]
    assert per_seed[0] == pytest.approx(0.0034, abs=5e-5) and per_seed[1] < 0.05
    assert (f"| 0.94 | yes | {per_seed[0]:.2g}, {per_seed[1]:.2g} | {pooled:.2g} | {welch_p:.2g} | 0.450 +- 0.071 | "
            "0.200 +- 0.000 |") in table
    assert "| restore (PSNR gain dB) | 3 | -0.400 +- 0.000 | no | -0.383 +- 0.000 | - | yes |" in table
    assert "| segment: iou_present | 0.600 | 0.000 | - | - |" in table


def test_compare_pairs_only_seeds_that_have_both_arms():
    bench = _load()
    results = _results()
    del results["seeds"]["1"]["segment"]  # seed 1's single-task segment model not made yet
    seg = bench.compare(results)["segment"]
    assert seg["multi"][0] == pytest.approx(0.73)  # the multi-task model over both seeds
    assert seg["seeds_compared"] == [0] and seg["multi_compared"][0] == pytest.approx(0.72)
    assert len(seg["paired_by_seed"]) == 1 and seg["welch_over_seeds"] is None  # one seed: no Welch test
    del results["seeds"]["0"]["multi"]  # and seed 0's multi-task model not either: nothing to compare
    seg = bench.compare(results)["segment"]
    assert seg["multi"][0] == pytest.approx(0.74) and "single" not in seg and "within_10pct" not in seg


def test_start_results_keeps_earlier_arms_only_under_the_same_settings(tmp_path):
    bench = _load()
    settings = {k: 1 for k in bench.COMPARABLE}
    path = tmp_path / "instruct.json"
    assert bench.start_results(path, settings, fresh=False) == {"settings": settings, "seeds": {}}
    path.write_text(json.dumps({"settings": settings, "seeds": {"0": {"restore": {"tasks": {}}}}}))
    kept = bench.start_results(path, {**settings, "seeds": [1]}, fresh=False)
    assert kept["seeds"] == {"0": {"restore": {"tasks": {}}}} and kept["settings"]["seeds"] == [1]
    with pytest.raises(SystemExit, match="other settings"):
        bench.start_results(path, {**settings, "steps": 2}, fresh=False)
    assert bench.start_results(path, {**settings, "steps": 2}, fresh=True)["seeds"] == {}


def test_bench_figure_draws_every_compared_task(tmp_path):
    bench = _load()
    results = _results()
    for arm in results["seeds"]["0"].values():
        arm["sweep"] = [{"text_scale": s_t, "image_scale": 1.25,
                         "summary": {"segment": {"iou": 0.5 + s_t / 10}, "edit": {"edit_acc": 0.5},
                                     "restore": {"psnr_gain": 0.1}}} for s_t in (1.0, 3.0)]
    results["comparison"] = bench.compare(results)
    results["references"] = {"identity": {"segment": {"mean": 0.2}}, "target": {"restore": {"mean": 9.0}}}
    path = bench.write_figure(results, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_gaussian_blur_reference_keeps_shape_and_smooths():
    bench = _load()
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    blurred = bench.gaussian_blur(noisy)
    assert blurred.shape == noisy.shape and blurred.dtype == np.uint8
    assert blurred.astype(float).std() < noisy.astype(float).std()
    flat = np.full((8, 8, 3), 77, dtype=np.uint8)
    assert np.array_equal(bench.gaussian_blur(flat), flat)


@pytest.mark.parametrize("phrasing", ["heldout", "train"])
def test_every_example_maps_to_the_one_template_it_was_phrased_from(phrasing):
    from instruct.tasks import TEMPLATES, InstructDataConfig, make_eval_set

    bench = _load()
    examples = make_eval_set(InstructDataConfig(size=16), 12, "test", seed=3, phrasing=phrasing)
    found = {}
    for example in examples:
        template = bench.phrasing(example)
        families = bench.PHRASING_FAMILIES[example.task]
        assert any(template in TEMPLATES[f][phrasing] for f in families), (example.instruction, template)
        if example.task == "segment":  # the template, filled with the example's own words, is the sentence
            assert template.format(object=example.meta["object"], colour=example.meta["mark"]) == example.instruction
        found.setdefault(example.task, set()).add(template)
    assert set(found) == set(bench.TASKS) and all(len(t) > 1 for t in found.values())

    odd = examples[0]
    odd.instruction = "Please do something else entirely."
    with pytest.raises(ValueError, match="matches 0"):
        bench.phrasing(odd)


def test_compare_and_render_break_the_seeds_down_by_phrasing():
    bench = _load()
    results = _results()
    results["test_phrasings"] = {"segment": ["Tint {object} {colour}.", "Shade {object}.", "Tint {object} {colour}."],
                                 "edit": ["a", "a", "b"], "restore": ["x", "y"]}  # restore: misaligned
    with pytest.raises(ValueError, match="3 values for 2 phrasings"):
        bench.compare(results)
    del results["test_phrasings"]["restore"]
    rows = bench.compare(results)
    seg = rows["segment"]["by_phrasing"]
    # each example's mean over seeds 0 and 1 first: multi-task (0.71, 0.75, 0.73), single-task (0.75, 0.8, 0.78)
    assert rows["segment"]["by_phrasing_seeds"] == [0, 1]
    assert seg["Tint {object} {colour}."] == pytest.approx({"n": 2, "multi": 0.72, "single": 0.765})
    assert seg["Shade {object}."] == pytest.approx({"n": 1, "multi": 0.75, "single": 0.8})
    assert rows["edit"]["by_phrasing"]["b"] == pytest.approx({"n": 1, "multi": 0.4, "single": 1.0})
    assert "by_phrasing" not in rows["restore"]
    results["comparison"] = rows
    table = bench.render(results)
    assert "| segment | 0, 1 | Tint {object} {colour}. | 2 | 0.720 | 0.765 |" in table
    # a seed without its single-task model drops out of both columns, so they compare the same seeds
    del results["seeds"]["1"]["segment"]
    rows = bench.compare(results)
    assert rows["segment"]["by_phrasing_seeds"] == [0]
    assert rows["segment"]["by_phrasing"]["Tint {object} {colour}."]["multi"] == pytest.approx(0.71)
    # with no single-task model at all, the multi-task column uses every seed
    for seed in "01":
        results["seeds"][seed].pop("segment", None)
    rows = bench.compare(results)
    assert rows["segment"]["by_phrasing_seeds"] == [0, 1]
    assert "single" not in rows["segment"]["by_phrasing"]["Shade {object}."]


def test_example_means_refuses_runs_of_different_lengths():
    bench = _load()
    assert bench.example_means([[1.0, 2.0], [3.0, 4.0]]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="different numbers"):
        bench.example_means([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="at least one"):
        bench.example_means([])
