"""The helpers behind docs/results/demo_levers.json (benchmarks/demo_levers.py)."""
from __future__ import annotations

import pytest

from bench_helpers import load_benchmark


def _load():
    return load_benchmark("demo_levers")


def _arm(r1: float, overrides=()) -> dict:
    return {"overrides": list(overrides), "model": {"R@1": r1, "R@5": 90.0, "MnR": 2.5},
            "motion_blind": {"R@1": 41.7}, "errors": {"differs_in": {"shape": 1, "colour": 0, "motion": 2,
                                                                      "background": 0}}}


def test_sample_rate_follows_the_arm_overrides():
    levers = _load()
    assert levers.sample_rate(levers.ARMS["sr4"]) == 4
    assert levers.sample_rate(levers.ARMS["sr12"]) == 12
    assert levers.sample_rate(levers.ARMS["sr8"]) == 8  # the shipped recipe's value


def test_seed_summary_and_render():
    levers = _load()
    results = {"arms": {"sr4": _arm(27.1, ["data.sample_rate=4"]), "sr8": _arm(33.3),
                        "sr4-seed1": _arm(20.8), "sr4-seed2": _arm(20.8), "sr8-seed1": _arm(35.4),
                        "sr8-seed2": _arm(31.2)}}
    seeds = levers.seed_summary(results)
    assert seeds["sr4"]["R@1"] == [27.1, 20.8, 20.8] and seeds["sr8"]["R@1"] == [33.3, 35.4, 31.2]
    mean, sd = seeds["sr8"]["mean_std"]
    assert mean == pytest.approx(33.3) and sd == pytest.approx(2.1, abs=1e-9)
    assert 0 < seeds["welch"]["p"] < 0.05 and seeds["welch"]["t"] > 0  # sr8 is the first sample
    results["seeds"] = seeds
    table = levers.render(results)
    assert "| sr4 | `data.sample_rate=4` | 27.1 |" in table and "sr8-seed1 |" not in table
    assert "Welch t-test p =" in table


def test_render_names_the_corpus_and_the_twin_test():
    levers = _load()
    twins = {a: {"pairs": 48, "accuracy": acc, "p_value": 0.5}
             for a, acc in (("shape", 62.5), ("colour", 100.0), ("motion", 50.0), ("background", 100.0))}
    results = {"arms": {"data464": {**_arm(33.3), "twins": twins}, "sr8": _arm(33.3)}}
    table = levers.render(results)
    assert "| data464 | corpus of 464 videos (400 training) | 33.3 |" in table
    assert table.splitlines()[2].endswith("| 62 / 100 / 50 / 100 |")  # shape / colour / motion / background
    assert table.splitlines()[3].endswith("| - |")  # scored before the twin test existed


def test_arms_apply_on_the_stop29_recipe_and_the_table_shows_their_changes():
    levers = _load()
    assert levers.on_stop29_recipe(levers.ARMS["sr4"]) == [*levers.STOP29_RECIPE, "data.sample_rate=4"]
    from data_tools.config import load_config
    from hdvila.recipes.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, "pretrain/small", levers.on_stop29_recipe(levers.ARMS["sr8"]))
    assert cfg.model == "hdvila-small" and cfg.data.tokenizer is None and not cfg.reversed_negatives
    assert cfg.data.sample_rate == 8
    assert [g.lr_scale for g in cfg.optim.param_groups] == [None, None, None]  # language at the full rate
    shipped = load_config(PretrainConfig, "pretrain/small")
    arm = load_config(PretrainConfig, "pretrain/small", levers.on_stop29_recipe(levers.ARMS["motion-text-lr0.1"]))
    for field in ("model", "reversed_negatives", "optim", "data", "train"):
        assert getattr(arm, field) == getattr(shipped, field), field  # that arm is the shipped recipe
    cfg = load_config(PretrainConfig, "pretrain/small", levers.on_stop29_recipe(levers.ARMS["mnv2-minilm-reversed"]))
    assert cfg.model == "hdvila-small-mnv2-minilm" and cfg.data.tokenizer and cfg.reversed_negatives  # later wins
    table = levers.render({"arms": {"sr8": _arm(33.3, levers.ARMS["sr8"]), "mnv2": _arm(37.5, levers.ARMS["mnv2"])}})
    assert "| sr8 | - | 33.3 |" in table and "| mnv2 | `model=hdvila-small-mnv2` | 37.5 |" in table
