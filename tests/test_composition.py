"""Attribute oracles, the model-vs-oracle test and the error table of hdvila.retrieval.composition."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from data_tools.synth import SynthConfig, plan_corpus
from hdvila.retrieval.composition import (
    ATTRIBUTES,
    METADATA_FIELDS,
    MOTION_BLIND,
    at_least_probability,
    clip_attributes,
    composition_markdown,
    composition_report,
    error_table,
    expected_recall,
    oracle_metrics,
    twin_test,
)

FACTORIAL = SynthConfig(num_videos=40, num_heldout_videos=16, num_val_videos=8, heldout_design="factorial",
                        height=48, width=64, event_seconds=2.0)


def _attributes(split: str = "heldout") -> list[dict[str, str]]:
    rows, _ = plan_corpus(FACTORIAL)
    return [{name: r[field] for name, field in METADATA_FIELDS.items()} for r in rows if r["split"] == split]


@pytest.mark.parametrize("candidates,positive", [(1, 1), (4, 1), (5, 2), (7, 3)])
def test_expected_recall_matches_enumerating_every_order(candidates, positive):
    items = [True] * positive + [False] * (candidates - positive)
    orders = list(itertools.permutations(range(candidates)))
    for k in range(1, candidates + 2):
        hits = sum(any(items[i] for i in order[:k]) for order in orders) / len(orders)
        assert expected_recall(candidates, positive, k) == pytest.approx(hits)


def test_at_least_probability_matches_enumeration():
    probs = [0.5, 0.25, 0.9, 0.1]
    for hits in range(len(probs) + 2):
        total = 0.0
        for outcome in itertools.product([0, 1], repeat=len(probs)):
            if sum(outcome) >= hits:
                total += math.prod(p if o else 1 - p for p, o in zip(probs, outcome))
        assert at_least_probability(hits, probs) == pytest.approx(total)


def test_factorial_gallery_caps_every_oracle_that_misses_an_attribute():
    attrs = _attributes()
    n = len(attrs)
    assert n == 32
    chance = oracle_metrics(attrs, ())
    assert chance["R@1"] == pytest.approx(100.0 / n)
    assert chance["MnR"] == pytest.approx((n + 1) / 2)
    for missing in ATTRIBUTES:
        known = [a for a in ATTRIBUTES if a != missing]
        # the clip differing in `missing` alone is always in the gallery: at best a coin flip
        assert oracle_metrics(attrs, known)["R@1"] <= 50.0 + 1e-9
    assert oracle_metrics(attrs, ATTRIBUTES)["R@1"] == pytest.approx(100.0)


def _scores(attrs, weights: dict[str, float], seed: int = 0) -> np.ndarray:
    """A ranker that adds `weights[a]` for each attribute a clip shares with the query, plus a little noise."""
    rng = np.random.default_rng(seed)
    sim = np.zeros((len(attrs), len(attrs)))
    for i, q in enumerate(attrs):
        for j, c in enumerate(attrs):
            sim[i, j] = sum(w for a, w in weights.items() if q[a] == c[a])
    return sim + rng.normal(0, 1e-3, sim.shape)


def test_a_perfect_ranker_beats_every_oracle_significantly():
    attrs = _attributes()
    report = composition_report(_scores(attrs, {a: 1.0 for a in ATTRIBUTES}), attrs)
    assert report["model"]["R@1"] == pytest.approx(100.0)
    assert report["errors"]["wrong_top1"] == 0
    blind = report[MOTION_BLIND]
    assert blind["model_beats_all"] and blind["p_value"] < 1e-6
    assert blind["R@1"] == pytest.approx(50.0)
    assert len(report["oracles"]) == 2 ** len(ATTRIBUTES) - 1  # every subset but the full one, chance included
    markdown = composition_markdown(report)
    assert "**model**" in markdown
    assert f"| motion | {len(attrs)} | 100.0% |" in markdown  # the twin table: one motion twin per clip here


def test_a_motion_blind_ranker_is_not_better_than_the_motion_blind_oracle_and_its_errors_are_motion():
    attrs = _attributes()
    report = composition_report(_scores(attrs, {"background": 1.0, "shape": 1.0, "colour": 1.0}), attrs)
    blind = report[MOTION_BLIND]
    assert not blind["model_beats_all"] or blind["p_value"] > 0.01
    errors = report["errors"]
    assert errors["wrong_top1"] > 0
    # every wrong top-1 is the clip that differs in motion alone
    assert errors["differs_only_in"]["motion"] == errors["wrong_top1"]
    assert errors["differs_in"]["shape"] == errors["differs_in"]["colour"] == errors["differs_in"]["background"] == 0


def test_error_table_counts_each_differing_attribute():
    attrs = [{"background": "b", "shape": "s", "colour": "c", "motion": "m"},
             {"background": "b", "shape": "t", "colour": "d", "motion": "m"},
             {"background": "x", "shape": "s", "colour": "c", "motion": "m"}]
    table = error_table(attrs, [1, 0, 2])
    assert table["wrong_top1"] == 2
    assert table["differs_in"] == {"background": 0, "shape": 2, "colour": 2, "motion": 0}
    assert table["differs_only_in"] == {"background": 0, "shape": 0, "colour": 0, "motion": 0}
    assert table["patterns"] == {"shape+colour": 2}


def test_clip_attributes_maps_clips_to_events_by_source_and_time():
    events = [{"video_id": "v1", "start": 0.0, "end": 4.0, "background": "sky", "shape": "star", "colour": "red",
               "direction": "left"},
              {"video_id": "v1", "start": 4.0, "end": 8.0, "background": "white", "shape": "cross",
               "colour": "blue", "direction": "up"}]
    records = [{"key": "a", "source": "heldout/v1.mp4", "span": [4.1, 7.9]},
               {"key": "b", "source": "/abs/heldout/v1.mp4", "span": [0.0, 3.9]}]
    attrs = clip_attributes(records, events)
    assert attrs[0] == {"background": "white", "shape": "cross", "colour": "blue", "motion": "up"}
    assert attrs[1]["motion"] == "left"
    with pytest.raises(ValueError, match="no event metadata"):
        clip_attributes([{"key": "c", "source": "other.mp4", "span": [0, 1]}], events)
    with pytest.raises(ValueError, match="0 events"):
        clip_attributes([{"key": "d", "source": "v1.mp4", "span": [9, 10]}], events)


def test_report_rejects_a_similarity_of_the_wrong_shape():
    attrs = _attributes()
    with pytest.raises(ValueError, match="one query per clip"):
        composition_report(np.zeros((3, len(attrs))), attrs)


def test_twin_test_finds_the_attribute_a_ranker_is_blind_to():
    attrs = _attributes()
    twins = composition_report(_scores(attrs, {"background": 1.0, "shape": 1.0, "colour": 1.0}), attrs)["twins"]
    for name in ("background", "shape", "colour"):
        assert twins[name]["accuracy"] == pytest.approx(100.0) and twins[name]["p_value"] < 1e-6
    # blind to motion: the own clip and its motion twin tie up to noise, so about half the pairs go each way
    assert twins["motion"]["pairs"] == len(attrs)
    assert 20.0 < twins["motion"]["accuracy"] < 80.0 and twins["motion"]["p_value"] > 0.01


def test_twin_test_counts_ties_as_half():
    attrs = [{"background": "b", "shape": "s", "colour": "c", "motion": "m"},
             {"background": "b", "shape": "s", "colour": "c", "motion": "n"}]
    twins = twin_test(np.ones((2, 2)), attrs)
    assert twins["motion"] == {"pairs": 2, "accuracy": 50.0, "p_value": pytest.approx(1.0)}
    assert twins["shape"]["pairs"] == 0
