"""The animator's evaluation metrics separate a perfect animator (the renderer's own clips) from one that does
nothing, and from one that does the wrong thing."""
import numpy as np
import pytest
import torch

from animation.evaluate import clip_metrics, ground_truth_clips, make_eval_set
from animation.faces import ACTIONS, action_sentences, identity_split
from animation.oracle import get_oracle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    oracle = get_oracle(tmp_path_factory.mktemp("oracle"), size=32, count=2048, epochs=4, eval_count=0,
                        other_size_fraction=0.0)
    evalset = make_eval_set(32, faces=3, seed=5)
    return oracle, evalset, ground_truth_clips(evalset, 6)


def test_eval_set_uses_held_out_identities_and_sentences():
    evalset = make_eval_set(16, faces=2, identities=100, test_fraction=0.2, identity_seed=0, seed=1)
    _, test_ids = identity_split(100, 0.2, 0)
    assert len(evalset.actions) == 2 * len(ACTIONS) and evalset.images.shape == (2, 3, 16, 16)
    for row in evalset.factors[:, :test_ids.shape[1]]:
        assert np.isclose(test_ids, row).all(axis=1).any()
    held_out = {s for _, s in action_sentences("test")}
    assert set(evalset.sentences) <= held_out


def test_ground_truth_clips_score_high_and_still_clips_score_chance(setup):
    oracle, evalset, truth = setup
    good = clip_metrics(truth, evalset, oracle)
    still = clip_metrics(evalset.images[evalset.clip_faces()][:, None].repeat(1, 6, 1, 1, 1), evalset, oracle)
    assert good["text_match"] > 0.6 > 0.2 > still["text_match"]
    assert good["text_match_shuffled"] < 0.25
    assert good["text_match_p_value"] < 1e-6 and still["text_match_p_value"] > 0.05
    assert good["direction"] > 0.9 and still["direction"] == 0.0
    assert good["spearman"] > 0.8 and still["spearman"] == 0.0
    assert good["target_change"] > 0.2 and still["target_change"] == 0.0
    assert good["identity_error"] < 0.1 and still["identity_error"] == 0.0
    assert good["last_frame_spread"] > 0.2 and still["last_frame_spread"] == 0.0
    assert still["smoothness_pixels"] == 0.0 and good["frame0_l1"] == 0.0


def test_backwards_and_jerky_clips_are_caught(setup):
    oracle, evalset, truth = setup
    good = clip_metrics(truth, evalset, oracle)
    reversed_ = clip_metrics(truth.flip(1), evalset, oracle)  # ends where it should start
    assert reversed_["direction"] < 0.5 < good["direction"] and reversed_["spearman"] < 0
    order = torch.tensor([0, 3, 1, 4, 2, 5])  # the same frames out of order
    jerky = clip_metrics(truth[:, order], evalset, oracle)
    assert jerky["smoothness_pixels"] > 2 * good["smoothness_pixels"]
    assert jerky["monotone_steps"] < good["monotone_steps"]
    dw = torch.linspace(0, 1, 6)[None, :, None, None].repeat(len(truth), 1, 2, 3)
    assert clip_metrics(truth, evalset, oracle, dw)["smoothness_latent"] < 1e-10  # constant velocity
    assert clip_metrics(truth, evalset, oracle, dw[:, order])["smoothness_latent"] > 0.01
    relative = clip_metrics(truth, evalset, oracle, dw[:, order])["smoothness_relative"]
    assert clip_metrics(truth, evalset, oracle, 5 * dw[:, order])["smoothness_relative"] == pytest.approx(relative)
