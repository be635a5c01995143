"""Pairs from a policy's own samples (SPO's resampler, the trajectory baseline), the labeller and the step-aware
preference model, on a tiny random DiT: fast, and enough to check the bookkeeping."""
from __future__ import annotations

import pytest
import torch

from data_tools.image_datasets import load_image_dataset
from diffusion.models import create_model
from spo.collect import sample_chain, step_pairs, trajectory_pairs
from spo.policy import DenoiserPolicy
from spo.preference import LabellerConfig, PreferenceLabeller, centring, stroke_crispness
from spo.scorers import load_scorer
from spo.spm import (PreferencePairs, SPMConfig, SPMTrainConfig, StepAwarePreferenceModel, accuracy_per_step,
                     bradley_terry_loss, train_spm)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    model = create_model("dit-digits", num_classes=10, width=32, depth=1, heads=2).eval()
    with torch.no_grad():  # a DiT starts with zero output layers: give it outputs that depend on x, λ and the class
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return DenoiserPolicy(model, "v", steps=5, guidance=2.0)


def test_fixture_network_depends_on_its_inputs(policy):
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = [policy.predict(policy.model, x, torch.zeros(2), torch.tensor([c, c]))[0] for c in (1, 2)]
    assert out[0].abs().max() > 0 and not torch.allclose(out[0], out[1])


def test_kept_states_are_draws_from_their_own_parents_transition(policy):
    from spo.steps import ddim_transition

    pairs, _ = step_pairs(policy, policy.model, load_scorer("oracle-crispness"), torch.arange(10).repeat(4), k=4,
                          divert_start=1, threshold=0.0, generator=torch.Generator().manual_seed(5))
    grid = torch.tensor(policy.grid, dtype=torch.float64)
    lam, lam_next = grid[pairs.step], grid[pairs.step + 1]
    with torch.no_grad():
        x0, eps = policy.predict(policy.model, pairs.parent_win, lam.float(), policy.condition(pairs.prompt_ids))
    mean, std = ddim_transition(x0, eps, lam, lam_next)
    for state in (pairs.win, pairs.lose):  # standardised by the parent's transition: N(0, 1)
        z = (state - mean) / std
        assert abs(float(z.mean())) < 0.05 and float(z.std()) == pytest.approx(1.0, abs=0.05)
    shuffled = (pairs.win[torch.randperm(len(pairs))] - mean) / std  # another parent's state is far off
    assert float(shuffled.std()) > 1.5


def test_scores_are_taken_for_each_candidates_own_prompt(policy):
    seen = []

    def scorer(images, prompts, logsnr):
        seen.append(prompts.clone())
        return prompts.float() * 0 + images.flatten(1).mean(dim=1)

    prompts = torch.tensor([4, 1, 7])
    step_pairs(policy, policy.model, scorer, prompts, k=3, divert_start=3, threshold=0.0,
               generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, prompts.repeat(3)) for p in seen)  # candidate-major: k copies of the batch


def test_step_pairs_share_parents_and_the_winner_scores_higher(policy):
    scorer = load_scorer("oracle-crispness")
    prompts = torch.tensor([0, 3, 7])
    k, divert = 3, 2
    pairs, rows = step_pairs(policy, policy.model, scorer, prompts, k=k, divert_start=divert, threshold=0.0,
                             generator=torch.Generator().manual_seed(0))
    steps = len(policy.grid) - 1
    assert pairs.shared_parent and pairs.parent_win is pairs.parent_lose
    assert pairs.stats["pairs_offered"] == 3 * (steps - divert)
    assert len(pairs) == pairs.stats["pairs_kept"] <= pairs.stats["pairs_offered"]
    assert int(pairs.step.min()) >= divert
    # divert_start + 1 single predictions, then k per remaining step; 2 rows each under guidance
    assert rows == 3 * (divert + 1 + k * (steps - divert)) * 2
    # re-judge: the kept winner's x0_hat scores at least as high as the loser's, at the candidate's own λ
    grid = torch.tensor(policy.grid)
    lam_next = grid[pairs.step + 1]
    cond = policy.condition(pairs.prompt_ids)
    with torch.no_grad():
        x0_w, _ = policy.predict(policy.model, pairs.win, lam_next, cond)
        x0_l, _ = policy.predict(policy.model, pairs.lose, lam_next, cond)
    assert bool((stroke_crispness(x0_w) >= stroke_crispness(x0_l) - 1e-6).all())


def test_step_pairs_threshold_drops_close_calls(policy):
    coin = load_scorer("coinflip", seed=3)
    loose, _ = step_pairs(policy, policy.model, coin, torch.arange(6), k=2, divert_start=1, threshold=0.0,
                          generator=torch.Generator().manual_seed(1))
    strict, _ = step_pairs(policy, policy.model, coin, torch.arange(6), k=2, divert_start=1, threshold=0.95,
                           generator=torch.Generator().manual_seed(1))
    assert len(strict) < len(loose)


def test_trajectory_pairs_copy_the_final_label_to_every_step(policy):
    prompts = torch.arange(8)
    pairs, rows = trajectory_pairs(policy, policy.model, load_scorer("oracle-crispness"), prompts,
                                   generator=torch.Generator().manual_seed(0))
    steps = len(policy.grid) - 1
    assert not pairs.shared_parent
    assert len(pairs) == 8 * steps and pairs.step.tolist() == sorted(list(range(steps)) * 8)
    assert rows == 8 * 2 * (steps + 1) * 2  # two chains of N + 1 guided predictions per prompt
    # the same draws again: every pair's preferred states come from the chain that ends in the crisper image
    generator = torch.Generator().manual_seed(0)
    states_a, final_a, _ = sample_chain(policy, policy.model, prompts, generator)
    states_b, final_b, _ = sample_chain(policy, policy.model, prompts, generator)
    a_wins = stroke_crispness(final_a) > stroke_crispness(final_b)
    assert 0 < int(a_wins.sum()) < 8  # both outcomes occur, so a swapped label would show
    side = a_wins[:, None, None, None]
    for i in range(steps):
        at_step = pairs.step == i
        assert torch.equal(pairs.prompt_ids[at_step], prompts)
        assert torch.allclose(pairs.parent_win[at_step], torch.where(side, states_a[i], states_b[i]))
        assert torch.allclose(pairs.parent_lose[at_step], torch.where(side, states_b[i], states_a[i]))
        assert torch.allclose(pairs.win[at_step], torch.where(side, states_a[i + 1], states_b[i + 1]))
        assert torch.allclose(pairs.lose[at_step], torch.where(side, states_b[i + 1], states_a[i + 1]))


def test_labeller_is_noisy_but_follows_the_hidden_utility():
    images = torch.as_tensor(load_image_dataset("digits", "train")[0][:600])
    labeller = PreferenceLabeller(LabellerConfig(layout_weight=0.0, temperature=0.5, tie_band=0.1)).fit(images)
    a, b = images[:300], images[300:]
    labels = labeller.label(a, b, torch.Generator().manual_seed(0))
    utility_order = (labeller.utility(a) > labeller.utility(b)).float()
    decided = labels != 0.5
    agreement = float((labels == utility_order)[decided].float().mean())
    assert 0.6 < agreement < 0.98  # mostly right, not always: the labels are noisy
    ties = (labeller.utility(a) - labeller.utility(b)).abs() < 0.1
    assert torch.equal(labels == 0.5, ties)
    with pytest.raises(RuntimeError, match="fit"):
        PreferenceLabeller().utility(images[:2])
    round_trip = PreferenceLabeller.from_dict(labeller.to_dict())
    assert torch.allclose(round_trip.utility(a), labeller.utility(a))


def test_hidden_features_measure_what_they_say():
    paper = -torch.ones(1, 1, 8, 8)
    crisp = paper.clone()
    crisp[..., 2:6, 3:5] = 1.0
    grey = paper.clone()
    grey[..., 2:6, 3:5] = 0.0
    assert stroke_crispness(crisp) > stroke_crispness(grey)
    assert float(stroke_crispness(crisp)) == pytest.approx(1.0)
    off_centre = paper.clone()
    off_centre[..., 0:2, 0:2] = 1.0
    assert float(centring(crisp)) == pytest.approx(0.0, abs=1e-6) and float(centring(off_centre)) < -3


def test_bradley_terry_with_ties_and_labels():
    a, b = torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([0.0, 0.0])
    loss = bradley_terry_loss(a, b, torch.tensor([0.5, 0.5]))
    loss.backward()
    assert float(a.grad[0]) > 0 and float(a.grad[1]) == pytest.approx(0.0)  # a tie pulls the scores together
    assert float(bradley_terry_loss(torch.zeros(1), torch.zeros(1), torch.ones(1))) == pytest.approx(0.6931, abs=1e-4)


def test_spm_learns_the_preference_and_is_step_aware(policy, tmp_path):
    images = torch.as_tensor(load_image_dataset("digits", "train")[0][:800])
    prompts = torch.as_tensor(load_image_dataset("digits", "train")[1][:400])
    a, b = images[:400], images[400:]
    hidden = (stroke_crispness(a) > stroke_crispness(b)).float()
    pairs = PreferencePairs(a, b, prompts, hidden, hidden)
    config = SPMConfig(image_size=8, channels=1, num_prompts=10, width=32, depth=2, embed_dim=16)
    model = train_spm(policy, pairs.subset(torch.arange(300)), config, SPMTrainConfig(steps=300, batch_size=64))
    rows = accuracy_per_step(model, policy, pairs.subset(torch.arange(300, 400)))
    clean = rows[-1]
    assert clean["step"] is None and clean["hidden_accuracy"] > 0.75
    images8 = images[:4]
    scores = [model.score(images8, prompts[:4], lam) for lam in (-5.0, 5.0)]
    assert not torch.allclose(scores[0], scores[1])  # the timestep changes the score
    model.save_pretrained(tmp_path / "spm")
    loaded = StepAwarePreferenceModel.from_pretrained(tmp_path / "spm")
    assert torch.allclose(loaded.score(images8, prompts[:4], 1.0), model.score(images8, prompts[:4], 1.0))
    blind = StepAwarePreferenceModel(SPMConfig(width=32, depth=1, embed_dim=16, step_aware=False))
    assert torch.equal(blind.score(images8, prompts[:4], -5.0), blind.score(images8, prompts[:4], 5.0))
