"""The KL-optimal way to gain an aesthetic, as a yardstick for what preference fine-tuning costs in FD.

Among all distributions q with a given mean reward E_q[r], the one closest to a model p in KL(q ‖ p) is the
exponential tilt q_λ(x) ∝ p(x) exp(λ r(x)) (the optimum of KL-regularised reward maximisation, which DPO and SPO
also target). Drawing from q_λ needs no training: resample a large pool of p's samples with weights exp(λ r).
How far q_λ sits from the real data (FD) at the gain a fine-tune reached says whether that fine-tune's FD is the
price of the gain itself or of the way it was reached.

The tilt is per class (the model is class-conditional and evaluations use equal counts per class) with one λ for
all classes, which is the KL optimum for the class-averaged reward.
"""
from __future__ import annotations

import numpy as np


def _weights(reward: np.ndarray, lam: float) -> np.ndarray:
    """exp(λ · reward), normalised; shifted by the largest exponent so that no weight overflows."""
    logits = lam * reward
    w = np.exp(logits - logits.max())
    return w / w.sum()


def tilted_mean(measure: np.ndarray, classes: np.ndarray, lam: float, reward: np.ndarray | None = None) -> float:
    """The class-averaged mean of `measure` under per-class weights ∝ exp(λ · reward); the reward defaults to the
    measure itself (tilting by what is measured)."""
    measure, classes = np.asarray(measure, np.float64), np.asarray(classes)
    reward = measure if reward is None else np.asarray(reward, np.float64)
    means = [float((_weights(reward[classes == c], lam) * measure[classes == c]).sum()) for c in np.unique(classes)]
    return float(np.mean(means))


def solve_tilt(measure: np.ndarray, classes: np.ndarray, target: float, reward: np.ndarray | None = None, *,
               max_lam: float = 1e4, tol: float = 1e-9) -> float:
    """λ whose tilt by `reward` (default: the measure) brings the class-averaged mean of `measure` to `target`.

    Bisection over [−max_lam, max_lam]: the tilted mean rises with λ when the measure and the reward agree (for
    the measure itself it is strictly monotone). Raises ValueError when no λ in the bracket reaches the target."""
    low, high = -float(max_lam), float(max_lam)
    at_low, at_high = (tilted_mean(measure, classes, lam, reward) for lam in (low, high))
    if not at_low <= target <= at_high:
        raise ValueError(f"target {target:.4f} is outside what reweighting this pool reaches "
                         f"[{at_low:.4f}, {at_high:.4f}]")
    for _ in range(200):
        mid = (low + high) / 2
        if tilted_mean(measure, classes, mid, reward) < target:
            low = mid
        else:
            high = mid
        if high - low < tol:
            break
    return (low + high) / 2


def effective_size(reward: np.ndarray, classes: np.ndarray, lam: float) -> float:
    """Kish's effective sample size of the tilt's weights, 1 / Σ w², averaged over classes: how many pool samples
    the tilted distribution effectively rests on (a draw of more than this is mostly forced by the pool)."""
    reward, classes = np.asarray(reward, np.float64), np.asarray(classes)
    return float(np.mean([1.0 / (_weights(reward[classes == c], lam) ** 2).sum() for c in np.unique(classes)]))


def tilted_draw(reward: np.ndarray, classes: np.ndarray, lam: float, per_class: int,
                rng: np.random.Generator) -> np.ndarray:
    """Indices of `per_class` draws per class, without replacement, with probabilities ∝ exp(λ · reward): a sample
    of the tilted distribution shaped like an evaluation set (no duplicates, which would shrink its spread)."""
    reward, classes = np.asarray(reward, np.float64), np.asarray(classes)
    picked = []
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} pool samples, fewer than the {per_class} asked for")
        picked.append(rng.choice(members, size=per_class, replace=False, p=_weights(reward[members], lam)))
    return np.concatenate(picked)


__all__ = ["effective_size", "solve_tilt", "tilted_draw", "tilted_mean"]
