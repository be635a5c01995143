"""The pieces of SPO that are pure formulas: the DDIM η = 1 transition as a Gaussian, its log density, the
clipped-ratio DPO loss, pair selection by softmax margin and the random-continue rule.

Notation as in `diffusion.samplers`: a step goes from logSNR λ to the next, larger λ' (towards clean data), with
α² = sigmoid(λ), σ² = sigmoid(−λ). Given the model's (x0_hat, eps_hat) at (x_t, λ), DDIM with η draws

    x' = μ + s z,   μ = α' x0_hat + sqrt(σ'² − s²) eps_hat,   s = η σ' sqrt(1 − e^{λ−λ'}),   z ~ N(0, I),

so π(x' | x_t) = N(μ, s² I): at η = 1 the DDPM posterior. SPO compares this density under the policy being
trained and under the frozen reference, for the same (x_t, x').
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffusion.process import alpha_sigma, broadcast

LOG_2PI = math.log(2.0 * math.pi)


def ddim_transition(x0: torch.Tensor, eps: torch.Tensor, logsnr: torch.Tensor | float,
                    logsnr_next: torch.Tensor | float, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, s): the mean [B, ...] and standard deviation (broadcastable to it) of DDIM's step λ → λ' from the
    model's (x0_hat, eps_hat). λ and λ' are scalars or per-sample [B]; coefficients are computed in float64."""
    lam = torch.as_tensor(logsnr, dtype=torch.float64)
    lam_next = torch.as_tensor(logsnr_next, dtype=torch.float64)
    if not bool((lam_next > lam).all()):
        raise ValueError("a denoising step goes to a larger logSNR")
    if eta <= 0:
        raise ValueError("eta = 0 makes the step deterministic: it has no density (SPO samples with eta > 0)")
    alpha_next, sigma_next = alpha_sigma(lam_next)
    s = eta * sigma_next * torch.sqrt(-torch.expm1(lam - lam_next))  # ddim_noise_scale, vectorised
    keep = torch.sqrt((sigma_next ** 2 - s ** 2).clamp_min(0.0))
    alpha_next, keep, s = (broadcast(v.to(x0.dtype), x0) for v in (alpha_next, keep, s))
    return alpha_next * x0 + keep * eps, s


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std² I) per sample, averaged (not summed) over the data dimensions, as SPO does: [B]."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    per_dim = -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI
    return per_dim.flatten(1).mean(dim=1)


def transition_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std² I) ‖ N(mean_ref, std² I)) per sample, averaged over the data dimensions like the log
    density: mean over dims of (mean − mean_ref)² / (2 std²), [B]."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    return (((mean - mean_ref) / std) ** 2 / 2).flatten(1).mean(dim=1)


def clipped_dpo_loss(logp_win: torch.Tensor, logp_win_ref: torch.Tensor, logp_lose: torch.Tensor,
                     logp_lose_ref: torch.Tensor, beta: float = 10.0, clip: float = 0.1) -> dict[str, torch.Tensor]:
    """SPO's loss per pair: −log σ(β (log r̃_w − log r̃_l)), r = π_θ / π_ref, r̃ = clip(r, 1 − ε, 1 + ε).

    Clipping the ratio (not the log ratio) makes the gradient exactly zero once a ratio leaves [1 − ε, 1 + ε],
    a PPO-like trust region around the reference; the loss starts at log 2. Returns the mean loss over pairs and
    diagnostics: the share of clipped ratios and the implicit reward margin.
    """
    if clip <= 0 or clip >= 1:
        raise ValueError(f"clip must be in (0, 1), got {clip}")
    # clipped in log space: log clip(r) = clamp(log r). The same value, but exp(log r) would overflow for the
    # large log ratios of the last, nearly noiseless step, and clamp's zero gradient times an infinite exp
    # gradient is NaN
    low, high = math.log(1.0 - clip), math.log(1.0 + clip)
    log_ratio_w = logp_win - logp_win_ref
    log_ratio_l = logp_lose - logp_lose_ref
    margin = beta * (log_ratio_w.clamp(low, high) - log_ratio_l.clamp(low, high))
    loss = -F.logsigmoid(margin)
    outside = sum(((r < low) | (r > high)).float() for r in (log_ratio_w, log_ratio_l))
    return {"loss": loss.mean(), "clipped_share": (outside / 2).mean().detach(),
            "reward_margin": margin.mean().detach(), "accuracy": (margin > 0).float().mean().detach()}


def select_pairs(scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best and worst of k candidates per parent, kept when softmax([s_best, s_worst]) separates them by more
    than `threshold`.

    scores [B, k] -> (best index [B], worst index [B], keep [B] bool). With p = softmax of the two scores,
    p_best − p_worst = tanh((s_best − s_worst) / 2).
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [parents, k >= 2], got {tuple(scores.shape)}")
    best = scores.argmax(dim=1)
    worst = scores.argmin(dim=1)
    pair = torch.stack([scores.gather(1, best[:, None])[:, 0], scores.gather(1, worst[:, None])[:, 0]], dim=1)
    probs = pair.float().softmax(dim=1)
    keep = (probs[:, 0] - probs[:, 1]) > threshold
    return best, worst, keep


def next_parent(scores: torch.Tensor, rule: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which candidate continues the chain: "random" (SPO: uniformly, so the next pair's parent is not biased
    towards the preference) or "winner" (the ablation: the best-scored candidate). scores [B, k] -> index [B]."""
    if rule == "random":
        b, k = scores.shape
        return torch.randint(k, (b,), generator=generator).to(scores.device)
    if rule == "winner":
        return scores.argmax(dim=1)
    raise ValueError(f"continue rule must be 'random' or 'winner', got {rule!r}")


__all__ = ["clipped_dpo_loss", "ddim_transition", "gaussian_log_prob", "next_parent", "select_pairs",
           "transition_kl"]
