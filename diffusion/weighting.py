"""Per-sample loss weights for ε-, x0- and v-prediction, as functions of logSNR λ.

The three losses differ only by an SNR factor (VP process, SNR = exp(λ)):
    ‖ε̂ − ε‖² = SNR·‖x̂0 − x0‖²        ‖v̂ − v‖² = (SNR + 1)·‖x̂0 − x0‖²
so a weighting is defined once, as an x0-space weight w_x0(λ), and a loss on target T uses
w_T = w_x0 / {1, SNR, SNR + 1} for T = {x0, eps, v}.

Weights are computed from λ in log space, so none overflows or divides by zero for λ in [−20, 20] in float32.

    weight = loss_weight("min_snr", logsnr, "eps", gamma=5.0)
    loss = (weight * ((eps_hat - eps) ** 2).mean(dim=(1, 2, 3))).mean()
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from data_tools.registry import Registry

from .process import TARGETS, check_target
from .schedules import Schedule, _build_schedule, importance_weight

DEFAULT_GAMMA = 5.0  # Min-SNR's default everywhere (Hang et al. 2023)


@dataclass(frozen=True)
class Weighting:
    """A registered loss weighting: either an x0-space weight given as log w_x0(λ, **params) (the same for every
    target), or a weight defined directly in the target's space, target_weight(λ, **params)."""

    params: frozenset[str] = frozenset()
    log_x0: Optional[Callable[..., Tensor]] = None
    target_weight: Optional[Callable[..., Tensor]] = None


WEIGHTINGS: Registry[Weighting] = Registry("loss weighting")


def get_weighting(name: str, params: dict[str, Any] | None = None) -> Weighting:
    """The registered weighting `name`, after checking that it takes `params` (RegistryError for a typo)."""
    weighting = WEIGHTINGS.get(name)
    unknown = set(params or {}) - weighting.params
    if unknown:
        raise ValueError(f"loss weighting {name!r} does not take {sorted(unknown)}")
    return weighting


def _check_weighting(name: str, params: dict[str, Any]) -> Weighting:
    return get_weighting(name, params)


def _check_gamma(gamma: float) -> None:
    if not gamma > 0:  # also rejects NaN
        raise ValueError(f"gamma must be > 0, got {gamma}")


def _as_tensor(x: Tensor | float) -> tuple[Tensor, bool]:
    """x as a floating tensor, and whether it came in as a plain number (to hand a float back)."""
    is_number = not isinstance(x, Tensor)
    x = torch.as_tensor(x, dtype=torch.float64 if is_number else None)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return x, is_number


def _returned(x: Tensor, as_number: bool) -> Tensor | float:
    return x.item() if as_number else x


def min_snr_weight(snr: Tensor | float, gamma: float, target: str) -> Tensor | float:
    """Min-SNR-γ weight in the target's space: x0 → min(SNR, γ); eps → min(SNR, γ)/SNR; v → min(SNR, γ)/(SNR + 1).

    Finite at the ends: SNR = 0 gives x0 0, eps 1, v 0; SNR = inf gives x0 γ, eps 0, v 0.
    """
    check_target(target)
    _check_gamma(gamma)
    snr, as_number = _as_tensor(snr)
    clipped = torch.clamp(snr, max=gamma)
    if target == "x0":
        weight = clipped
    elif target == "eps":
        # min(SNR, γ)/SNR = min(1, γ/SNR): γ/0 = inf clamps to 1, γ/inf = 0, so no 0/0 at either end.
        weight = torch.clamp(gamma / snr, max=1.0)
    else:
        # at SNR = inf this is γ/inf = 0
        weight = clipped / (snr + 1)
    return _returned(weight, as_number)


# --- named weightings ---------------------------------------------------------------------------------------
def _log_target_factor(logsnr: Tensor, target: str) -> Tensor:
    """log of the factor {1, SNR, SNR + 1} that turns a target-space squared error into x0 space."""
    if target == "x0":
        return torch.zeros_like(logsnr)
    if target == "eps":
        return logsnr
    return torch.nn.functional.softplus(logsnr)  # log(1 + e^λ)


def _log_min_snr(logsnr: Tensor, gamma: float = DEFAULT_GAMMA) -> Tensor:
    _check_gamma(gamma)
    return torch.clamp(logsnr, max=math.log(gamma))


def _log_soft_min_snr(logsnr: Tensor, gamma: float = DEFAULT_GAMMA) -> Tensor:
    # 1/(1/SNR + 1/γ) = γ·sigmoid(λ − log γ): a harmonic soft minimum of SNR and γ (HDiT / k-diffusion).
    _check_gamma(gamma)
    return math.log(gamma) + torch.nn.functional.logsigmoid(logsnr - math.log(gamma))


def _log_snr(logsnr: Tensor) -> Tensor:
    return logsnr


def _log_trunc_snr(logsnr: Tensor) -> Tensor:
    return torch.clamp(logsnr, min=0.0)  # max(SNR, 1)


def _importance_ratio(
    logsnr: Tensor,
    sample_schedule: Schedule | str | dict[str, Any] | None = None,
    target_schedule: Schedule | str | dict[str, Any] | None = None,
    sample_params: dict[str, Any] | None = None,
    target_params: dict[str, Any] | None = None,
) -> Tensor:
    if sample_schedule is None or target_schedule is None:
        raise ValueError("loss weighting 'importance' needs sample_schedule and target_schedule")
    sample = _build_schedule(sample_schedule, sample_params)
    target = _build_schedule(target_schedule, target_params)
    return importance_weight(logsnr, sample, target)


WEIGHTINGS.register("constant", Weighting(target_weight=torch.ones_like))
WEIGHTINGS.register("min_snr", Weighting(frozenset({"gamma"}), log_x0=_log_min_snr))
WEIGHTINGS.register("soft_min_snr", Weighting(frozenset({"gamma"}), log_x0=_log_soft_min_snr))
WEIGHTINGS.register("snr", Weighting(log_x0=_log_snr))
WEIGHTINGS.register("trunc_snr", Weighting(log_x0=_log_trunc_snr))
WEIGHTINGS.register("importance", Weighting(
    frozenset({"sample_schedule", "target_schedule", "sample_params", "target_params"}),
    target_weight=_importance_ratio))


def loss_weight(name: str, logsnr: Tensor | float, target: str, **params: Any) -> Tensor | float:
    """Weight for a loss on `target` ("eps", "x0" or "v") at logSNR λ.

    name: "constant" (1 in the target's space); "min_snr" (x0-space min(SNR, γ), param gamma);
    "soft_min_snr" (x0-space 1/(1/SNR + 1/γ), param gamma); "snr" (x0-space SNR); "trunc_snr" (x0-space
    max(SNR, 1)); "importance" (p_target(λ)/p_sample(λ) on top of the plain target loss; params sample_schedule
    and target_schedule as Schedule objects, names or {"name": ..., **params} dicts, optional sample_params /
    target_params for names). gamma defaults to 5.
    """
    check_target(target)
    weighting = _check_weighting(name, params)
    lam, as_number = _as_tensor(logsnr)
    if weighting.log_x0 is None:
        weight = weighting.target_weight(lam, **params)
    else:
        weight = torch.exp(weighting.log_x0(lam, **params) - _log_target_factor(lam, target))
    return _returned(weight, as_number)


def x0_space_weight(name: str, logsnr: Tensor | float, target: str, **params: Any) -> Tensor | float:
    """The x0-space weight that loss_weight(name, λ, target, ...) amounts to: w_T·{1, SNR, SNR + 1}.

    It depends on the target only for "constant" and "importance"; the others are defined in x0 space.
    """
    check_target(target)
    weighting = _check_weighting(name, params)
    lam, as_number = _as_tensor(logsnr)
    if weighting.log_x0 is not None:
        weight = torch.exp(weighting.log_x0(lam, **params))
    else:
        target_weight = loss_weight(name, lam, target, **params)
        weight = target_weight * torch.exp(_log_target_factor(lam, target))
    return _returned(weight, as_number)


__all__ = [
    "TARGETS",
    "WEIGHTINGS",
    "Weighting",
    "get_weighting",
    "importance_weight",
    "loss_weight",
    "min_snr_weight",
    "x0_space_weight",
]
