import math

import numpy as np
import pytest
import torch

from diffusion.schedules import (
    SCHEDULES, CosineSchedule, LaplaceSchedule, MixtureSchedule, alpha_sigma, get_schedule,
)

WIDE = {"logsnr_min": -math.inf, "logsnr_max": math.inf}  # clamping off, so samples follow p(λ) exactly

# (id, name, params): every registered schedule, some with non-default parameters
CASES = [
    ("cosine", "cosine", {}),
    ("shifted_cosine", "shifted_cosine", {"mu": -1.4}),
    ("scaled_cosine", "scaled_cosine", {"s": 2.0}),
    ("laplace", "laplace", {}),
    ("laplace_wide", "laplace", {"mu": 1.0, "b": 1.5}),
    ("cauchy", "cauchy", {}),
    ("cauchy_shifted", "cauchy", {"mu": -0.5, "gamma": 2.0}),
    ("edm", "edm", {}),
    ("linear", "linear", {}),
    ("linear_50", "linear", {"num_timesteps": 50}),
    ("scaled_linear", "scaled_linear", {}),
    ("squaredcos_cap_v2", "squaredcos_cap_v2", {}),
    ("laplace_floor", "laplace", {"floor": 0.1}),
    ("mixture", "mixture", {"components": ["cauchy", {"name": "edm", "p_mean": 0.5}, "linear"],
                            "weights": [0.2, 0.5, 0.3]}),
]
IDS = [case[0] for case in CASES]
DISCRETE_STEPS = {"linear": 1000, "linear_50": 50, "scaled_linear": 1000, "squaredcos_cap_v2": 1000}


def point_masses(schedule):
    """λ_1 of every discrete schedule in `schedule` (itself or its mixture components)."""
    parts = schedule.components if isinstance(schedule, MixtureSchedule) else [schedule]
    return {part.timestep_logsnr[0].item() for part in parts if hasattr(part, "timestep_logsnr")}


def build(name, params, **extra):
    return get_schedule(name, **{**params, **extra})


def ks_statistic(samples, cdf):
    """Kolmogorov–Smirnov distance between the empirical CDF of `samples` and `cdf` (which may jump)."""
    x = torch.sort(samples.to(torch.float64)).values
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    # just below a sample the empirical CDF is (i − 1)/n, and the true one its left limit (below any point mass)
    left_limit = cdf(torch.nextafter(x, torch.tensor(-math.inf, dtype=torch.float64)))
    return max((i / n - cdf(x)).max().item(), (left_limit - (i - 1) / n).max().item())


N_KS = 20_000
KS_CRITICAL = 1.36 / math.sqrt(N_KS)  # 5 % level


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown schedule 'lapalce'") as raised:
        get_schedule("lapalce")
    assert all(name in str(raised.value) for name in SCHEDULES)
    assert set(SCHEDULES) >= {"cosine", "shifted_cosine", "scaled_cosine", "laplace", "cauchy", "edm", "linear",
                              "scaled_linear", "squaredcos_cap_v2", "mixture"}


@pytest.mark.parametrize("case_id,name,params", CASES, ids=IDS)
def test_samples_follow_the_cdf(case_id, name, params):
    schedule = build(name, params, **WIDE)
    gen = torch.Generator().manual_seed(1234)
    # float64, so a point mass (discrete λ_1) is not split by rounding to float32
    drawn = schedule.sample_logsnr(N_KS, generator=gen, dtype=torch.float64)
    assert ks_statistic(drawn, schedule.cdf) < KS_CRITICAL
    # logsnr(t) is the inverse CDF itself (for a mixture it is a bisection, a separate path from sampling)
    t = torch.rand(N_KS, generator=gen, dtype=torch.float64)
    assert ks_statistic(schedule.logsnr(t), schedule.cdf) < KS_CRITICAL


def test_ks_check_rejects_a_wrong_density():
    gen = torch.Generator().manual_seed(0)
    drawn = get_schedule("laplace", b=0.5, **WIDE).sample_logsnr(N_KS, generator=gen)
    assert ks_statistic(drawn, get_schedule("laplace", b=0.55).cdf) > KS_CRITICAL
    assert ks_statistic(drawn, get_schedule("cosine").cdf) > KS_CRITICAL


@pytest.mark.parametrize("case_id,name,params", CASES, ids=IDS)
def test_logsnr_is_decreasing_in_t(case_id, name, params):
    t = torch.linspace(1e-4, 1 - 1e-4, 20_001, dtype=torch.float64)
    schedule = build(name, params, **WIDE)
    lam = schedule.logsnr(t)
    steps = torch.diff(lam)
    assert bool((steps <= 0).all())
    # flat only across a point mass: the first step λ_1 of a discrete schedule (reached for t < 1/N)
    flat_values = set(lam[1:][steps == 0].tolist())
    masses = point_masses(schedule)
    assert all(any(abs(value - mass) < 1e-9 for mass in masses) for value in flat_values)
    if case_id in DISCRETE_STEPS:
        assert flat_values  # the grid does reach below t = 1/N
    clamped = build(name, params).logsnr(t)
    assert bool((torch.diff(clamped) <= 0).all())


@pytest.mark.parametrize("case_id,name,params", CASES, ids=IDS)
def test_density_integrates_to_one(case_id, name, params):
    schedule = build(name, params)
    # λ = sinh(u) puts grid points densely near 0 and still reaches |λ| = 1e5 (Cauchy tails)
    u = torch.linspace(-math.asinh(1e5), math.asinh(1e5), 400_001, dtype=torch.float64)
    lam = torch.sinh(u)
    total = torch.trapezoid(schedule.density(lam) * torch.cosh(u), u).item()
    # the discrete schedules keep mass 1/N at λ_1 (t < 1/N), which has no density
    expected = 1 - 1 / DISCRETE_STEPS[case_id] if case_id in DISCRETE_STEPS else 1.0
    if case_id == "mixture":
        expected = 1 - 0.3 / 1000
    assert total == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize("case_id,name,params", CASES, ids=IDS)
def test_density_is_the_derivative_of_the_cdf(case_id, name, params):
    schedule = build(name, params, **WIDE)
    # mid-way between the knots t = k/N of the discrete schedules, where their density is smooth
    t = (torch.arange(1, 999, dtype=torch.float64) + 0.5) / 1000
    if case_id in DISCRETE_STEPS:  # t ≤ 1/N is the point mass at λ_1
        t = t[t > 1 / DISCRETE_STEPS[case_id]]
    lam = schedule.logsnr(t)
    h = 1e-6 * (1 + lam.abs())
    numeric = (schedule.cdf(lam + h) - schedule.cdf(lam - h)) / (2 * h)
    torch.testing.assert_close(schedule.density(lam), numeric, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("case_id,name,params", CASES, ids=IDS)
def test_cdf_at_logsnr_t_is_one_minus_t(case_id, name, params):
    schedule = build(name, params, **WIDE)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    if case_id in DISCRETE_STEPS:  # t ≤ 1/N is the point mass at λ_1, where the CDF jumps past 1 − t
        t = t[t > 1 / DISCRETE_STEPS[case_id] + 1e-9]
    torch.testing.assert_close(schedule.cdf(schedule.logsnr(t)), 1 - t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("case_id,name,params", CASES, ids=IDS)
def test_ends_of_time_are_finite_and_clamped(case_id, name, params):
    schedule = build(name, params)
    ends = schedule.logsnr(torch.tensor([0.0, 1.0]))
    assert bool(torch.isfinite(ends).all())
    assert schedule.logsnr_min <= ends[1].item() < ends[0].item() <= schedule.logsnr_max
    drawn = schedule.sample_logsnr(5_000, generator=torch.Generator().manual_seed(3))
    assert drawn.shape == (5_000,) and drawn.dtype == torch.float32
    assert drawn.min().item() >= -15 and drawn.max().item() <= 15


def test_clamp_range_applies_and_is_configurable():
    cosine = get_schedule("cosine")
    assert cosine.logsnr(0.0).item() == 15.0 and cosine.logsnr(1.0).item() == -15.0
    narrow = get_schedule("cauchy", logsnr_min=-5.0, logsnr_max=4.0)
    drawn = narrow.sample_logsnr(20_000, generator=torch.Generator().manual_seed(0))
    assert drawn.min().item() == -5.0 and drawn.max().item() == 4.0
    # P(Λ > 4) for Cauchy(0, 1) is 1/2 − arctan(4)/π ≈ 0.078; those samples sit on the bound
    assert (drawn == 4.0).float().mean().item() == pytest.approx(0.5 - math.atan(4) / math.pi, abs=0.01)
    with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
        get_schedule("laplace", logsnr_min=3.0, logsnr_max=3.0)


def test_sampling_is_reproducible_with_a_generator():
    schedule = get_schedule("laplace", floor=0.2)
    a = schedule.sample_logsnr(100, generator=torch.Generator().manual_seed(7))
    b = schedule.sample_logsnr(100, generator=torch.Generator().manual_seed(7))
    c = schedule.sample_logsnr(100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_alpha_sigma_preserve_variance():
    lam = torch.linspace(-30, 30, 601)
    alpha, sigma = alpha_sigma(lam)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.log(alpha[200:401] ** 2 / sigma[200:401] ** 2), lam[200:401], rtol=0,
                               atol=1e-4)


def test_cosine_schedule_is_alpha_cos_pi_t_over_2():
    t = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=torch.float64)
    alpha, sigma = alpha_sigma(get_schedule("cosine").logsnr(t))
    torch.testing.assert_close(alpha, torch.cos(math.pi * t / 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma, torch.sin(math.pi * t / 2), rtol=0, atol=1e-12)


def test_shifted_and_scaled_cosine_relate_to_cosine():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    cosine = get_schedule("cosine").logsnr(t)
    torch.testing.assert_close(get_schedule("shifted_cosine", mu=-1.4).logsnr(t), cosine - 1.4)
    torch.testing.assert_close(get_schedule("scaled_cosine", s=2.0).logsnr(t), cosine / 2)


def test_known_quantiles():
    laplace = get_schedule("laplace", mu=1.3, b=0.7)
    assert laplace.logsnr(0.5).item() == pytest.approx(1.3)  # the median is μ
    assert laplace.cdf(1.3).item() == pytest.approx(0.5)
    assert laplace.logsnr(0.25).item() == pytest.approx(1.3 + 0.7 * math.log(2))
    cauchy = get_schedule("cauchy", mu=-0.5, gamma=2.0)
    assert cauchy.logsnr(0.25).item() == pytest.approx(1.5)  # quartiles μ ± γ
    assert cauchy.logsnr(0.75).item() == pytest.approx(-2.5)
    edm = get_schedule("edm")  # λ = −2 ln σ ~ N(2.4, 2.4²)
    assert edm.logsnr(0.5).item() == pytest.approx(2.4)
    assert edm.logsnr(0.5 * math.erfc(1 / math.sqrt(2))).item() == pytest.approx(4.8, abs=1e-5)
    assert get_schedule("cosine").logsnr(0.5).item() == pytest.approx(0.0, abs=1e-6)


def test_linear_betas_match_the_closed_form():
    schedule = get_schedule("linear")
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1 - betas)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(schedule.timestep_logsnr.numpy(), np.log(alphas_cumprod / (1 - alphas_cumprod)),
                               rtol=1e-9)


@pytest.mark.parametrize("name,diffusers_kwargs", [
    ("linear", {}),
    ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),  # DDPMScheduler's defaults are DDPM's
    ("squaredcos_cap_v2", {}),
])
def test_discrete_schedules_agree_with_diffusers(name, diffusers_kwargs):
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    steps = 1000
    reference = DDPMScheduler(beta_schedule=name, num_train_timesteps=steps, **diffusers_kwargs)
    alphas_cumprod = reference.alphas_cumprod.double()
    schedule = get_schedule(name, **WIDE)
    torch.testing.assert_close(schedule.alphas_cumprod, alphas_cumprod, rtol=1e-4, atol=0)
    t_k = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    expected = torch.log(alphas_cumprod / (1 - alphas_cumprod))
    torch.testing.assert_close(schedule.logsnr(t_k), expected, rtol=0, atol=5e-3)
    # clamped version: the same values, cut at ±15
    torch.testing.assert_close(get_schedule(name).logsnr(t_k), expected.clamp(-15, 15), rtol=0, atol=5e-3)


def test_floor_mixes_in_the_floor_density():
    floored = get_schedule("laplace", floor=0.1, floor_schedule="cosine")
    assert isinstance(floored, MixtureSchedule)
    laplace, cosine = LaplaceSchedule(), CosineSchedule()
    lam = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    torch.testing.assert_close(floored.density(lam), 0.9 * laplace.density(lam) + 0.1 * cosine.density(lam))
    assert bool((floored.density(lam) >= 0.1 * cosine.density(lam)).all())

    def tail_mass(schedule, edge=4.0):  # P(|Λ| > edge)
        return 1 - (schedule.cdf(torch.tensor(edge)) - schedule.cdf(torch.tensor(-edge))).item()

    assert tail_mass(floored) >= 0.1 * tail_mass(cosine)
    assert tail_mass(floored) > 20 * tail_mass(laplace)  # plain Laplace(0, 0.5): e^{-8} ≈ 3e-4
    drawn = floored.sample_logsnr(100_000, generator=torch.Generator().manual_seed(5))
    assert (drawn.abs() > 4).double().mean().item() == pytest.approx(tail_mass(floored), rel=0.1)


def test_floor_arguments_are_checked():
    assert isinstance(get_schedule("laplace", floor=0.0), LaplaceSchedule)
    with pytest.raises(ValueError, match="floor"):
        get_schedule("laplace", floor=1.0)
    floored = get_schedule("laplace", b=1.0, floor=0.05, floor_schedule="cauchy", floor_params={"gamma": 3.0},
                           logsnr_max=10.0)
    assert floored.logsnr_max == 10.0
    assert floored.params()["components"][1]["gamma"] == 3.0


@pytest.mark.parametrize("case_id,name,params", CASES, ids=IDS)
def test_params_rebuild_the_same_schedule(case_id, name, params):
    schedule = build(name, params, logsnr_min=-12.0)
    rebuilt = get_schedule(schedule.name, **schedule.params())
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.equal(rebuilt.logsnr(t), schedule.logsnr(t))
    assert rebuilt.params() == schedule.params()


def test_invalid_parameters_are_rejected():
    for name, params in [("laplace", {"b": 0.0}), ("cauchy", {"gamma": -1.0}), ("scaled_cosine", {"s": 0.0}),
                         ("edm", {"p_std": 0.0}), ("linear", {"num_timesteps": 1}),
                         ("linear", {"beta_end": 1.5}),
                         ("mixture", {"components": ["cosine", "laplace"], "weights": [1.0, -0.5]}),
                         ("mixture", {"components": ["cosine"], "weights": [0.5, 0.5]})]:
        with pytest.raises(ValueError):
            get_schedule(name, **params)
