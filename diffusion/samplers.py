"""Samplers for the VP process in logSNR λ (see `diffusion.process`): DDIM (any η), Euler-ancestral (k-diffusion's
`sample_euler_ancestral`), and the probability-flow ODE integrated with Euler or Heun; sampling grids in λ;
classifier-free guidance.

A model function is `model_fn(x_t [B, ...], logsnr [B], cond) -> prediction of target` (cond: None or class
labels, passed through untouched). Every sampler walks an increasing grid λ_0 < ... < λ_N (noise → clean) and
returns the x0 prediction at λ_N, so a grid with N steps costs N + 1 model calls (Heun: 2N + 1).

Derivations (α, σ at λ; α', σ' at the next, larger λ'):

* DDIM (Song et al. 2021). The paper's σ_t(η)² = η² (1 − ᾱ_{t−1})/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−1}) with
  ᾱ = α² reads s² = η² σ'²/σ² · (1 − α²/α'²), and with α² + σ² = 1 this is s² = η² σ'² (1 − e^{λ−λ'}).
  The step is x' = α' x0 + sqrt(σ'² − s²) ε + s z, z ~ N(0, I). At η = 1, s² is the variance of the
  DDPM posterior q(x_{λ'} | x_λ, x0) = σ'²(1 − e^{λ−λ'}); at η = 0 the step is deterministic.
* Probability-flow ODE. With y = x/α and ρ = σ/α = e^{−λ/2} (noise-to-signal ratio), x = α x0 + σ ε becomes
  y = x0 + ρ ε, and the PF-ODE is dy/dρ = ε_hat(x, λ) (the "DDIM ODE"). An Euler step in ρ,
  y' = y + (ρ' − ρ) ε_hat, is x' = α' x0_hat + σ' ε_hat: exactly deterministic DDIM. Heun averages ε_hat at
  both ends of the step, which is second order in the step size.
* Euler-ancestral (k-diffusion; InstructDiffusion samples with it). In the same variables, k-diffusion's σ is
  ρ, and a step ρ → ρ' splits ρ' into ρ_up = min(ρ', η ρ' sqrt(1 − ρ'²/ρ²)) of fresh noise and
  ρ_down = sqrt(ρ'² − ρ_up²), taking y' = y + (ρ_down − ρ) eps_hat + ρ_up z. With y = x0_hat + ρ eps_hat
  and α' ρ' = σ', ρ'²/ρ² = e^{λ−λ'}, this is x' = α' x0_hat + sqrt(σ'² − s²) eps_hat + s z with
  s = min(σ', η σ' sqrt(1 − e^{λ−λ'})): DDIM's step exactly, with the fresh noise capped at σ' (which binds
  only for η > 1, where DDIM's deterministic part would vanish and its noise overshoot σ').

The grid is chosen at sampling time, independently of the schedule the model was trained with (`logsnr_grid`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from data_tools.registry import Registry
from data_tools.training.small_fit import progress_range

from .process import alpha_sigma, check_target, cosine_time, predict_x0_eps

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
GRID_KINDS = ("cosine", "linear", "schedule")


# ------------------------------------------------------------------------------------------------ grids

def cosine_logsnr(t: torch.Tensor) -> torch.Tensor:
    """λ(t) = −2 log tan(πt/2) of the cosine schedule (α = cos(πt/2)); t = 0 clean, t = 1 noise."""
    return -2.0 * torch.log(torch.tan(0.5 * math.pi * t))


def _schedule_logsnr(schedule: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """λ(t) of a schedule object (or registry name), oriented so that t = 0 is clean (λ decreasing in t)."""
    if isinstance(schedule, str):
        from .schedules import get_schedule  # optional module; only needed for a grid built from a name

        schedule = get_schedule(schedule)
    if not callable(getattr(schedule, "logsnr", None)):
        raise TypeError(f"schedule must have a logsnr(t) method, got {type(schedule).__name__}")

    def fn(t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(schedule.logsnr(t), dtype=torch.float64)

    probe = fn(torch.tensor([0.25, 0.75], dtype=torch.float64))
    if probe[0] < probe[1]:  # a schedule written with t = 0 as noise: flip it
        return lambda t: fn(1.0 - t)
    return fn


def _invert_decreasing(fn: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor) -> torch.Tensor:
    """t in [0, 1] with fn(t) = values for a decreasing fn, by bisection (no schedule needs to ship an inverse)."""
    lo, hi = torch.zeros_like(values), torch.ones_like(values)
    for _ in range(64):  # 2^-64 is below float64 resolution on [0, 1]
        mid = 0.5 * (lo + hi)
        above = fn(mid) > values  # λ(mid) still too high: the answer lies at larger t
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def logsnr_grid(steps: int, kind: str = "cosine", logsnr_min: float = -10.0, logsnr_max: float = 10.0,
                schedule: Any = None) -> torch.Tensor:
    """An increasing float64 grid of steps + 1 logSNR values from exactly logsnr_min to exactly logsnr_max.

    - "linear": evenly spaced in λ.
    - "cosine": λ of the cosine schedule at evenly spaced t between t(logsnr_max) and t(logsnr_min).
    - "schedule": the same with `schedule.logsnr(t)` (a schedule object, or a name for
      `diffusion.schedules.get_schedule`): evenly spaced quantiles of the training density restricted to
      [logsnr_min, logsnr_max]. Choosing the bounds where that density is non-negligible keeps the sampler
      where the model was trained (a Laplace(0, 0.5) model is untrained beyond |λ| ≈ 4).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max) and logsnr_min < logsnr_max):
        raise ValueError(f"need finite logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
    steps = int(steps)
    bounds = torch.tensor([logsnr_min, logsnr_max], dtype=torch.float64)
    if kind == "linear":
        grid = torch.linspace(logsnr_min, logsnr_max, steps + 1, dtype=torch.float64)
    elif kind in ("cosine", "schedule"):
        if kind == "cosine":
            fn, t_bounds = cosine_logsnr, cosine_time(bounds)
        else:
            if schedule is None:
                raise ValueError('kind="schedule" needs a schedule (object with logsnr(t), or a name)')
            fn = _schedule_logsnr(schedule)
            t_bounds = _invert_decreasing(fn, bounds)
        # from the noisy end (large t) to the clean end (small t), so λ increases
        t = torch.linspace(float(t_bounds[0]), float(t_bounds[1]), steps + 1, dtype=torch.float64)
        grid = fn(t).clamp(logsnr_min, logsnr_max)
    else:
        raise ValueError(f"kind must be one of {GRID_KINDS}, got {kind!r}")
    grid[0], grid[-1] = logsnr_min, logsnr_max  # exact endpoints, whatever rounding the inverse left
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(f"{kind} grid is not strictly increasing on [{logsnr_min}, {logsnr_max}] "
                         "(does the schedule's logsnr(t) cover that range?)")
    return grid


def _as_grid(grid: torch.Tensor | Sequence[float]) -> list[float]:
    values = [float(v) for v in torch.as_tensor(grid, dtype=torch.float64).reshape(-1)]
    if len(values) < 2:
        raise ValueError("a sampling grid needs at least 2 logsnr values")
    if any(not math.isfinite(v) for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError("a sampling grid must be finite and strictly increasing (noise → clean)")
    return values


# ------------------------------------------------------------------------------------------------ helpers

def _coefficients(logsnr: float) -> tuple[float, float]:
    """(α, σ) as Python floats, in float64, for the per-step update coefficients."""
    alpha, sigma = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    return float(alpha), float(sigma)


def ddim_noise_scale(logsnr: float, logsnr_next: float, eta: float) -> float:
    """DDIM's s = η σ' sqrt(1 − e^{λ−λ'}) for a step λ → λ' > λ (η = 1: the DDPM posterior std)."""
    _, sigma_next = _coefficients(logsnr_next)
    return eta * sigma_next * math.sqrt(-math.expm1(logsnr - logsnr_next))  # expm1: accurate for small steps


def euler_ancestral_noise_scale(logsnr: float, logsnr_next: float, eta: float) -> float:
    """Euler-ancestral's fresh-noise scale for a step λ → λ': α' ρ_up = min(σ', η σ' sqrt(1 − e^{λ−λ'}))."""
    _, sigma_next = _coefficients(logsnr_next)
    return min(sigma_next, ddim_noise_scale(logsnr, logsnr_next, eta))


def _randn(shape: Sequence[int], generator: Optional[torch.Generator], device, dtype: torch.dtype) -> torch.Tensor:
    # drawn on the generator's device and then moved, so a seed gives the same samples on CPU and GPU
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def _start(shape, generator, x_init, device) -> torch.Tensor:
    """x at λ_0. Exactly, x = α_0 x0 + σ_0 ε; pure N(0, I) is the usual stand-in, off by α_0 x0 (≈ 0.007 x0 at
    λ_0 = −10) — pass x_init (e.g. add_noise of an image) to start elsewhere."""
    if x_init is not None:
        if shape is not None and tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")
        x = x_init.to(device)
        return x if x.is_floating_point() else x.float()
    return _randn(shape, generator, device, torch.float32)


def _denoiser(model_fn: ModelFn, target: str, cond: Any, clip_x0: Optional[tuple[float, float]]):
    """(x, λ) -> (x0_hat, eps_hat) from the model; with clip_x0 the x0 estimate is clipped and ε recomputed from it,
    so the pair stays consistent (x = α x0 + σ ε) and the samplers see one well-defined clipped denoiser."""
    check_target(target)

    def denoise(x: torch.Tensor, logsnr: float) -> tuple[torch.Tensor, torch.Tensor]:
        lam = torch.full((x.shape[0],), logsnr, dtype=x.dtype, device=x.device)
        prediction = model_fn(x, lam, cond)
        if prediction.shape != x.shape:
            raise ValueError(f"model_fn returned shape {tuple(prediction.shape)} for input {tuple(x.shape)}")
        x0, eps = predict_x0_eps(prediction.to(x.dtype), x, lam, target)
        if clip_x0 is not None:
            alpha, sigma = _coefficients(logsnr)
            x0 = x0.clamp(*clip_x0)
            eps = (x - alpha * x0) / sigma
        return x0, eps

    return denoise


def _finish(denoise, x: torch.Tensor, logsnr_last: float) -> torch.Tensor:
    # the jump from λ_N to clean data is an Euler step of the ODE to ρ = 0, i.e. the x0 prediction
    x0, _ = denoise(x, logsnr_last)
    return x0


# ------------------------------------------------------------------------------------------------ samplers

@torch.no_grad()
def ddim_sample(model_fn: ModelFn, shape: Sequence[int], grid: torch.Tensor | Sequence[float], target: str,
                eta: float = 0.0, generator: Optional[torch.Generator] = None, cond: Any = None,
                x_init: Optional[torch.Tensor] = None, clip_x0: Optional[tuple[float, float]] = None,
                device: str | torch.device = "cpu", progress: bool = False) -> torch.Tensor:
    """DDIM over an increasing logsnr grid; eta = 0 deterministic, eta = 1 ancestral (DDPM posterior noise).

    Step λ → λ':  x' = α' x0_hat + sqrt(σ'² − s²) eps_hat + s z,  s = η σ' sqrt(1 − e^{λ−λ'}).
    Returns the x0 prediction at the last grid point (clipped to clip_x0 = (lo, hi) if given; clipping is also
    applied to every intermediate x0 estimate).
    """
    return _ancestral_sample(model_fn, shape, grid, target, eta, ddim_noise_scale, "ddim", generator, cond, x_init,
                             clip_x0, device, progress)


@torch.no_grad()
def euler_ancestral_sample(model_fn: ModelFn, shape: Sequence[int], grid: torch.Tensor | Sequence[float],
                           target: str, eta: float = 1.0, generator: Optional[torch.Generator] = None,
                           cond: Any = None, x_init: Optional[torch.Tensor] = None,
                           clip_x0: Optional[tuple[float, float]] = None, device: str | torch.device = "cpu",
                           progress: bool = False) -> torch.Tensor:
    """k-diffusion's Euler-ancestral over an increasing logsnr grid (eta = 1 its default, 0 plain Euler).

    Step λ → λ':  x' = α' x0_hat + sqrt(σ'² − s²) eps_hat + s z,  s = min(σ', η σ' sqrt(1 − e^{λ−λ'})): for
    η ≤ 1 the same numbers as DDIM(η) (module docstring); the last grid point jumps to the x0 prediction, as
    k-diffusion's final step to σ = 0 does.
    """
    return _ancestral_sample(model_fn, shape, grid, target, eta, euler_ancestral_noise_scale, "euler_ancestral",
                             generator, cond, x_init, clip_x0, device, progress)


def _ancestral_sample(model_fn: ModelFn, shape, grid, target: str, eta: float,
                      noise_scale: Callable[[float, float, float], float], name: str, generator, cond, x_init,
                      clip_x0, device, progress: bool) -> torch.Tensor:
    """x' = α' x0_hat + sqrt(σ'² − s²) eps_hat + s z over the grid, s = noise_scale(λ, λ', η)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    lams = _as_grid(grid)
    denoise = _denoiser(model_fn, target, cond, clip_x0)
    x = _start(shape, generator, x_init, device)
    for i in progress_range(len(lams) - 1, progress, name):
        lam, lam_next = lams[i], lams[i + 1]
        x0, eps = denoise(x, lam)
        alpha_next, sigma_next = _coefficients(lam_next)
        s = noise_scale(lam, lam_next, eta)
        x = alpha_next * x0 + math.sqrt(max(sigma_next ** 2 - s ** 2, 0.0)) * eps
        if s > 0:
            x = x + s * _randn(x.shape, generator, x.device, x.dtype)
    return _finish(denoise, x, lams[-1])


@torch.no_grad()
def euler_sample(model_fn: ModelFn, shape: Sequence[int], grid: torch.Tensor | Sequence[float], target: str,
                 generator: Optional[torch.Generator] = None, cond: Any = None, x_init: Optional[torch.Tensor] = None,
                 clip_x0: Optional[tuple[float, float]] = None, device: str | torch.device = "cpu",
                 progress: bool = False) -> torch.Tensor:
    """Euler on the PF-ODE dy/dρ = eps_hat (y = x/α, ρ = e^{−λ/2}): x' = α' x0_hat + σ' eps_hat (= DDIM, η = 0)."""
    lams = _as_grid(grid)
    denoise = _denoiser(model_fn, target, cond, clip_x0)
    x = _start(shape, generator, x_init, device)
    for i in progress_range(len(lams) - 1, progress, "euler"):
        x0, eps = denoise(x, lams[i])
        alpha_next, sigma_next = _coefficients(lams[i + 1])
        x = alpha_next * x0 + sigma_next * eps
    return _finish(denoise, x, lams[-1])


@torch.no_grad()
def heun_sample(model_fn: ModelFn, shape: Sequence[int], grid: torch.Tensor | Sequence[float], target: str,
                generator: Optional[torch.Generator] = None, cond: Any = None, x_init: Optional[torch.Tensor] = None,
                clip_x0: Optional[tuple[float, float]] = None, device: str | torch.device = "cpu",
                progress: bool = False) -> torch.Tensor:
    """Heun (trapezoidal predictor-corrector) on the PF-ODE dy/dρ = eps_hat, y = x/α, ρ = e^{−λ/2}.

    Per grid step: predictor x_e = α' x0_hat + σ' eps_hat (Euler), then with eps_hat' evaluated at (x_e, λ'),
        y'' = y + (ρ' − ρ)(eps_hat + eps_hat')/2   ⇔   x'' = x_e − ½ σ' (e^{(λ'−λ)/2} − 1)(eps_hat' − eps_hat).
    Every grid step is corrected (2 calls); the final jump from λ_N to clean data (the x0 prediction, ρ → 0) is the
    Euler step, as in EDM's last step, so N steps cost 2N + 1 calls.
    """
    lams = _as_grid(grid)
    denoise = _denoiser(model_fn, target, cond, clip_x0)
    x = _start(shape, generator, x_init, device)
    for i in progress_range(len(lams) - 1, progress, "heun"):
        lam, lam_next = lams[i], lams[i + 1]
        alpha_next, sigma_next = _coefficients(lam_next)
        x0, eps = denoise(x, lam)
        x_euler = alpha_next * x0 + sigma_next * eps
        _, eps_next = denoise(x_euler, lam_next)
        # α'(ρ' − ρ) = σ'(1 − ρ/ρ') = −σ' expm1((λ' − λ)/2): O(σ' Δλ) at both ends of the grid, whereas ρ itself
        # is huge at low λ
        x = x_euler - 0.5 * sigma_next * math.expm1(0.5 * (lam_next - lam)) * (eps_next - eps)
    return _finish(denoise, x, lams[-1])


# ------------------------------------------------------------------------------------------------ guidance

def _null_like(null_cond: Any, cond: torch.Tensor) -> torch.Tensor:
    if isinstance(null_cond, torch.Tensor):
        null = null_cond.to(device=cond.device, dtype=cond.dtype)
        return null if null.shape == cond.shape else null.expand_as(cond)  # one null for the whole batch
    return torch.full_like(cond, null_cond)


def guided(model_fn: ModelFn, scale: float, null_cond: Any) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): a model_fn returning uncond + scale·(cond − uncond).

    Conditional and unconditional rows go through model_fn in one call of batch 2B (cond, then null_cond: a
    label such as the null class index, or a tensor broadcastable to one row of cond). The combination is the
    standard ε-space one; since every target is affine in ε at fixed (x_t, λ) and the weights (1 − scale, scale)
    sum to one, combining the raw predictions of any target (ε, x0 or v) gives exactly the same result, so no
    conversion (and no division by α or σ) is needed. scale = 1 skips the unconditional call; cond = None
    means there is nothing to guide and the model is called unconditionally.
    """
    scale = float(scale)

    def fn(x: torch.Tensor, logsnr: torch.Tensor, cond: Any) -> torch.Tensor:
        if cond is None or scale == 1.0:
            return model_fn(x, logsnr, cond)
        null = _null_like(null_cond, cond)
        both = model_fn(torch.cat([x, x]), torch.cat([logsnr, logsnr]), torch.cat([cond, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    return fn


# ------------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class Sampler:
    """A registered sampler: `sampler(model_fn, shape, grid, target, eta=0.0, generator=, cond=, clip_x0=,
    device=, progress=)`. Only stochastic samplers take a non-zero η."""

    fn: Callable[..., torch.Tensor]
    stochastic: bool = False
    description: str = ""

    def check_eta(self, eta: float) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if eta and not self.stochastic:
            raise ValueError(f"eta={eta}: this sampler integrates the deterministic probability-flow ODE; only a "
                             f"stochastic sampler ({', '.join(n for n, s in SAMPLERS.items() if s.stochastic)}) "
                             "takes eta")

    def __call__(self, model_fn: ModelFn, shape: Sequence[int], grid, target: str, eta: float = 0.0,
                 **kwargs: Any) -> torch.Tensor:
        self.check_eta(eta)
        if self.stochastic:
            kwargs["eta"] = eta
        return self.fn(model_fn, shape, grid, target, **kwargs)


SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register("ddim", Sampler(ddim_sample, stochastic=True, description="DDIM, any eta (1 = DDPM posterior)"))
SAMPLERS.register("euler", Sampler(euler_sample, description="Euler on the PF-ODE (= DDIM, eta 0)"))
SAMPLERS.register("heun", Sampler(heun_sample, description="Heun on the PF-ODE, 2N + 1 calls"))
SAMPLERS.register("euler_ancestral", Sampler(euler_ancestral_sample, stochastic=True,
                                             description="Euler-ancestral (k-diffusion; eta 1 ancestral, 0 Euler)"))
