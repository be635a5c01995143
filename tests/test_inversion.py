"""GAN inversion to W / W+: optimisation, the frozen generator, the encoder and its persistence.

Everything uses a fixed random (untrained) sg2-tiny16 generator: inverting images it drew from known ws is a
well-posed problem with a known answer, and needs no training run.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from animation.faces import SyntheticFaces
from animation.inversion import (
    InversionEncoder, InversionResult, frozen, invert, latent_lr_factor, per_image_loss, train_inversion_encoder,
    w_statistics,
)
from animation.stylegan2 import create_gan, mix_styles

SMALL_ENCODER = dict(base_channels=16, max_channels=32, hidden=128)


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    generator, _ = create_gan("sg2-tiny16")
    return generator.eval()


def _generated(G, n, seed, mixed=False):
    """(ws, images) the generator draws from seeded z; mixed: W+ codes (layers from two z's)."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ws = G.mapping(torch.randn(n, G.z_dim, generator=rng))
        if mixed:
            ws = mix_styles(ws, G.mapping(torch.randn(n, G.z_dim, generator=rng)), 1.0, generator=rng)
        return ws, G.synthesis(ws, noise_mode="const")


@pytest.fixture(scope="module")
def encoder(G):
    return train_inversion_encoder(G, steps=100, batch_size=16, lr=2e-3, seed=0, encoder_kwargs=SMALL_ENCODER)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ optimisation
def test_inversion_recovers_generated_images(G):
    ws_true, target = _generated(G, 6, seed=1)
    result = invert(G, target, steps=150)
    assert isinstance(result, InversionResult)
    assert result.ws.shape == ws_true.shape and not result.ws.requires_grad
    assert result.images.shape == target.shape and len(result.losses) == 150
    assert result.errors.shape == result.init_errors.shape == (6,)
    # the reported errors are the per-image MSE of the returned reconstructions, which G redraws from ws
    torch.testing.assert_close(result.errors, per_image_loss(result.images, target, "mse"))
    with torch.no_grad():
        torch.testing.assert_close(G.synthesis(result.ws), result.images)
    assert result.error < 0.1 * float(result.init_errors.mean())
    assert (result.errors < 0.3 * result.init_errors).all()
    assert result.losses[-1] < 0.2 * result.losses[0]


@pytest.mark.parametrize("mixed", [False, True])
def test_w_plus_fits_at_least_as_well_as_w(G, mixed):
    _, target = _generated(G, 4, seed=2, mixed=mixed)
    w_plus = invert(G, target, steps=100, space="w+")
    w_only = invert(G, target, steps=100, space="w")
    assert w_plus.error <= w_only.error
    # "w" keeps one w for all layers, initialised from the same mean w as "w+"
    assert torch.equal(w_only.ws, w_only.ws[:, :1].expand_as(w_only.ws))
    torch.testing.assert_close(w_plus.init_errors, w_only.init_errors)


@pytest.mark.parametrize("pixel_loss", ["l1", "l2", "mse"])
def test_every_pixel_loss_reduces_error(G, pixel_loss):
    _, target = _generated(G, 2, seed=3)
    result = invert(G, target, steps=60, pixel_loss=pixel_loss, lr_schedule="step")
    assert result.error < 0.3 * float(result.init_errors.mean())


def test_batches_are_independent(G):
    """The loss is summed over images, so splitting a set into batches does not change any image's fit."""
    _, target = _generated(G, 5, seed=4)
    whole = invert(G, target, steps=15, batch_size=5)
    split = invert(G, target, steps=15, batch_size=2)
    torch.testing.assert_close(split.ws, whole.ws, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(split.losses), torch.tensor(whole.losses), rtol=1e-4, atol=1e-5)


def test_tensor_init_and_zero_steps(G):
    ws_true, target = _generated(G, 3, seed=5)
    at_truth = invert(G, target, steps=0, init=ws_true)
    torch.testing.assert_close(at_truth.ws, ws_true)
    assert float(at_truth.errors.max()) < 1e-10 and at_truth.losses == []
    w_ref, _ = w_statistics(G)
    same = invert(G, target, steps=0, init=w_ref)  # a single [w_dim] broadcast to every image and layer
    torch.testing.assert_close(same.ws, invert(G, target, steps=0, init="mean").ws)
    # the w_reg pull: a strong one keeps the ws nearer the mean w than none does
    free = invert(G, target, steps=40)
    pulled = invert(G, target, steps=40, w_reg=1.0)
    assert (pulled.ws - w_ref).norm() < (free.ws - w_ref).norm()


def test_bad_arguments(G):
    _, target = _generated(G, 1, seed=0)
    with pytest.raises(ValueError, match="resolution"):
        invert(G, F.interpolate(target, size=8), steps=1)
    with pytest.raises(ValueError, match="space"):
        invert(G, target, steps=1, space="z")
    with pytest.raises(ValueError, match="pixel_loss"):
        invert(G, target, steps=1, pixel_loss="lpips")
    with pytest.raises(ValueError, match="encoder"):
        invert(G, target, steps=1, init="encoder")
    with pytest.raises(ValueError, match="init tensor"):
        invert(G, target, steps=1, init=torch.zeros(2, 3, G.w_dim))
    with pytest.raises(ValueError, match="lr_schedule"):
        latent_lr_factor(0, 10, "exponential")


def test_lr_schedule_shapes():
    cosine = [latent_lr_factor(s, 100, "cosine", warmup=0.1) for s in range(100)]
    assert cosine[0] < cosine[9] <= 1.0 and cosine[10] == 1.0 and cosine[-1] < 0.01
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    step = [latent_lr_factor(s, 100, "step", warmup=0.0) for s in range(100)]
    assert step[0] == 1.0 and step[60] == pytest.approx(0.1) and step[99] == pytest.approx(0.01)


# ------------------------------------------------------------------------------------------------ frozen generator
def test_generator_is_left_untouched(G):
    _, target = _generated(G, 2, seed=6)  # before train(): mapping in training mode updates w_avg
    G.train()  # a generator still being trained: mode and mixed requires_grad flags must come back as they were
    G.synthesis.const.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in G.named_parameters()}
    before = _snapshot(G)  # parameters and buffers (w_avg, noise_const)
    try:
        invert(G, target, steps=5, feature_fn=lambda x: x.mean(dim=1), w_reg=0.1)
        encoder = train_inversion_encoder(G, steps=2, batch_size=4, real_images=target, style_mixing=0.5,
                                          encoder_kwargs=SMALL_ENCODER)
        invert(G, target, steps=2, init="encoder", encoder=encoder, space="w")
        after = _snapshot(G)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), "generator weights or buffers changed"
        assert all(p.grad is None for p in G.parameters()), "gradients accumulated on the generator"
        assert {name: p.requires_grad for name, p in G.named_parameters()} == flags
        assert all(m.training for m in G.modules())
    finally:
        G.synthesis.const.requires_grad_(True)
        G.eval()


def test_frozen_restores_on_error(G):
    flags = [p.requires_grad for p in G.parameters()]
    with pytest.raises(RuntimeError):
        with frozen(G):
            assert not any(p.requires_grad for p in G.parameters()) and not G.training
            raise RuntimeError("boom")
    assert [p.requires_grad for p in G.parameters()] == flags


# ------------------------------------------------------------------------------------------------ encoder
def test_encoder_beats_mean_init_and_speeds_up_inversion(G, encoder):
    ws_true, target = _generated(G, 8, seed=7)  # images the encoder never saw
    ws = encoder.encode(target)
    assert ws.shape == ws_true.shape
    from_mean = invert(G, target, steps=40, init="mean")
    from_encoder = invert(G, target, steps=40, init="encoder", encoder=encoder)
    assert float(from_encoder.init_errors.mean()) < 0.5 * float(from_mean.init_errors.mean())
    assert from_encoder.error < from_mean.error
    # the encoder's first guess alone already beats 10 steps of optimisation from the mean
    assert float(from_encoder.init_errors.mean()) < invert(G, target, steps=10, init="mean").error


def test_untrained_encoder_answers_the_mean_w(G):
    encoder = InversionEncoder.for_generator(G, seed=0, **SMALL_ENCODER)
    _, target = _generated(G, 3, seed=8)
    torch.testing.assert_close(encoder.encode(target), invert(G, target, steps=0).ws)


def test_encoder_training_is_deterministic_and_leaves_global_rng(G):
    state = torch.random.get_rng_state()
    runs = [train_inversion_encoder(G, steps=3, batch_size=4, seed=5, encoder_kwargs=SMALL_ENCODER)
            for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b = (_snapshot(e) for e in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _snapshot(train_inversion_encoder(G, steps=3, batch_size=4, seed=6, encoder_kwargs=SMALL_ENCODER))
    assert not torch.equal(a["head.weight"], other["head.weight"])


def test_encoder_trains_on_real_images(G):
    faces = SyntheticFaces(8, size=16, seed=0).tensors()
    encoder = train_inversion_encoder(G, steps=3, batch_size=4, real_images=faces, pixel_weight=0.0,
                                      encoder_kwargs=SMALL_ENCODER)
    assert encoder.meta["real_images"] == 8 and encoder.encode(faces).shape == (8, G.num_ws, G.w_dim)


def test_encoder_save_load_round_trip(G, encoder, tmp_path):
    _, target = _generated(G, 4, seed=9)
    path = encoder.save_pretrained(tmp_path / "encoder")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == "inversion-encoder"
    assert config["config"]["num_ws"] == G.num_ws and config["meta"]["steps"] == 100
    loaded = InversionEncoder.from_pretrained(path)
    assert torch.equal(loaded.encode(target), encoder.encode(target))
    assert torch.equal(loaded.w_mean, encoder.w_mean) and loaded.meta == encoder.meta
    again = invert(G, target, steps=5, init="encoder", encoder=loaded)
    torch.testing.assert_close(again.ws, invert(G, target, steps=5, init="encoder", encoder=encoder).ws,
                               rtol=0, atol=0)

    (path / "model.safetensors").write_bytes(
        (path / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="does not match"):
        InversionEncoder.from_pretrained(path)


def test_encoder_must_match_generator(encoder):
    other, _ = create_gan("sg2-tiny16", w_dim=16)
    with pytest.raises(ValueError, match="encoder is for"):
        invert(other, torch.zeros(1, 3, 16, 16), steps=1, init="encoder", encoder=encoder)


# ------------------------------------------------------------------------------------------------ feature loss
def test_feature_fn_enters_the_loss_and_changes_the_fit(G):
    _, target = _generated(G, 3, seed=10)
    seen = []

    def coarse(images):  # a differentiable stand-in for perceptual features: 4x4 colour layout
        seen.append(images.requires_grad)
        return F.avg_pool2d(images, 4) * 2.0

    plain = invert(G, target, steps=20)
    guided = invert(G, target, steps=20, feature_fn=coarse, feature_weight=3.0)
    assert not torch.allclose(plain.ws, guided.ws)
    assert seen[0] is False and all(seen[1:])  # target features once, then on reconstructions with grad
    # the recorded loss is pixel L1 + weight x per-image MSE between features, at the initial ws for step 0
    start = invert(G, target, steps=0).images
    features = (coarse(start) - coarse(target)).flatten(1).square().mean(dim=1)
    expected = (per_image_loss(start, target, "l1") + 3.0 * features).mean()
    assert guided.losses[0] == pytest.approx(float(expected), rel=1e-5)
    assert guided.losses[-1] < 0.5 * guided.losses[0]
    # lists of feature tensors work too (several layers of a feature network)
    multi = invert(G, target, steps=3, feature_fn=lambda x: [coarse(x), x.mean(dim=(2, 3))])
    assert len(multi.losses) == 3 and not torch.allclose(multi.ws, invert(G, target, steps=3).ws)
