"""HD-VILA's generation heads at toy size: the attribute scoring, the mapper, the autoencoding prior, the
manipulation and super-resolution heads' losses, both CLIs end to end, and the evaluation arms."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animation.faces import FACTOR_NAMES, FaceFactors, describe, render_faces, sample_factors
from animation.stylegan2 import create_gan
from data_tools.config import load_config
from data_tools.training.config import TrainConfig
from data_tools.training.metrics import read_metrics
from heads.attributes import agreement, balanced_accuracy, edit_outcomes, eyes_closed
from heads.mapper import MapperConfig, TextMapper
from heads.prior import (FaceSplit, PriorConfig, gradient_l1, load_prior, measure_prior, multiscale_l1,
                         save_prior, training_faces)
from hdvila.cli import main as cli_main

IDX = {n: i for i, n in enumerate(FACTOR_NAMES)}
TINY_JUDGES = ["oracle={count: 128, epochs: 1, eval_count: 32}", "scorer={steps: 6, batch_size: 8, eval_per_action: 1}"]
TINY_TRAIN = ["train.batch_size=4", "train.save_every=0", "train.log_every=1", "train.progress=false"]


def _face(**kw) -> np.ndarray:
    return FaceFactors(**kw).to_vector()


# ------------------------------------------------------------------------------------------------ attributes

def test_edit_outcomes_score_direction_size_unrelated_factors_and_identity():
    start = np.stack([_face(smile=0.0)] * 4)
    edited = start.copy()
    edited[0, IDX["smile"]] = 0.8  # asked +1.0 (0.5 of the range), got 0.8: success
    edited[1, IDX["smile"]] = 0.3  # got 0.3 < half of 1.0: failure
    edited[2, IDX["smile"]] = 0.9
    edited[2, IDX["mouth_open"]] += 0.5  # the smile worked but the mouth opened too
    edited[2, IDX["skin_tone"]] += 0.2
    out = edit_outcomes(start, edited, ["smile", "smile", "smile", "close_mouth"])
    assert out["scored"].tolist() == [True, True, True, False]  # the mouth is already closed: nothing asked
    assert out["success"][:3].tolist() == [True, False, True]
    assert out["achieved"][0] == pytest.approx(0.8)
    assert out["kept"][0] == 1.0 and out["kept"][2] < 1.0
    assert out["identity_drift"][2] == pytest.approx(0.2 / 6) and out["identity_drift"][0] == 0.0


def test_wrong_direction_fails_and_composite_actions_need_both_parts():
    start = np.stack([_face(smile=0.0, head_turn=0.0)] * 2)
    edited = start.copy()
    edited[:, IDX["smile"]] = -0.8  # frowned instead
    edited[1, IDX["smile"]] = 0.9
    out = edit_outcomes(start, edited, ["smile", "smile+turn_left"])
    assert not out["success"][0]
    assert not out["success"][1]  # smiled but did not turn
    edited[1, IDX["head_turn"]] = -0.9
    assert edit_outcomes(start, edited, ["smile", "smile+turn_left"])["success"][1]


def test_agreement_classes_and_balanced_accuracy():
    truth = np.stack([_face(smile=0.9, eye_left=0.0, eye_right=0.1), _face(smile=-0.9)])
    reading = truth.copy()
    reading[0, IDX["smile"]] = 0.1  # smiling read as neutral
    agree = agreement(truth, reading)
    assert agree["smile"] == 0.5 and agree["eye_left"] == 1.0 and set(agree) >= {"mouth_open", "head_turn"}
    assert eyes_closed(truth).tolist() == [True, False]
    assert balanced_accuracy([True, False, False, False], [True, False, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(balanced_accuracy([False, False], [True, False]))


def test_kept_change_penalises_only_the_factors_an_action_leaves_alone_by_the_chosen_norm():
    from heads.manipulation import ACTION_NAMES, KEEP_MASK, ManipulationLossConfig, kept_change

    change = torch.tensor([[0.05, -0.5, 0.2], [0.3, 0.0, -0.1]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert torch.allclose(kept_change(change, mask, "l2"), torch.tensor([[0.0025, 0.25, 0.0], [0.0, 0.0, 0.01]]))
    assert torch.allclose(kept_change(change, mask, "l1"), torch.tensor([[0.05, 0.5, 0.0], [0.0, 0.0, 0.1]]))
    # a small move: the absolute penalty's slope is the same as at a large one, the squared one's vanishes
    small = torch.tensor([[0.01]], requires_grad=True)
    kept_change(small, torch.ones(1, 1, dtype=torch.bool), "l1").sum().backward()
    assert small.grad.item() == pytest.approx(1.0)
    # an action never asks to keep what it edits
    smile = KEEP_MASK[ACTION_NAMES.index("smile")]
    assert not smile[FACTOR_NAMES.index("smile")] and smile[FACTOR_NAMES.index("eye_left")]
    with pytest.raises(ValueError, match="keep_norm"):
        ManipulationLossConfig(keep_norm="l3")


class _LinearHead(torch.nn.Module):
    """A stand-in manipulation model: the offset is a fixed tensor and the 'generator' reshapes codes to pixels."""

    def __init__(self, dw):
        super().__init__()
        self.dw = dw
        self.generator = type("G", (), {"synthesis": staticmethod(lambda w, noise_mode: w.view(len(w), 3, 2, 2))})()
        self.mapper = type("M", (), {"penalty": staticmethod(lambda dw: dw.square().mean())})()

    def forward(self, w, text_emb):
        return self.dw, self.generator.synthesis(w + self.dw, noise_mode="const")


def test_directional_text_loss_scores_the_change_of_the_image_embedding_against_the_sentence_offset():
    from heads.manipulation import (Judges, ManipulationConfig, ManipulationLossConfig, ManipulationObjective)

    scorer = type("S", (), {"encode_images": staticmethod(lambda x: x.flatten(1)[:, :4])})()
    judges = Judges(oracle=lambda x: x.flatten(1), scorer=scorer)
    w = torch.tensor([[[1.0, 2.0, 0.5, -1.0] + [0.0] * 8]])
    sentence, anchor = torch.tensor([[0.0, 1.0, 1.0, 0.0]]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    batch = {"w": w, "action": torch.tensor([0]), "text_emb": torch.zeros(1, 3), "scorer_emb": sentence}
    along = torch.zeros(1, 1, 12)
    along[0, 0, 2] = 0.7  # moves the image embedding along sentence - anchor only

    cfg = ManipulationConfig(loss=ManipulationLossConfig(direction=2.0, contrastive=False, offset=0, keep=0, cycle=0))
    objective = ManipulationObjective(cfg, judges, Path("."), text_anchor=anchor)

    def terms(dw):
        return {k: v.item() for k, v in objective.loss(_LinearHead(dw), batch, step=0).items()}

    aligned = terms(along)
    assert aligned["direction"] == pytest.approx(0.0, abs=1e-6)
    assert aligned["text"] > 0.1  # the absolute target still wants the rest of the image to change
    assert aligned["loss"] == pytest.approx(aligned["text"] + 2.0 * aligned["direction"], abs=1e-6)
    assert terms(along + torch.tensor([0.0, 0.0, 0.0, 0.5] + [0.0] * 8))["direction"] > 0.1  # unrelated moves cost
    with pytest.raises(ValueError, match="text_anchor"):
        ManipulationObjective(ManipulationConfig(loss=ManipulationLossConfig(direction=1.0)), judges, Path("."))


def test_paired_term_pulls_the_edit_towards_the_code_of_the_renderers_acted_face():
    from animation.faces import apply_action, face_tensors
    from heads.manipulation import (ACTION_NAMES, Judges, ManipulationConfig, ManipulationLossConfig,
                                    ManipulationObjective)

    class PixelEncoder(torch.nn.Module):  # "encodes" a face to its 2x2 average-pooled pixels, like the stand-in G
        def encode(self, images):
            return torch.nn.functional.adaptive_avg_pool2d(images, 2).reshape(len(images), 1, 12)

    encoder, size = PixelEncoder(), 2
    factors = torch.as_tensor(sample_factors(1, np.random.default_rng(0)))
    scorer = type("S", (), {"encode_images": staticmethod(lambda x: x.flatten(1)[:, :4])})()
    cfg = ManipulationConfig(loss=ManipulationLossConfig(paired=1.0, offset=0, keep=0, cycle=0))
    objective = ManipulationObjective(cfg, Judges(oracle=lambda x: x.flatten(1), scorer=scorer), Path("."),
                                      encoder=encoder)
    action = torch.tensor([ACTION_NAMES.index("turn_right")])
    start = encoder.encode(face_tensors(factors.numpy(), size))
    acted = objective.acted_codes(factors, action, size)
    assert torch.allclose(acted, encoder.encode(face_tensors(apply_action(factors.numpy(), "turn_right"), size)))
    assert not torch.allclose(acted, start)
    batch = {"w": start, "action": action, "text_emb": torch.zeros(1, 3), "scorer_emb": torch.ones(1, 4),
             "factors": factors}

    def paired(dw):
        head = _LinearHead(dw)
        head.mapper.w_std = torch.ones(1)
        return objective.loss(head, batch, step=0)["paired"].item()

    assert paired(acted - start) == pytest.approx(0.0, abs=1e-10)
    assert paired(torch.zeros_like(start)) == pytest.approx((acted - start).square().mean().item())
    with pytest.raises(ValueError, match="encoder"):
        ManipulationObjective(cfg, objective.judges, Path("."))


def test_snap_blends_an_unseen_sentence_from_the_training_sentences_nearest_it():
    from heads.manipulation import ManipulationConfig, ManipulationModel

    generator, _ = create_gan("sg2-tiny16")
    mapper = TextMapper(MapperConfig(generator.num_ws, generator.w_dim, text_dim=3, hidden=8, layers=1))
    bank = torch.eye(3)
    model = ManipulationModel(generator, mapper, {"snap_temperature": 0.01}, phrasings=bank * 5)
    unseen = torch.tensor([[2.0, 0.3, 0.1], [0.0, -0.1, 1.0]])
    assert torch.allclose(model.snap(unseen), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-3)
    soft = ManipulationModel(generator, mapper, {"snap_temperature": 100.0}, phrasings=bank).snap(unseen)
    assert torch.allclose(soft, torch.full((2, 3), 1 / 3), atol=0.02)  # hot: every training sentence alike
    plain = ManipulationModel(generator, mapper, {})
    assert torch.equal(plain.snap(unseen), unseen) and "phrasings" not in plain.state_dict()
    restored = ManipulationModel(generator, mapper, dict(model.config))  # as from_pretrained builds it
    assert restored.phrasings.shape == (3, 3)
    with pytest.raises(ValueError, match="snap_temperature"):
        ManipulationConfig(snap_temperature=-1)


def _lookup(table):
    """An encode function from a fixed sentence -> vector table."""
    return lambda texts: torch.tensor([table[t] for t in texts], dtype=torch.float32)


# the head's own encoder (A) and a second one (B): each alone snaps one held-out sentence to the wrong action;
# their z-scored cosines summed snap both right
TRAIN_SENTENCES = ["make her smile", "a happy grin", "make her frown", "sad face"]
ENC_A = _lookup({"make her smile": [1, 0, 0], "a happy grin": [0, 1, 0], "make her frown": [0, 0, 1],
                 "sad face": [0, 0, 1], "grin widely": [0.2, 1, 0], "look sad": [0.9, 0, 0.6]})
ENC_B = _lookup({"make her smile": [1, 0], "a happy grin": [1, 0.1], "make her frown": [0, 1], "sad face": [0.1, 1],
                 "grin widely": [0.7, 1], "look sad": [0, 1]})


def test_nearest_snap_hands_over_the_training_sentence_nearest_by_both_encoders():
    from heads.manipulation import ManipulationConfig, ManipulationModel

    generator, _ = create_gan("sg2-tiny16")
    mapper = TextMapper(MapperConfig(generator.num_ws, generator.w_dim, text_dim=3, hidden=8, layers=1))
    own, second = ENC_A(TRAIN_SENTENCES), ENC_B(TRAIN_SENTENCES)
    model = ManipulationModel(generator, mapper, {"snap": "nearest"}, phrasings=own, snap_banks={"minilm": second})
    unseen = ["grin widely", "look sad"]
    out = model.snap(ENC_A(unseen), {"minilm": ENC_B(unseen)})
    unit = torch.nn.functional.normalize(own, dim=-1)
    assert torch.equal(out[0], unit[1])  # "a happy grin", under the head's own encoder
    assert torch.equal(out[1], unit[2]) or torch.equal(out[1], unit[3])  # a frown sentence
    alone = ManipulationModel(generator, mapper, {"snap": "nearest"}, phrasings=own)
    assert torch.equal(alone.snap(ENC_A(["look sad"])), unit[:1])  # A alone: the wrong action
    assert torch.equal(model.snap(own, {"minilm": second}), unit)  # a training sentence snaps to itself
    with pytest.raises(ValueError, match="minilm"):
        model.snap(ENC_A(unseen))
    # the export's config rebuilds the banks' shapes (from_pretrained fills them from the weights)
    restored = ManipulationModel(generator, mapper, dict(model.config))
    assert restored.snap_rule == "nearest" and restored.snap_also_by == ["minilm"]
    assert restored.phrasings_minilm.shape == (4, 2) and set(restored.state_dict()) == set(model.state_dict())
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.snap(ENC_A(unseen), {"minilm": ENC_B(unseen)}), out)
    # back to the soft rule: the second bank leaves the weights
    model.set_phrasings(own, 0.01)
    assert "phrasings_minilm" not in model.state_dict() and model.config["snap_banks"] == {}
    for bad, match in (({"snap": "hard"}, "snap must be"), ({"snap_also_by": ["clip"]}, "unknown"),
                       ({"snap_also_by": ["minilm"]}, "needs snap: nearest")):
        with pytest.raises(ValueError, match=match):
            ManipulationConfig(**bad)
    with pytest.raises(ValueError, match="one row per training sentence"):
        model.set_phrasings(own, 0.0, "nearest", {"minilm": second[:3]})


def test_face_split_keeps_train_val_and_test_identities_apart():
    split = FaceSplit(identities=60, test_fraction=0.5, val_identities=10)
    ids = {s: {tuple(r) for r in split.identities_of(s)} for s in ("train", "val", "test")}
    assert len(ids["val"]) == 10 and len(ids["test"]) == 20 and len(ids["train"]) == 30
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    faces = split.faces("test", 50, seed=1)
    assert {tuple(r) for r in faces[:, :6]} <= ids["test"]
    with pytest.raises(ValueError, match="split"):
        split.identities_of("holdout")


# ------------------------------------------------------------------------------------------------ mapper

@pytest.mark.parametrize("gan", ["sg2-tiny16", "sg2-faces32"])
def test_mapper_starts_at_zero_then_depends_on_text_and_code(gan):
    g, _ = create_gan(gan)
    torch.manual_seed(0)
    mapper = TextMapper(MapperConfig(g.num_ws, g.w_dim, text_dim=24, hidden=32, layers=2))
    w, text = torch.randn(3, g.num_ws, g.w_dim), torch.randn(3, 24)
    assert torch.equal(mapper(w, text), torch.zeros(3, g.num_ws, g.w_dim))
    torch.nn.init.normal_(mapper.out.weight)
    dw = mapper(w, text)
    assert dw.shape == (3, g.num_ws, g.w_dim)
    assert not torch.allclose(dw, mapper(w, text.flip(0)))
    assert not torch.allclose(dw, mapper(w.flip(0), text))
    with pytest.raises(ValueError, match="text_emb"):
        mapper(w, None)


def test_no_text_mapper_has_no_text_input_and_paper_size_builds_on_meta():
    g, _ = create_gan("sg2-tiny16")
    mapper = TextMapper(MapperConfig(g.num_ws, g.w_dim, text_dim=24, hidden=32, use_text=False))
    assert mapper.text_proj is None and mapper(torch.randn(2, g.num_ws, g.w_dim)).shape == (2, g.num_ws, g.w_dim)
    with torch.device("meta"):
        big, _ = create_gan("sg2-ffhq1024")
        paper = TextMapper(MapperConfig(big.num_ws, big.w_dim, text_dim=1024, hidden=512, layers=4))
        assert paper(torch.empty(2, 18, 512), torch.empty(2, 1024)).shape == (2, 18, 512)


def test_mapper_components_keep_edits_in_the_codes_principal_span():
    torch.manual_seed(0)
    num_ws, w_dim = 4, 8
    directions = torch.linalg.qr(torch.randn(num_ws * w_dim, 3))[0].t()  # the data vary along 3 directions
    codes = (torch.randn(500, 3) * torch.tensor([3.0, 2.0, 1.0])) @ directions
    mapper = TextMapper(MapperConfig(num_ws, w_dim, text_dim=5, hidden=16, layers=1, components=2))
    mapper.set_code_statistics(codes.view(500, num_ws, w_dim))
    assert torch.allclose(mapper.component_std, torch.tensor([3.0, 2.0]), rtol=0.15)
    torch.nn.init.normal_(mapper.out.weight)
    dw = mapper(torch.randn(6, num_ws, w_dim), torch.randn(6, 5)).flatten(1)
    basis = mapper.basis
    assert torch.allclose(dw, (dw @ basis.t()) @ basis, atol=1e-4)  # inside the top-2 span
    true_span = directions[:2]
    assert torch.allclose(basis @ true_span.t() @ true_span, basis, atol=0.1)  # which is the data's top-2 span
    assert dw.abs().sum() > 0
    one_std = (mapper.component_std[0] * mapper.basis[0]).view(1, num_ws, w_dim)
    assert mapper.penalty(one_std).item() == pytest.approx(0.5)  # 1 std along one of 2 directions
    with pytest.raises(ValueError, match="more than"):
        mapper.set_code_statistics(codes[:2].view(2, num_ws, w_dim))


def test_attribute_basis_moves_each_target_factor_alone():
    from heads.mapper import attribute_basis

    torch.manual_seed(0)
    n, num_ws, w_dim = 3000, 4, 8
    factors = torch.randn(n, 5) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    mixing = torch.randn(5, num_ws * w_dim)  # every factor moves many coordinates: entangled in W+
    mixing[1] += mixing[4]  # and factor 1 shares a direction with factor 4
    nuisance = torch.randn(n, 3) @ torch.randn(3, num_ws * w_dim)
    codes = (factors @ mixing + nuisance + 0.01 * torch.randn(n, num_ws * w_dim)).view(n, num_ws, w_dim)
    basis, r2 = attribute_basis(codes, factors, targets=[1, 4], principal=10, ridge=1e-4)
    assert basis.shape == (2, num_ws * w_dim) and (r2 > 0.99).all()
    # the true read-out of the factors from the codes: each direction moves its factor by one sd, the rest not
    flat = codes.flatten(1)
    readout = torch.linalg.lstsq(flat - flat.mean(0), factors - factors.mean(0)).solution
    moved = (basis @ readout) / factors.std(0)
    assert torch.allclose(moved, torch.eye(5)[[1, 4]], atol=0.02)
    # unlike the factor's own read-out gradient (InterFaceGAN's unconditioned normal), which drags others along
    entangled = readout[:, 1] @ readout
    assert abs(entangled[4] / entangled[1]) > 0.3

    mapper = TextMapper(MapperConfig(num_ws, w_dim, text_dim=5, hidden=16, layers=1, components=2))
    mapper.set_basis(basis, codes)
    torch.nn.init.normal_(mapper.out.weight)
    dw = mapper(torch.randn(6, num_ws, w_dim), torch.randn(6, 5)).flatten(1)
    others = (dw @ readout) / factors.std(0)
    assert others[:, [1, 4]].abs().min() > 0 and torch.allclose(others[:, [0, 2, 3]], torch.zeros(6, 3), atol=1e-3)
    with pytest.raises(ValueError, match="basis must be"):
        mapper.set_basis(basis[:1], codes)
    with pytest.raises(ValueError, match="factor rows"):
        attribute_basis(codes, factors[:10], targets=[1], principal=10)
    with pytest.raises(ValueError, match="as many principal"):
        attribute_basis(codes, factors, targets=[1], principal=4)


def test_head_config_checks_its_edit_basis():
    from heads.mapper import HeadConfig

    with pytest.raises(ValueError, match="principal or attributes"):
        HeadConfig(edit_basis="pca")
    with pytest.raises(ValueError, match="components > 0"):
        HeadConfig(edit_basis="attributes", components=0)
    assert HeadConfig(edit_basis="attributes", components=8).edit_basis == "attributes"


def test_text_augmentation_mixes_phrasings_of_the_same_action_and_adds_noise_of_the_set_norm():
    from heads.manipulation import ManipulationBatches, TextAugmentConfig

    actions = torch.arange(24).repeat_interleave(3)  # 3 phrasings per action
    text = torch.randn(len(actions), 32)
    scorer = torch.randn(len(actions), 16)
    ws = torch.randn(10, 4, 8)

    def one_batch(augment):
        return next(iter(ManipulationBatches(ws, actions, text, scorer, 24, seed=3, augment=augment)))

    plain = one_batch(None)
    index = [int((text == row).all(1).nonzero()) for row in plain["text_emb"]]  # rows of the table, unchanged
    assert (actions[index] == plain["action"]).all()

    mixed = one_batch(TextAugmentConfig(same_action_mix=True))
    unit = torch.nn.functional.normalize
    for emb, scorer_emb, action in zip(mixed["text_emb"], mixed["scorer_emb"], mixed["action"]):
        rows = (actions == action).nonzero().flatten()
        # a unit vector inside the span of its own action's phrasings, in both embeddings
        for table, e in ((text, emb), (scorer, scorer_emb)):
            basis = torch.linalg.qr(unit(table[rows], dim=-1).t())[0]
            assert torch.allclose(basis @ (basis.t() @ e), e, atol=1e-5) and e.norm().item() == pytest.approx(1)
    assert not torch.allclose(mixed["text_emb"], unit(plain["text_emb"], dim=-1))

    noisy = one_batch(TextAugmentConfig(noise=0.5))
    shift = (noisy["text_emb"] - unit(plain["text_emb"], dim=-1)).norm(dim=1)
    assert shift.mean().item() == pytest.approx(0.5, rel=0.1)
    assert torch.equal(noisy["scorer_emb"], plain["scorer_emb"])  # the judge's target stays the sentence's own
    with pytest.raises(ValueError, match="noise"):
        ManipulationBatches(ws, actions, text, scorer, 24, seed=3, augment=TextAugmentConfig(noise=-1))


def test_prior_training_faces_show_an_action_on_the_acted_share_only():
    from animation.faces import ACTIONS, apply_action

    plain = training_faces(PriorConfig(faces=400))
    assert np.array_equal(plain, PriorConfig(faces=400).split.faces("train", 400, 0))  # the default: no acted faces
    acted = training_faces(PriorConfig(faces=400, acted_fraction=0.5))
    changed = np.any(acted != plain, axis=1)
    assert 0.35 < changed.mean() < 0.6  # half acted, less the actions that leave a face as it was
    assert np.array_equal(acted[:, :6], plain[:, :6])  # identity factors never move
    for i in np.flatnonzero(changed)[:20]:  # each changed face is one whole action applied to its plain face
        assert any(np.allclose(acted[i], apply_action(plain[i], a)) for a in ACTIONS)
    assert not np.array_equal(acted, training_faces(PriorConfig(faces=400, acted_fraction=0.5,
                                                                train=TrainConfig(seed=1))))
    with pytest.raises(ValueError, match="acted_fraction"):
        training_faces(PriorConfig(faces=4, acted_fraction=1.5))


def test_multiscale_and_gradient_l1_see_coarse_and_edge_differences():
    x = torch.zeros(1, 3, 16, 16)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1.0
    assert multiscale_l1(x + checker, x).item() == pytest.approx(0.0, abs=1e-6)  # averages out at 1/2
    assert multiscale_l1(x + 0.5, x).item() == pytest.approx(1.0)
    assert gradient_l1(x + 0.5, x).item() == 0.0  # a flat shift has no edges
    assert gradient_l1(x + checker, x).item() == pytest.approx(4.0)  # every neighbour differs by 2, both ways


# ------------------------------------------------------------------------------------------------ end to end

def head_args(root: Path) -> list[str]:
    """Config overrides every tiny head shares: the tiny run's prior, text model and judges' cache."""
    return [f"prior_dir={root / 'prior' / 'prior'}", f"text_model={root / 'text'}", f"cache_dir={root / 'cache'}",
            "split.identities=40", "split.val_identities=4", "hidden=16", "layers=1", *TINY_TRAIN]


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    import hdvila
    from hdvila.encoder import InferenceConfig, VideoTextEncoder
    from hdvila.models import create_model

    root = tmp_path_factory.mktemp("heads")
    assert cli_main(["--quiet", "heads", "train-prior", "--config", "heads/faces32-prior", "gan=sg2-tiny16",
                     f"output_dir={root / 'prior'}", "faces=16", "split.identities=40", "split.val_identities=4",
                     "train.max_steps=3", "train.val_every=2", f"cache_dir={root / 'cache'}",
                     "scorer={steps: 6, batch_size: 8, eval_per_action: 1}", *TINY_TRAIN]) == 0
    torch.manual_seed(0)
    VideoTextEncoder(create_model("hdvila-tiny").eval(), None, InferenceConfig(n_segments=2, backend="pyav")
                     ).save_pretrained(root / "text")
    common = head_args(root)
    for name, use_text in (("manip", "true"), ("manip-notext", "false")):
        assert cli_main(["--quiet", "heads", "train-manipulation", "--config", "heads/faces32-manipulation", *common,
                         *TINY_JUDGES, f"output_dir={root / name}", f"use_text={use_text}", "faces=16", "components=4",
                         "train.max_steps=4", "train.val_every=2"]) == 0
    for name, use_text in (("sr", "true"), ("sr-notext", "false")):
        assert cli_main(["--quiet", "heads", "train-superres", "--config", "heads/faces32-superres", *common,
                         "scorer={steps: 6, batch_size: 8, eval_per_action: 1}", f"output_dir={root / name}",
                         f"use_text={use_text}", "faces=16", "train.max_steps=3", "train.val_every=0"]) == 0
    return root, hdvila.load_pretrained(root / "text").encode_text


def test_prior_trains_on_the_shared_trainer_and_exports_a_prior_folder(heads_run):
    root, _ = heads_run
    records = [r for r in read_metrics(root / "prior" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r[k]) for r in records for k in ("pixel", "multiscale", "latent", "layer_spread"))
    generator, encoder = load_prior(root / "prior" / "prior")
    assert generator.cfg.resolution == 16 and not any(p.requires_grad for p in generator.parameters())
    fresh, _ = create_gan("sg2-tiny16")
    moved = [n for n, p in generator.synthesis.state_dict().items() if not torch.equal(p, fresh.synthesis.state_dict()[n])]
    assert moved  # the synthesis network trained
    assert (root / "prior" / "samples" / "step0000002.png").is_file()
    with pytest.raises(FileNotFoundError, match="prior folder"):
        load_prior(root / "prior")


def test_measure_prior_reports_agreement_per_edited_attribute(heads_run):
    from animation.oracle import get_oracle

    root, _ = heads_run
    generator, encoder = load_prior(root / "prior" / "prior")
    oracle = get_oracle(root / "cache", size=16, count=128, epochs=1, eval_count=32)
    factors = FaceSplit(identities=40, val_identities=4).faces("val", 6, seed=0)
    report = measure_prior(generator, encoder, oracle, factors, invert_steps=2)
    assert set(report["agreement"]) == {"smile", "mouth_open", "eye_left", "eye_right", "brow_raise", "head_turn"}
    assert all(0.0 <= v <= 1.0 for v in report["agreement"].values())
    assert report["reconstructions"].shape == (6, 3, 16, 16)
    assert report["min_agreement"] == min(report["agreement"].values())


def test_manipulation_trains_the_mapper_only_and_logs_each_loss(heads_run):
    from heads.manipulation import TextManipulator

    root, text_encoder = heads_run
    records = [r for r in read_metrics(root / "manip" / "metrics.jsonl") if "loss" in r]
    assert len(records) == 4 and all(np.isfinite(r[k]) for r in records for k in ("text", "offset", "keep"))
    runner = TextManipulator.from_pretrained(root / "manip" / "manipulator", text_encoder)
    prior_generator, _ = load_prior(root / "prior" / "prior")
    for name, value in runner.model.generator.state_dict().items():
        assert torch.equal(value, prior_generator.state_dict()[name]), name
    assert runner.model.mapper.out.weight.abs().sum() > 0  # it moved from its zero start
    # the training sentences travel with the export, by the head's encoder and by MiniLM (the config's nearest
    # snap), and a sentence reaches the mapper as one of them
    from animation.faces import action_sentences
    from animation.oracle import get_sentence_encoder

    train_sentences = [s for _, s in action_sentences("train")]
    assert runner.model.snap_rule == "nearest" and runner.model.snap_also_by == ["minilm"]
    assert runner.model.phrasings.shape == (len(train_sentences), runner.model.mapper.cfg.text_dim)
    own = torch.nn.functional.normalize(text_encoder(train_sentences[:1]).float(), dim=-1)
    assert torch.allclose(runner.model.phrasings[:1], own, atol=1e-5)
    minilm = torch.nn.functional.normalize(get_sentence_encoder().encode(train_sentences[:1]).float(), dim=-1)
    assert torch.allclose(runner.model.phrasings_minilm[:1], minilm, atol=1e-5)
    snapped = runner.encode_texts(["she smiles", "he turns his head to the left"])
    assert (snapped[:, None] == runner.model.phrasings[None]).all(-1).any(1).all()
    assert (root / "manip" / "samples" / "step0000002.png").is_file() and (root / "manip" / "preview.png").is_file()
    faces = render_faces(sample_factors(2, np.random.default_rng(0)), 16)
    edited, w, dw = runner.edit(faces, ["she smiles", "he turns left"])
    assert edited.shape == (2, 3, 16, 16) and dw.shape == w.shape
    with pytest.raises(ValueError, match="sentences"):
        runner.edit(faces, ["she smiles"])


def test_manipulation_with_the_attribute_basis_edits_along_one_direction_per_expression_factor(heads_run, tmp_path):
    from animation.faces import EXPRESSION_FACTORS
    from heads.manipulation import TextManipulator

    root, text_encoder = heads_run
    out = tmp_path / "attributes"
    assert cli_main(["--quiet", "heads", "train-manipulation", "--config", "heads/faces32-manipulation",
                     *head_args(root), *TINY_JUDGES, f"output_dir={out}", "faces=16", "edit_basis=attributes",
                     "components=12", "train.max_steps=2", "train.val_every=0"]) == 0
    runner = TextManipulator.from_pretrained(out / "manipulator", text_encoder)
    basis = runner.model.mapper.basis
    assert basis.shape[0] == len(EXPRESSION_FACTORS)
    assert torch.allclose(basis @ basis.t(), torch.eye(len(basis)), atol=1e-4)
    _, w, dw = runner.edit(render_faces(sample_factors(2, np.random.default_rng(0)), 16), ["she smiles"] * 2)
    flat = dw.flatten(1)
    assert flat.abs().sum() > 0 and torch.allclose(flat, (flat @ basis.t()) @ basis, atol=1e-5)


def test_manipulate_command_writes_input_reconstruction_and_edit(heads_run, tmp_path, capsys):
    root, _ = heads_run
    src = tmp_path / "face.png"
    Image.fromarray(render_faces(sample_factors(1, np.random.default_rng(1)), 48)[0]).save(src)  # any size
    out = tmp_path / "edit.png"
    for model in ("manip", "manip-notext"):
        assert cli_main(["heads", "manipulate", "--model", str(root / model / "manipulator"), "--image", str(src),
                         "--text", "she smiles", "--out", str(out)]) == 0
        with Image.open(out) as im:
            assert im.size == (8 * (3 * 16 + 4), 8 * (16 + 2))  # three 16 px tiles, 1 px padding, 8x view
    assert "wrote" in capsys.readouterr().out


def test_superres_consistency_term_is_zero_for_an_output_that_downsamples_to_the_input():
    from heads.superres import downsample, upsample_bicubic

    low = torch.rand(2, 3, 4, 4) * 2 - 1
    nearest = low.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert torch.allclose(downsample(nearest, 4), low, atol=1e-6)
    assert upsample_bicubic(low, 16).shape == (2, 3, 16, 16) and upsample_bicubic(low, 16).abs().max() <= 1
    with pytest.raises(ValueError, match="downsample"):
        downsample(torch.zeros(1, 3, 10, 10), 4)


def test_superres_losses_and_the_text_path(heads_run):
    from heads.superres import SuperResConfig, SuperResObjective, TextSuperResolver, downsample

    root, text_encoder = heads_run
    records = [r for r in read_metrics(root / "sr" / "metrics.jsonl") if "loss" in r]
    assert len(records) == 3
    assert all(np.isfinite(r[k]) for r in records for k in ("reconstruction", "consistency", "text", "offset"))
    runner = TextSuperResolver.from_pretrained(root / "sr" / "superres", text_encoder)
    factors = sample_factors(2, np.random.default_rng(2))
    high = torch.as_tensor(render_faces(factors, 16)).permute(0, 3, 1, 2).float() / 127.5 - 1
    low = downsample(high, 4)
    out = runner.upscale(low, [describe(f) for f in factors])
    assert out.shape == (2, 3, 16, 16)
    torch.nn.init.normal_(runner.model.mapper.out.weight)  # a mapper that reads the text moves the output with it
    assert not torch.allclose(runner.upscale(low, ["a person, with the eyes closed"] * 2),
                              runner.upscale(low, ["a person smiling with the mouth open"] * 2))
    with pytest.raises(ValueError, match="sentence"):
        runner.upscale(low)
    # the logged consistency term is the L1 between the downsampled output and the input
    cfg = load_config(SuperResConfig, root / "sr" / "config.yaml", ["loss.perceptual=0"])
    objective = SuperResObjective(cfg, _NoScorer(), root)
    batch = {"high": high, "text_emb": text_encoder(["a", "b"]).float(), "scorer_emb": torch.ones(2, 4)}
    terms = objective.loss(runner.model, batch, 0)
    _, expected = runner.model(low, batch["text_emb"])
    assert terms["consistency"].item() == pytest.approx((downsample(expected, 4) - low).abs().mean().item(), rel=1e-5)
    assert "perceptual" not in terms
    # the perceptual term (on by default): the scorer's feature distance between the output and the truth
    from heads.manipulation import get_judges
    from heads.prior import FeatureDistance

    scorer = get_judges(root / "cache", 16, {"count": 128, "epochs": 1, "eval_count": 32},
                        {"steps": 6, "batch_size": 8, "eval_per_action": 1}).scorer
    cfg = load_config(SuperResConfig, root / "sr" / "config.yaml")
    assert cfg.loss.perceptual == 1.0
    with torch.no_grad():
        scorer_emb = scorer.encode_texts(["a", "b"]).float()
    terms = SuperResObjective(cfg, scorer, root).loss(runner.model, {**batch, "scorer_emb": scorer_emb}, 0)
    features = FeatureDistance(scorer.image_tower, scorer.size)
    assert terms["perceptual"].item() == pytest.approx(features(expected, high).item(), rel=1e-4)
    assert terms["perceptual"].item() > 0 and features(high, high).item() == pytest.approx(0, abs=1e-6)


class _NoScorer(torch.nn.Module):
    def encode_images(self, x):
        return torch.ones(len(x), 4)


def test_superres_command_upscales_and_refuses_the_wrong_scale(heads_run, tmp_path):
    root, _ = heads_run
    src = tmp_path / "lr.png"
    Image.fromarray(render_faces(sample_factors(1, np.random.default_rng(3)), 4)[0]).save(src)
    out = tmp_path / "hr.png"
    for model in ("sr", "sr-notext"):
        assert upscale_command(root / model / "superres", src, out, 4) == (16, 16)
    with pytest.raises(ValueError, match="4x"):
        upscale_command(root / "sr" / "superres", src, out, 2)


def upscale_command(model: Path, src: Path, out: Path, scale: int) -> tuple[int, int]:
    """`hdvila heads superres` on one image; the output's size."""
    assert cli_main(["heads", "superres", "--model", str(model), "--image", str(src),
                     "--text", "a person, with the eyes closed", "--scale", str(scale), "--out", str(out)]) == 0
    with Image.open(out) as im:
        return im.size


def test_superres_at_8x_trains_on_2px_inputs_and_its_command_checks_the_scale(heads_run, tmp_path):
    """The 8x head (4 px of a 32 px face in the benchmark; 2 px of the tiny 16 px prior here)."""
    from heads.superres import TextSuperResolver, downsample

    root, text_encoder = heads_run
    common = [*head_args(root), "scorer={steps: 6, batch_size: 8, eval_per_action: 1}"]
    assert cli_main(["--quiet", "heads", "train-superres", "--config", "heads/faces32-superres", *common,
                     f"output_dir={tmp_path / 'sr8'}", "scale=8", "faces=16", "train.max_steps=2",
                     "train.val_every=0"]) == 0
    runner = TextSuperResolver.from_pretrained(tmp_path / "sr8" / "superres", text_encoder)
    assert runner.scale == 8
    high = torch.as_tensor(render_faces(sample_factors(2, np.random.default_rng(4)), 16)).permute(0, 3, 1, 2)
    low = downsample(high.float() / 127.5 - 1, 8)
    assert low.shape[-1] == 2 and runner.upscale(low, ["a", "b"]).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="2 px inputs"):
        runner.upscale(downsample(high.float() / 127.5 - 1, 4), ["a", "b"])
    src, out = tmp_path / "lr.png", tmp_path / "hr.png"
    Image.fromarray(render_faces(sample_factors(1, np.random.default_rng(5)), 2)[0]).save(src)
    assert upscale_command(tmp_path / "sr8" / "superres", src, out, 8) == (16, 16)
    with pytest.raises(ValueError, match="8x, not 4x"):
        upscale_command(tmp_path / "sr8" / "superres", src, out, 4)
    with pytest.raises(ValueError, match="does not divide"):
        cli_main(["--quiet", "heads", "train-superres", "--config", "heads/faces32-superres", *common,
                  f"output_dir={tmp_path / 'sr3'}", "scale=3", "faces=16", "train.max_steps=1"])


def test_evaluations_score_every_arm(heads_run):
    from heads.evaluate import evaluate_manipulation, evaluate_superres
    from heads.manipulation import TextManipulator, get_judges
    from heads.superres import TextSuperResolver

    root, text_encoder = heads_run
    judges = get_judges(root / "cache", 16, {"count": 128, "epochs": 1, "eval_count": 32},
                        {"steps": 6, "batch_size": 8, "eval_per_action": 1})
    runner = TextManipulator.from_pretrained(root / "manip" / "manipulator", text_encoder)
    no_text = TextManipulator.from_pretrained(root / "manip-notext" / "manipulator", None)
    factors = FaceSplit(identities=40, val_identities=4).faces("val", 2, seed=0)
    report = evaluate_manipulation(runner, judges, factors, no_text=no_text, optimise_steps=2)
    assert report["edits"] == 2 * 24
    assert set(report["arms"]) == {"text", "text, another action's sentence", "no-text mapper", "no edit (inversion)",
                                   "latent optimisation (2 steps)"}
    for arm in report["arms"].values():
        assert 0 <= arm["success"] <= 1 and 0 <= arm["kept"] <= 1 and arm["scored_edits"] > 0
        assert 0 <= arm["kept_vs_reconstruction"] <= 1
    assert report["arms"]["no edit (inversion)"]["kept_vs_reconstruction"] == 1.0
    assert set(report["paired_vs_text"]) == set(report["arms"]) - {"text"}
    # an arm on another prior edits that prior's codes of the faces, not the first arm's
    other_dir = root / "prior-other"
    if not other_dir.is_dir():
        generator, encoder = load_prior(root / "prior" / "prior")
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_prior(other_dir, generator, encoder)
    model = copy.deepcopy(runner.model)
    model.config["prior_dir"] = str(other_dir)
    other = TextManipulator(model, load_prior(other_dir)[1], text_encoder, snap_encoders=runner.snap_encoders)
    report = evaluate_manipulation(runner, judges, factors, extra_arms={"other prior": other})
    w_other = other.invert(report["images"])[report["face_index"]]
    expected, _ = other.edit_codes(w_other, other.encode_texts(report["texts"]))
    assert torch.allclose(report["samples"]["other prior"], expected, atol=1e-5)
    same_prior, _ = runner.edit_codes(runner.invert(report["images"])[report["face_index"]],
                                      runner.encode_texts(report["texts"]))
    assert not torch.allclose(report["samples"]["other prior"], same_prior, atol=1e-3)
    text_sr = TextSuperResolver.from_pretrained(root / "sr" / "superres", text_encoder)
    sr = evaluate_superres(text_sr, FaceSplit(identities=40, val_identities=4).faces("val", 6, seed=0), judges,
                           no_text=TextSuperResolver.from_pretrained(root / "sr-notext" / "superres", None),
                           extra_arms={"the text head again": text_sr})
    assert set(sr["arms"]) == {"truth (oracle ceiling)", "bicubic", "no-text head", "text head",
                               "text head, another face's sentence", "the text head again"}
    assert sr["arms"]["the text head again"]["psnr"] == pytest.approx(sr["arms"]["text head"]["psnr"])
    assert sr["arms"]["truth (oracle ceiling)"]["psnr"] > 90  # identical images: the 1e-12 floor
    assert sr["arms"]["bicubic"]["psnr"] < sr["arms"]["truth (oracle ceiling)"]["psnr"]
