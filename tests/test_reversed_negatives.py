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
