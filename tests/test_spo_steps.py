"""SPO's formulas: the DDIM eta=1 transition and its density, the clipped-ratio loss, pair selection and the
random-continue rule."""
from __future__ import annotations

import math

import pytest
import torch

from diffusion.process import alpha_sigma
from diffusion.samplers import ddim_noise_scale
from spo.steps import (clipped_dpo_loss, ddim_transition, gaussian_log_prob, next_parent, select_pairs,
                        transition_kl)


def test_eta1_transition_is_the_ddpm_posterior():
    # with (x0, eps) consistent with x_t, DDIM at eta = 1 must be q(x_s | x_t, x0), written here in ᾱ terms
    torch.manual_seed(0)
    lam, lam_next = -1.3, 0.7
    x0, eps = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    a, s = (float(v) for v in alpha_sigma(torch.tensor(lam, dtype=torch.float64)))
    a_next, _ = (float(v) for v in alpha_sigma(torch.tensor(lam_next, dtype=torch.float64)))
    x_t = a * x0 + s * eps
    abar_t, abar_s = a ** 2, a_next ** 2
    alpha_t = abar_t / abar_s
    beta_t = 1 - alpha_t
    posterior_mean = (math.sqrt(abar_s) * beta_t / (1 - abar_t)) * x0 + \
        (math.sqrt(alpha_t) * (1 - abar_s) / (1 - abar_t)) * x_t
    posterior_std = math.sqrt((1 - abar_s) / (1 - abar_t) * beta_t)
    mean, std = ddim_transition(x0, eps, lam, lam_next, eta=1.0)
    assert torch.allclose(mean, posterior_mean, atol=1e-5)
    assert float(std) == pytest.approx(posterior_std, rel=1e-6)
    assert float(std) == pytest.approx(ddim_noise_scale(lam, lam_next, 1.0), rel=1e-6)  # the core sampler's noise


def test_per_sample_logsnr_matches_scalar_calls():
    x0, eps = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    lams = torch.tensor([-4.0, 0.0, 2.0], dtype=torch.float64)
    mean, std = ddim_transition(x0, eps, lams, lams + 1.5)
    for i in range(3):
        m_i, s_i = ddim_transition(x0[i:i + 1], eps[i:i + 1], float(lams[i]), float(lams[i]) + 1.5)
        assert torch.allclose(mean[i:i + 1], m_i, atol=1e-6)
        assert float(std[i].reshape(-1)[0]) == pytest.approx(float(s_i), rel=1e-6)


def test_transition_rejects_backward_steps_and_eta_zero():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="larger logSNR"):
        ddim_transition(x, x, 1.0, 0.5)
    with pytest.raises(ValueError, match="deterministic"):
        ddim_transition(x, x, 0.0, 1.0, eta=0.0)


def test_log_density_is_the_gaussian_averaged_over_dimensions():
    torch.manual_seed(1)
    mean, x = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    std = torch.tensor(0.37)
    direct = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).mean(dim=1)
    assert torch.allclose(gaussian_log_prob(x, mean, std), direct, atol=1e-6)
    per_sample_std = torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(4, 1, 1, 1)
    direct = torch.distributions.Normal(mean, per_sample_std).log_prob(x).flatten(1).mean(dim=1)
    assert torch.allclose(gaussian_log_prob(x, mean, per_sample_std), direct, atol=1e-5)


def test_clipped_loss_starts_at_log2_and_prefers_the_winner():
    zero = torch.zeros(3, requires_grad=True)
    ref = torch.zeros(3)
    out = clipped_dpo_loss(zero, ref, torch.zeros(3), ref)
    assert float(out["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    out["loss"].backward()
    assert bool((zero.grad < 0).all())  # raising the winner's log-probability lowers the loss


def test_clipped_loss_has_zero_gradient_outside_the_trust_region():
    eps = 0.1
    # log r_w = 0.5 (r = 1.65, clipped), log r_l = -0.5 (clipped): no gradient reaches either
    logp_w = torch.tensor([0.5], requires_grad=True)
    logp_l = torch.tensor([-0.5], requires_grad=True)
    out = clipped_dpo_loss(logp_w, torch.zeros(1), logp_l, torch.zeros(1), beta=10.0, clip=eps)
    out["loss"].backward()
    assert float(logp_w.grad) == 0.0 and float(logp_l.grad) == 0.0
    assert float(out["clipped_share"]) == 1.0
    expected = -torch.nn.functional.logsigmoid(torch.tensor(10.0 * (math.log(1 + eps) - math.log(1 - eps))))
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    # far outside (log ratios whose exp overflows float32) the loss stays finite and the gradient exactly zero
    huge = torch.tensor([500.0, -500.0], requires_grad=True)
    out = clipped_dpo_loss(huge, torch.zeros(2), -huge, torch.zeros(2))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.equal(huge.grad, torch.zeros(2))
    # inside the clip the gradient flows
    logp_w = torch.tensor([0.05], requires_grad=True)
    clipped_dpo_loss(logp_w, torch.zeros(1), torch.zeros(1), torch.zeros(1))["loss"].backward()
    assert float(logp_w.grad) < 0


def test_pairs_are_kept_by_softmax_margin():
    scores = torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.1, 0.05], [3.0, -1.0, 0.0]])
    best, worst, keep = select_pairs(scores, threshold=0.3)
    assert best.tolist() == [1, 1, 0] and worst.tolist() == [0, 0, 1]
    # p_best - p_worst = tanh(spread / 2): tanh(1) = 0.76, tanh(0.05) = 0.05, tanh(2) = 0.96
    assert keep.tolist() == [True, False, True]
    assert select_pairs(scores, threshold=0.8)[2].tolist() == [False, False, True]
    with pytest.raises(ValueError):
        select_pairs(torch.zeros(3, 1), 0.3)


def test_random_continue_ignores_the_scores_and_winner_follows_them():
    k, n = 4, 8000
    scores = torch.arange(k, dtype=torch.float32).repeat(n, 1)  # candidate 3 always wins
    chosen = next_parent(scores, "random", torch.Generator().manual_seed(0))
    counts = torch.bincount(chosen, minlength=k).float() / n
    assert bool(((counts - 1 / k).abs() < 0.02).all())  # uniform, not drawn towards the winner
    assert next_parent(scores, "winner").eq(k - 1).all()
    with pytest.raises(ValueError, match="continue rule"):
        next_parent(scores, "best")


def test_transition_kl_is_the_gaussian_kl_averaged_over_dimensions():
    torch.manual_seed(3)
    mean, mean_ref = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    std = torch.tensor([0.2, 0.5, 1.0, 2.0]).view(4, 1, 1, 1)
    direct = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std.expand_as(mean)),
                                               torch.distributions.Normal(mean_ref, std.expand_as(mean)))
    assert torch.allclose(transition_kl(mean, mean_ref, std), direct.flatten(1).mean(dim=1), atol=1e-6)
    assert torch.equal(transition_kl(mean, mean, std), torch.zeros(4))
