"""The simplified diffusion Schrödinger bridge: the γ schedule, every target and parameterisation on a Gaussian
chain whose answer is known in closed form, the trajectory cache, the flow-matching hand-over, and a tiny IPF run
that lowers the distance to the data."""
from __future__ import annotations

import pytest
import torch

import hdvila  # noqa: F401  (registers the packaged recipe configs, so bridge/toy resolves)
from bridge.chain import Chain, gamma_schedule, next_mean, ou_mean, reference_trajectory, training_target
from bridge.ipf import BridgeConfig, build_cache, coupled_states, run_ipf, simulate
from bridge.networks import BridgeNet, BridgeNetConfig
from data_tools.config import ConfigError, from_dict, load_config
from data_tools.distances import sliced_wasserstein
from data_tools.toy2d import TOY2D, sample_toy


def test_gamma_schedule_rises_then_mirrors():
    g = gamma_schedule(8, 1e-4, 1e-3)
    assert g.shape == (8,) and torch.allclose(g, g.flip(0))
    assert float(g[0]) == pytest.approx(1e-4) and float(g[3]) == pytest.approx(1e-3)
    assert bool((g[1:4] > g[:3]).all())
    odd = gamma_schedule(5, 0.1, 0.3)
    assert odd.tolist() == pytest.approx([0.1, 0.3, 0.3, 0.3, 0.1])
    with pytest.raises(ValueError):
        gamma_schedule(0, 0.1, 0.2)


@pytest.mark.parametrize("name", TOY2D.list())
def test_toys_are_seeded_points_of_comparable_spread(name):
    a = sample_toy(name, 4000, torch.Generator().manual_seed(0))
    b = sample_toy(name, 4000, torch.Generator().manual_seed(0))
    assert a.shape == (4000, 2) and torch.equal(a, b)
    assert 0.8 < float(a.std(0).mean()) < 2.6 and float(a.abs().max()) < 6.0
    assert float(a.mean(0).abs().max()) < 0.2


def _least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Slope and intercept of the best linear predictor of y from x (1-D)."""
    design = torch.stack([x, torch.ones_like(x)], dim=1).double()
    solution = torch.linalg.lstsq(design, y.double()[:, None]).solution[:, 0]
    return float(solution[0]), float(solution[1])


def test_targets_regress_onto_the_known_conditional_means():
    # a 1-D OU chain from N(2, 0.5²): x_{k+1} = a x_k + c z, everything Gaussian, so E[x_k | x_{k+1}] is linear
    chain = Chain.make(4, 0.1, 0.2)
    g = torch.Generator().manual_seed(0)
    x_data = 2.0 + 0.5 * torch.randn(400_000, 1, generator=g)
    traj = reference_trajectory("ou", chain, x_data, None, g)
    k = 1
    a, c2 = 1.0 - float(chain.gammas[k]), 2.0 * float(chain.gammas[k])
    m_k, v_k = float(traj[k].mean()), float(traj[k].var())
    gain = a * v_k / (a * a * v_k + c2)  # E[x_k | x_{k+1}] = m_k + gain (x_{k+1} − a m_k)
    x_from, x_to = traj[k + 1], traj[k]
    t_from = chain.time(k + 1)
    simplified = training_target("mean", "simplified", "backward", x_from, x_to, traj[0], t_from)
    slope, intercept = _least_squares(x_from[:, 0], simplified[:, 0])
    assert slope == pytest.approx(gain, abs=0.01) and intercept == pytest.approx(m_k - gain * a * m_k, abs=0.02)
    # DSB: x_{k+1} + F(x_k) − F(x_{k+1}) with F(x) = a x has conditional mean (1 − a) x_{k+1} + a E[x_k | x_{k+1}]
    dsb = training_target("mean", "dsb", "backward", x_from, x_to, traj[0], t_from, ou_mean(chain, k))
    slope, _ = _least_squares(x_from[:, 0], dsb[:, 0])
    assert slope == pytest.approx((1 - a) + a * gain, abs=0.01)
    with pytest.raises(ValueError, match="mean map"):
        training_target("mean", "dsb", "backward", x_from, x_to, traj[0], t_from)


def test_terminal_and_flow_targets_give_the_same_next_state_at_their_optimum():
    # flow reference between N(0, 1) data and N(3, 1) prior: x_k is a noisy point on the line; the optimal terminal
    # output is E[x_data | x_k], the optimal velocity (E[x_data | x_k] − x_k) / t_k, and both rebuild one mean
    chain = Chain.make(8, 1e-3, 1e-2)
    g = torch.Generator().manual_seed(1)
    x_data, x_prior = torch.randn(200_000, 1, generator=g), 3.0 + torch.randn(200_000, 1, generator=g)
    traj = reference_trajectory("flow", chain, x_data, x_prior, g)
    assert torch.equal(traj[0], x_data) and torch.equal(traj[-1], x_prior)
    k = 5
    x_from, t_from, t_to = traj[k], chain.time(k), chain.time(k - 1)
    terminal = training_target("terminal", "simplified", "backward", x_from, traj[k - 1], traj[0], t_from)
    flow = training_target("flow", "simplified", "backward", x_from, traj[k - 1], traj[0], t_from)
    s_t, i_t = _least_squares(x_from[:, 0], terminal[:, 0])
    s_f, i_f = _least_squares(x_from[:, 0], flow[:, 0])
    probe = torch.tensor([[-1.0], [0.5], [2.0]])
    best_terminal = s_t * probe + i_t
    best_flow = s_f * probe + i_f
    via_terminal = next_mean("terminal", "backward", best_terminal, probe, t_from, t_to)
    via_flow = next_mean("flow", "backward", best_flow, probe, t_from, t_to)
    assert torch.allclose(via_terminal, via_flow, atol=1e-3)
    # and on a noiseless point of the line both parameterisations step exactly along it
    d, p = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]])
    on_line = (1 - t_from) * d + t_from * p
    expected = (1 - t_to) * d + t_to * p
    assert torch.allclose(next_mean("terminal", "backward", d, on_line, t_from, t_to), expected, atol=1e-6)
    assert torch.allclose(next_mean("flow", "backward", (d - on_line) / t_from, on_line, t_from, t_to), expected,
                          atol=1e-6)
    assert torch.allclose(next_mean("terminal", "forward", p, on_line, t_from, chain.time(k + 1)),
                          (1 - chain.time(k + 1)) * d + chain.time(k + 1) * p, atol=1e-6)


def _cfg(tmp_path, **overrides) -> BridgeConfig:
    base = {"output_dir": str(tmp_path), "steps": 6, "half_bridges": 2, "cache_trajectories": 512,
            "gamma": [0.05, 0.3], "network": {"kind": "resmlp", "dim": 2, "width": 32, "depth": 2},
            "eval": {"samples": 512, "exact_ot_points": 256},
            "train": {"max_steps": 150, "batch_size": 256, "log_every": 50, "save_every": 0,
                      "deepspeed_config": "zero0", "progress": False},
            "optim": {"lr": 3e-3, "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0}}
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return from_dict(BridgeConfig, base)


def test_cache_pairs_each_state_with_its_neighbour_and_time(tmp_path):
    cfg = _cfg(tmp_path)
    chain = cfg.chain
    traj = torch.arange(7 * 3 * 2, dtype=torch.float32).reshape(7, 3, 2)  # [N + 1, M, D], distinct values
    backward = build_cache(cfg, "backward", traj, None)
    assert len(backward) == 6 * 3
    assert torch.equal(backward.inputs[:3], traj[1]) and torch.equal(backward.targets[:3], traj[0])
    assert torch.allclose(backward.times[:3], torch.full((3,), float(chain.time(1))))
    forward = build_cache(cfg, "forward", traj, None)
    assert torch.equal(forward.inputs[-3:], traj[5]) and torch.equal(forward.targets[-3:], traj[6])
    dsb = build_cache(_cfg(tmp_path, target="dsb"), "backward", traj, lambda x, k: 0.5 * x + k)
    # x_{k+1} + G_k(x_k) − G_k(x_{k+1}) with G_k(x) = x / 2 + k: the offsets cancel
    assert torch.allclose(dsb.targets[:3], traj[1] + 0.5 * traj[0] - 0.5 * traj[1])
    batches = list(backward.batches(4, seed=0)(0))
    assert len(batches) == 4 and batches[0]["x"].shape == (4, 2)


def test_config_checks():
    with pytest.raises(ConfigError, match="reference: ou"):
        load_config(BridgeConfig, "bridge/toy", ["target=dsb", "reference=flow"])
    with pytest.raises(ConfigError, match="reference: flow"):
        load_config(BridgeConfig, "bridge/toy", ["parameterisation=terminal"])
    with pytest.raises(ConfigError, match="did you mean"):
        load_config(BridgeConfig, "bridge/toy", ["data.name=checkerbord"])
    with pytest.raises(ConfigError, match="cache: simulated"):
        load_config(BridgeConfig, "bridge/toy", ["cache=coupled"])  # a mean network needs the simulated states
    flow = ["reference=flow", "parameterisation=flow"]
    assert load_config(BridgeConfig, "bridge/toy", []).cache_kind == "simulated"
    assert load_config(BridgeConfig, "bridge/toy", flow).cache_kind == "coupled"
    assert load_config(BridgeConfig, "bridge/toy", [*flow, "cache=simulated"]).cache_kind == "simulated"


def test_coupled_states_keep_each_trajectorys_ends_and_redraw_the_line_between():
    cfg = BridgeConfig(steps=8, gamma=[1e-3, 1e-2], reference="flow", parameterisation="terminal")
    g = torch.Generator().manual_seed(0)
    x0, xn = torch.randn(4000, 2, generator=g), 3.0 + torch.randn(4000, 2, generator=g)
    curved = torch.stack([x0 + (xn - x0) * (k / 8) ** 2 for k in range(9)])
    states = coupled_states(cfg, curved, g)
    assert torch.equal(states[0], curved[0]) and torch.equal(states[-1], curved[-1])
    for k in range(1, 8):
        off_line = states[k] - ((1 - k / 8) * x0 + k / 8 * xn)
        assert float(off_line.mean().abs()) < 0.01
        assert float(off_line.std()) == pytest.approx(cfg.chain.noise_std(k - 1), rel=0.05)


@pytest.mark.parametrize("parameterisation", ["terminal", "flow"])
def test_coupled_cache_keeps_the_marginal_that_curved_states_lose(parameterisation):
    """A deterministic coupling x_N = x_0 / 2 (variance 4 -> 1) reached along curved paths. The best (least-squares,
    linear per step) forward network fitted on the curved states walks to the wrong end variance; fitted on the
    coupled cache (the same end points, straight-line states) it walks to the right one."""
    n = 8
    cfg = BridgeConfig(steps=n, gamma=[1e-4, 1e-4], reference="flow", parameterisation=parameterisation)
    g = torch.Generator().manual_seed(0)
    x0 = 2.0 * torch.randn(20000, 1, generator=g)
    curved = torch.stack([x0 + (x0 / 2 - x0) * (k / n) ** 2 for k in range(n + 1)])
    end_variance = {}
    for name, trajectories in (("simulated", curved), ("coupled", coupled_states(cfg, curved, g))):
        cache = build_cache(cfg, "forward", trajectories, None)
        slope = {}
        for k in range(n):
            rows = (cache.times - k / n).abs() < 1e-6
            x, y = cache.inputs[rows], cache.targets[rows]
            slope[k] = float((x * y).sum() / (x * x).sum())  # the data and the coupling are centred
        x = 2.0 * torch.randn(20000, 1, generator=g)
        for k in range(n):
            x = next_mean(parameterisation, "forward", slope[k] * x, x, torch.tensor(k / n), torch.tensor((k + 1) / n))
        end_variance[name] = float(x.var())
    assert end_variance["coupled"] == pytest.approx(1.0, rel=0.05)
    assert end_variance["simulated"] < 0.7


def test_tiny_ipf_lowers_the_distance_and_hands_over_from_flow_matching(tmp_path, monkeypatch):
    from bridge import ipf

    coupled_at = []  # the coupled cache replaces the simulated states from half-bridge 1 on, after a hand-over too

    def spy(cfg, trajectories, generator):
        coupled_at.append(trajectories.shape[1])
        return coupled_states(cfg, trajectories, generator)

    monkeypatch.setattr(ipf, "coupled_states", spy)
    prior_vs_data = sliced_wasserstein(sample_toy("gaussian", 512, torch.Generator().manual_seed(5)),
                                       sample_toy("checkerboard", 512, torch.Generator().manual_seed(6)))
    fm = _cfg(tmp_path / "fm", reference="flow", parameterisation="terminal", gamma=[1e-3, 1e-2], half_bridges=1)
    history = run_ipf(fm, progress=False)
    assert history[-1]["data_swd"] < 0.6 * prior_vs_data
    handed = _cfg(tmp_path / "bridge", reference="flow", parameterisation="terminal", gamma=[1e-3, 1e-2],
                  half_bridges=2, init_backward=str(tmp_path / "fm" / "ipf00-backward" / "net"))
    history = run_ipf(handed, progress=False)
    assert [h["half_bridge"] for h in history] == [0, 1] and history[0]["from"].endswith("net")
    assert not (tmp_path / "bridge" / "ipf00-backward").exists()  # half-bridge 0 was not trained again
    assert coupled_at == [handed.cache_trajectories]  # at half-bridge 1 only (half-bridge 0 is the reference's)
    assert history[1]["prior_swd"] < 0.75 * prior_vs_data and "prior_w2" in history[1]
    # the walks of a trained network start where they are told to and keep their shape
    net = BridgeNet.from_pretrained(tmp_path / "bridge" / "ipf01-forward" / "net")
    start = sample_toy("checkerboard", 8)
    walk = simulate(handed, net, "forward", start)
    assert walk.shape == (7, 8, 2) and torch.equal(walk[0], start)
    wrong = _cfg(tmp_path / "wrong", reference="flow", parameterisation="flow", gamma=[1e-3, 1e-2],
                 init_backward=str(tmp_path / "fm" / "ipf00-backward" / "net"))
    with pytest.raises(ValueError, match="parameterisation"):
        run_ipf(wrong, progress=False)
    # a finished half-bridge is reused only by the same recipe
    stale = _cfg(tmp_path / "bridge", reference="flow", parameterisation="terminal", gamma=[1e-3, 1e-2],
                 half_bridges=2, init_backward=str(tmp_path / "fm" / "ipf00-backward" / "net"), cache="simulated")
    with pytest.raises(ValueError, match="another recipe .*cache: 'coupled', this run: 'simulated'"):
        run_ipf(stale, progress=False)
    assert coupled_at == [handed.cache_trajectories]
    assert "cache: simulated" not in (tmp_path / "bridge" / "config.yaml").read_text()  # the folder is untouched
    stale = _cfg(tmp_path / "bridge", reference="flow", parameterisation="terminal", gamma=[1e-3, 1e-2],
                 half_bridges=2, init_backward=str(tmp_path / "fm" / "ipf00-backward" / "net"),
                 optim={"schedule": "cosine"})
    with pytest.raises(ValueError, match="schedule: 'constant', this run: 'cosine'"):
        run_ipf(stale, progress=False)


def test_sample_cli_writes_a_figure_and_the_states(tmp_path):
    import numpy as np

    from hdvila.cli import main as cli_main

    run_ipf(_cfg(tmp_path / "run", half_bridges=1, train={"max_steps": 20}), progress=False)
    out = tmp_path / "walk.png"
    assert cli_main(["--quiet", "bridge", "sample", "--model", str(tmp_path / "run"), "--from", "prior", "--out",
                     str(out), "--n", "64"]) == 0
    states = np.load(tmp_path / "walk.npy")
    assert out.stat().st_size > 0 and states.shape == (7, 64, 2)
    with pytest.raises(ValueError, match="forward"):
        from bridge.pipeline import BridgeRun

        BridgeRun.from_dir(tmp_path / "run").walk("data", 4)


def test_networks_build_for_points_and_images():
    points = BridgeNet(BridgeNetConfig(kind="resmlp", dim=2, width=16, depth=1))
    assert points(torch.zeros(3, 2), torch.tensor(0.5)).shape == (3, 2)
    images = BridgeNet(BridgeNetConfig(kind="denoiser", denoiser="unet-digits",
                                       denoiser_overrides={"image_size": 16}))
    assert images(torch.zeros(2, 1, 16, 16), torch.tensor([0.0, 1.0])).shape == (2, 1, 16, 16)


def test_image_ends_carry_labels_and_class_kept_reads_them():
    from bridge import evaluate
    from bridge.ends import EndConfig, sample_end, sample_labelled_images

    end = EndConfig(kind="image", name="digits", size=8)
    from data_tools.image_datasets import load_image_dataset

    images, labels = sample_labelled_images(end, 64, torch.Generator().manual_seed(3), split="test")
    assert torch.equal(images, sample_end(end, 64, torch.Generator().manual_seed(3), split="test"))
    pool, pool_labels = load_image_dataset("digits", split="test", size=8)
    for image, label in zip(images[:8], labels[:8]):  # each label is its own image's
        assert int(label) == int(pool_labels[(pool - image).flatten(1).abs().sum(1).argmin()])
    assert labels.shape == (64,) and 0 <= int(labels.min()) and int(labels.max()) <= 9
    with pytest.raises(ValueError, match="only an image end"):
        sample_labelled_images(EndConfig(kind="toy2d", name="moons"), 4, torch.Generator())

    class ReadsTheFirstPixel(torch.nn.Module):  # a stand-in classifier: class = 9 where the first pixel is bright
        def forward(self, x):
            bright = (x.flatten(1)[:, 0] > 0).long()
            return torch.nn.functional.one_hot(9 * bright, 10).float()

        def predict(self, x):
            return self(x).argmax(dim=1)

    generated = -torch.ones(4, 1, 8, 8)
    generated[:2, 0, 0, 0] = 1.0
    assert evaluate.class_kept(ReadsTheFirstPixel(), generated, torch.tensor([9, 0, 0, 0])) == pytest.approx(0.75)


def test_coupling_gap_is_zero_for_the_optimal_pairing_and_positive_for_a_shuffled_one():
    from bridge.evaluate import coupling_gap

    g = torch.Generator().manual_seed(0)
    prior = torch.randn(300, 2, generator=g)
    data = 2.0 * prior + torch.tensor([1.0, -1.0])  # a monotone map: its own pairing is the optimal one
    assert coupling_gap(data, prior) == pytest.approx(0.0, abs=1e-6)
    shuffled = data[torch.randperm(300, generator=g)]
    assert coupling_gap(shuffled, prior) > 1.0
    assert coupling_gap(0.5 * data, prior) == pytest.approx(0.0, abs=1e-6)  # a shrunk end is cheaper, not better
