"""The continuous-time variance-preserving (VP) diffusion process, parameterised by logSNR λ.

    x_t = α x0 + σ ε,    α² = sigmoid(λ),  σ² = sigmoid(−λ),  so α² + σ² = 1 and SNR = α²/σ² = exp(λ)

λ → +∞ is clean data, λ → −∞ pure noise. A denoiser predicts one of three targets:

    "eps": ε        "x0": x0        "v": v = α ε − σ x0   (Salimans & Ho 2022)

At a fixed (x_t, λ) each target is an affine function of any other, so predictions convert freely.
Which divisions a conversion needs (and where it is ill-conditioned):

    from ε :  x0 = (x_t − σ ε) / α     divides by α → 0 as λ → −∞  (ε-models are poor x0 predictors at high noise)
    from x0:  ε  = (x_t − α x0) / σ    divides by σ → 0 as λ → +∞
    from v :  x0 = α x_t − σ v,  ε = σ x_t + α v      no division: well conditioned for every λ

Logsnr tensors are per sample ([B]); `broadcast` lines them up with [B, ...] data.
"""
from __future__ import annotations

import math

import torch

# from sigmoid(±λ) directly: sqrt(1 − α²) would cancel to 0 for large λ (float32 already at λ ≈ 17)
from .schedules import alpha_sigma

__all__ = ["TARGETS", "alpha_sigma", "broadcast", "add_noise", "target_of", "predict_x0_eps", "convert",
           "check_target", "cosine_time"]

TARGETS = ("eps", "x0", "v")  # the one list of prediction targets (configs, weightings and samplers check it)


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def cosine_time(logsnr: torch.Tensor) -> torch.Tensor:
    """c(λ) = (2/π) atan(e^{−λ/2}): the time at which the cosine schedule (α = cos(πt/2)) has logSNR λ, in (0, 1).
    The inverse of `diffusion.samplers.cosine_logsnr`; the denoisers' noise-level input. Keeps a floating dtype."""
    if not logsnr.is_floating_point():
        logsnr = logsnr.float()
    return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * logsnr))


def broadcast(logsnr: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A per-sample [B] logsnr reshaped to [B, 1, 1, ...] to broadcast against x [B, ...]; scalars stay scalars."""
    if not isinstance(logsnr, torch.Tensor):
        # a Python number takes x's precision rather than torch's default float32
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.tensor(float(logsnr), dtype=dtype, device=x.device)
    logsnr = logsnr.to(x.device)
    if not logsnr.is_floating_point():
        logsnr = logsnr.float()
    if logsnr.dim() == 0:
        return logsnr
    if logsnr.dim() != 1 or logsnr.shape[0] != x.shape[0]:
        raise ValueError(f"logsnr must be a scalar or shape [{x.shape[0]}], got {tuple(logsnr.shape)}")
    return logsnr.reshape(-1, *([1] * (x.dim() - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """x_t = α x0 + σ ε."""
    alpha, sigma = alpha_sigma(broadcast(logsnr, x0))
    return alpha * x0 + sigma * noise


def target_of(x0: torch.Tensor, noise: torch.Tensor, logsnr: torch.Tensor, target: str) -> torch.Tensor:
    """The regression target for (x0, ε) at λ: ε, x0 or v = α ε − σ x0."""
    check_target(target)
    if target == "eps":
        return noise
    if target == "x0":
        return x0
    alpha, sigma = alpha_sigma(broadcast(logsnr, x0))
    return alpha * noise - sigma * x0


def predict_x0_eps(prediction: torch.Tensor, x_t: torch.Tensor, logsnr: torch.Tensor,
                   target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a prediction of `target` at (x_t, λ); the pair always satisfies x_t = α x0 + σ ε.

    See the module docstring for which conversions divide by α or σ.
    """
    check_target(target)
    alpha, sigma = alpha_sigma(broadcast(logsnr, x_t))
    if target == "eps":
        eps = prediction
        x0 = (x_t - sigma * eps) / alpha
    elif target == "x0":
        x0 = prediction
        eps = (x_t - alpha * x0) / sigma
    else:  # v: rotation of (x_t, v) by the angle atan(σ/α); nothing to divide
        x0 = alpha * x_t - sigma * prediction
        eps = sigma * x_t + alpha * prediction
    return x0, eps


def convert(prediction: torch.Tensor, x_t: torch.Tensor, logsnr: torch.Tensor, source: str,
            dest: str) -> torch.Tensor:
    """Re-express a prediction of `source` as a prediction of `dest` (ε, x0 or v) at the same (x_t, λ)."""
    check_target(source)
    check_target(dest)
    if source == dest:
        return prediction
    x0, eps = predict_x0_eps(prediction, x_t, logsnr, source)
    return target_of(x0, eps, logsnr, dest)
