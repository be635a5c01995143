from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from data_tools.config import ConfigError
from data_tools.tokenizer import load_tokenizer
from hdvila.models import (
    HDVILA,
    create_model,
    get_model_config,
    list_models,
    mask_tokens,
    register_model_config,
    sample_hard_negatives,
)
from data_tools.pretrained import migrate_pretrained, read_pretrained
from data_tools.registry import RegistryError
from hdvila.models.registry import HDVILA_MODELS

TINY = "hdvila-tiny"


def make_batch(model: HDVILA, b: int = 2, s: int = 2, length: int = 12, seed: int = 0) -> dict:
    """Random uint8 frames at the config's sizes and token ids with a padded second row."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config.video
    (hh, hw), (lh, lw) = cfg.hr_size, cfg.lr_size
    ids = torch.randint(5, model.config.text.vocab_size, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    ids[:, 0], ids[:, -1] = model.config.cls_id, model.config.sep_id
    if b > 1:
        ids[1, length // 2:] = model.config.pad_id
        ids[1, length // 2 - 1] = model.config.sep_id
        mask[1, length // 2:] = 0
    return {
        "hr": torch.randint(0, 256, (b, s, hh, hw, 3), generator=g, dtype=torch.uint8),
        "lr": torch.randint(0, 256, (b, s, cfg.num_frm - 1, lh, lw, 3), generator=g, dtype=torch.uint8),
        "input_ids": ids,
        "attention_mask": mask,
    }


def tiny(**overrides) -> HDVILA:
    torch.manual_seed(0)
    return create_model(TINY, **overrides)


# --------------------------------------------------------------------------------------------------------
# configs, registry, parameter counts


def test_tiny_vocab_and_ids_match_committed_tokenizer():
    tok = load_tokenizer()
    cfg = get_model_config(TINY)
    assert cfg.text.vocab_size == tok.vocab_size
    assert (cfg.pad_id, cfg.cls_id, cfg.sep_id, cfg.mask_id) == (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id)
    assert set(cfg.special_ids) == tok.special_ids()
    assert get_model_config("hdvila-small").text.vocab_size == tok.vocab_size


def test_paper_parameter_counts_on_meta():
    """Reference figures (hdvila.md 1.5): dual encoder ~310M, full model with MLM head ~495M.

    Ours, exactly (paper config, built on the meta device):
      HR ResNet-50 (stages 1-5, no fc)                  23,508,032
      LR ResNet-50 cut after stage 4                      8,543,296
      grid projections (HR 2048->1024, LR 1024->1024, fuse 2048->1024)   5,245,952
      divided space-time Transformer (4 blocks + 10x16 space / 7 time pos + norm)   71,558,144
      BERT embeddings 31,782,912 + 12 text layers 151,154,688 + pooler 1,049,600  183,987,200
      v_proj + t_proj (1024->1024 each)                    2,099,200
      = stage-1 dual encoder                            294,941,824
      cross: 12 layers 151,154,688 + pooler2 1,049,600 + visual embeddings 207,872  152,412,160
      MLM head (transform 1,051,648 + decoder 31,285,050) 32,336,698
      = full model                                      479,690,682
    The reference's 310M counts the LR ResNet's conv5_x (14,964,736), which it builds but never runs; timm
    features_only prunes it here: 294,941,824 + 14,964,736 = 309,906,560 (= 310M). Its stage-2 figure
    (152.9M) is 0.52M above ours (= one 512 x 1024 table, e.g. a 1-D position embedding our visual
    embeddings do not have: ours are row/column (100 each) + one type + LayerNorm). Hence full:
    479.7M + 15.0M + 0.5M = 495.2M.
    """
    with torch.device("meta"):
        model = create_model("hdvila-paper")
    video = model.video
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(video.hr_backbone) == 23_508_032
    assert count(video.lr_backbone) == 8_543_296
    assert not hasattr(video.lr_backbone, "layer4") and hasattr(video.hr_backbone, "layer4")
    assert count(video.hr_proj) + count(video.lr_proj) + count(video.fuse) == 5_245_952
    assert count(video.temporal) == 71_558_144
    assert model.num_parameters("text") == 183_987_200
    assert model.num_parameters("projections") == 2_099_200
    assert model.num_parameters("dual") == 294_941_824
    assert model.num_parameters("cross") == 152_412_160
    assert model.num_parameters("mlm_head") == 32_336_698
    assert model.num_parameters("full") == 479_690_682
    lr_conv5 = 14_964_736
    assert model.num_parameters("dual") + lr_conv5 == pytest.approx(310e6, rel=0.005)
    assert model.num_parameters("full") + lr_conv5 == pytest.approx(495e6, rel=0.005)
    assert video.grid == (10, 16)  # 160 visual tokens per segment
    assert video.temporal.space_pos.shape == (1, 1024, 10, 16) and video.temporal.time_pos.shape[-1] == 7


def test_every_registered_model_builds():
    assert {"hdvila-tiny", "hdvila-small", "hdvila-base", "hdvila-paper"} <= set(list_models())
    for name in list_models():
        cfg = get_model_config(name)
        if cfg.video.hr_size[0] * cfg.video.hr_size[1] > 256 * 256:  # big ones: shapes and counts only
            with torch.device("meta"):
                model = create_model(name)
            assert model.num_parameters("full") > 150e6
            continue
        model = create_model(name).eval()
        batch = make_batch(model, b=1, s=1, length=8)
        with torch.no_grad():
            emb, tokens = model.encode_video(batch["hr"], batch["lr"])
        grid = model.video.grid
        assert tokens.shape == (1, 1, grid[0] * grid[1], cfg.video.d)
        assert emb.shape == (1, cfg.embed_dim)
    with torch.device("meta"):
        base = create_model("hdvila-base")
    assert base.config.text.text_layers == base.config.text.cross_layers == 6
    assert base.config.video.d == base.config.text.hidden == 768
    assert base.config.video.backbone == "resnet50" and base.config.video.hr_size == (640, 1024)


def test_registry_overrides_and_errors():
    cfg = get_model_config(TINY, video={"d": 32}, vtm=True)
    assert cfg.video.d == 32 and cfg.vtm and cfg.video.backbone == get_model_config(TINY).video.backbone
    with pytest.raises(ConfigError):
        get_model_config(TINY, video={"dim": 32})
    with pytest.raises(KeyError):
        get_model_config("hdvila-nope")
    with pytest.raises(RegistryError, match=r"unknown HD-VILA model 'hdvila-tny' \(did you mean 'hdvila-tiny'\?\)"):
        create_model("hdvila-tny")
    assert list_models() == HDVILA_MODELS.list() and TINY in HDVILA_MODELS
    try:
        register_model_config("hdvila-test-registered", {"video": {"num_frm": 5}, "text": {"hidden": 128}})
        cfg = get_model_config("hdvila-test-registered")
        assert cfg.name == "hdvila-test-registered" and cfg.video.num_frm == 5 and cfg.text.hidden == 128
        with pytest.raises(RegistryError, match="already registered"):  # no silent shadowing
            register_model_config("hdvila-test-registered", {"video": {"num_frm": 3}})
        register_model_config("hdvila-test-registered", {"video": {"num_frm": 3}}, replace=True)
        assert get_model_config("hdvila-test-registered").video.num_frm == 3
        with pytest.raises(ValueError):  # even frame counts have no middle keyframe
            register_model_config("hdvila-test-bad", {"video": {"num_frm": 4}})
        assert "hdvila-test-bad" not in HDVILA_MODELS
    finally:
        for name in ("hdvila-test-registered", "hdvila-test-bad"):
            if name in HDVILA_MODELS:
                HDVILA_MODELS.unregister(name)


def test_backbone_kwargs_are_replaced_not_merged():
    assert get_model_config(TINY).video.backbone_kwargs == {"stem_width": 16, "channels": [16, 32, 64, 128]}
    cfg = get_model_config(TINY, video={"backbone_kwargs": {"stem_width": 8}})
    assert cfg.video.backbone_kwargs == {"stem_width": 8}  # an override replaces the free-form mapping whole
    assert get_model_config(TINY, video={"d": 32}).video.backbone_kwargs == get_model_config(TINY).video.backbone_kwargs


# --------------------------------------------------------------------------------------------------------
# forward behaviour


def test_forward_shapes_and_unit_norms():
    model = tiny(vtm=True).eval()
    b, s, length = 2, 2, 12
    batch = make_batch(model, b, s, length)
    cfg = model.config
    n = model.video.grid[0] * model.video.grid[1]
    hidden, d, dim, vocab = cfg.text.hidden, cfg.video.d, cfg.embed_dim, cfg.text.vocab_size
    with torch.no_grad():
        video_emb, tokens = model.encode_video(batch["hr"], batch["lr"])
        text_emb, states = model.encode_text(batch["input_ids"], batch["attention_mask"])
        seq, pooled = model.cross_forward(states, batch["attention_mask"], tokens)
        mlm, vtm = model.mlm_logits(seq), model.vtm_logits(pooled)
        out = model(batch, {"vtc", "mlm", "vtm"}, generator=torch.Generator().manual_seed(0))
    assert video_emb.shape == (b, dim) and text_emb.shape == (b, dim)
    assert tokens.shape == (b, s, n, d) and states.shape == (b, length, hidden)
    assert seq.shape == (b, length, hidden) and pooled.shape == (b, hidden)
    assert mlm.shape == (b, length, vocab) and vtm.shape == (b, 2)
    torch.testing.assert_close(video_emb.norm(dim=-1), torch.ones(b))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(b))
    m = out["mlm_labels"].shape[0]
    assert out["mlm_logits"].shape == (m, vocab)
    assert out["vtm_logits"].shape == (3 * b, 2) and out["vtm_labels"].tolist() == [1] * b + [0] * (2 * b)
    torch.testing.assert_close(out["video_emb"], video_emb)
    assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point())


def test_padding_is_ignored_by_text_and_cross_layers():
    model = tiny().eval()
    batch = make_batch(model, length=12)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # 8 more padded positions holding junk ids: masked keys and the masked mean must ignore them
    longer_ids = torch.cat([ids, torch.randint(5, 100, (2, 8))], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 8, dtype=torch.long)], dim=1)
    with torch.no_grad():
        _, tokens = model.encode_video(batch["hr"], batch["lr"])
        emb, states = model.encode_text(ids, mask)
        emb2, states2 = model.encode_text(longer_ids, longer_mask)
        seq, pooled = model.cross_forward(states, mask, tokens)
        seq2, pooled2 = model.cross_forward(states2, longer_mask, tokens)
    real = mask.bool()
    torch.testing.assert_close(emb2, emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states2[:, :12][real], states[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seq2[:, :12][real], seq[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled2, pooled, atol=1e-5, rtol=1e-5)


def test_cross_forward_is_log_sum_exp_over_segments():
    model = tiny().eval()
    batch = make_batch(model, b=2, s=3)
    mask = batch["attention_mask"]
    with torch.no_grad():
        _, tokens = model.encode_video(batch["hr"], batch["lr"])
        _, states = model.encode_text(batch["input_ids"], mask)
        seq, pooled = model.cross_forward(states, mask, tokens)
        per_seq, per_pooled = [], []
        for s in range(tokens.shape[1]):  # one cross-modal pass per segment, by hand
            st, po = model.cross(states, mask, tokens[:, s], model.video.grid)
            per_seq.append(st[:, :states.shape[1]])
            per_pooled.append(po)
    stacked_seq, stacked_pooled = torch.stack(per_seq), torch.stack(per_pooled)
    manual_seq = stacked_seq.max(0).values + (stacked_seq - stacked_seq.max(0).values).exp().sum(0).log()
    manual_pooled = stacked_pooled.max(0).values + (stacked_pooled - stacked_pooled.max(0).values).exp().sum(0).log()
    torch.testing.assert_close(seq, manual_seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, manual_pooled, atol=1e-5, rtol=1e-5)
    # not a mean: LSE of equal segments is the value + log(S)
    same = tokens[:, :1].expand_as(tokens)
    with torch.no_grad():
        one, _ = model.cross_forward(states, mask, tokens[:, :1])
        three, _ = model.cross_forward(states, mask, same)
    torch.testing.assert_close(three, one + torch.log(torch.tensor(3.0)), atol=1e-5, rtol=1e-5)


def test_keyframe_stage4_map_takes_the_middle_time_slot():
    model = tiny(video={"num_frm": 5}).eval()
    batch = make_batch(model, b=2, s=2)
    hr, lr = batch["hr"], batch["lr"]
    video = model.video
    captured = {}
    handle = video.temporal.register_forward_pre_hook(lambda mod, args: captured.setdefault("stack", args[0]))
    with torch.no_grad():
        video(hr, lr)
        handle.remove()
        stack = captured["stack"]  # [B*S, T, d, gh, gw]
        assert stack.shape[:2] == (4, 5)
        grid = tuple(stack.shape[-2:])
        hr4 = video.hr_backbone(video.normalise(hr.flatten(0, 1)))[0]
        expected_key = F.gelu(video.lr_proj(F.adaptive_avg_pool2d(hr4, grid)))
        torch.testing.assert_close(stack[:, 2], expected_key)
        for slot, neighbour in ((0, 0), (1, 1), (3, 2), (4, 3)):  # neighbours keep time order around it
            lr4 = video.lr_backbone(video.normalise(lr[:, :, neighbour].flatten(0, 1)))[0]
            torch.testing.assert_close(stack[:, slot], F.gelu(video.lr_proj(lr4)))
        # new neighbours change every slot but the middle one
        captured.clear()
        handle = video.temporal.register_forward_pre_hook(lambda mod, args: captured.setdefault("stack", args[0]))
        video(hr, 255 - lr)
        handle.remove()
    torch.testing.assert_close(captured["stack"][:, 2], stack[:, 2])
    assert not torch.allclose(captured["stack"][:, 0], stack[:, 0])


def test_temporal_transformer_middle_step_shortcut_is_exact():
    from hdvila.models.temporal import DividedSpaceTimeTransformer

    torch.manual_seed(0)
    net = DividedSpaceTimeTransformer(32, depth=3, heads=4, mlp_ratio=2.0, drop_path=0.0, grid=(2, 3),
                                      num_frames=5).eval()
    x = torch.randn(2, 5, 32, 2, 3)
    with torch.no_grad():
        fast = net(x)  # the last block computes the middle step only
        full = x.flatten(3).transpose(2, 3) + net._positions(5, 2, 3)
        for block in net.blocks:
            full = block(full)  # every step through every block
        full = net.norm(full[:, 2])
        assert fast.shape == (2, 6, 32)
        torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
        # the middle step sees its neighbours through temporal attention
        changed = x.clone()
        changed[:, 0] = torch.randn_like(changed[:, 0])  # (a constant shift would vanish in LayerNorm)
        assert not torch.allclose(net(changed), fast)


def test_vtc_gradients_reach_both_backbones_and_text_layers():
    model = tiny().train()
    losses = model.compute_losses(make_batch(model), objectives=("vtc",))
    assert set(losses) == {"vtc", "loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()

    def grad_norm(module) -> float:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return float(sum(g.abs().sum() for g in grads)) if grads else 0.0

    video = model.video
    for module in (video.hr_backbone.conv1, video.hr_backbone.layer4, video.lr_backbone.conv1,
                   video.lr_backbone.layer3, video.temporal, video.lr_proj, video.hr_proj, video.fuse,
                   model.text.embeddings.word_embeddings, model.text.layers[0], model.text.layers[-1],
                   model.text.pooler, model.t_proj, model.v_proj):
        assert grad_norm(module) > 0, module
    assert all(p.grad is None for p in model.cross.parameters())  # vtc never runs the cross-modal layers
    assert all(p.grad is None for p in model.mlm_head.parameters())


def test_mlm_loss_covers_masked_positions_only():
    model = tiny().eval()
    batch = make_batch(model, length=16)
    out = model(batch, {"mlm"}, generator=torch.Generator().manual_seed(3))
    loss = model.losses(out)["mlm"]
    cfg = model.config
    masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], cfg.special_ids, cfg.mask_id,
                                 cfg.text.vocab_size, cfg.mlm_prob, torch.Generator().manual_seed(3))
    assert torch.equal(out["mlm_input_ids"], masked)
    picked = labels != -100
    assert 0 < picked.sum() < batch["attention_mask"].sum()
    assert torch.equal(out["mlm_labels"], batch["input_ids"][picked])
    with torch.no_grad():
        _, tokens = model.encode_video(batch["hr"], batch["lr"])
        seq, _ = model.cross_forward(model.text(masked, batch["attention_mask"]), batch["attention_mask"], tokens)
        full = model.mlm_logits(seq)
        expected = F.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=-100)
        # scrambling the logits of every unmasked position leaves the loss unchanged
        scrambled = torch.where(picked[..., None], full, torch.randn_like(full) * 50)
        again = F.cross_entropy(scrambled.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, expected)


@pytest.mark.parametrize("special,vocab", [((0, 1, 2, 3, 4), 6990), ((0, 100, 101, 102, 103), 30522)])
def test_mask_tokens_statistics(special, vocab):
    g = torch.Generator().manual_seed(0)
    b, length = 1024, 64
    ids = torch.randint(0, vocab, (b, length), generator=g)
    specials = torch.tensor(special)
    ids[:, ::7] = specials[torch.randint(len(specials), (b, len(range(0, length, 7))), generator=g)]
    lengths = torch.randint(8, length + 1, (b,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[mask == 0] = special[0]
    mask_id = special[-1]
    masked, labels = mask_tokens(ids, mask, special, mask_id, vocab, 0.15, torch.Generator().manual_seed(1))
    eligible = mask.bool() & ~torch.isin(ids, specials)
    picked = labels != -100
    assert not (picked & ~eligible).any()  # never special or pad
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(masked[~picked], ids[~picked])  # everything else untouched
    assert picked.sum() / eligible.sum() == pytest.approx(0.15, abs=0.005)
    n = picked.sum().item()
    as_mask = (masked[picked] == mask_id).sum().item() / n
    unchanged = (masked[picked] == ids[picked]).sum().item() / n
    replaced = masked[picked & (masked != mask_id) & (masked != ids)]
    assert as_mask == pytest.approx(0.8, abs=0.015)
    assert unchanged == pytest.approx(0.1, abs=0.01)
    assert replaced.numel() / n == pytest.approx(0.1, abs=0.01)
    assert not torch.isin(replaced, specials).any() and replaced.max() < vocab
    again, _ = mask_tokens(ids, mask, special, mask_id, vocab, 0.15, torch.Generator().manual_seed(1))
    assert torch.equal(again, masked)  # reproducible from the generator


@pytest.mark.parametrize("special,vocab", [((0, 1, 2, 3, 4), 6990), ((0, 100, 101, 102, 103, 40000), 30522)])
def test_mask_tokens_equals_the_boolean_index_formulation(special, vocab):
    """The shape-static masking draws the same tokens as a pool of allowed ids indexed by the same draws."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (64, 48), generator=g)
    mask = (torch.rand(64, 48, generator=g) < 0.9).long()
    masked, labels = mask_tokens(ids, mask, special, special[-2], vocab, 0.3, torch.Generator().manual_seed(5))
    # the former formulation: a pool of allowed ids and boolean-index assignments, replaying the same draws
    g = torch.Generator().manual_seed(5)
    specials = torch.tensor(sorted(special))
    picked = mask.bool() & ~torch.isin(ids, specials) & (torch.rand(ids.shape, generator=g) < 0.3)
    action = torch.rand(ids.shape, generator=g)
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[specials[specials < vocab]] = False
    pool = allowed.nonzero().squeeze(1)
    choice = torch.randint(len(pool), ids.shape, generator=g)
    expected = ids.clone()
    expected[picked & (action < 0.8)] = special[-2]
    to_random = picked & (action >= 0.8) & (action < 0.9)
    expected[to_random] = pool[choice[to_random]]
    assert to_random.sum() > 20
    assert torch.equal(masked, expected)
    assert torch.equal(labels, torch.where(picked, ids, torch.full_like(ids, -100)))


def test_static_and_gathered_mlm_give_the_same_loss_and_gradients():
    model = tiny().eval()
    batch = make_batch(model, length=16)
    cfg = model.config
    masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], cfg.special_ids, cfg.mask_id,
                                 cfg.text.vocab_size, cfg.mlm_prob, torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, tokens = model.encode_video(batch["hr"], batch["lr"])
        seq, _ = model.cross_forward(model.text(masked, batch["attention_mask"]), batch["attention_mask"], tokens)
    results = []
    for static in (False, True):
        model.zero_grad()
        logits, kept = model.masked_logits(seq, labels, static=static)
        assert logits.shape[0] == (labels.numel() if static else int((labels != -100).sum()))
        loss = model.losses({"mlm_logits": logits, "mlm_labels": kept})["mlm"]
        loss.backward()
        results.append((loss.detach(), model.mlm_head.decoder.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    # nothing masked: a zero loss, still on the graph, in both forms
    none = torch.full_like(labels, -100)
    for static in (False, True):
        logits, kept = model.masked_logits(seq, none, static=static)
        loss = model.losses({"mlm_logits": logits, "mlm_labels": kept})["mlm"]
        assert loss.item() == 0.0 and loss.requires_grad


def test_hard_negatives_exclude_the_positive_and_follow_similarity():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[9.0, 8.0, -20.0], [-20.0, 5.0, 4.0], [3.0, -20.0, 9.0]])
    for _ in range(50):
        neg_video, neg_text = sample_hard_negatives(logits, g)
        assert neg_video.tolist() == [1, 2, 0]  # the most similar non-positive video per text
        assert neg_text.tolist() == [2, 0, 1]  # and text per video (columns)
    flat = torch.zeros(4, 4)
    draws = torch.stack([sample_hard_negatives(flat, g)[0] for _ in range(400)])
    assert not (draws == torch.arange(4)).any()
    assert torch.bincount(draws[:, 0], minlength=4)[1:].min() > 90  # uniform over the 3 negatives


def test_vtm_loss_trains_the_head():
    model = tiny(vtm=True).train()
    losses = model.compute_losses(make_batch(model), objectives=("vtm",), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"vtm", "loss"}
    losses["loss"].backward()
    assert model.vtm_head.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError):
        tiny().vtm_logits(torch.zeros(1, 64))


# --------------------------------------------------------------------------------------------------------
# training stages and modes


def test_freeze_stage1_leaves_exactly_stage2_trainable():
    model = tiny(vtm=True)
    model.freeze_stage1()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.startswith(("cross.", "mlm_head.", "vtm_head."))}
    assert trainable == expected
    assert any(n.startswith("cross.visual_embeddings.") for n in trainable)
    assert any(n.startswith("cross.pooler.") for n in trainable)
    assert model.num_parameters("full", trainable_only=True) == model.num_parameters("cross") + model.num_parameters("heads")
    model.train()
    assert model.cross.training and not model.video.training and not model.text.training
    bn = next(m for m in model.video.modules() if isinstance(m, _BatchNorm))
    running = bn.running_mean.clone()
    losses = model.compute_losses(make_batch(model), objectives=("mlm",), generator=torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert torch.equal(bn.running_mean, running)  # frozen BN statistics do not drift
    assert all(p.grad is None for n, p in model.named_parameters() if n not in expected)
    assert model.cross.layers[0].attention.self.query.weight.grad.abs().sum() > 0


def test_norm_eval_keeps_batchnorm_in_eval_and_clips_independent():
    batch = make_batch(tiny(), b=3)
    sub = {k: v[:1] for k, v in batch.items()}
    for norm_eval in (True, False):
        model = tiny(video={"norm_eval": norm_eval}).train()
        bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        assert bns and all(m.training != norm_eval for m in bns)
        assert model.training and model.text.training and model.video.temporal.training
        running = bns[0].running_mean.clone()
        with torch.no_grad():
            whole, _ = model.encode_video(batch["hr"], batch["lr"])
            alone, _ = model.encode_video(sub["hr"], sub["lr"])
        if norm_eval:  # batch statistics are not used, so a clip's embedding ignores its batch mates
            torch.testing.assert_close(whole[:1], alone, atol=1e-5, rtol=1e-5)
            assert torch.equal(bns[0].running_mean, running)
        else:
            assert not torch.allclose(whole[:1], alone, atol=1e-4)


def test_vit_backbone_variant():
    model = tiny(video={"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 4},
                        "hr_out_indices": [2, 3], "lr_out_index": 2, "hr_size": [64, 96], "lr_factor": 2})
    assert len(model.video.lr_backbone.model.blocks) == 3  # pruned after the stage-4 block
    assert model.video.grid == (2, 3)
    batch = make_batch(model)
    losses = model.compute_losses(batch, objectives=("vtc", "mlm"), generator=torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert model.video.lr_backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        _, tokens = model.encode_video(batch["hr"], batch["lr"])
    assert tokens.shape == (2, 2, 6, model.config.video.d)


# --------------------------------------------------------------------------------------------------------
# weights in and out


def test_save_and_load_round_trip(tmp_path, monkeypatch):
    model = tiny(vtm=True).eval()
    with torch.no_grad():  # move BN statistics off their defaults so they must be saved
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    target = tmp_path / "export"
    model.save_pretrained(target)
    model.save_pretrained(target)  # replacing an existing export works too
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    assert (target / "tokenizer" / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folders left behind
    folder = read_pretrained(target)
    assert folder.kind == "hdvila" and folder.legacy is None and folder.files == ["tokenizer"]

    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("from_pretrained must not unpickle"))
    loaded = HDVILA.from_pretrained(target).eval()
    assert loaded.config == model.config
    assert_same_outputs(model, loaded)

    bad = tiny(text={"vocab_size": 7000})
    with pytest.raises(ValueError, match="tokenizer"):
        bad.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def assert_same_outputs(model: HDVILA, loaded: HDVILA) -> None:
    """Every output of the two models (embeddings, tokens, cross-modal heads) is bit-identical."""
    batch = make_batch(model)
    with torch.no_grad():
        for m in (model, loaded):
            v, tokens = m.encode_video(batch["hr"], batch["lr"])
            t, states = m.encode_text(batch["input_ids"], batch["attention_mask"])
            seq, pooled = m.cross_forward(states, batch["attention_mask"], tokens)
            m.outputs = (v, tokens, t, states, m.mlm_logits(seq), m.vtm_logits(pooled))
    for a, b in zip(model.outputs, loaded.outputs):
        assert torch.equal(a, b)


def write_legacy_folder(model: HDVILA, directory) -> None:
    """An export as the code before the shared pretrained format wrote it: config.yaml (the resolved config),
    model.safetensors, a copy of the tokenizer and inference.yaml, no checksums."""
    import shutil

    from safetensors.torch import save_file

    from data_tools.config import save_config
    from data_tools.tokenizer import DEFAULT_TOKENIZER_DIR

    directory.mkdir(parents=True)
    save_config(model.config, directory / "config.yaml")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt", "name": model.config.name})
    shutil.copytree(DEFAULT_TOKENIZER_DIR, directory / "tokenizer")
    (directory / "inference.yaml").write_text("n_segments: 3\nsample_rate: 6\n", encoding="utf-8")


def test_legacy_folder_loads_and_migrates(tmp_path):
    import hdvila

    model = tiny(vtm=True).eval()
    old = tmp_path / "old"
    write_legacy_folder(model, old)
    folder = read_pretrained(old, "hdvila")
    assert folder.legacy == "hdvila-v0" and folder.checksums == {"model": None}
    assert sorted(folder.files) == ["inference.yaml", "tokenizer"]
    assert_same_outputs(model, HDVILA.from_pretrained(old).eval())
    encoder = hdvila.load_pretrained(old)
    assert encoder.inference.n_segments == 3 and encoder.inference.sample_rate == 6
    assert encoder.tokenizer_dir == old / "tokenizer"

    migrated = migrate_pretrained(old, tmp_path / "new")
    assert sorted(p.name for p in migrated.iterdir()) == ["config.json", "inference.yaml", "model.safetensors",
                                                          "tokenizer"]
    folder = read_pretrained(migrated, "hdvila")
    assert folder.legacy is None and folder.checksums["model"] is not None
    assert_same_outputs(model, HDVILA.from_pretrained(migrated).eval())
    again = hdvila.load_pretrained(migrated)
    assert again.inference == encoder.inference
    assert torch.equal(again.encode_text(["a red circle moves left"]), encoder.encode_text(["a red circle moves left"]))

    migrate_pretrained(old)  # in place
    assert (old / "config.json").is_file() and not (old / "config.yaml").exists()
    assert_same_outputs(model, HDVILA.from_pretrained(old).eval())


def test_legacy_reader_leaves_other_layouts_alone(tmp_path):
    from safetensors.torch import save_file

    from data_tools.pretrained import PretrainedError
    from hdvila.models.hdvila import read_legacy_folder

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("model: {depth: 2}\ntrain: {steps: 3}\n", encoding="utf-8")
    save_file({"w": torch.zeros(2)}, str(other / "model.safetensors"))
    assert read_legacy_folder(other) is None
    assert read_legacy_folder(tmp_path) is None
    with pytest.raises(PretrainedError):  # no reader, or another package's reader claims it
        HDVILA.from_pretrained(other)


def test_backbone_weights_from_local_files(tmp_path):
    import timm
    from safetensors.torch import save_file

    cfg = get_model_config(TINY).video
    torch.manual_seed(1)
    full = timm.create_model(cfg.backbone, pretrained=False, **cfg.backbone_kwargs)  # with fc, all stages
    weights = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(weights, str(tmp_path / "backbone.safetensors"))
    torch.save({"state_dict": weights}, tmp_path / "backbone.pth")
    for name in ("backbone.safetensors", "backbone.pth"):
        model = tiny(video={"pretrained_path": str(tmp_path / name)})
        for backbone in (model.video.hr_backbone, model.video.lr_backbone):
            for key, value in backbone.state_dict().items():
                assert torch.equal(value, weights[key]), key
    with pytest.raises(FileNotFoundError):
        tiny(video={"pretrained_path": str(tmp_path / "missing.safetensors")})


def test_init_from_local_hf_bert(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel

    text = get_model_config(TINY).text
    torch.manual_seed(2)
    hf = BertModel(BertConfig(vocab_size=text.vocab_size, hidden_size=text.hidden, num_attention_heads=text.heads,
                              intermediate_size=text.intermediate, max_position_embeddings=128,
                              num_hidden_layers=text.text_layers + text.cross_layers))
    hf.save_pretrained(tmp_path / "bert")

    def refuse(*args, **kwargs):
        raise AssertionError("init_from tried to open a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = tiny(text={"init_from": str(tmp_path / "bert")})
    hf_state = hf.state_dict()
    for key, value in model.text.embeddings.state_dict().items():
        source = hf_state[f"embeddings.{key}"]
        # our max_len (64) keeps the first rows of the checkpoint's 128 positions
        assert torch.equal(value, source[: value.shape[0]]), key
    layers = list(model.text.layers) + list(model.cross.layers)
    assert len(layers) == len(hf.encoder.layer)
    for i, layer in enumerate(layers):
        for key, value in layer.state_dict().items():
            assert torch.equal(value, hf_state[f"encoder.layer.{i}.{key}"]), (i, key)
    for pooler in (model.text.pooler, model.cross.pooler):
        assert torch.equal(pooler.dense.weight, hf_state["pooler.dense.weight"])
    # the MLM decoder is a clone of the loaded word embeddings, not tied to them
    decoder, words = model.mlm_head.decoder.weight, model.text.embeddings.word_embeddings.weight
    assert torch.equal(decoder, words) and decoder.data_ptr() != words.data_ptr()

    with pytest.raises(ValueError, match="hidden_size"):
        tiny(text={"init_from": str(tmp_path / "bert"), "hidden": 128, "heads": 2})


@pytest.mark.parametrize("name", ["hdvila-tiny", "hdvila-small"])
def test_folded_batchnorms_compute_what_frozen_batchnorms_do(name):
    """fold_norm: every backbone BatchNorm folded into its convolution; same outputs, gradients and weights."""
    from torch.nn.modules.batchnorm import _BatchNorm

    torch.manual_seed(0)
    frozen = create_model(name, video={"norm_eval": True})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # statistics and affine maps far from the identity, as after real training
        for bn in (m for m in frozen.video.modules() if isinstance(m, _BatchNorm)):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.2)
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
    folded = create_model(name, video={"norm_eval": True, "fold_norm": True})
    assert list(folded.state_dict()) == list(frozen.state_dict())  # checkpoints unchanged
    folded.load_state_dict(frozen.state_dict())
    norms = [m for m in folded.video.modules() if isinstance(m, _BatchNorm)]
    assert folded.video.folded_norms == len(norms) > 0
    assert all(type(m).__name__ == "_FoldedAwayBatchNorm2d" for m in norms)
    batch = make_batch(frozen, b=2)
    outputs = []
    for model in (frozen, folded):
        model.train()  # norm_eval keeps the BatchNorms in eval mode: running statistics do not move
        model.zero_grad()
        video_emb, _, _ = model._encode_video(batch["hr"], batch["lr"])
        video_emb.square().sum().backward()
        first_bn = next(m for m in model.video.hr_backbone.modules() if isinstance(m, _BatchNorm))
        outputs.append((video_emb.detach(), model.video.hr_backbone.conv1[0].weight.grad.clone()
                        if isinstance(model.video.hr_backbone.conv1, torch.nn.Sequential)
                        else model.video.hr_backbone.conv1.weight.grad.clone(), first_bn.weight.grad.clone()))
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="norm_eval"):
        create_model(name, video={"fold_norm": True})


def test_fold_norm_is_refused_under_zero3():
    from data_tools.config import load_config
    from data_tools.training.config import TrainConfig
    from data_tools.training.trainer import zero_stage_of
    from hdvila.recipes.pretrain import PretrainConfig, build_model

    assert zero_stage_of(TrainConfig(deepspeed_config="zero2")) == 2
    assert zero_stage_of(TrainConfig(deepspeed_config="zero1", zero_stage=3)) == 3
    folding = ["model=hdvila-tiny", "model_overrides={video: {norm_eval: true, fold_norm: true}}"]
    assert build_model(load_config(PretrainConfig, None, folding + ["train.deepspeed_config=zero2"])).video.folded_norms
    with pytest.raises(ValueError, match="ZeRO-3"):
        build_model(load_config(PretrainConfig, None, folding + ["train.deepspeed_config=zero3"]))
