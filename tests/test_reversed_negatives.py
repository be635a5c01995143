"""Time-reversed clips as extra contrastive negatives: the video encoder's reversed copy, the loss's extra
columns, and the recipe switch (pretrain's `reversed_negatives`)."""
import math

import pytest
import torch
import torch.nn.functional as F

import hdvila  # noqa: F401 - registers the model configs
from hdvila.models import create_model
from hdvila.models.losses import contrastive_loss


def _clips(model, b: int = 3, s: int = 2, seed: int = 0):
    cfg = model.config.video
    g = torch.Generator().manual_seed(seed)
    hr = torch.randint(0, 255, (b, s, *cfg.hr_size, 3), dtype=torch.uint8, generator=g)
    lr = torch.randint(0, 255, (b, s, cfg.num_frm - 1, *cfg.lr_size, 3), dtype=torch.uint8, generator=g)
    return hr, lr


def test_reversed_copy_is_the_clip_with_its_frames_in_reverse_order():
    torch.manual_seed(0)
    model = create_model("hdvila-tiny").eval()
    with torch.no_grad():  # at init attention is near uniform over time; large random weights make order matter
        for param in model.video.temporal.parameters():
            param.normal_(0, 0.5)
    hr, lr = _clips(model)
    with torch.no_grad():
        both, grid = model.video(hr, lr, with_reversed=True)
        forward, _ = model.video(hr, lr)
        backward, _ = model.video(hr, lr.flip(2))  # neighbours reversed; the keyframe is the middle either way
    assert both.shape[0] == 2 * hr.shape[0]
    assert torch.allclose(both[:3], forward, atol=1e-6) and torch.allclose(both[3:], backward, atol=1e-6)
    assert (forward - backward).abs().max() > 1e-3  # the order reaches the tokens


def test_reversed_videos_are_extra_text_to_video_columns_only():
    g = torch.Generator().manual_seed(1)
    video, text, rev = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(3))
    got = contrastive_loss(video, text, 0.1, gather=False, reversed_video=rev)
    labels = torch.arange(4)
    t2v = torch.cat([text @ video.t(), text @ rev.t()], dim=1) / 0.1
    expected = 0.5 * (F.cross_entropy(t2v, labels) + F.cross_entropy(video @ text.t() / 0.1, labels))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    assert float(got) > float(contrastive_loss(video, text, 0.1, gather=False))
    # a clip that looks the same backwards (no motion) is its own hardest negative: the t2v part >= ln 2
    static = contrastive_loss(video, video, 0.01, gather=False, reversed_video=video)
    assert float(static) >= 0.5 * math.log(2) - 1e-4


def test_pretrain_objective_scores_reversed_negatives_when_asked():
    from hdvila.recipes.pretrain import PretrainObjective

    torch.manual_seed(0)
    model = create_model("hdvila-tiny").eval()
    hr, lr = _clips(model, b=4)
    ids = torch.randint(5, 50, (4, 8))
    batch = {"hr": hr, "lr": lr, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    plain = PretrainObjective(("vtc",), model.config.temperature, 0).loss(model, batch, 0)
    reversed_ = PretrainObjective(("vtc",), model.config.temperature, 0, reversed_negatives=True).loss(model, batch, 0)
    assert float(reversed_["vtc"]) > float(plain["vtc"])
    outputs = model(batch, ("vtc",), reversed_negatives=True)
    assert outputs["reversed_video_emb"].shape == outputs["video_emb"].shape == (4, model.config.embed_dim)
    assert outputs["visual_tokens"].shape[0] == 4
    assert float(reversed_["vtc"]) == pytest.approx(float(model.losses(outputs)["vtc"]), rel=1e-5)


def test_time_convolution_starts_as_identity_and_makes_order_learnable_at_once():
    """temporal_time_conv: zero-initialised, so the module first computes what it would without it; its
    weights get a gradient from a loss that depends on frame order, where the blocks' own order
    sensitivity at init is orders of magnitude smaller."""
    from hdvila.models.temporal import DividedSpaceTimeTransformer

    torch.manual_seed(0)
    plain = DividedSpaceTimeTransformer(32, 1, 4, 2.0, 0.0, (2, 3), 7)
    torch.manual_seed(0)
    conv = DividedSpaceTimeTransformer(32, 1, 4, 2.0, 0.0, (2, 3), 7, time_conv=True)
    assert conv.time_conv.weight.abs().sum() == 0
    x = torch.randn(2, 7, 32, 2, 3)
    assert torch.allclose(conv(x), plain(x), atol=1e-6)
    probe = torch.randn(2, 6, 32)
    ((conv(x) - conv(x.flip(1))) * probe).sum().backward()  # a loss that only frame order can move
    conv_grad = conv.time_conv.weight.grad.abs().max()
    attention_grad = conv.blocks[0].temporal_attn.qkv.weight.grad.abs().max()
    assert conv_grad > 100 * attention_grad
    with torch.no_grad():
        conv.time_conv.weight.normal_(0, 0.1)
        assert (conv(x) - conv(x.flip(1))).abs().max() > 100 * (plain(x) - plain(x.flip(1))).abs().max()


def test_space_time_convolution_matches_a_hand_computed_reference():
    """The residual branch is a depthwise 3-D convolution over [time, rows, columns] of each channel: checked
    against F.conv3d on the grid laid out by hand, so a wrong reshape or permute cannot pass."""
    from hdvila.models.temporal import DividedSpaceTimeTransformer

    torch.manual_seed(3)
    net = DividedSpaceTimeTransformer(8, 1, 2, 2.0, 0.0, (2, 3), 5, time_conv=True, time_conv_std=0.5)
    x = torch.randn(2, 5, 8, 2, 3)  # [B, T, d, H, W]
    captured = {}
    handle = net.blocks[0].register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0].clone()))
    with torch.no_grad():
        net(x)
    handle.remove()
    with torch.no_grad():
        tokens = x.flatten(3).transpose(2, 3) + net._positions(5, 2, 3)  # [B, T, N, d]
        grid = tokens.transpose(2, 3).reshape(2, 5, 8, 2, 3).permute(0, 2, 1, 3, 4)  # [B, d, T, H, W]
        branch = F.conv3d(grid, net.time_conv.weight, padding=(2, 1, 1), groups=8)
        expected = tokens + branch.permute(0, 2, 1, 3, 4).reshape(2, 5, 8, 6).transpose(2, 3)
    torch.testing.assert_close(captured["x"], expected, atol=1e-5, rtol=1e-5)


def test_reversed_negatives_with_every_objective_and_refusals(tmp_path):
    """Joint pretraining (vtc + mlm + vtm) with reversed negatives: the cross-modal objectives see the clips
    forwards only; a keyframe alone cannot be reversed, and a recipe without vtc refuses the option."""
    torch.manual_seed(0)
    model = create_model("hdvila-tiny", vtm=True).train()
    hr, lr = _clips(model, b=4)
    ids = torch.randint(5, 50, (4, 8))
    batch = {"hr": hr, "lr": lr, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    outputs = model(batch, ("vtc", "mlm", "vtm"), generator=torch.Generator().manual_seed(0), reversed_negatives=True)
    assert outputs["visual_tokens"].shape[0] == 4 and outputs["vtm_logits"].shape == (12, 2)
    losses = model.losses(outputs)
    assert {"vtc", "mlm", "vtm", "loss"} <= set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    with pytest.raises(ValueError, match="neighbour frames"):
        model(dict(batch, lr=lr[:, :, :0]), ("vtc",), reversed_negatives=True)

    from data_tools.config import load_config
    from hdvila.recipes.pretrain import PretrainConfig, run_pretrain

    cfg = load_config(PretrainConfig, "pretrain/tiny", ["recipe=stage2", "reversed_negatives=true",
                                                        "data.train_shards=[none/*.tar]", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="no vtc"):
        run_pretrain(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
