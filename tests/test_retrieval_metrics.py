import numpy as np
import pytest
import torch

from hdvila.retrieval.metrics import compute_metrics, compute_ranks


def test_hand_computed_diagonal():
    sim = np.array([[0.9, 0.1, 0.2],   # rank 1
                    [0.8, 0.5, 0.1],   # 0.8 beats 0.5 -> rank 2
                    [0.7, 0.6, 0.3]])  # both beat -> rank 3
    assert list(compute_ranks(sim)) == [1, 2, 3]
    m = compute_metrics(sim)
    assert m["R@1"] == pytest.approx(100 / 3) and m["R@5"] == 100.0
    assert m["MdR"] == 2.0 and m["MnR"] == 2.0


def test_ties_optimistic_vs_pessimistic():
    sim = np.array([[0.5, 0.5, 0.5, 0.1],
                    [0.2, 0.3, 0.3, 0.3],
                    [0.0, 0.0, 0.0, 0.0],
                    [0.1, 0.2, 0.3, 0.4]])
    assert list(compute_ranks(sim, ties="optimistic")) == [1, 1, 1, 1]
    assert list(compute_ranks(sim, ties="pessimistic")) == [3, 3, 4, 1]


def test_several_positives_use_the_best_one():
    sim = np.array([[0.1, 0.9, 0.5, 0.7],
                    [0.3, 0.2, 0.1, 0.4]])
    # query 0: positives {0, 2}: best 0.5, beaten by 0.9 and 0.7 (not positives) -> 3
    # query 1: positives {1, 3}: best 0.4 -> 1
    assert list(compute_ranks(sim, positives=[[0, 2], [1, 3]])) == [3, 1]
    # another positive that scores highest itself does not count against the query
    assert list(compute_ranks(sim, positives=[[2, 1], [3]])) == [1, 1]


def test_chunked_equals_unchunked_and_tensors_work():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(257, 300)).round(1)  # rounding makes many ties
    pos = [list(rng.choice(300, size=rng.integers(1, 4), replace=False)) for _ in range(257)]
    for ties in ("optimistic", "pessimistic"):
        full = compute_ranks(sim, pos, ties=ties, chunk=10_000)
        assert np.array_equal(full, compute_ranks(sim, pos, ties=ties, chunk=7))
        assert np.array_equal(full, compute_ranks(torch.tensor(sim), pos, ties=ties))


def test_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        compute_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no positive"):
        compute_metrics(np.zeros((1, 3)), positives=[[]])
    with pytest.raises(ValueError, match="ties"):
        compute_metrics(np.eye(2), ties="random")
