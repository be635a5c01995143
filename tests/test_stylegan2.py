import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from animation.stylegan2 import (
    GAN_CONFIGS, Discriminator, Generator, ModulatedConv2d, PathLengthPenalty, StyleGAN2Config, count_parameters,
    create_gan, d_logistic_loss, g_nonsaturating_loss, get_gan_config, lazy_adam_params, list_gans, mix_styles,
    r1_penalty,
)

SMALL = ["sg2-tiny16", "sg2-faces32"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_gan("sg2-tiny16")


# ------------------------------------------------------------------------------------------ modulated conv
def test_demodulated_conv_keeps_unit_variance():
    conv = ModulatedConv2d(64, 64, 3, demodulate=True)
    x = torch.randn(8, 64, 20, 20)
    styles = torch.randn(8, 64) * 5  # style scale far from 1
    y = conv(x, styles)[:, :, 1:-1, 1:-1]  # zero padding lowers the variance at the border
    assert 0.8 < y.std().item() < 1.25

    conv.demodulate = False
    y = conv(x, styles)[:, :, 1:-1, 1:-1]
    assert not 0.8 < y.std().item() < 1.25


def test_modulating_activations_equals_per_sample_weights():
    """conv(x * s, W) * d must equal conv(x, W * s * d) done sample by sample (the paper's formulation)."""
    conv = ModulatedConv2d(6, 5, 3)
    x, styles = torch.randn(3, 6, 8, 8), torch.rand(3, 6) + 0.5
    weight = conv.weight * conv.weight_gain
    expected = []
    for i in range(3):
        w = weight * styles[i][None, :, None, None]
        w = w * torch.rsqrt(w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        expected.append(F.conv2d(x[i:i + 1], w, padding=1))
    torch.testing.assert_close(conv(x, styles), torch.cat(expected), rtol=1e-4, atol=1e-5)


def test_upsampling_conv_doubles_resolution():
    conv = ModulatedConv2d(4, 6, 3, up=True)
    assert conv(torch.randn(2, 4, 5, 7), torch.ones(2, 4)).shape == (2, 6, 10, 14)


# ------------------------------------------------------------------------------------------ config + registry
def test_registry_num_ws_and_meta_build():
    assert {"sg2-tiny16", "sg2-faces32", "sg2-64", "sg2-256", "sg2-ffhq1024"} <= set(list_gans())
    for name in list_gans():
        cfg = get_gan_config(name)
        with torch.device("meta"):
            G, D = create_gan(name)
        expected = 2 * int(math.log2(cfg.resolution)) - 2
        assert G.num_ws == G.synthesis.num_ws == cfg.num_ws == expected
    assert get_gan_config("sg2-ffhq1024").num_ws == 18 and get_gan_config("sg2-256").num_ws == 14
    assert get_gan_config("sg2-faces32").num_ws == 8


def test_config_f_parameter_counts_match_stylegan2_ada():
    cfg = get_gan_config("sg2-ffhq1024")
    assert (cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.channel_base, cfg.channel_max) == (512, 512, 8, 32768, 512)
    with torch.device("meta"):
        G, D = create_gan(cfg)
    # stylegan2-ada-pytorch reports ~30.0M / ~29.0M for config-f at 1024 px.
    assert abs(count_parameters(G) / 30.0e6 - 1) < 0.05, count_parameters(G)
    assert abs(count_parameters(D) / 29.0e6 - 1) < 0.05, count_parameters(D)


def test_meta_forward_gives_paper_shapes():
    with torch.device("meta"):
        G, D = create_gan("sg2-ffhq1024")
        images = G(torch.randn(2, 512))
        logits = D(images)
    assert images.shape == (2, 3, 1024, 1024) and logits.shape == (2,)


@pytest.mark.parametrize("resolution", [8, 24, 2048, 48])
def test_bad_resolution_is_rejected(resolution):
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(resolution)
    with pytest.raises(ValueError, match="power of two"):
        get_gan_config("sg2-faces32", resolution=resolution)


def test_config_lookup():
    cfg = get_gan_config("sg2-faces32", w_dim=64)
    assert cfg.w_dim == 64 and GAN_CONFIGS.get("sg2-faces32").w_dim == 128  # overrides do not leak into the registry
    with pytest.raises(KeyError, match="sg2-tiny16"):
        get_gan_config("nope")
    G, D = create_gan(cfg, channels=1)
    assert G(torch.randn(2, cfg.z_dim)).shape == (2, 1, 32, 32)


# ------------------------------------------------------------------------------------------ generator
@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("batch", [4, 1])
def test_shapes(name, batch):
    cfg = get_gan_config(name)
    G, D = create_gan(name)
    z = torch.randn(batch, cfg.z_dim)
    ws = G.mapping(z)
    assert ws.shape == (batch, cfg.num_ws, cfg.w_dim)
    images = G.synthesis(ws)
    assert images.shape == (batch, cfg.channels, cfg.resolution, cfg.resolution)
    assert torch.isfinite(images).all() and images.abs().mean() < 3  # roughly [-1, 1] at init
    assert G(z).shape == images.shape
    assert D(images).shape == (batch,)


@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_truncation_psi_zero_gives_one_image(tiny, noise_mode):
    G, _ = tiny
    G.eval()
    G.mapping.w_avg.normal_()  # any average: psi = 0 must land on it
    images = G(torch.randn(4, G.z_dim), truncation_psi=0.0, noise_mode=noise_mode)
    for i in range(1, 4):
        torch.testing.assert_close(images[i], images[0])
    different = G(torch.randn(4, G.z_dim), truncation_psi=1.0, noise_mode=noise_mode)
    assert not torch.allclose(different[1], different[0])


def test_truncation_cutoff_only_touches_first_layers(tiny):
    G, _ = tiny
    G.eval()
    z = torch.randn(3, G.z_dim)
    ws, cut = G.mapping(z), G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])
    torch.testing.assert_close(cut[:, :2], G.mapping.w_avg.lerp(ws[:, :2], 0.5))


def test_w_avg_tracks_training_batches_only():
    G, _ = create_gan("sg2-tiny16")
    G.eval()
    G.mapping(torch.randn(8, G.z_dim))
    assert G.mapping.w_avg.abs().sum() == 0
    G.train()
    z = torch.randn(8, G.z_dim)
    G.mapping(z)
    torch.testing.assert_close(G.mapping.w_avg, (1 - 0.995) * G.mapping.map_z(z).mean(0))
    assert G.mean_w(256).shape == (G.w_dim,)


def test_noise_strength_starts_at_zero(tiny):
    G, _ = tiny
    G.eval()
    ws = G.mapping(torch.randn(2, G.z_dim))
    const, random = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="random")
    torch.testing.assert_close(const, random)
    torch.testing.assert_close(const, G.synthesis(ws, noise_mode="none"))
    layer = G.synthesis.blocks[-1].convs[0]
    with torch.no_grad():
        layer.noise_strength.fill_(0.5)
    try:
        assert not torch.allclose(G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="random"))
        torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
    finally:
        with torch.no_grad():
            layer.noise_strength.zero_()
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_mix_styles():
    ws_a, ws_b = torch.zeros(64, 6, 3), torch.ones(64, 6, 3)
    torch.testing.assert_close(mix_styles(ws_a, ws_b, 0.0), ws_a)
    mixed = mix_styles(ws_a, ws_b, 1.0, generator=torch.Generator().manual_seed(1))
    from_b = mixed[:, :, 0]  # 1 where the layer came from ws_b
    assert (from_b[:, 0] == 0).all() and (from_b[:, -1] == 1).all()  # crossover strictly inside
    assert (from_b.diff(dim=1) >= 0).all()  # one crossover: a-layers then b-layers
    assert len(set(from_b.sum(1).tolist())) > 1  # the crossover point varies


# ------------------------------------------------------------------------------------------ losses
def test_nonsaturating_and_logistic_losses():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(g_nonsaturating_loss(logits), F.softplus(-logits).mean())
    torch.testing.assert_close(d_logistic_loss(logits, -logits), 2 * F.softplus(-logits).mean())
    assert d_logistic_loss(torch.full((4,), 20.0), torch.full((4,), -20.0)) < 1e-6  # perfect D


def test_r1_penalty(tiny):
    _, D = tiny
    real = torch.randn(4, 3, 16, 16, requires_grad=True)
    r1 = r1_penalty(real, D(real))
    assert r1.item() > 0 and r1.requires_grad  # create_graph: the penalty itself trains D

    blind = create_gan("sg2-tiny16")[1]
    with torch.no_grad():
        blind.from_rgb.weight.zero_()  # the output no longer depends on the input
    assert r1_penalty(real, blind(real)).item() == 0.0

    class IgnoresInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.logit = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.logit.expand(x.shape[0])

    assert r1_penalty(real, IgnoresInput()(real)).item() == 0.0


def test_path_length_penalty(tiny):
    G, _ = tiny
    pl = PathLengthPenalty(decay=0.01)
    pl.mean_length.fill_(0.3)
    ws = G.mapping(torch.randn(4, G.z_dim))
    penalty, lengths = pl(G.synthesis(ws, noise_mode="const"), ws)
    assert lengths.shape == (4,) and (lengths > 0).all() and penalty.item() >= 0 and penalty.requires_grad
    expected = 0.3 + 0.01 * (lengths.mean().item() - 0.3)
    assert pl.mean_length.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(penalty, (lengths - pl.mean_length).square().mean())

    restored = PathLengthPenalty()
    restored.load_state_dict(pl.state_dict())
    assert restored.mean_length.item() == pl.mean_length.item()


def test_lazy_adam_params():
    lr, (b1, b2) = lazy_adam_params(0.002, (0.0, 0.99), 16)
    c = 16 / 17
    assert lr == pytest.approx(0.002 * c) and b1 == 0.0 and b2 == pytest.approx(0.99 ** c)
    lr, (b1, b2) = lazy_adam_params(0.0025, (0.5, 0.99), 4)
    assert lr == pytest.approx(0.002) and b1 == pytest.approx(0.5 ** 0.8) and b2 == pytest.approx(0.99 ** 0.8)


# ------------------------------------------------------------------------------------------ training
def _g_step(G, D, pl, batch=4):
    ws = G.mapping(torch.randn(batch, G.z_dim))
    images = G.synthesis(ws, noise_mode="random")
    penalty, _ = pl(images, ws)
    return g_nonsaturating_loss(D(images)) + 2.0 * penalty


def _d_step(G, D, real):
    with torch.no_grad():
        fake = G(torch.randn(real.shape[0], G.z_dim))
    real = real.detach().requires_grad_(True)
    real_logits = D(real)
    return d_logistic_loss(real_logits, D(fake)) + 5.0 * r1_penalty(real, real_logits)


def test_gradients_flow_and_training_stays_finite():
    G, D = create_gan("sg2-tiny16")
    pl = PathLengthPenalty()
    real = torch.randn(4, 3, 16, 16).tanh()

    G.zero_grad(), D.zero_grad()
    _g_step(G, D, pl).backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    D.zero_grad()
    _d_step(G, D, real).backward()
    for name, p in D.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

    g_opt = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    before = [p.detach().clone() for p in G.parameters()]
    for _ in range(5):
        loss = _d_step(G, D, real)
        d_opt.zero_grad(), loss.backward(), d_opt.step()
        assert torch.isfinite(loss)
        loss = _g_step(G, D, pl)
        g_opt.zero_grad(), loss.backward(), g_opt.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, G.parameters()))
    assert torch.isfinite(pl.mean_length) and pl.mean_length > 0


def test_minibatch_std_needs_divisible_batch(tiny):
    _, D = tiny
    assert D(torch.randn(8, 3, 16, 16)).shape == (8,)
    with pytest.raises(ValueError, match="divisible"):
        D(torch.randn(6, 3, 16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu():
    G, D = create_gan("sg2-tiny16")
    G, D = G.cuda(), D.cuda()
    real = torch.randn(4, 3, 16, 16, device="cuda", requires_grad=True)
    assert r1_penalty(real, D(real)).isfinite()
    ws = G.mapping(torch.randn(4, G.z_dim, device="cuda"))
    penalty, _ = PathLengthPenalty().cuda()(G.synthesis(ws, noise_mode="random"), ws)
    assert penalty.isfinite() and G.mean_w(64).device.type == "cuda"


@pytest.mark.parametrize("pad, stride, gain", [(1, 1, 1.0), (1, 1, 4.0), (2, 1, 1.0), (1, 2, 1.0)])
def test_fir_slices_match_depthwise_conv(pad, stride, gain):
    """The CUDA path (shifted slices) computes the same filter as the CPU path (depthwise conv)."""
    from animation.stylegan2 import _blur_conv, _blur_slices, _upsample_conv, _upsample_slices
    x = torch.randn(2, 5, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(_blur_slices(x, pad, stride, gain), _blur_conv(x, pad, stride, gain))
    torch.testing.assert_close(_upsample_slices(x), _upsample_conv(x))
    assert _upsample_conv(torch.ones(1, 1, 6, 6))[0, 0, 1:-1, 1:-1].eq(1).all()  # mean kept away from the border
