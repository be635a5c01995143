"""benchmarks/bench_heads.py: the text-encoder measure of how actions carry to unseen phrasings."""
from __future__ import annotations

import pytest
import torch

from bench_helpers import load_benchmark

TRAIN = [("smile", "make her smile"), ("smile", "a happy grin"), ("frown", "make her frown"), ("frown", "sad face")]
TEST = [("smile", "grin widely"), ("frown", "look sad")]


def lookup(table):
    """An encode function from a fixed sentence -> vector table."""
    return lambda texts: torch.tensor([table[t] for t in texts], dtype=torch.float32)


# each encoder alone gets one held-out sentence wrong; summed, their z-scored cosines get both right
ENC_A = lookup({"make her smile": [1, 0, 0], "a happy grin": [0, 1, 0], "make her frown": [0, 0, 1],
                "sad face": [0, 0, 1], "grin widely": [0.2, 1, 0], "look sad": [0.9, 0, 0.6]})
ENC_B = lookup({"make her smile": [1, 0], "a happy grin": [1, 0.1], "make her frown": [0, 1], "sad face": [0.1, 1],
                "grin widely": [0.7, 1], "look sad": [0, 1]})


def test_phrasing_agreement_of_one_encoder():
    bench = load_benchmark("bench_heads")
    a = bench.phrasing_agreement(ENC_A, TRAIN, TEST)
    assert a["nearest_phrasing"] == pytest.approx(0.5) and a["chance"] == pytest.approx(0.5)
    assert (a["held_out"], a["train"]) == (2, 4)
    b = bench.phrasing_agreement(ENC_B, TRAIN, TEST)
    assert b["nearest_phrasing"] == pytest.approx(0.5)


def test_phrasing_agreement_of_two_encoders_sums_their_z_scored_cosines():
    bench = load_benchmark("bench_heads")
    both = bench.phrasing_agreement([ENC_A, ENC_B], TRAIN, TEST)
    assert both["nearest_phrasing"] == pytest.approx(1.0)
    # a list of one is the encoder alone
    assert bench.phrasing_agreement([ENC_A], TRAIN, TEST) == bench.phrasing_agreement(ENC_A, TRAIN, TEST)


def test_nearest_sentence_snap_hands_the_mapper_the_nearest_training_embedding():
    bench = load_benchmark("bench_heads")

    class Head:  # what the snap touches of a loaded head: its own text encoder and encode_texts
        text_encoder = staticmethod(lookup({"make her smile": [5, 0, 0], "a happy grin": [0, 5, 0],
                                            "make her frown": [0, 0, 5], "sad face": [0, 0, 4]}))

    bank = [t for _, t in TRAIN]
    head = Head()
    bench.nearest_sentence_snap(head, bank, [ENC_A, ENC_B])
    out = head.encode_texts(["grin widely", "look sad"])
    # the ensemble picks a smile sentence and a frown sentence: their embeddings under the head's own encoder
    assert torch.equal(out[0], torch.tensor([0.0, 5.0, 0.0]))
    assert out[1, :2].abs().sum() == 0 and out[1, 2] > 0
    bench.nearest_sentence_snap(head, bank, [ENC_A])
    assert torch.equal(head.encode_texts(["look sad"]), torch.tensor([[5.0, 0.0, 0.0]]))  # A alone: wrong action
