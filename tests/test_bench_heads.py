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


def test_with_snap_switches_a_loaded_head_to_another_rule_over_the_same_weights():
    from animation.stylegan2 import create_gan
    from heads.manipulation import ManipulationModel, TextManipulator
    from heads.mapper import MapperConfig, TextMapper

    bench = load_benchmark("bench_heads")
    generator, _ = create_gan("sg2-tiny16")
    mapper = TextMapper(MapperConfig(generator.num_ws, generator.w_dim, text_dim=3, hidden=8, layers=1))
    bank = [t for _, t in TRAIN]
    model = ManipulationModel(generator, mapper, {"snap_temperature": 100.0}, phrasings=ENC_A(bank))
    head = TextManipulator(model, encoder=None, text_encoder=ENC_A)
    hot = head.encode_texts(["grin widely"])
    assert torch.allclose(hot, torch.nn.functional.normalize(ENC_A(bank), dim=-1).mean(0, keepdim=True), atol=0.02)
    weights = {k: v.clone() for k, v in model.mapper.state_dict().items()}
    bench.with_snap(head, "nearest", 0.0, [], bank)
    assert torch.equal(head.encode_texts(["grin widely"]), torch.tensor([[0.0, 1.0, 0.0]]))  # "a happy grin"
    assert all(torch.equal(v, model.mapper.state_dict()[k]) for k, v in weights.items())
