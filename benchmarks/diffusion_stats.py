"""The few statistics the diffusion benchmark and its report share (one definition each).

Spread is always the sample standard deviation (ddof=1): with 3 seeds the population formula (ddof=0)
understates it by a factor sqrt(2/3). Comparisons of two arms use Welch's t-test (unequal variances).
"""
from __future__ import annotations

import math
from typing import Sequence


def steps_to_reach(steps: Sequence[int], fds: Sequence[float], level: float) -> int | None:
    """First evaluated step whose FD is at or below `level` (None if never)."""
    return next((step for step, fd in zip(steps, fds) if fd <= level), None)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample std with ddof=1); the std is None for fewer than two values (no spread is known)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def std_ddof1_from_ddof0(std0: float, n: int) -> float | None:
    """Convert a population std (ddof=0) of n values to the sample std (ddof=1); exact, no data needed."""
    return std0 * math.sqrt(n / (n - 1)) if n > 1 else None


def welch(a: Sequence[float], b: Sequence[float]) -> dict | None:
    """Welch's two-sided t-test of mean(a) vs mean(b): {"t", "p", "df", "n_a", "n_b"}; None when either side
    has fewer than two values (no test is possible) ."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    res = stats.ttest_ind(list(a), list(b), equal_var=False)
    _, sa = mean_std(a)
    _, sb = mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    # Welch-Satterthwaite degrees of freedom, recorded so a reader can redo the test
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else float("nan")
    return {"t": float(res.statistic), "p": float(res.pvalue), "df": float(df), "n_a": len(a), "n_b": len(b)}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float] | None:
    """Paired t-test of a - b over the same units (examples, seeds): {"t", "p", "mean_diff"}; None when it is
    undefined (fewer than 2 pairs, or no spread in the differences)."""
    import numpy as np
    from scipy.stats import ttest_rel

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diff) < 2 or float(diff.std()) == 0.0:
        return None
    res = ttest_rel(a, b)
    return {"t": float(res.statistic), "p": float(res.pvalue), "mean_diff": float(diff.mean())}


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    if p == 0.0:  # below the smallest double: the test statistic is off the scale
        return "0 (underflow, < 1e-300)"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_mean_std(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} (1 seed)"
