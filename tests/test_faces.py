from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from animation.faces import (
    ACTION_BY_NAME,
    ACTIONS,
    EXPRESSION_FACTORS,
    FACTOR_NAMES,
    FACTOR_RANGES,
    IDENTITY_FACTORS,
    NEUTRAL_EXPRESSION,
    FaceFactors,
    SyntheticFaces,
    action_sentences,
    apply_action,
    describe,
    identity_split,
    read_face_folder,
    render_faces,
    sample_factors,
    write_face_folder,
)

IDX = {n: i for i, n in enumerate(FACTOR_NAMES)}


def _with(base: FaceFactors | None = None, **changes) -> np.ndarray:
    v = (base or FaceFactors()).to_vector()
    for k, x in changes.items():
        v[IDX[k]] = x
    return v


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).max(axis=-1)  # [.., H, W]


# --- factors ---------------------------------------------------------------------------------------------


def test_factor_names_split_and_vector_round_trip():
    assert set(IDENTITY_FACTORS) | set(EXPRESSION_FACTORS) == set(FACTOR_NAMES)
    assert not set(IDENTITY_FACTORS) & set(EXPRESSION_FACTORS)
    assert {"smile", "mouth_open", "brow_raise", "head_turn"} <= set(EXPRESSION_FACTORS)
    f = FaceFactors(skin_tone=0.875, smile=-0.5, head_turn=0.25)  # float32-exact values
    assert FaceFactors.from_vector(f.to_vector()) == f
    assert FaceFactors.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    assert all(getattr(FaceFactors(), k) == v for k, v in NEUTRAL_EXPRESSION.items())


def test_sample_factors_in_range_and_deterministic():
    a, b = sample_factors(200, 7), sample_factors(200, np.random.default_rng(7))
    assert a.shape == (200, len(FACTOR_NAMES)) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_factors(200, 8))
    for n, (lo, hi) in FACTOR_RANGES.items():
        assert lo <= a[:, IDX[n]].min() and a[:, IDX[n]].max() <= hi


def test_identity_split_is_disjoint_and_used_by_sampling():
    train, test = identity_split(50, 0.2, seed=3)
    assert train.shape == (40, len(IDENTITY_FACTORS)) and test.shape == (10, len(IDENTITY_FACTORS))
    assert not {tuple(r) for r in train} & {tuple(r) for r in test}
    np.testing.assert_array_equal(identity_split(50, 0.2, seed=3)[1], test)
    ids = sample_factors(100, 0, identities=test)[:, :len(IDENTITY_FACTORS)]
    assert {tuple(r) for r in ids} <= {tuple(r) for r in test}


# --- rendering -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_render_shapes_and_determinism(size):
    f = sample_factors(3 if size == 256 else 12, 0)
    img = render_faces(f, size)
    assert img.shape == (len(f), size, size, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, render_faces(f, size))
    assert render_faces(FaceFactors(), size).shape == (1, size, size, 3)
    assert img.std() > 10  # not a blank image


@pytest.mark.parametrize("name", FACTOR_NAMES)
def test_every_factor_changes_the_image(name):
    lo, hi = FACTOR_RANGES[name]
    imgs = render_faces(np.stack([_with(**{name: lo}), _with(**{name: hi})]), 64)
    changed = (_diff(imgs[0], imgs[1]) > 40).sum()
    assert changed >= 8, f"{name} changes only {changed} pixels"


def test_smile_changes_mostly_the_mouth_region():
    imgs = render_faces(np.stack([_with(smile=-1.0), _with(smile=1.0)]), 64)
    d = _diff(imgs[0], imgs[1])
    # mouth sits around y = 0.38 in [-1, 1] coordinates, i.e. rows ~36..52 of 64, in the middle columns
    assert d[34:54, 16:48].sum() >= 0.98 * d.sum() > 0


def test_eyes_and_brows_change_their_own_rows():
    for name, lo, hi, rows in [("eye_left", 0.0, 1.0, slice(24, 36)), ("brow_raise", -1.0, 1.0, slice(16, 30))]:
        imgs = render_faces(np.stack([_with(**{name: lo}), _with(**{name: hi})]), 64)
        d = _diff(imgs[0], imgs[1])
        assert d[rows].sum() >= 0.98 * d.sum() > 0, name
    # the left eye is on the image's left
    imgs = render_faces(np.stack([_with(eye_left=0.0), _with(eye_left=1.0)]), 64)
    d = _diff(imgs[0], imgs[1])
    assert d[:, :32].sum() > 0 and d[:, 32:].sum() == 0


def test_skin_tone_changes_face_colour():
    light, dark = render_faces(np.stack([_with(skin_tone=0.0), _with(skin_tone=1.0)]), 64)
    cheek = (slice(34, 40), slice(14, 22))  # below the eye, beside the nose
    assert light[cheek].mean() > dark[cheek].mean() + 80
    assert np.array_equal(light[:, :3], dark[:, :3])  # background untouched


def test_head_turn_shifts_features():
    imgs = render_faces(np.stack([_with(mouth_open=1.0, head_turn=t) for t in (-1.0, 0.0, 1.0)]), 64)
    cols = np.arange(64)

    def mouth_x(img):  # centroid of the dark-red mouth interior
        inside = np.abs(img.astype(np.float32) - [107, 23, 28]).max(-1) < 25
        return (inside.sum(0) * cols).sum() / inside.sum()
    left, front, right = (mouth_x(im) for im in imgs)
    assert left + 3 < front < right - 3
    assert abs(front - 31.5) < 1


@pytest.mark.parametrize("name", ["face_width", "face_round", "skin_tone", "hair_colour", "hair_length",
                                  "fringe", "smile", "mouth_open", "eye_right", "brow_raise", "head_turn"])
def test_rendering_is_smooth_in_each_factor(name):
    lo, hi = FACTOR_RANGES[name]
    base = sample_factors(4, 11)
    base[:, IDX[name]] = lo + 0.4 * (hi - lo)

    def mean_change(step):
        moved = base.copy()
        moved[:, IDX[name]] += step * (hi - lo)
        a, b = render_faces(base, 64), render_faces(moved, 64)
        return np.abs(a.astype(np.float32) - b).mean() / 255.0

    small, big = mean_change(0.01), mean_change(0.3)
    assert small <= 0.5 * 0.01  # Lipschitz in the factor (measured constants are all below 0.3)
    assert big > 3 * small and big > 0


def test_throughput_sanity_1000_faces_at_32px():
    img = render_faces(sample_factors(1000, 5), 32)
    assert img.shape == (1000, 32, 32, 3)
    assert len({im.tobytes() for im in img[:50]}) == 50


# --- text and actions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,words", [
    (dict(smile=1.0), ["smiling"]),
    (dict(smile=-1.0), ["frowning"]),
    (dict(mouth_open=1.0), ["mouth open"]),
    (dict(eye_left=0.0, eye_right=0.0), ["eyes closed"]),
    (dict(eye_left=0.0, eye_right=1.0), ["winking"]),
    (dict(brow_raise=1.0), ["raised eyebrows"]),
    (dict(brow_raise=-1.0), ["furrowed"]),
    (dict(head_turn=-1.0), ["turned to the left"]),
    (dict(smile=0.9, mouth_open=0.9, head_turn=0.8), ["smiling", "mouth open", "turned to the right"]),
    ({}, ["neutral expression"]),
    (dict(skin_tone=1.0, hair_colour=0.25, hair_length=1.0, face_round=1.0),
     ["dark skin", "long blond hair", "round"]),
])
def test_describe_mentions_clear_attributes(changes, words):
    text = describe(_with(**changes))
    assert all(w in text for w in words), text


def test_action_splits_are_disjoint_and_cover_every_action():
    train, test = action_sentences("train"), action_sentences("test")
    assert not {s for _, s in train} & {s for _, s in test}
    names = {a.name for a in ACTIONS}
    assert {n for n, _ in train} == names == {n for n, _ in test}
    owner: dict[str, str] = {}
    for n, s in train + test:
        assert owner.setdefault(s, n) == n, f"{s!r} names two actions"
    sentences = {s for _, s in train}
    assert {"the person smiles", "she opens her mouth and turns left", "he closes his eyes",
            "the person raises their eyebrows", "the person frowns", "the person turns right"} <= sentences
    with pytest.raises(ValueError):
        action_sentences("val")


def test_apply_action_keeps_identity_and_moves_monotonically():
    f = sample_factors(20, 2)
    k = len(IDENTITY_FACTORS)
    for action in ACTIONS:
        frames = np.stack([apply_action(f, action, a) for a in np.linspace(0, 1, 6)])  # [T, N, F]
        np.testing.assert_array_equal(frames[:, :, :k], np.broadcast_to(f[:, :k], frames[:, :, :k].shape))
        np.testing.assert_allclose(frames[0], f)
        steps = np.diff(frames, axis=0)
        for name in set(action.targets) | set(action.deltas):
            s = steps[:, :, IDX[name]]
            assert np.all((s >= -1e-6).all(0) | (s <= 1e-6).all(0)), (action.name, name)  # monotone per face
        for name, target in action.targets.items():
            np.testing.assert_allclose(frames[-1, :, IDX[name]], target, atol=1e-6)
        untouched = [IDX[n] for n in EXPRESSION_FACTORS if n not in action.targets and n not in action.deltas]
        np.testing.assert_array_equal(frames[-1][:, untouched], f[:, untouched])


def test_apply_action_types_and_text_ground_truth():
    f = FaceFactors()
    out = apply_action(f, "open_mouth+turn_left")
    assert isinstance(out, FaceFactors) and out.mouth_open == 1.0 and out.head_turn == -1.0
    assert "mouth open" in describe(out) and "turned to the left" in describe(out)
    assert apply_action(f.to_vector(), "smile").shape == (len(FACTOR_NAMES),)
    assert apply_action(f, ACTION_BY_NAME["turn_slightly_right"], 0.5).head_turn == pytest.approx(0.25)
    assert "smiling" in describe(apply_action(f, "smile"))


# --- data sets -------------------------------------------------------------------------------------------


def test_synthetic_faces_dataset():
    ds = SyntheticFaces(6, size=32, seed=4)
    img, fac, cap = ds[2]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert -1.0 <= img.min() and img.max() <= 1.0
    assert fac.shape == (len(FACTOR_NAMES),) and isinstance(cap, str) and cap == describe(fac.numpy())
    again = SyntheticFaces(6, size=32, seed=4)
    assert torch.equal(again[2][0], img) and again.captions == ds.captions
    assert torch.equal(ds.tensors()[2], img)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0].shape == (3, 3, 32, 32) and len(batch[2]) == 3


def test_write_face_folder_round_trips(tmp_path):
    folder = write_face_folder(tmp_path / "faces", 7, size=32, seed=9)
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 7 and (folder / "factors.jsonl").exists()
    assert not list(folder.glob(".*")), "temporary files left behind"
    names, factors, captions = read_face_folder(folder)
    assert names == [p.name for p in pngs]
    np.testing.assert_array_equal(factors, sample_factors(7, 9))
    assert captions == [describe(v) for v in factors]

    from data_tools.images import ImageFolderDataset  # the generic loader reads the same faces back
    loaded = ImageFolderDataset(folder, 32).tensors()
    expected = torch.from_numpy(render_faces(factors, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    torch.testing.assert_close(loaded, expected)

    write_face_folder(folder, 3, size=32, seed=9)  # a smaller rerun leaves no stale images
    assert len(list(folder.glob("*.png"))) == 3 and len(read_face_folder(folder)[0]) == 3


@pytest.mark.parametrize("size", [16, 48])
def test_row_band_culling_does_not_change_the_image(size, monkeypatch):
    import animation.faces as faces

    f = sample_factors(24, 2)
    f[:8, IDX["brow_raise"]] = [-1.0, 1.0] * 4
    f[8:16, IDX["mouth_open"]] = 1.0
    f[8:16, IDX["smile"]] = [-1.0, 1.0] * 4
    f[:, IDX["head_turn"]] = np.linspace(-1, 1, 24)
    culled = render_faces(f, size)
    monkeypatch.setattr(faces, "_rows", lambda c, y0, y1: slice(0, len(c)))
    np.testing.assert_array_equal(culled, render_faces(f, size))
