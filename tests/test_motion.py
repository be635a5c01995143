"""Language-guided face motion: recurrent latent walk, W+ mapper, and the motion losses."""
import math

import pytest
import torch
from torch import nn

from animation.motion import (
    DECAYS, LatentRecurrent, MotionGenerator, WPlusMapper, contrastive_text_loss, decay_factors, endpoint_loss,
    feature_identity_loss, frame_latents, latent_anchor_loss, pixel_norm, single_text_loss, smoothness_loss,
)

Z, H, NUM_WS, W_DIM = 16, 24, 4, 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _embeddings(batch: int = 3, dim: int = Z):
    return torch.randn(batch, dim), torch.randn(batch, dim)


# ------------------------------------------------------------------------------------------ shapes, frame 0
@pytest.mark.parametrize("frames", [1, 2, 7])
def test_shapes_and_first_frame_is_exactly_zero(frames):
    e_txt, e_img = _embeddings()
    rec = LatentRecurrent(Z, h_dim=H)
    o, z = rec(e_txt, e_img, frames, generator=_gen(0), return_z=True)
    assert o.shape == z.shape == (3, frames, Z)
    assert torch.equal(o[:, 0], torch.zeros(3, Z))

    motion = MotionGenerator(Z, NUM_WS, W_DIM, h_dim=H)
    for decay in DECAYS:
        dw = motion(e_txt, e_img, frames, decay=decay, generator=_gen(0))
        assert dw.shape == (3, frames, NUM_WS, W_DIM)
        assert torch.equal(dw[:, 0], torch.zeros(3, NUM_WS, W_DIM))
        assert torch.isfinite(dw).all()
    if frames > 1:
        assert dw[:, 1:].abs().max() > 0
    w_inv = torch.randn(3, NUM_WS, W_DIM)
    assert torch.equal(frame_latents(w_inv, dw)[:, 0], w_inv)


def test_z0_is_sum_of_normalised_embeddings():
    e_txt, e_img = _embeddings()
    _, z = LatentRecurrent(Z, h_dim=H)(e_txt, e_img, 3, return_z=True)
    expected = e_txt / e_txt.norm(dim=1, keepdim=True) + e_img / e_img.norm(dim=1, keepdim=True)
    torch.testing.assert_close(z[:, 0], expected)


def test_mapper_raw_output_at_zero_is_bias_constant_but_offsets_are_zero():
    mapper = WPlusMapper(Z, NUM_WS, W_DIM)
    with torch.no_grad():
        for layer in (mapper.fc0, mapper.fc1, mapper.out):
            layer.bias.normal_()
    zero = torch.zeros(2, Z)
    assert mapper(zero).abs().max() > 0  # PixelNorm(0) = 0, so the raw output is made of the biases
    assert torch.equal(mapper.offsets(zero), torch.zeros(2, NUM_WS, W_DIM))
    o = torch.randn(2, Z)
    torch.testing.assert_close(mapper.offsets(o), mapper(o) - mapper(zero))


def test_pixel_norm_of_zero_has_no_nan():
    x = torch.zeros(2, Z, requires_grad=True)
    y = pixel_norm(x)
    assert torch.equal(y, torch.zeros(2, Z))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    v = torch.randn(3, Z)
    torch.testing.assert_close(pixel_norm(v).square().mean(dim=1), torch.ones(3), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ decay schedules
def test_decay_factors_values():
    T = 5
    t = torch.arange(1, T, dtype=torch.float64)
    expected = {
        "const": torch.ones(T - 1, dtype=torch.float64),
        "linear": (T - t) / T,
        "sqrt": ((T - t) / T).sqrt(),
        "exp": 1 - torch.exp(t / T - 1),
    }
    for decay, want in expected.items():
        torch.testing.assert_close(decay_factors(T, decay, dtype=torch.float64), want)
    torch.testing.assert_close(decay_factors(T, "linear"), torch.tensor([0.8, 0.6, 0.4, 0.2]))
    assert decay_factors(1, "linear").shape == (0,)
    rec = LatentRecurrent(Z, h_dim=H, residual=0.8)
    torch.testing.assert_close(rec.step_sizes(T, "linear"), torch.tensor([0.8, 0.6, 0.4, 0.2]) * 0.8 / T)
    with pytest.raises(ValueError):
        decay_factors(T, "cosine")


def _constant_update_recurrent(value: float = 0.5) -> LatentRecurrent:
    """W2 with zero weights and a constant positive bias: every z update is r_t * lrelu(value) (known exactly)."""
    rec = LatentRecurrent(Z, h_dim=H, residual=0.8)
    with torch.no_grad():
        rec.w2.weight.zero_()
        rec.w2.bias.fill_(value)
    return rec


@pytest.mark.parametrize("decay", DECAYS)
def test_forward_uses_the_schedule_step_sizes(decay):
    T = 6
    rec = _constant_update_recurrent(0.5)
    e_txt, e_img = _embeddings()
    o = rec(e_txt, e_img, T, decay=decay, generator=_gen(1))
    steps = (o[:, 1:] - o[:, :-1])  # [B, T-1, Z], each should be r_t * lrelu(0.5) * sqrt(2) everywhere
    per_unit = 0.5 * math.sqrt(2)
    want = rec.step_sizes(T, decay) * per_unit
    torch.testing.assert_close(steps, want[None, :, None].expand_as(steps), atol=1e-6, rtol=1e-5)


def test_linear_decay_motion_shrinks_over_time():
    T = 8
    rec = _constant_update_recurrent(0.5)
    e_txt, e_img = _embeddings()
    o_lin = rec(e_txt, e_img, T, decay="linear", generator=_gen(2))
    motion = (o_lin[:, 1:] - o_lin[:, :-1]).norm(dim=-1)  # [B, T-1]
    assert (motion[:, 1:] < motion[:, :-1]).all()
    o_const = rec(e_txt, e_img, T, decay="const", generator=_gen(2))
    motion_const = (o_const[:, 1:] - o_const[:, :-1]).norm(dim=-1)
    torch.testing.assert_close(motion_const, motion_const[:, :1].expand_as(motion_const))
    # the motion settles: the final offset is smaller than under the constant schedule
    assert (o_lin[:, -1].norm(dim=-1) < o_const[:, -1].norm(dim=-1)).all()


# ------------------------------------------------------------------------------------------ gradients, randomness
def test_image_embedding_is_detached():
    e_txt, e_img = _embeddings()
    e_txt.requires_grad_(True)
    e_img.requires_grad_(True)
    motion = MotionGenerator(Z, NUM_WS, W_DIM, h_dim=H)
    dw = motion(e_txt, e_img, 4, generator=_gen(0))
    dw.square().sum().backward()
    assert e_img.grad is None or torch.count_nonzero(e_img.grad) == 0
    assert e_txt.grad is not None and e_txt.grad.abs().sum() > 0
    for p in motion.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_deterministic_under_generator_and_different_across_seeds():
    e_txt, e_img = _embeddings()
    motion = MotionGenerator(Z, NUM_WS, W_DIM, h_dim=H)
    a = motion(e_txt, e_img, 5, decay="linear", generator=_gen(7))
    b = motion(e_txt, e_img, 5, decay="linear", generator=_gen(7))
    c = motion(e_txt, e_img, 5, decay="linear", generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, 1:], c[:, 1:])
    # h_0 itself: 0.01 * N(0, I) drawn from the generator
    _, h0 = motion.recurrent.initial_state(e_txt, e_img, _gen(7))
    torch.testing.assert_close(h0, 0.01 * torch.randn(3, H, generator=_gen(7)))


# ------------------------------------------------------------------------------------------ losses
def test_smoothness_loss():
    t = torch.arange(6, dtype=torch.float32)
    direction = torch.randn(2, 1, NUM_WS, W_DIM)
    linear = t[None, :, None, None] * direction  # constant velocity
    assert smoothness_loss(linear).item() == pytest.approx(0.0, abs=1e-10)
    jerky = linear.clone()
    jerky[:, 3] += 1.0
    assert smoothness_loss(jerky).item() > 0.1
    assert smoothness_loss(linear[:, :2]).item() == 0.0  # fewer than 3 frames


def test_endpoint_and_anchor_losses():
    dw = torch.randn(2, 5, NUM_WS, W_DIM)
    dw[:, -1] = dw[:, 0]
    assert endpoint_loss(dw).item() == 0.0
    dw[:, 0] = 0
    dw[:, -1] = 2.0
    assert endpoint_loss(dw).item() == pytest.approx(4.0)  # L2 penalty on the final offset when dw_0 = 0

    w_inv = torch.randn(2, NUM_WS, W_DIM)
    ws = w_inv[:, None].expand(2, 5, NUM_WS, W_DIM)
    assert latent_anchor_loss(ws, w_inv).item() == 0.0
    assert latent_anchor_loss(ws + 3.0, w_inv).item() == pytest.approx(9.0)


def test_feature_identity_loss():
    feature_fn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    inputs = torch.randn(2, 3, 8, 8)
    assert feature_identity_loss(feature_fn, inputs, inputs, inputs).item() == pytest.approx(0.0, abs=1e-12)
    last = (inputs + torch.randn_like(inputs)).requires_grad_(True)
    loss = feature_identity_loss(feature_fn, inputs, last, inputs)
    assert loss.item() > 0
    loss.backward()
    assert last.grad.abs().sum() > 0


def test_contrastive_text_loss():
    batch, dim = 6, 32
    text = torch.randn(batch, dim)
    aligned = text + 0.05 * torch.randn(batch, dim)
    shuffled = aligned[torch.roll(torch.arange(batch), 1)]
    good = contrastive_text_loss(aligned, text)
    bad = contrastive_text_loss(shuffled, text)
    assert torch.isfinite(good) and torch.isfinite(bad)
    assert good.item() < bad.item()
    assert good.item() >= 0

    # identical texts: every other pair is a same-text pair; masked out, each row is log(1) = 0
    same_text = text[:1].expand(batch, dim)
    images = torch.randn(batch, dim, requires_grad=True)
    mask = torch.ones(batch, batch, dtype=torch.bool)
    masked = contrastive_text_loss(images, same_text, same_text=mask)
    assert masked.item() == 0.0
    masked.backward()
    assert torch.isfinite(images.grad).all()
    assert contrastive_text_loss(images, same_text).item() > 0  # unmasked, identical texts are negatives

    # a partial mask only removes the marked pairs
    pair_mask = torch.zeros(batch, batch, dtype=torch.bool)
    pair_mask[0, 1] = pair_mask[1, 0] = True
    assert contrastive_text_loss(shuffled, text, same_text=pair_mask).item() < bad.item()

    assert single_text_loss(text, text).item() == pytest.approx(0.0, abs=1e-6)
    assert single_text_loss(text, -text).item() == pytest.approx(2.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ training sanity
def test_adam_steps_lower_toy_objective_and_keep_first_frame():
    torch.manual_seed(0)
    e_txt, e_img = _embeddings(batch=2)
    motion = MotionGenerator(Z, NUM_WS, W_DIM, h_dim=H)
    target = torch.randn(2, NUM_WS, W_DIM)
    opt = torch.optim.Adam(motion.parameters(), lr=1e-2)

    def objective():
        dw = motion(e_txt, e_img, 5, generator=_gen(3))
        return (dw[:, -1] - target).square().mean() + 0.1 * smoothness_loss(dw), dw

    start, _ = objective()
    for _ in range(30):
        loss, dw = objective()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.equal(dw[:, 0], torch.zeros_like(dw[:, 0]))
    end, dw = objective()
    assert end.item() < 0.5 * start.item()
    assert torch.equal(dw[:, 0], torch.zeros_like(dw[:, 0]))


def test_travel_makes_every_clip_length_cover_the_training_distance():
    plain = LatentRecurrent(Z, h_dim=H, residual=0.8)
    matched = LatentRecurrent(Z, h_dim=H, residual=0.8, travel=0.8 * 3 / 4)
    # at the training length and decay nothing changes
    assert torch.allclose(matched.step_sizes(4, "const"), plain.step_sizes(4, "const"))
    for frames, decay in ((16, "linear"), (16, "const"), (9, "sqrt")):
        steps = matched.step_sizes(frames, decay)
        assert steps.sum().item() == pytest.approx(0.6)
        shape = plain.step_sizes(frames, decay)
        assert torch.allclose(steps / steps[0], shape / shape[0])  # same (T - t)/T profile, rescaled
    with pytest.raises(ValueError):
        LatentRecurrent(Z, h_dim=H, travel=0.0)
