import math

import pytest
import torch

from diffusion.schedules import get_schedule
from diffusion.weighting import TARGETS, WEIGHTINGS, importance_weight, loss_weight, min_snr_weight, x0_space_weight

GAMMA = 5.0


def naive_min_snr(snr, gamma, target):
    """The three Min-SNR formulas exactly as written in the paper's code (valid for 0 < SNR < inf)."""
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}[target]


def target_factor(snr, target):
    """‖T̂ − T‖² = factor · ‖x̂0 − x0‖²."""
    return {"x0": torch.ones_like(snr), "eps": snr, "v": snr + 1}[target]


@pytest.mark.parametrize("target", TARGETS)
def test_min_snr_matches_the_formulas(target):
    gen = torch.Generator().manual_seed(0)
    snr = torch.exp(torch.empty(10_000, dtype=torch.float64).uniform_(-12, 12, generator=gen))
    for gamma in (1.0, GAMMA, 20.0):
        torch.testing.assert_close(min_snr_weight(snr, gamma, target), naive_min_snr(snr, gamma, target))


def test_min_snr_at_zero_and_infinite_snr():
    snr = torch.tensor([0.0, math.inf])
    expected = {"x0": [0.0, GAMMA], "eps": [1.0, 0.0], "v": [0.0, 0.0]}
    for target, values in expected.items():
        weight = min_snr_weight(snr, GAMMA, target)
        assert bool(torch.isfinite(weight).all())
        assert weight.tolist() == values


def test_min_snr_takes_floats_and_keeps_tensor_dtype():
    assert min_snr_weight(2.0, GAMMA, "eps") == 1.0
    assert min_snr_weight(10.0, GAMMA, "eps") == pytest.approx(0.5)
    assert min_snr_weight(10.0, GAMMA, "v") == pytest.approx(5 / 11)
    assert min_snr_weight(0.0, GAMMA, "eps") == 1.0
    assert min_snr_weight(math.inf, GAMMA, "v") == 0.0
    assert isinstance(min_snr_weight(3.0, GAMMA, "x0"), float)
    half = min_snr_weight(torch.tensor([1.0, 100.0], dtype=torch.float16), GAMMA, "eps")
    assert half.dtype == torch.float16
    assert half[0].item() == 1.0 and half[1].item() == pytest.approx(0.05, rel=1e-3)


def test_min_snr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        min_snr_weight(1.0, GAMMA, "epsilon")
    for gamma in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="gamma"):
            min_snr_weight(1.0, gamma, "eps")


# --- named weightings -----------------------------------------------------------------------------------------
IMPORTANCE = {"sample_schedule": "cosine", "target_schedule": "laplace", "target_params": {"b": 0.5}}
NAMED = [
    ("constant", {}),
    ("min_snr", {"gamma": GAMMA}),
    ("soft_min_snr", {"gamma": 4.0}),
    ("snr", {}),
    ("trunc_snr", {}),
    ("importance", IMPORTANCE),
]


def naive_x0_weight(name, snr, target, params):
    """Each weighting's x0-space weight, straight from its definition."""
    if name == "constant":
        return target_factor(snr, target)
    if name == "min_snr":
        return torch.minimum(snr, torch.full_like(snr, params["gamma"]))
    if name == "soft_min_snr":
        return 1 / (1 / snr + 1 / params["gamma"])
    if name == "snr":
        return snr
    if name == "trunc_snr":
        return torch.maximum(snr, torch.ones_like(snr))
    lam = torch.log(snr)
    ratio = get_schedule("laplace", b=0.5).density(lam) / get_schedule("cosine").density(lam)
    return ratio * target_factor(snr, target)


def test_every_weighting_is_covered():
    assert {name for name, _ in NAMED} == set(WEIGHTINGS)


@pytest.mark.parametrize("name,params", NAMED, ids=[n for n, _ in NAMED])
@pytest.mark.parametrize("target", TARGETS)
def test_named_weights_match_their_definitions(name, params, target):
    lam = torch.linspace(-12, 12, 241, dtype=torch.float64)
    snr = torch.exp(lam)
    expected_x0 = naive_x0_weight(name, snr, target, params)
    torch.testing.assert_close(x0_space_weight(name, lam, target, **params), expected_x0, rtol=1e-10, atol=0)
    # the loss on the target carries the x0-space weight divided by {1, SNR, SNR + 1}
    torch.testing.assert_close(loss_weight(name, lam, target, **params), expected_x0 / target_factor(snr, target),
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("name,params", NAMED, ids=[n for n, _ in NAMED])
@pytest.mark.parametrize("target", TARGETS)
def test_x0_space_weight_is_target_weight_times_factor(name, params, target):
    lam = torch.linspace(-20, 20, 401, dtype=torch.float64)
    weight = loss_weight(name, lam, target, **params)
    torch.testing.assert_close(x0_space_weight(name, lam, target, **params),
                               weight * target_factor(torch.exp(lam), target), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name,params", NAMED, ids=[n for n, _ in NAMED])
@pytest.mark.parametrize("target", TARGETS)
def test_weights_are_finite_in_float32(name, params, target):
    lam = torch.linspace(-20, 20, 4001, dtype=torch.float32)
    for weight in (loss_weight(name, lam, target, **params), x0_space_weight(name, lam, target, **params)):
        assert weight.dtype == torch.float32
        assert bool(torch.isfinite(weight).all()) and bool((weight >= 0).all())


@pytest.mark.parametrize("target", TARGETS)
def test_min_snr_loss_weight_agrees_with_min_snr_weight(target):
    lam = torch.linspace(-20, 20, 401, dtype=torch.float64)
    torch.testing.assert_close(loss_weight("min_snr", lam, target, gamma=3.0),
                               min_snr_weight(torch.exp(lam), 3.0, target), rtol=1e-12, atol=0)


def test_known_weight_values():
    # eps with Min-SNR-5 at SNR = 10 → 5/10; v with soft-min-SNR-5 at SNR = 5 → (1/(1/5 + 1/5))/6
    assert loss_weight("min_snr", math.log(10), "eps", gamma=5.0) == pytest.approx(0.5)
    assert loss_weight("soft_min_snr", math.log(5), "v", gamma=5.0) == pytest.approx(2.5 / 6)
    assert loss_weight("snr", 0.0, "eps") == pytest.approx(1.0)
    assert loss_weight("trunc_snr", -3.0, "eps") == pytest.approx(math.exp(3.0))
    assert loss_weight("constant", 7.0, "v") == 1.0
    assert x0_space_weight("constant", 0.0, "v") == pytest.approx(2.0)
    assert loss_weight("min_snr", 0.0, "x0") == pytest.approx(1.0)  # gamma defaults to 5


def test_weighting_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weight("p2", 0.0, "eps")
    with pytest.raises(ValueError, match="target"):
        loss_weight("snr", 0.0, "noise")
    with pytest.raises(ValueError, match="does not take"):
        loss_weight("snr", 0.0, "eps", gamma=5.0)
    with pytest.raises(ValueError, match="gamma"):
        x0_space_weight("soft_min_snr", 0.0, "eps", gamma=0.0)
    with pytest.raises(ValueError, match="sample_schedule"):
        loss_weight("importance", 0.0, "eps", target_schedule="laplace")


# --- importance weighting ---------------------------------------------------------------------------------------
def smooth_loss(lam):
    """A stand-in per-λ loss: peaked near λ = 0 and lopsided, so schedules with different mass there differ."""
    return torch.exp(-lam**2 / 2) + torch.sigmoid(lam - 2)


def expectation(schedule, fn):
    """∫ p(λ) fn(λ) dλ by quadrature."""
    lam = torch.linspace(-60, 60, 1_200_001, dtype=torch.float64)
    return torch.trapezoid(schedule.density(lam) * fn(lam), lam).item()


@pytest.mark.parametrize("sample_name,target_name,target_params", [
    ("cosine", "laplace", {"b": 0.5}),
    ("cosine", "edm", {}),
    ("cauchy", "laplace", {"mu": 1.0, "b": 1.0}),
])
def test_importance_weights_recover_the_target_objective(sample_name, target_name, target_params):
    sample = get_schedule(sample_name)
    target = get_schedule(target_name, **target_params)
    lam = sample.sample_logsnr(200_000, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    weighted = (importance_weight(lam, sample, target) * smooth_loss(lam)).mean().item()
    wanted = expectation(target, smooth_loss)
    assert weighted == pytest.approx(wanted, rel=0.02)
    # without the weights the two objectives differ clearly, so the check above has teeth
    assert abs(smooth_loss(lam).mean().item() - wanted) > 0.05 * wanted


def test_importance_weighting_by_name_matches_objects():
    lam = torch.linspace(-10, 10, 201)
    by_objects = importance_weight(lam, get_schedule("cosine"), get_schedule("laplace", b=0.5))
    by_names = loss_weight("importance", lam, "eps", **IMPORTANCE)
    by_dicts = loss_weight("importance", lam, "eps", sample_schedule={"name": "cosine"},
                           target_schedule={"name": "laplace", "b": 0.5})
    torch.testing.assert_close(by_names, by_objects)
    torch.testing.assert_close(by_dicts, by_objects)
    # Laplace over cosine: (π/b)·exp(−|λ|/b)·cosh(λ/2)
    lam64 = lam.double()
    torch.testing.assert_close(by_objects.double(), (math.pi / 0.5) * torch.exp(-lam64.abs() / 0.5)
                               * torch.cosh(lam64 / 2), rtol=1e-5, atol=0)


def test_importance_weight_is_zero_where_the_sampler_never_goes():
    linear = get_schedule("linear")  # its density lives on [λ_N, λ_1) ≈ [−10.1, 9.2)
    weight = importance_weight(torch.tensor([-12.0, 0.0, 12.0]), linear, get_schedule("cosine"))
    assert weight[0].item() == 0.0 and weight[2].item() == 0.0 and weight[1].item() > 0
