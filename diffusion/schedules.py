"""Noise schedules for a continuous-time variance-preserving process, parameterised by logSNR λ.

Conventions: α² = sigmoid(λ), σ² = sigmoid(−λ), x_t = α·x0 + σ·ε, SNR = exp(λ). Time t ∈ (0, 1) runs from
clean (t → 0, λ → +∞) to noise (t → 1, λ → −∞).

A schedule is a density p(λ) over logSNR. Its map λ(t) is the inverse CDF read backwards: λ decreases in t, so
P(Λ ≤ λ(t)) = 1 − t, and drawing t ~ U(0, 1) and returning λ(t) samples exactly from p(λ) (Hang et al., "Improved
Noise Schedule for Diffusion Training", 2024), which is how the schedules below are defined.

    schedule = get_schedule("laplace", mu=0.0, b=0.5)
    logsnr = schedule.sample_logsnr(batch_size, generator=gen, device=device)
    alpha, sigma = alpha_sigma(logsnr)

Everything is computed in float64 and returned in the input's floating dtype (float32 for ints and floats), so
tails and the bisection of mixtures stay accurate; float64 is not available on Apple MPS.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from data_tools.registry import Registry

# t is kept this far from 0 and 1 so every λ(t) is finite; logsnr() then clamps to [logsnr_min, logsnr_max].
T_EPS = 1e-7
DEFAULT_LOGSNR_MIN = -15.0
DEFAULT_LOGSNR_MAX = 15.0
_BISECTION_STEPS = 60


def _as_float64(x: Tensor | float) -> tuple[Tensor, torch.dtype]:
    """x as a float64 tensor, plus the dtype to hand results back in."""
    x = torch.as_tensor(x)
    out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return x.to(torch.float64), out_dtype


def _sech(x: Tensor) -> Tensor:
    # 2·e^{−|x|}/(1 + e^{−2|x|}) never overflows, unlike 1/cosh(x).
    e = torch.exp(-x.abs())
    return 2 * e / (1 + e * e)


def alpha_sigma(logsnr: Tensor | float) -> tuple[Tensor, Tensor]:
    """Signal and noise scales (α, σ) of the VP process at logSNR λ: α² = sigmoid(λ), σ² = sigmoid(−λ)."""
    logsnr = torch.as_tensor(logsnr)
    if not logsnr.is_floating_point():
        logsnr = logsnr.to(torch.get_default_dtype())
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


class Schedule:
    """A density p(λ) over logSNR with its decreasing inverse-CDF map λ(t).

    Subclasses implement `_logsnr64`, `_density64` and `_cdf64` on float64 tensors, for the unclamped schedule,
    and `_own_params` (their constructor arguments other than the clamp range).
    """

    name: str = ""

    def __init__(self, logsnr_min: float = DEFAULT_LOGSNR_MIN, logsnr_max: float = DEFAULT_LOGSNR_MAX):
        if not logsnr_min < logsnr_max:
            raise ValueError(f"{self.name}: need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)

    # --- public API -------------------------------------------------------------------------------------------
    def logsnr(self, t: Tensor | float) -> Tensor:
        """λ(t), decreasing in t, clamped to [logsnr_min, logsnr_max]; t = 0 and t = 1 are allowed."""
        return self.unclamped_logsnr(t).clamp(self.logsnr_min, self.logsnr_max)

    def unclamped_logsnr(self, t: Tensor | float) -> Tensor:
        """λ(t) before clamping (t is still kept inside [T_EPS, 1 − T_EPS])."""
        t64, out_dtype = _as_float64(t)
        return self._logsnr64(t64.clamp(T_EPS, 1 - T_EPS)).to(out_dtype)

    def density(self, logsnr: Tensor | float) -> Tensor:
        """p(λ) of the unclamped schedule (integrates to 1 over λ, minus any point mass; see discrete ones)."""
        lam, out_dtype = _as_float64(logsnr)
        return self._density64(lam).to(out_dtype)

    def cdf(self, logsnr: Tensor | float) -> Tensor:
        """P(Λ ≤ λ) for the unclamped schedule; equals 1 − t at λ = λ(t)."""
        lam, out_dtype = _as_float64(logsnr)
        return self._cdf64(lam).to(out_dtype)

    def sample_logsnr(
        self, n: int, generator: torch.Generator | None = None, device=None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """n draws of λ: t ~ U(0, 1) from `generator`, mapped through logsnr(t). dtype defaults to torch's."""
        t = torch.rand(n, generator=generator, device=_sampling_device(generator, device), dtype=dtype)
        return self.logsnr(t)

    def params(self) -> dict[str, Any]:
        """Constructor arguments, so that get_schedule(s.name, **s.params()) rebuilds the schedule."""
        return {**self._own_params(), "logsnr_min": self.logsnr_min, "logsnr_max": self.logsnr_max}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    # --- for subclasses ---------------------------------------------------------------------------------------
    def _own_params(self) -> dict[str, Any]:
        return {}

    def _logsnr64(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _density64(self, lam: Tensor) -> Tensor:
        raise NotImplementedError

    def _cdf64(self, lam: Tensor) -> Tensor:
        raise NotImplementedError


def _sampling_device(generator: torch.Generator | None, device):
    # A CUDA generator can only draw on its own device, so default to it rather than to the CPU.
    if device is None and generator is not None:
        return generator.device
    return device


def _check_positive(schedule: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{schedule}: {key} must be > 0, got {value}")


# --- cosine family ------------------------------------------------------------------------------------------
class _CosineFamily(Schedule):
    """λ(t) = μ − (2/s)·log tan(πt/2), i.e. p(λ) = s·sech(s(λ − μ)/2)/(2π): the cosine schedule, shifted by μ
    (simple diffusion) and/or with its logSNR axis scaled by 1/s (s > 1 concentrates mass near μ)."""

    def __init__(self, mu: float = 0.0, s: float = 1.0, **clamp: float):
        super().__init__(**clamp)
        _check_positive(self.name, s=s)
        self.mu = float(mu)
        self.s = float(s)

    def _logsnr64(self, t: Tensor) -> Tensor:
        return self.mu - (2 / self.s) * torch.log(torch.tan(math.pi * t / 2))

    def _density64(self, lam: Tensor) -> Tensor:
        return self.s * _sech(self.s * (lam - self.mu) / 2) / (2 * math.pi)

    def _cdf64(self, lam: Tensor) -> Tensor:
        # t(λ) = (2/π)·arctan(exp(−s(λ−μ)/2)), so P(Λ ≤ λ) = 1 − t = (2/π)·arctan(exp(s(λ−μ)/2)).
        return (2 / math.pi) * torch.atan(torch.exp(self.s * (lam - self.mu) / 2))


class CosineSchedule(_CosineFamily):
    """α = cos(πt/2): λ(t) = −2·log tan(πt/2), p(λ) = sech(λ/2)/(2π)."""

    name = "cosine"

    def __init__(self, **clamp: float):
        super().__init__(mu=0.0, s=1.0, **clamp)


class ShiftedCosineSchedule(_CosineFamily):
    """λ(t) = μ − 2·log tan(πt/2). Simple diffusion shifts by μ = 2·log(64/resolution)."""

    name = "shifted_cosine"

    def __init__(self, mu: float = 0.0, **clamp: float):
        super().__init__(mu=mu, s=1.0, **clamp)

    def _own_params(self) -> dict[str, Any]:
        return {"mu": self.mu}


class ScaledCosineSchedule(_CosineFamily):
    """λ(t) = −(2/s)·log tan(πt/2), p(λ) = s·sech(sλ/2)/(2π)."""

    name = "scaled_cosine"

    def __init__(self, s: float = 1.0, **clamp: float):
        super().__init__(mu=0.0, s=s, **clamp)

    def _own_params(self) -> dict[str, Any]:
        return {"s": self.s}


# --- other closed-form densities ----------------------------------------------------------------------------
class LaplaceSchedule(Schedule):
    """p(λ) = exp(−|λ − μ|/b)/(2b); λ(t) = μ − b·sgn(½ − t)·log(1 − 2|t − ½|). The paper's pick is μ=0, b=0.5."""

    name = "laplace"

    def __init__(self, mu: float = 0.0, b: float = 0.5, **clamp: float):
        super().__init__(**clamp)
        _check_positive(self.name, b=b)
        self.mu = float(mu)
        self.b = float(b)

    def _own_params(self) -> dict[str, Any]:
        return {"mu": self.mu, "b": self.b}

    def _logsnr64(self, t: Tensor) -> Tensor:
        # 1 − 2|t − ½| = 2·min(t, 1 − t), written so the tail near t = 1 keeps its precision.
        return self.mu - self.b * torch.sign(0.5 - t) * torch.log(2 * torch.minimum(t, 1 - t))

    def _density64(self, lam: Tensor) -> Tensor:
        return torch.exp(-(lam - self.mu).abs() / self.b) / (2 * self.b)

    def _cdf64(self, lam: Tensor) -> Tensor:
        z = (lam - self.mu) / self.b
        half_tail = 0.5 * torch.exp(-z.abs())
        return torch.where(z < 0, half_tail, 1 - half_tail)


class CauchySchedule(Schedule):
    """p(λ) = γ/(π((λ − μ)² + γ²)); λ(t) = μ + γ·tan(π(½ − t))."""

    name = "cauchy"

    def __init__(self, mu: float = 0.0, gamma: float = 1.0, **clamp: float):
        super().__init__(**clamp)
        _check_positive(self.name, gamma=gamma)
        self.mu = float(mu)
        self.gamma = float(gamma)

    def _own_params(self) -> dict[str, Any]:
        return {"mu": self.mu, "gamma": self.gamma}

    def _logsnr64(self, t: Tensor) -> Tensor:
        return self.mu + self.gamma * torch.tan(math.pi * (0.5 - t))

    def _density64(self, lam: Tensor) -> Tensor:
        return self.gamma / (math.pi * ((lam - self.mu) ** 2 + self.gamma**2))

    def _cdf64(self, lam: Tensor) -> Tensor:
        return 0.5 + torch.atan((lam - self.mu) / self.gamma) / math.pi


class EDMSchedule(Schedule):
    """EDM training noise: ln σ ~ N(p_mean, p_std²) with SNR = 1/σ², so λ = −2·ln σ ~ N(−2·p_mean, (2·p_std)²).

    (EDM's σ is the variance-exploding noise level of unit-scale data; its σ_data = 0.5 is not folded in here.)
    """

    name = "edm"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, **clamp: float):
        super().__init__(**clamp)
        _check_positive(self.name, p_std=p_std)
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)

    def _own_params(self) -> dict[str, Any]:
        return {"p_mean": self.p_mean, "p_std": self.p_std}

    @property
    def _lam_mean(self) -> float:
        return -2 * self.p_mean

    @property
    def _lam_std(self) -> float:
        return 2 * self.p_std

    def _logsnr64(self, t: Tensor) -> Tensor:
        # The (1 − t)-quantile, so λ decreases in t: Φ⁻¹(1 − t) = −Φ⁻¹(t).
        return self._lam_mean - self._lam_std * torch.special.ndtri(t)

    def _density64(self, lam: Tensor) -> Tensor:
        z = (lam - self._lam_mean) / self._lam_std
        return torch.exp(-0.5 * z * z) / (self._lam_std * math.sqrt(2 * math.pi))

    def _cdf64(self, lam: Tensor) -> Tensor:
        return torch.special.ndtr((lam - self._lam_mean) / self._lam_std)


# --- discrete DDPM beta schedules ---------------------------------------------------------------------------
class _DiscreteBetaSchedule(Schedule):
    """A discrete N-step β schedule seen as a logSNR schedule.

    Step k = 1..N has ᾱ_k = Π_{i≤k}(1 − β_i) and λ_k = log(ᾱ_k/(1 − ᾱ_k)) and sits at t_k = k/N. λ(t) interpolates
    λ_k linearly in t and is flat (λ_1) below t_1, where the discrete process has no steps. So the law has a
    point mass 1/N at λ_1, and a piecewise-constant density (1/N)/(λ_k − λ_{k+1}) on each segment, integrating
    to 1 − 1/N; cdf() includes the point mass.
    """

    def __init__(self, num_timesteps: int = 1000, **clamp: float):
        super().__init__(**clamp)
        if int(num_timesteps) != num_timesteps or num_timesteps < 2:
            raise ValueError(f"{self.name}: num_timesteps must be an integer ≥ 2, got {num_timesteps}")
        self.num_timesteps = int(num_timesteps)
        betas = self.betas()
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"{self.name}: every β must lie in (0, 1)")
        # log ᾱ by summing log1p(−β), and 1 − ᾱ by expm1, so λ_k near ᾱ ≈ 1 keeps its digits.
        log_alphas_cumprod = torch.cumsum(torch.log1p(-betas), dim=0)
        self.alphas_cumprod = torch.exp(log_alphas_cumprod)
        self.timestep_logsnr = log_alphas_cumprod - torch.log(-torch.expm1(log_alphas_cumprod))
        # ascending copy for searchsorted: λ_N < … < λ_1
        self._ascending_logsnr = self.timestep_logsnr.flip(0).contiguous()

    def betas(self) -> Tensor:
        """β_1..β_N in float64."""
        raise NotImplementedError

    def _logsnr64(self, t: Tensor) -> Tensor:
        lam = self.timestep_logsnr.to(t.device)
        # position 0 is step k = 1 (t = 1/N); below it the schedule stays flat at λ_1
        position = (t * self.num_timesteps - 1).clamp(0, self.num_timesteps - 1)
        left = position.floor().long().clamp(max=self.num_timesteps - 2)
        frac = position - left
        return lam[left] + frac * (lam[left + 1] - lam[left])

    def _segment(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For each λ: index j of the ascending knot at or below it, that knot and the next one, and whether λ
        lies inside [λ_N, λ_1) where the density lives."""
        knots = self._ascending_logsnr.to(lam.device)
        j = (torch.searchsorted(knots, lam, right=True) - 1).clamp(0, self.num_timesteps - 2)
        inside = (lam >= knots[0]) & (lam < knots[-1])
        return j, knots[j], knots[j + 1], inside

    def _density64(self, lam: Tensor) -> Tensor:
        _, low, high, inside = self._segment(lam)
        per_segment = (1 / self.num_timesteps) / (high - low)
        return torch.where(inside, per_segment, torch.zeros_like(lam))

    def _cdf64(self, lam: Tensor) -> Tensor:
        j, low, high, inside = self._segment(lam)
        # ascending knot j is step k = N − j at t = (N − j)/N, so P(Λ ≤ knot j) = 1 − t = j/N
        cdf_inside = (j + (lam - low) / (high - low)) / self.num_timesteps
        # below λ_N nothing; from λ_1 up everything, the point mass at λ_1 included
        outside = (lam >= self._ascending_logsnr[-1].item()).to(lam.dtype)
        return torch.where(inside, cdf_inside, outside)


class LinearBetaSchedule(_DiscreteBetaSchedule):
    """DDPM: β linear from 1e-4 to 0.02 over 1000 steps (diffusers beta_schedule="linear")."""

    name = "linear"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_timesteps: int = 1000, **clamp: float):
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        super().__init__(num_timesteps=num_timesteps, **clamp)

    def _own_params(self) -> dict[str, Any]:
        return {"beta_start": self.beta_start, "beta_end": self.beta_end, "num_timesteps": self.num_timesteps}

    def betas(self) -> Tensor:
        return torch.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=torch.float64)


class ScaledLinearBetaSchedule(_DiscreteBetaSchedule):
    """Stable Diffusion: √β linear from √0.00085 to √0.012 (diffusers beta_schedule="scaled_linear")."""

    name = "scaled_linear"

    def __init__(
        self, beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000, **clamp: float
    ):
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        super().__init__(num_timesteps=num_timesteps, **clamp)

    def _own_params(self) -> dict[str, Any]:
        return {"beta_start": self.beta_start, "beta_end": self.beta_end, "num_timesteps": self.num_timesteps}

    def betas(self) -> Tensor:
        root = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.num_timesteps, dtype=torch.float64)
        return root**2


class SquaredCosCapV2Schedule(_DiscreteBetaSchedule):
    """Nichol & Dhariwal cosine: ᾱ(u) ∝ cos²(((u + s)/(1 + s))·π/2), β_k = min(1 − ᾱ(k/N)/ᾱ((k−1)/N), max_beta)
    (diffusers beta_schedule="squaredcos_cap_v2")."""

    name = "squaredcos_cap_v2"

    def __init__(self, s: float = 0.008, max_beta: float = 0.999, num_timesteps: int = 1000, **clamp: float):
        self.s = float(s)
        self.max_beta = float(max_beta)
        super().__init__(num_timesteps=num_timesteps, **clamp)

    def _own_params(self) -> dict[str, Any]:
        return {"s": self.s, "max_beta": self.max_beta, "num_timesteps": self.num_timesteps}

    def betas(self) -> Tensor:
        u = torch.arange(self.num_timesteps + 1, dtype=torch.float64) / self.num_timesteps
        alpha_bar = torch.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=self.max_beta)


# --- mixtures -----------------------------------------------------------------------------------------------
class MixtureSchedule(Schedule):
    """p(λ) = Σ_i w_i·p_i(λ). A small weight on a broad component (a density floor) keeps the tails trained.

    sample_logsnr picks a component per sample; logsnr(t) inverts the mixture CDF by bisection, so it stays a
    deterministic, decreasing function of t. Components are used unclamped; the mixture clamps to its own range.
    """

    name = "mixture"

    def __init__(
        self,
        components: Sequence[Schedule | str | dict[str, Any]],
        weights: Sequence[float],
        **clamp: float,
    ):
        super().__init__(**clamp)
        self.components = [_build_schedule(c) for c in components]
        if len(self.components) == 0 or len(weights) != len(self.components):
            raise ValueError("mixture: need one weight per component and at least one component")
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if not bool((weights > 0).all()):
            raise ValueError(f"mixture: weights must be > 0, got {weights.tolist()}")
        self.weights = weights / weights.sum()

    def _own_params(self) -> dict[str, Any]:
        return {
            "components": [{"name": c.name, **c.params()} for c in self.components],
            "weights": self.weights.tolist(),
        }

    def _density64(self, lam: Tensor) -> Tensor:
        return sum(w * c._density64(lam) for w, c in zip(self.weights.tolist(), self.components))

    def _cdf64(self, lam: Tensor) -> Tensor:
        return sum(w * c._cdf64(lam) for w, c in zip(self.weights.tolist(), self.components))

    def _logsnr64(self, t: Tensor) -> Tensor:
        # The mixture's (1 − t)-quantile lies between the components' own (1 − t)-quantiles.
        per_component = torch.stack([c._logsnr64(t) for c in self.components])
        low, high = per_component.min(dim=0).values, per_component.max(dim=0).values
        target = 1 - t
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            below = self._cdf64(mid) < target
            low = torch.where(below, mid, low)
            high = torch.where(below, high, mid)
        return (low + high) / 2

    def sample_logsnr(
        self, n: int, generator: torch.Generator | None = None, device=None, dtype: torch.dtype | None = None
    ) -> Tensor:
        device = _sampling_device(generator, device)
        choice = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        t = torch.rand(n, generator=generator, device=device, dtype=dtype)
        t64 = t.to(torch.float64).clamp(T_EPS, 1 - T_EPS)
        per_component = torch.stack([c._logsnr64(t64) for c in self.components])
        lam = per_component.gather(0, choice[None]).squeeze(0)
        return lam.clamp(self.logsnr_min, self.logsnr_max).to(t.dtype)


# --- registry -----------------------------------------------------------------------------------------------
SCHEDULES: Registry[type[Schedule]] = Registry("schedule")
for _cls in (CosineSchedule, ShiftedCosineSchedule, ScaledCosineSchedule, LaplaceSchedule, CauchySchedule,
             EDMSchedule, LinearBetaSchedule, ScaledLinearBetaSchedule, SquaredCosCapV2Schedule, MixtureSchedule):
    SCHEDULES.register(_cls.name, _cls)
del _cls


def get_schedule(name: str, **params: Any) -> Schedule:
    """Build a schedule by name. Extra keys `floor` (weight in [0, 1)), `floor_schedule` (name, dict or
    Schedule; default "cosine") and `floor_params` mix in a density floor:
    p = (1 − floor)·p_name + floor·p_floor. The clamp range goes to the mixture."""
    floor = float(params.pop("floor", 0.0))
    floor_schedule = params.pop("floor_schedule", "cosine")
    floor_params = params.pop("floor_params", {})
    cls = SCHEDULES.get(name)  # RegistryError (a ValueError) with the closest name for a typo
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    if floor == 0:
        return cls(**params)
    clamp = {key: params.pop(key) for key in ("logsnr_min", "logsnr_max") if key in params}
    main = cls(**params)
    floor_component = _build_schedule(floor_schedule, floor_params)
    return MixtureSchedule([main, floor_component], [1 - floor, floor], **clamp)


def _build_schedule(spec: Schedule | str | dict[str, Any], params: dict[str, Any] | None = None) -> Schedule:
    """A Schedule from an instance, a name (+ params) or a config dict {"name": ..., **params}."""
    if isinstance(spec, Schedule):
        if params:
            raise ValueError("params given together with a Schedule instance")
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        return get_schedule(spec.pop("name"), **spec, **(params or {}))
    return get_schedule(spec, **(params or {}))


def importance_weight(logsnr: Tensor | float, sample_schedule: Schedule, target_schedule: Schedule) -> Tensor:
    """p_target(λ)/p_sample(λ): weighting losses of λ drawn from `sample_schedule` by this gives, in expectation,
    the objective of training with `target_schedule`. Zero where p_sample(λ) = 0 (such λ are never drawn).

    The ratio uses the unclamped densities, so samples piled up at a clamp bound are weighted only approximately.
    """
    lam, out_dtype = _as_float64(logsnr)
    p_sample = sample_schedule._density64(lam)
    p_target = target_schedule._density64(lam)
    ratio = torch.where(p_sample > 0, p_target / p_sample.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return ratio.to(out_dtype)
