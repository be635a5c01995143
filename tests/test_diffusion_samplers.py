"""VP process conversions (diffusion.process) and samplers / grids / guidance (diffusion.samplers), on analytic
denoisers: a single data point (exact predictor) and a Gaussian data distribution (closed-form optimal denoiser)."""
import math

import pytest
import torch

from diffusion.process import (
    TARGETS, add_noise, alpha_sigma, broadcast, convert, predict_x0_eps, target_of,
)
from diffusion.schedules import get_schedule
from diffusion.samplers import (
    SAMPLERS as SAMPLER_REGISTRY, cosine_logsnr, ddim_noise_scale, ddim_sample, euler_ancestral_noise_scale,
    euler_ancestral_sample, euler_sample, guided, heun_sample, logsnr_grid,
)

SAMPLERS = {"ddim": ddim_sample, "euler": euler_sample, "heun": heun_sample, "euler_ancestral": euler_ancestral_sample}


def _data(b=64, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    eps = torch.randn(b, d, generator=g, dtype=torch.float64)
    logsnr = torch.rand(b, generator=g, dtype=torch.float64) * 20 - 10  # λ in [-10, 10]
    return x0, eps, logsnr


# ------------------------------------------------------------------------------------------------ process

def test_alpha_sigma_unit_norm_and_snr():
    lam = torch.linspace(-30, 30, 121, dtype=torch.float64)
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(lam))
    torch.testing.assert_close(torch.log(a ** 2 / s ** 2), lam)
    # float32 keeps σ > 0 at large λ (sqrt(1 − α²) would round to 0 there)
    _, s32 = alpha_sigma(torch.tensor([20.0, 40.0]))
    assert (s32 > 0).all()
    torch.testing.assert_close(s32, torch.exp(-0.5 * torch.tensor([20.0, 40.0])), rtol=1e-5, atol=0)


def test_broadcast_and_add_noise():
    x0, eps, lam = _data(b=4)
    img = x0.reshape(4, 5, 1, 1).expand(4, 5, 3, 2)
    assert broadcast(lam, img).shape == (4, 1, 1, 1)
    with pytest.raises(ValueError):
        broadcast(lam[:3], img)
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(add_noise(x0, eps, lam), a[:, None] * x0 + s[:, None] * eps)
    # a Python float broadcasts and keeps x's precision
    assert add_noise(x0, eps, 0.0).dtype == torch.float64
    torch.testing.assert_close(add_noise(x0, eps, 0.0), (x0 + eps) / math.sqrt(2))


def test_v_definition():
    x0, eps, lam = _data()
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(target_of(x0, eps, lam, "v"), a[:, None] * eps - s[:, None] * x0)
    assert target_of(x0, eps, lam, "eps") is eps and target_of(x0, eps, lam, "x0") is x0
    with pytest.raises(ValueError):
        target_of(x0, eps, lam, "score")


@pytest.mark.parametrize("target", TARGETS)
def test_target_round_trip(target):
    x0, eps, lam = _data()
    x_t = add_noise(x0, eps, lam)
    x0_hat, eps_hat = predict_x0_eps(target_of(x0, eps, lam, target), x_t, lam, target)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("source", TARGETS)
@pytest.mark.parametrize("dest", TARGETS)
def test_convert_any_to_any(source, dest):
    x0, eps, lam = _data()
    x_t = add_noise(x0, eps, lam)
    p = target_of(x0, eps, lam, source)
    q = convert(p, x_t, lam, source, dest)
    torch.testing.assert_close(q, target_of(x0, eps, lam, dest), rtol=0, atol=1e-9)
    torch.testing.assert_close(convert(q, x_t, lam, dest, source), p, rtol=0, atol=1e-9)


def test_conversions_on_arbitrary_predictions_are_consistent():
    # not only at the true (x0, ε): any prediction gives a pair with x_t = α x0 + σ ε
    x0, eps, lam = _data(seed=1)
    x_t = add_noise(x0, eps, lam)
    wrong = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for target in TARGETS:
        x0_hat, eps_hat = predict_x0_eps(wrong, x_t, lam, target)
        torch.testing.assert_close(add_noise(x0_hat, eps_hat, lam), x_t, rtol=0, atol=1e-9)
        torch.testing.assert_close(target_of(x0_hat, eps_hat, lam, target), wrong, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------ grids

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_grid_increasing_with_exact_endpoints(kind):
    for steps, lo, hi in [(1, -10.0, 10.0), (7, -3.0, 5.5), (50, -12.9, 12.9)]:
        g = logsnr_grid(steps, kind, lo, hi)
        assert g.shape == (steps + 1,) and g.dtype == torch.float64
        assert g[0].item() == lo and g[-1].item() == hi
        assert (g[1:] > g[:-1]).all()


def test_linear_grid_even_in_logsnr():
    g = logsnr_grid(8, "linear", -4.0, 4.0)
    torch.testing.assert_close(g, torch.arange(-4.0, 4.01, 1.0, dtype=torch.float64))


def test_cosine_grid_matches_cosine_schedule_at_even_t():
    g = logsnr_grid(10, "cosine", -10.0, 10.0)
    t = (2 / math.pi) * torch.atan(torch.exp(-g / 2))  # t(λ) of α = cos(πt/2)
    torch.testing.assert_close(torch.diff(t), torch.full((10,), (t[-1] - t[0]).item() / 10, dtype=torch.float64))
    t_max = 2 / math.pi * math.atan(math.exp(5.0))  # t at λ = −10
    torch.testing.assert_close(t[0].item(), t_max)
    torch.testing.assert_close(-2 * math.log(math.tan(math.pi * 0.5 * 0.5)), 0.0, atol=1e-12, rtol=0)
    # symmetric bounds: the middle point is t = 1/2, λ = 0, and the grid is antisymmetric
    torch.testing.assert_close(g, -g.flip(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(cosine_logsnr(torch.tensor(0.5, dtype=torch.float64)).item(), 0.0, atol=1e-12,
                               rtol=0)
    assert not torch.allclose(g, logsnr_grid(10, "linear", -10.0, 10.0))


class _FlippedTime:
    """A schedule written with t = 0 as noise (the opposite convention): the sampler must accept it too."""

    def __init__(self, schedule):
        self.schedule = schedule

    def logsnr(self, t):
        return self.schedule.logsnr(1 - t)


def test_schedule_grid_is_evenly_spaced_quantiles():
    sched = get_schedule("laplace", mu=0.5, b=0.5)
    g = logsnr_grid(12, "schedule", -3.0, 4.0, schedule=sched)
    assert g[0].item() == -3.0 and g[-1].item() == 4.0 and (g[1:] > g[:-1]).all()
    q = sched.cdf(g)  # training-density mass below each grid point: evenly spaced between the bounds
    torch.testing.assert_close(torch.diff(q), torch.full((12,), ((q[-1] - q[0]) / 12).item(), dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)
    # a schedule written with t = 0 as noise gives the same grid; the cosine schedule gives the cosine grid
    torch.testing.assert_close(logsnr_grid(12, "schedule", -3.0, 4.0, schedule=_FlippedTime(sched)), g)
    torch.testing.assert_close(logsnr_grid(9, "schedule", -10.0, 10.0, schedule=get_schedule("cosine")),
                               logsnr_grid(9, "cosine", -10.0, 10.0), rtol=0, atol=1e-9)


def test_schedule_grid_from_a_registry_name():
    g = logsnr_grid(6, "schedule", -5.0, 5.0, schedule="cosine")
    torch.testing.assert_close(g, logsnr_grid(6, "cosine", -5.0, 5.0), rtol=0, atol=1e-5)


def test_grid_errors():
    with pytest.raises(ValueError):
        logsnr_grid(0)
    with pytest.raises(ValueError):
        logsnr_grid(5, "karras")
    with pytest.raises(ValueError):
        logsnr_grid(5, "linear", 3.0, -3.0)
    with pytest.raises(ValueError):
        logsnr_grid(5, "schedule")  # no schedule given
    with pytest.raises(ValueError):  # samplers refuse a decreasing grid
        ddim_sample(lambda x, l, c: x, (2, 3), [1.0, 0.0], "eps")


# ------------------------------------------------------------------------------------------------ analytic models

def point_model(x_star, target, calls=None):
    """The exact denoiser of a one-point data set {x*}: x0_hat = x*, eps_hat = (x_t − α x*)/σ, as `target`."""
    def fn(x, logsnr, cond):
        if calls is not None:
            calls.append(logsnr.clone())
        a, s = alpha_sigma(broadcast(logsnr, x))
        x0 = x_star.expand_as(x).to(x.dtype)
        return target_of(x0, (x - a * x0) / s, logsnr, target)
    return fn


def gaussian_model(m, s, target):
    """The optimal denoiser E[x0 | x_t] for data N(m, s² I): m + α s²/(α² s² + σ²) (x_t − α m)."""
    def fn(x, logsnr, cond):
        a, sig = alpha_sigma(broadcast(logsnr, x))
        x0 = m + a * s ** 2 / (a ** 2 * s ** 2 + sig ** 2) * (x - a * m)
        return target_of(x0, (x - a * x0) / sig, logsnr, target)
    return fn


def gaussian_flow_exact(x_start, grid, m, s):
    """What an exact PF-ODE solve from λ_0 to λ_N then the final x0 prediction give for Gaussian data: the flow
    is the monotone affine map between the Gaussian marginals N(α m, α² s² + σ²)."""
    (a0, aN), (s0, sN) = alpha_sigma(torch.tensor([grid[0], grid[-1]], dtype=torch.float64))
    v0, vN = a0 ** 2 * s ** 2 + s0 ** 2, aN ** 2 * s ** 2 + sN ** 2
    x_end = aN * m + torch.sqrt(vN / v0) * (x_start - a0 * m)
    return m + aN * s ** 2 / vN * (x_end - aN * m)


# ------------------------------------------------------------------------------------------------ samplers

@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "ddim_eta1", "euler_ancestral"])
@pytest.mark.parametrize("target", TARGETS)
def test_exact_point_predictor_reproduces_the_data_point(name, target):
    x_star = torch.tensor([[0.7, -0.3, 0.1, 0.9]])
    grids = [logsnr_grid(1, "linear"), logsnr_grid(5, "cosine", -12.0, 9.0),
             torch.tensor([-8.0, -7.9, -1.0, 0.5, 6.0, 11.0])]
    kwargs = {"eta": 1.0} if name == "ddim_eta1" else {}
    sampler = SAMPLERS[name.split("_")[0]]
    for i, grid in enumerate(grids):
        g = torch.Generator().manual_seed(i)
        out = sampler(point_model(x_star, target), (3, 4), grid, target, generator=g, **kwargs)
        assert out.shape == (3, 4) and out.dtype == torch.float32
        torch.testing.assert_close(out, x_star.expand(3, 4), rtol=0, atol=1e-5)
    # also from an arbitrary (large) start
    x_init = 5 * torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
    out = sampler(point_model(x_star, target), (3, 4), grids[1], target, x_init=x_init, **kwargs)
    torch.testing.assert_close(out, x_star.expand(3, 4), rtol=0, atol=1e-5)


def test_model_calls_follow_the_grid():
    grid = logsnr_grid(4, "cosine")
    for name, expected in [("ddim", list(grid)), ("euler", list(grid)),
                           ("heun", [grid[0]] + [v for v in grid[1:-1] for _ in range(2)] + [grid[-1]] * 2)]:
        calls = []
        SAMPLERS[name](point_model(torch.zeros(1, 2), "v", calls), (3, 2), grid, "v")
        assert len(calls) == (2 * 4 + 1 if name == "heun" else 4 + 1)
        assert all(c.shape == (3,) for c in calls)
        torch.testing.assert_close(torch.stack([c[0] for c in calls]).double(),
                                   torch.tensor([float(v) for v in expected], dtype=torch.float64))


def test_ddim_eta0_is_euler_on_the_pf_ode():
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = logsnr_grid(6, "cosine")
    for target in TARGETS:
        model = gaussian_model(0.3, 0.6, target)
        torch.testing.assert_close(ddim_sample(model, x.shape, grid, target, x_init=x),
                                   euler_sample(model, x.shape, grid, target, x_init=x), rtol=0, atol=1e-12)


def test_ddim_noise_scale_matches_ddpm_posterior():
    for lam, lam_next in [(-10.0, -9.0), (-1.0, 0.5), (3.0, 3.01), (8.0, 12.0)]:
        (a, a1), (s, s1) = alpha_sigma(torch.tensor([lam, lam_next], dtype=torch.float64))
        # forward transition x_λ = (α/α') x_λ' + noise of variance σ² − (α/α')² σ'², then Bayes for x_λ' | x_λ, x0
        trans_var = s ** 2 - (a / a1) ** 2 * s1 ** 2
        posterior_var = (trans_var * s1 ** 2 / s ** 2).item()
        assert ddim_noise_scale(lam, lam_next, 1.0) ** 2 == pytest.approx(posterior_var, rel=1e-9)
        # DDIM paper's form with ᾱ = α²: η² (1 − ᾱ_prev)/(1 − ᾱ) (1 − ᾱ/ᾱ_prev)
        paper = (s1 ** 2 / s ** 2 * (1 - a ** 2 / a1 ** 2)).item()
        assert ddim_noise_scale(lam, lam_next, 0.5) ** 2 == pytest.approx(0.25 * paper, rel=1e-9)
        assert ddim_noise_scale(lam, lam_next, 0.0) == 0.0


def test_ddim_eta1_step_is_the_posterior():
    # one ancestral step from x_λ with a known x0: mean and variance of the DDPM posterior q(x_λ' | x_λ, x0)
    lam, lam_next, x0v = -1.0, 1.0, 0.4
    n = 200_000
    x0 = torch.full((n, 1), x0v, dtype=torch.float64)
    x_t = add_noise(x0, torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64), lam)
    states = []

    def recording(x, logsnr, cond):  # an x0-model that knows the answer; records the x it is called at
        states.append(x.clone())
        return x0

    ddim_sample(recording, (n, 1), [lam, lam_next], "x0", eta=1.0, x_init=x_t,
                generator=torch.Generator().manual_seed(2))
    x_next = states[1]
    (a, a1), (s, s1) = alpha_sigma(torch.tensor([lam, lam_next], dtype=torch.float64))
    a_ts, var_ts = a / a1, s ** 2 - (a / a1) ** 2 * s1 ** 2
    mean = (a_ts * s1 ** 2 / s ** 2) * x_t + (a1 * var_ts / s ** 2) * x0  # Gaussian posterior mean
    var = var_ts * s1 ** 2 / s ** 2
    resid = x_next - mean
    assert resid.mean().abs().item() < 0.01
    assert resid.var().item() == pytest.approx(var.item(), rel=0.02)


def test_euler_ancestral_step_is_k_diffusions_in_its_sigma_variables():
    # k-diffusion works on y = x/α with σ_k = ρ = e^{−λ/2}: one step σ → σ' with d = (y − x0_hat)/σ,
    # σ_up = min(σ', η sqrt(σ'²(σ² − σ'²)/σ²)), σ_down = sqrt(σ'² − σ_up²), y' = y + d (σ_down − σ) + σ_up z
    lam, lam_next, x0v = -2.0, 0.5, 0.3
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for eta in (0.5, 1.0, 3.0):
        states = []

        def recording(xt, logsnr, cond):  # an x0-model; records the x it is called at
            states.append(xt.clone())
            return torch.full_like(xt, x0v)

        euler_ancestral_sample(recording, x.shape, [lam, lam_next], "x0", eta=eta, x_init=x,
                               generator=torch.Generator().manual_seed(4))
        # with x_init the sampler draws nothing for the start: the step's noise is the generator's first draw
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        (a, a1), _ = alpha_sigma(torch.tensor([lam, lam_next], dtype=torch.float64))
        sig, sig1 = math.exp(-lam / 2), math.exp(-lam_next / 2)
        up = min(sig1, eta * math.sqrt(sig1 ** 2 * (sig ** 2 - sig1 ** 2) / sig ** 2))
        down = math.sqrt(sig1 ** 2 - up ** 2)
        y = x / a
        d = (y - x0v) / sig
        expected = a1 * (y + d * (down - sig) + up * z)
        torch.testing.assert_close(states[1], expected, rtol=1e-9, atol=1e-9)


def test_euler_ancestral_is_ddim_up_to_eta_one_and_caps_its_noise_beyond():
    model = gaussian_model(M, S, "v")
    grid = logsnr_grid(12, "cosine")
    for eta in (0.0, 0.4, 1.0):
        a = euler_ancestral_sample(model, (64, 3), grid, "v", eta=eta, generator=torch.Generator().manual_seed(1))
        b = ddim_sample(model, (64, 3), grid, "v", eta=eta, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
    torch.testing.assert_close(
        euler_ancestral_sample(model, (8, 3), grid, "v", eta=0.0, generator=torch.Generator().manual_seed(2)),
        euler_sample(model, (8, 3), grid, "v", generator=torch.Generator().manual_seed(2)), rtol=0, atol=1e-6)
    for lam, lam_next in [(-3.0, -1.0), (2.0, 2.5)]:
        _, sigma_next = alpha_sigma(torch.tensor(lam_next, dtype=torch.float64))
        assert euler_ancestral_noise_scale(lam, lam_next, 1.0) == pytest.approx(ddim_noise_scale(lam, lam_next, 1.0))
        assert ddim_noise_scale(lam, lam_next, 5.0) > float(sigma_next)  # DDIM overshoots σ' at large η
        assert euler_ancestral_noise_scale(lam, lam_next, 5.0) == pytest.approx(float(sigma_next))
    sampler = SAMPLER_REGISTRY.get("euler_ancestral")
    assert sampler.stochastic and sampler.fn is euler_ancestral_sample


M, S = 0.5, 0.3


def _gaussian_start(n=2000, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name,steps,eta", [("ddim", 200, 0.0), ("heun", 30, 0.0), ("ddim", 500, 1.0)])
@pytest.mark.parametrize("target", ["eps", "v"])
def test_gaussian_data_statistics(name, steps, eta, target):
    x = _gaussian_start()
    kwargs = {"eta": eta} if name == "ddim" else {}
    out = SAMPLERS[name](gaussian_model(M, S, target), x.shape, logsnr_grid(steps, "cosine"), target, x_init=x,
                         generator=torch.Generator().manual_seed(3), **kwargs)
    assert out.mean().item() == pytest.approx(M, abs=0.03 * M)
    assert out.std().item() == pytest.approx(S, rel=0.03)


def test_gaussian_data_x0_target_and_linear_grid():
    x = _gaussian_start(seed=1)
    out = heun_sample(gaussian_model(M, S, "x0"), x.shape, logsnr_grid(40, "linear"), "x0", x_init=x)
    assert out.mean().item() == pytest.approx(M, abs=0.03 * M)
    assert out.std().item() == pytest.approx(S, rel=0.03)


def test_heun_beats_euler_and_has_second_order():
    x = _gaussian_start(n=500, d=4)
    errors = {"euler": [], "heun": []}
    for steps in (8, 16, 32):
        grid = logsnr_grid(steps, "cosine")
        exact = gaussian_flow_exact(x, grid, M, S)
        for name in errors:
            out = SAMPLERS[name](gaussian_model(M, S, "v"), x.shape, grid, "v", x_init=x)
            errors[name].append((out - exact).abs().max().item())
    e, h = errors["euler"], errors["heun"]
    assert all(hi < 0.5 * ei for hi, ei in zip(h, e)), errors
    # halving the step: error ÷ ~2 for Euler (1st order), ÷ ~4 for Heun (2nd order)
    assert all(0.35 < e[i + 1] / e[i] < 0.65 for i in range(2)), e
    assert all(h[i + 1] / h[i] < 0.3 for i in range(2)), h
    # and Heun converges to the exact flow
    assert h[-1] < 0.01


def test_clip_x0_bounds_every_estimate():
    x_star = torch.full((1, 3), 2.0)  # data outside the clip range
    seen = []

    def model(x, logsnr, cond):
        seen.append(x.clone())
        return point_model(x_star, "x0")(x, logsnr, cond)

    out = ddim_sample(model, (4, 3), logsnr_grid(5), "x0", clip_x0=(-1.0, 1.0),
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.ones(4, 3))
    # clipped denoiser = the exact denoiser of the point 1.0: the last x sits near α·1
    a, _ = alpha_sigma(torch.tensor(10.0))
    assert (seen[-1] - a).abs().max() < 0.02


def test_generator_determinism():
    model = gaussian_model(M, S, "eps")
    grid = logsnr_grid(10, "cosine")
    for name, kwargs in [("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.3}), ("heun", {}), ("euler", {})]:
        def run(seed):
            return SAMPLERS[name](model, (6, 2, 3), grid, "eps", generator=torch.Generator().manual_seed(seed),
                                  **kwargs)
        a, b, c = run(5), run(5), run(6)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)
    # with eta > 0 the per-step noise comes from the generator as well, not only the start
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(model, x.shape, grid, "eps", eta=1.0, x_init=x, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, x.shape, grid, "eps", eta=1.0, x_init=x, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)


def test_progress_bar_runs():
    out = euler_sample(gaussian_model(M, S, "v"), (2, 2), logsnr_grid(3), "v", progress=True)
    assert out.shape == (2, 2)


# ------------------------------------------------------------------------------------------------ guidance

def _class_model(target):
    """Prediction depends on the label: label k pulls toward data point k, the null label (= 3) toward 0."""
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    calls = []

    def fn(x, logsnr, cond):
        calls.append((x.shape[0], cond.clone()))
        a, s = alpha_sigma(broadcast(logsnr, x))
        x0 = 0.5 * x + centres[cond]
        return target_of(x0, (x - a * x0) / s, logsnr, target)

    return fn, calls


@pytest.mark.parametrize("target", TARGETS)
def test_guidance_scales_and_eps_space_linearity(target):
    x, _, lam = _data(b=6, d=2, seed=3)
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    model, calls = _class_model(target)
    p_cond = model(x, lam, cond)
    p_uncond = model(x, lam, torch.full_like(cond, 3))

    torch.testing.assert_close(guided(model, 1.0, 3)(x, lam, cond), p_cond)
    torch.testing.assert_close(guided(model, 0.0, 3)(x, lam, cond), p_uncond)

    calls.clear()
    out = guided(model, 3.5, null_cond=3)(x, lam, cond)
    # one batched call: cond rows, then null rows
    assert len(calls) == 1 and calls[0][0] == 12
    assert torch.equal(calls[0][1], torch.cat([cond, torch.full_like(cond, 3)]))
    # equals the ε-space combination, converted back to the model's target
    _, e_c = predict_x0_eps(p_cond, x, lam, target)
    _, e_u = predict_x0_eps(p_uncond, x, lam, target)
    expected = convert(e_u + 3.5 * (e_c - e_u), x, lam, "eps", target)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # differs from the conditional prediction when scale != 1
    assert not torch.allclose(out, p_cond)


def test_guidance_null_cond_as_tensor_and_no_cond():
    x, _, lam = _data(b=4, d=2, seed=4)
    cond = torch.tensor([2, 0, 1, 1])
    model, calls = _class_model("eps")
    a = guided(model, 2.0, torch.tensor(3))(x, lam, cond)
    b = guided(model, 2.0, 3)(x, lam, cond)
    torch.testing.assert_close(a, b)
    # without labels there is nothing to guide: one unconditional call with cond=None
    seen = []

    def uncond_model(x, logsnr, cond):
        seen.append(cond)
        return torch.zeros_like(x)

    assert torch.equal(guided(uncond_model, 2.0, 3)(x, lam, None), torch.zeros_like(x))
    assert seen == [None]


def test_guided_sampling_end_to_end():
    # a guided model_fn plugs into the samplers; with the point model per class, scale 1 gives the class point
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])

    def model(x, logsnr, cond):
        a, s = alpha_sigma(broadcast(logsnr, x))
        x0 = points[cond].to(x.dtype)
        return target_of(x0, (x - a * x0) / s, logsnr, "v")

    cond = torch.tensor([0, 1, 0, 1])
    out = ddim_sample(guided(model, 1.0, 2), (4, 2), logsnr_grid(8), "v", cond=cond,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, points[cond], rtol=0, atol=1e-5)
    # scale 2 overshoots the class point away from the null point: x0 = 2·point − null
    out = ddim_sample(guided(model, 2.0, 2), (4, 2), logsnr_grid(8), "v", cond=cond,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, 2 * points[cond], rtol=0, atol=1e-4)
