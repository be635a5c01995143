"""Distances between sample sets: Fréchet distance of fitted Gaussians (the FID formula, in any feature
space) and sliced Wasserstein distance."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_2d_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def gaussian_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], covariance [F, F]) in float64; cache these for a fixed reference set."""
    f = _as_2d_float64(feats)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _clean_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that lie below its round-off floor (numpy's matrix_rank rule).

    Without this, the ~1e-16-sized (or slightly negative) zero eigenvalues of a singular covariance become
    ~1e-8 after the square root, and dozens of them bias the trace term of the FD.
    """
    floor = np.finfo(np.float64).eps * len(w) * np.abs(w).max(initial=0.0)
    return np.where(w > floor, w, 0.0)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(_clean_eigenvalues(w))) @ v.T


def frechet_distance_from_stats(mu_a: np.ndarray, sigma_a: np.ndarray,
                                mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """‖μa−μb‖² + Tr Σa + Tr Σb − 2 Tr (√Σa Σb √Σa)^½.

    Tr (ΣaΣb)^½ equals Tr of the square root of the symmetric PSD matrix √Σa Σb √Σa, whose eigenvalues are
    real and >= 0 up to round-off. Taking them with eigh and zeroing those under the round-off floor stays finite for singular
    covariances (N < F, dead ReLU units), where scipy's sqrtm of the non-symmetric ΣaΣb can go complex.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = np.sqrt(_clean_eigenvalues(eig)).sum()
    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_sqrt
    return float(max(fd, 0.0))  # tiny negatives are round-off on (near-)identical sets


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [Na, F] and [Nb, F]."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def _quantiles(sorted_vals: torch.Tensor, n_out: int) -> torch.Tensor:
    """Empirical quantile function of sorted [N, P] columns at the levels (k + 0.5) / n_out.

    Sample i sits at level (i + 0.5) / N; between samples we interpolate linearly, beyond the ends we hold
    the extreme value. With n_out == N this returns `sorted_vals` exactly.
    """
    n = sorted_vals.shape[0]
    if n == n_out:
        return sorted_vals
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) / n_out * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo).unsqueeze(1)
    return sorted_vals[lo] * (1 - frac) + sorted_vals[hi] * frac


def sliced_wasserstein(x: ArrayLike, y: ArrayLike, projections: int = 256, seed: int = 0, p: float = 2) -> float:
    """Sliced p-Wasserstein distance between two sample sets (flattened to [N, D]).

    Projects both onto `projections` random unit directions (fixed by `seed`, so calls are comparable),
    compares the sorted 1-D projections quantile by quantile, and returns (mean |diff|^p)^(1/p) over
    directions and quantiles. Unequal sample counts are compared on max(Nx, Ny) interpolated quantiles.
    """
    a = torch.as_tensor(_as_2d_float64(x))
    b = torch.as_tensor(_as_2d_float64(y))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sample dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("both sample sets must be non-empty")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(dim=0)
    pb, _ = (b @ dirs).sort(dim=0)
    n = max(pa.shape[0], pb.shape[0])
    diff = (_quantiles(pa, n) - _quantiles(pb, n)).abs()
    return float(diff.pow(p).mean().pow(1.0 / p))
