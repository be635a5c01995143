"""Synthetic cartoon faces with known factors: a ground-truth domain for the language-guided face animator.

Every image is rendered from a factor vector, so text match, monotone change over frames and identity
preservation can all be measured exactly. Factors (float32; ranges in FACTOR_RANGES):

  identity    face_width   0 narrow .. 1 wide             face_round  0 square jaw .. 1 round
              skin_tone    0 light .. 1 dark              hair_colour 0 platinum, blond, red, brown .. 1 black
              hair_length  0 short crop .. 1 long         fringe      0 bare forehead .. 1 low fringe
  expression  smile        -1 frown .. +1 smile           mouth_open  0 closed .. 1 open
              eye_left, eye_right  0 closed .. 1 open     brow_raise  -1 lowered (angry) .. +1 raised
  pose        head_turn    -1 left .. +1 right

"Left" and "right" are image directions (the viewer's), for head_turn, the eye factors and the actions.
Shapes are signed distance fields evaluated on the pixel grid and antialiased with a smoothstep about one
pixel wide, so any resolution works and pixels change continuously with every factor. No part of the
face hides another factor: the fringe stops above the highest brow, long hair falls behind the face.
"""
from __future__ import annotations

import functools
import io
import itertools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data_tools.files import atomic_write_bytes, atomic_write_text
from data_tools.image_datasets import IMAGE_DATASETS, DatasetInfo
from data_tools.images import from_uint8_images


@dataclass
class FaceFactors:
    """One face. Defaults: a middle identity with the neutral expression, facing forward."""
    face_width: float = 0.5
    face_round: float = 0.5
    skin_tone: float = 0.5
    hair_colour: float = 0.5
    hair_length: float = 0.5
    fringe: float = 0.5
    smile: float = 0.0
    mouth_open: float = 0.0
    eye_left: float = 0.75
    eye_right: float = 0.75
    brow_raise: float = 0.0
    head_turn: float = 0.0

    def to_vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in FACTOR_NAMES], dtype=np.float32)

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> "FaceFactors":
        return cls(**{n: float(x) for n, x in zip(FACTOR_NAMES, v, strict=True)})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> "FaceFactors":
        return cls(**{n: float(d[n]) for n in FACTOR_NAMES})


FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in fields(FaceFactors))
IDENTITY_FACTORS: tuple[str, ...] = FACTOR_NAMES[:6]
EXPRESSION_FACTORS: tuple[str, ...] = FACTOR_NAMES[6:]  # expression and pose: everything an action may change
POSE_FACTORS: tuple[str, ...] = ("head_turn",)
SIGNED = ("smile", "brow_raise", "head_turn")
FACTOR_RANGES: dict[str, tuple[float, float]] = {n: ((-1.0, 1.0) if n in SIGNED else (0.0, 1.0))
                                                 for n in FACTOR_NAMES}
NEUTRAL_EXPRESSION: dict[str, float] = {n: getattr(FaceFactors(), n) for n in EXPRESSION_FACTORS}
_IDX = {n: i for i, n in enumerate(FACTOR_NAMES)}
_LO = np.array([FACTOR_RANGES[n][0] for n in FACTOR_NAMES], np.float32)
_HI = np.array([FACTOR_RANGES[n][1] for n in FACTOR_NAMES], np.float32)

# Colour ramps (position, name, RGB in 0..1); colours are interpolated linearly, names taken from the nearest.
SKIN = [(0.0, "light", (0.98, 0.86, 0.76)), (1 / 3, "medium", (0.89, 0.69, 0.54)),
        (2 / 3, "brown", (0.66, 0.46, 0.31)), (1.0, "dark", (0.36, 0.24, 0.16))]
HAIR = [(0.0, "platinum", (0.95, 0.91, 0.76)), (0.25, "blond", (0.88, 0.72, 0.36)),
        (0.5, "red", (0.74, 0.30, 0.12)), (0.75, "brown", (0.42, 0.26, 0.14)), (1.0, "black", (0.10, 0.08, 0.08))]
BACKGROUND = (0.86, 0.89, 0.93)
SHIRT = (0.30, 0.42, 0.62)
EYE_WHITE, IRIS, LASH = (0.97, 0.97, 0.95), (0.28, 0.20, 0.13), (0.12, 0.08, 0.07)
MOUTH, TEETH, LIP = (0.42, 0.09, 0.11), (0.96, 0.95, 0.92), (0.32, 0.08, 0.10)


def as_factor_array(factors) -> np.ndarray:
    """FaceFactors, a list of them, or an array [F] / [N, F] -> float32 [N, F]."""
    if isinstance(factors, FaceFactors):
        return factors.to_vector()[None]
    if isinstance(factors, (list, tuple)) and factors and isinstance(factors[0], FaceFactors):
        return np.stack([f.to_vector() for f in factors])
    arr = np.asarray(factors, dtype=np.float32)
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"expected factors [N, {len(FACTOR_NAMES)}], got shape {arr.shape}")
    return arr


def _ramp(ramp, t: np.ndarray) -> np.ndarray:
    pos = [p for p, _, _ in ramp]
    return np.stack([np.interp(t, pos, [c[k] for _, _, c in ramp]) for k in range(3)], -1).astype(np.float32)


def _nearest(ramp, t: float) -> str:
    return min(ramp, key=lambda r: abs(r[0] - t))[1]


# ---------------------------------------------------------------------------------------------------------
# Sampling


def _sample_identities(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, (n, len(IDENTITY_FACTORS))).astype(np.float32)


def sample_factors(n: int, rng: np.random.Generator | int | None = None,
                   identities: np.ndarray | None = None) -> np.ndarray:
    """Random faces, float32 [n, F] in FACTOR_NAMES order.

    `identities` ([K, len(IDENTITY_FACTORS)] or full [K, F] rows) restricts identities to those rows (drawn
    uniformly), e.g. one side of `identity_split`. Each expression factor keeps its neutral value with
    probability 0.4, so neutral faces are common; one eye in ten is closed on its own (winks).
    """
    rng = np.random.default_rng(rng)
    out = np.empty((n, len(FACTOR_NAMES)), np.float32)
    k = len(IDENTITY_FACTORS)
    if identities is None:
        out[:, :k] = _sample_identities(n, rng)
    else:
        ids = np.asarray(identities, np.float32)
        out[:, :k] = ids[rng.integers(len(ids), size=n), :k]
    for name in ("smile", "mouth_open", "brow_raise", "head_turn"):
        lo, hi = FACTOR_RANGES[name]
        out[:, _IDX[name]] = np.where(rng.random(n) < 0.4, NEUTRAL_EXPRESSION[name], rng.uniform(lo, hi, n))
    eyes = np.where(rng.random(n) < 0.4, NEUTRAL_EXPRESSION["eye_left"], rng.uniform(0, 1, n))
    for name in ("eye_left", "eye_right"):
        out[:, _IDX[name]] = np.where(rng.random(n) < 0.1, rng.uniform(0, 0.15, n), eyes)
    return out


def identity_split(n_identities: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) identity rows [K, len(IDENTITY_FACTORS)], disjoint, deterministic by seed."""
    ids = _sample_identities(n_identities, np.random.default_rng(seed))
    n_test = int(round(test_fraction * n_identities))
    if test_fraction > 0 and n_identities > 1:
        n_test = min(max(n_test, 1), n_identities - 1)  # both sides non-empty
    return ids[n_test:], ids[:n_test]


# ---------------------------------------------------------------------------------------------------------
# Rendering


def _alpha(d: np.ndarray, w: float) -> np.ndarray:
    """Coverage of a shape with signed distance d (negative inside), smoothstep over [-w, w]."""
    t = np.clip(0.5 - d * (0.5 / w), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _paint(img: np.ndarray, a: np.ndarray, colour) -> None:
    img += a[..., None] * (np.asarray(colour, np.float32) - img)  # in place: layers over what is there


def _ellipse(x, y, rx, ry):
    # distance bound exact on the outline and close near it, which is all the antialiasing needs
    k0 = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    k1 = np.sqrt((x / (rx * rx)) ** 2 + (y / (ry * ry)) ** 2)
    return (k0 - 1.0) * (k0 + 1e-4 * np.minimum(rx, ry)) / (k1 + 1e-4)  # the 1e-4 terms keep the centre inside


def _round_box(x, y, bx, by, r):
    qx, qy = np.abs(x) - bx + r, np.abs(y) - by + r
    return np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0) - r


def _rows(c: np.ndarray, y0: float, y1: float) -> slice:
    """Pixel rows whose centres lie in [y0, y1]: features sit at fixed heights, so only their band is evaluated."""
    return slice(int(np.searchsorted(c, y0)), int(np.searchsorted(c, y1, side="right")))


def _render_chunk(f: np.ndarray, size: int) -> np.ndarray:
    n, px = len(f), 2.0 / size
    c = np.linspace(-1 + px / 2, 1 - px / 2, size, dtype=np.float32)  # pixel centres, x right, y down
    X, Y = c[None, None, :], c[None, :, None]
    p = {name: f[:, i].reshape(n, 1, 1) for i, name in enumerate(FACTOR_NAMES)}
    skin = _ramp(SKIN, f[:, _IDX["skin_tone"]])[:, None, None]
    hair = _ramp(HAIR, f[:, _IDX["hair_colour"]])[:, None, None]
    w = 0.75 * px  # antialiasing half-width

    def line(t: float) -> float:
        return max(t, 0.5 * px)  # lines stay visible at low resolution

    # margin of the row bands: antialiasing plus the widest line, over the smallest head-turn squash (0.75)
    m = (w + line(0.014)) / 0.75

    img = np.empty((n, size, size, 3), np.float32)
    img[:] = BACKGROUND

    turn, aturn = p["head_turn"], np.abs(p["head_turn"])
    # Head turn: the outline shifts a little and narrows, the features (in front) shift and squash more,
    # the back of the hair (behind) shifts less.
    hx, hy, hh = 0.07 * turn, 0.05, 0.70
    hw = (0.50 + 0.16 * p["face_width"]) * (1 - 0.1 * aturn)
    _paint(img, _alpha(_ellipse(X, Y - 1.38, 0.95, 0.62), w), SHIRT)
    _paint(img, _alpha(_round_box(X - 0.5 * hx, Y - 0.85, 0.17, 0.3, 0.05), w), 0.85 * skin)
    hair_bottom = -0.15 + 0.9 * p["hair_length"]
    d_back = np.maximum(_ellipse(X - hx + 0.05 * turn, Y - hy + 0.05, hw + 0.09, hh + 0.06), Y - hair_bottom)
    _paint(img, _alpha(d_back, w), hair)
    fx, fy = X - hx, Y - hy
    rnd = p["face_round"]  # blend an ellipse (round) with a rounded box (square jaw)
    d_face = rnd * _ellipse(fx, fy, hw, hh) + (1 - rnd) * _round_box(fx, fy, hw, hh, 0.3)
    _paint(img, _alpha(d_face, w), skin)
    _paint(img, _alpha(np.abs(d_face) - line(0.012), w), 0.72 * skin)
    # Fringe: hair inside the face down to a wavy edge that stays above the highest brow (y = -0.36).
    edge = -0.58 + 0.16 * p["fringe"] + 0.022 * np.cos((X - hx) * 19.0)
    _paint(img, _alpha(np.maximum(d_face, Y - edge), w), hair)

    sq = 1 - 0.25 * aturn
    xl = (X - 0.2 * turn) / sq  # feature-local x, [N, 1, S]
    ax, side = np.abs(xl), np.sign(xl)
    # Eyes, mirrored: one ellipse evaluation per pixel, its height chosen by the side of the face.
    r = _rows(c, -0.07 - 0.08 - m, -0.07 + 0.08 + m)
    ex, ey = ax - 0.21, Y[:, r] + 0.07
    ry = 0.006 + 0.066 * np.where(xl < 0, p["eye_left"], p["eye_right"])
    d_eye = _ellipse(ex, ey, 0.1, ry) * sq
    _paint(img[:, r], _alpha(d_eye, w), EYE_WHITE)
    iris = np.sqrt((ex - 0.03 * turn * side) ** 2 + ey ** 2) - 0.05
    _paint(img[:, r], _alpha(np.maximum(iris * sq, d_eye), w), IRIS)
    _paint(img[:, r], _alpha(np.abs(d_eye) - line(0.012), w), LASH)
    # Brows: a capsule per side; raised moves them up, lowered also drops the inner ends (angry).
    b = p["brow_raise"]
    base = -0.27 - 0.07 * b
    y_in, y_out = base + 0.03 * np.maximum(-b, 0), base + 0.01
    r = _rows(c, -0.37 - m, -0.14 + m)
    px_, py_ = ax - 0.09, Y[:, r] - y_in
    bx_, by_ = 0.23, y_out - y_in
    h = np.clip((px_ * bx_ + py_ * by_) / (bx_ * bx_ + by_ * by_), 0, 1)
    d_brow = np.sqrt((px_ - bx_ * h) ** 2 + (py_ - by_ * h) ** 2) * sq - 0.022
    _paint(img[:, r], _alpha(d_brow, w), 0.65 * hair)
    # Nose: a soft darker blob that protrudes, so it shifts a bit further than the other features.
    r = _rows(c, 0.14 - 0.035 - m, 0.14 + 0.035 + m)
    d_nose = _ellipse(xl - 0.1 * turn, Y[:, r] - 0.14, 0.05, 0.035) * sq
    _paint(img[:, r], _alpha(d_nose, w), 0.82 * skin)
    # Mouth: a parabola whose corners rise with smile; opening adds a dark gap below it (teeth on top).
    s, o = p["smile"], p["mouth_open"]
    mw = 0.17 + 0.04 * np.maximum(s, 0)
    xc = np.clip(xl, -mw, mw)
    upper = 0.38 - 0.07 * s * ((xc / mw) ** 2 - 0.5)
    norm = np.sqrt(1 + (0.14 * s * xc / mw ** 2) ** 2)
    lower = upper + 0.14 * o * np.sqrt(np.clip(1 - (xc / mw) ** 2, 0, 1))
    r = _rows(c, 0.38 - 0.04 - m, 0.38 + 0.04 + 0.14 + m)
    ym = Y[:, r]
    d_open = np.maximum((np.abs(ym - 0.5 * (upper + lower)) - 0.5 * (lower - upper)) / norm, (ax - mw) * sq)
    _paint(img[:, r], _alpha(d_open, w), MOUTH)
    _paint(img[:, r], _alpha(np.maximum(d_open, ym - upper - 0.035 * o), w), TEETH)
    _paint(img[:, r], _alpha(np.abs(d_open) - line(0.014), w), LIP)
    return img


FACE_LANDMARKS: tuple[str, ...] = ("left eye", "right eye", "left eyebrow", "right eyebrow", "nose", "mouth",
                                   "left mouth corner", "right mouth corner", "chin")


def face_landmarks(factors, size: int = 64) -> dict[str, np.ndarray]:
    """Exact positions of the FACE_LANDMARKS, each float32 [N, 2] of (x, y) in pixels (pixel k spans [k, k + 1)),
    derived from the drawing geometry of `_render_chunk`: eye centres, brow capsule midpoints, the nose blob's
    centre, the middle of the mouth (between the lips when open), the mouth corners and the bottom of the face
    outline. "Left" is the image's left, as for the eye factors."""
    f = np.clip(as_factor_array(factors), _LO, _HI)
    p = {name: f[:, i] for i, name in enumerate(FACTOR_NAMES)}
    turn = p["head_turn"]
    sq = 1 - 0.25 * np.abs(turn)  # features squash with the turn ...
    fx = lambda xl: 0.2 * turn + xl * sq  # noqa: E731 - ... about a centre that shifts with it
    b, s, o = p["brow_raise"], p["smile"], p["mouth_open"]
    base = -0.27 - 0.07 * b
    brow_y = base + 0.5 * (0.03 * np.maximum(-b, 0) + 0.01)  # midpoint of the inner and outer brow ends
    mw = 0.17 + 0.04 * np.maximum(s, 0)
    upper_mid, corner_y = 0.38 + 0.035 * s, 0.38 - 0.035 * s  # the lip parabola at x = 0 and at x = +-mw
    points = {
        "left eye": (fx(-0.21), np.full_like(turn, -0.07)),
        "right eye": (fx(0.21), np.full_like(turn, -0.07)),
        "left eyebrow": (fx(-0.205), brow_y),
        "right eyebrow": (fx(0.205), brow_y),
        "nose": (fx(0.1 * turn), np.full_like(turn, 0.14)),
        "mouth": (fx(0.0), upper_mid + 0.07 * o),
        "left mouth corner": (fx(-mw), corner_y),
        "right mouth corner": (fx(mw), corner_y),
        "chin": (0.07 * turn, np.full_like(turn, 0.05 + 0.70)),  # face centre y + half height
    }
    # normalised [-1, 1] -> pixels
    return {name: ((np.stack([x, y], -1) + 1.0) * (size / 2.0)).astype(np.float32) for name, (x, y) in points.items()}


def render_faces(factors, size: int = 64) -> np.ndarray:
    """Render faces to uint8 [N, size, size, 3]; `factors` as for `as_factor_array`."""
    f = np.clip(as_factor_array(factors), _LO, _HI)
    out = np.empty((len(f), size, size, 3), np.uint8)
    step = max(1, (1 << 18) // (size * size))  # ~256k pixels per chunk keeps temporaries in cache
    for i in range(0, len(f), step):
        img = _render_chunk(f[i:i + step], size)
        out[i:i + step] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------------------
# Text


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(factors) -> str:
    """One sentence naming identity and any clearly set expression, e.g.
    'a round-faced person with dark skin and long blond hair, smiling with the mouth open'."""
    f = factors if isinstance(factors, FaceFactors) else FaceFactors.from_vector(as_factor_array(factors)[0])
    width = "narrow" if f.face_width < 1 / 3 else "wide" if f.face_width > 2 / 3 else ""
    shape = "round" if f.face_round > 0.6 else "square" if f.face_round < 0.4 else ""
    adj = ", ".join(a for a in (width, shape) if a)
    who = f"a {adj}-faced person" if adj else "a person"
    length = "short" if f.hair_length < 1 / 3 else "long" if f.hair_length > 2 / 3 else "medium-length"
    fringe = " with a fringe" if f.fringe > 0.6 else ""
    skin, hair = _nearest(SKIN, f.skin_tone), _nearest(HAIR, f.hair_colour)
    identity = f"{who} with {skin} skin and {length} {hair} hair{fringe}"

    verbs = ["smiling"] if f.smile > 0.35 else ["frowning"] if f.smile < -0.35 else []
    shut = min(f.eye_left, f.eye_right) < 0.25
    if shut and max(f.eye_left, f.eye_right) > 0.6:
        verbs.append("winking")
    withs = ["the mouth open"] if f.mouth_open > 0.5 else []
    if max(f.eye_left, f.eye_right) < 0.25:
        withs.append("the eyes closed")
    if abs(f.brow_raise) > 0.5:
        withs.append("raised eyebrows" if f.brow_raise > 0 else "furrowed brows")
    if abs(f.head_turn) > 0.4:
        withs.append(f"the head turned to the {'right' if f.head_turn > 0 else 'left'}")
    if not verbs and not withs:
        return identity + ", with a neutral expression"
    expr = " ".join(filter(None, [_and(verbs) if verbs else "", "with " + _and(withs) if withs else ""]))
    return f"{identity}, {expr}"


@dataclass(frozen=True)
class Action:
    """A change of expression or pose. `targets` move a factor toward a value, `deltas` shift it.
    Phrases are verb phrases ('{pos}' = possessive pronoun); test phrases never occur in the train split."""
    name: str
    targets: dict[str, float] = field(default_factory=dict)
    deltas: dict[str, float] = field(default_factory=dict)
    train_phrases: tuple[str, ...] = ()
    test_phrases: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()  # the atomic actions a composition is made of


_ATOMIC = [
    Action("smile", {"smile": 1.0}, {}, ("smiles", "breaks into a smile", "starts to smile"),
           ("grins", "gives a big smile")),
    Action("frown", {"smile": -1.0}, {}, ("frowns", "turns the corners of {pos} mouth down", "looks sad"),
           ("pulls a sad face", "starts frowning")),
    Action("relax", {k: v for k, v in NEUTRAL_EXPRESSION.items() if k != "head_turn"}, {},
           ("relaxes {pos} face", "returns to a neutral expression"), ("puts on a blank expression",)),
    Action("open_mouth", {"mouth_open": 1.0}, {},
           ("opens {pos} mouth", "drops {pos} jaw", "opens {pos} mouth wide"),
           ("lets {pos} mouth fall open", "gapes")),
    Action("close_mouth", {"mouth_open": 0.0}, {}, ("closes {pos} mouth", "shuts {pos} mouth"),
           ("presses {pos} lips together",)),
    Action("close_eyes", {"eye_left": 0.0, "eye_right": 0.0}, {}, ("closes {pos} eyes", "shuts {pos} eyes"),
           ("squeezes {pos} eyes shut",)),
    Action("open_eyes", {"eye_left": 1.0, "eye_right": 1.0}, {}, ("opens {pos} eyes wide", "widens {pos} eyes"),
           ("stares wide-eyed",)),
    Action("wink", {"eye_left": 0.0, "eye_right": 1.0}, {}, ("winks", "winks with one eye"), ("gives a wink",)),
    Action("raise_brows", {"brow_raise": 1.0}, {},
           ("raises {pos} eyebrows", "lifts {pos} brows", "looks surprised"),
           ("arches {pos} eyebrows", "raises {pos} brows in surprise")),
    Action("furrow", {"brow_raise": -1.0}, {}, ("furrows {pos} brow", "lowers {pos} eyebrows", "scowls"),
           ("knits {pos} brows", "looks angry")),
    Action("turn_left", {"head_turn": -1.0}, {},
           ("turns left", "turns {pos} head to the left", "looks to the left"), ("looks left", "faces left")),
    Action("turn_right", {"head_turn": 1.0}, {},
           ("turns right", "turns {pos} head to the right", "looks to the right"), ("looks right", "faces right")),
    Action("face_forward", {"head_turn": 0.0}, {}, ("looks straight ahead", "faces forward"),
           ("turns back to the front",)),
    Action("turn_slightly_left", {}, {"head_turn": -0.5}, ("turns slightly to the left",),
           ("turns {pos} head a little to the left",)),
    Action("turn_slightly_right", {}, {"head_turn": 0.5}, ("turns slightly to the right",),
           ("turns {pos} head a little to the right",)),
]
_PAIRS = [("open_mouth", "turn_left"), ("open_mouth", "turn_right"), ("smile", "turn_left"),
          ("smile", "turn_right"), ("smile", "raise_brows"), ("frown", "furrow"), ("close_eyes", "smile"),
          ("open_mouth", "raise_brows"), ("close_eyes", "turn_right")]
_BY_NAME = {a.name: a for a in _ATOMIC}


def _compose(a: Action, b: Action) -> Action:
    touched = lambda x: set(x.targets) | set(x.deltas)  # noqa: E731
    assert not touched(a) & touched(b), (a.name, b.name)  # parts must touch different factors
    return Action(f"{a.name}+{b.name}", {**a.targets, **b.targets}, {**a.deltas, **b.deltas},
                  parts=(a.name, b.name))


ACTIONS: list[Action] = _ATOMIC + [_compose(_BY_NAME[x], _BY_NAME[y]) for x, y in _PAIRS]
ACTION_BY_NAME: dict[str, Action] = {a.name: a for a in ACTIONS}
# identity is never acted on
assert all(set(a.targets) | set(a.deltas) <= set(EXPRESSION_FACTORS) for a in ACTIONS)
SUBJECTS = (("the person", "their"), ("she", "her"), ("he", "his"))


def _phrases(action: Action, split: str) -> list[str]:
    if not action.parts:
        return list(action.train_phrases if split == "train" else action.test_phrases)
    a, b = (_BY_NAME[n] for n in action.parts)
    pairs = itertools.product(a.train_phrases + a.test_phrases, b.train_phrases + b.test_phrases)
    # a composed sentence is a test sentence as soon as either half is a held-out phrase
    train = split == "train"
    return [f"{x} and {y}" for x, y in pairs if (x in a.train_phrases and y in b.train_phrases) == train]


def action_sentences(split: str = "train") -> list[tuple[str, str]]:
    """(action name, sentence) pairs, e.g. ('open_mouth+turn_left', 'she opens her mouth and turns left').
    Both splits cover every action; the test split uses only held-out paraphrases."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return [(a.name, f"{subj} {ph.format(pos=pos)}")
            for a in ACTIONS for ph in _phrases(a, split) for subj, pos in SUBJECTS]


def apply_action(factors, action: Action | str, amount: float = 1.0):
    """Factors after `amount` (0..1) of the action: targets are approached linearly, deltas scaled; values
    clip to their ranges, identity is left as it is. Increasing amounts give monotone frames.
    Returns the same kind as given (FaceFactors, or an array [F] / [N, F])."""
    action = ACTION_BY_NAME[action] if isinstance(action, str) else action
    arr = as_factor_array(factors).copy()
    for name, target in action.targets.items():
        arr[:, _IDX[name]] += amount * (target - arr[:, _IDX[name]])
    for name, delta in action.deltas.items():
        arr[:, _IDX[name]] += amount * delta
    arr = np.clip(arr, _LO, _HI)
    if isinstance(factors, FaceFactors):
        return FaceFactors.from_vector(arr[0])
    return arr[0] if np.ndim(factors) == 1 else arr


# ---------------------------------------------------------------------------------------------------------
# Data sets


class SyntheticFaces(Dataset):
    """`n` random faces (deterministic by seed): (image float32 [3, H, W] in [-1, 1], factors [F], caption)."""

    def __init__(self, n: int, size: int = 64, seed: int = 0, identities: np.ndarray | None = None):
        self.size = size
        self.factors = sample_factors(n, np.random.default_rng(seed), identities)
        self.captions = [describe(v) for v in self.factors]

    def __len__(self) -> int:
        return len(self.factors)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return face_tensors(self.factors[i], self.size)[0], torch.from_numpy(self.factors[i]), self.captions[i]

    def tensors(self) -> torch.Tensor:
        """All images at once (batched rendering is much faster), [N, 3, H, W] in [-1, 1]."""
        return face_tensors(self.factors, self.size)


def face_tensors(factors, size: int) -> torch.Tensor:
    """Render factors [N, 12] (or one face [12]) to float32 images [N, 3, size, size] in [-1, 1]."""
    return from_uint8_images(render_faces(factors, size))


@functools.lru_cache(maxsize=4)
def _load_faces(count: int = 4096, seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    images = SyntheticFaces(int(count), size=int(size), seed=int(seed)).tensors().numpy()
    return images, np.zeros(len(images), np.int64)


# The image data set "faces" (`ImageDataConfig(kind="array", name="faces", options={count, seed, size})`):
# `count` random faces of seed `seed`, rendered at `size` px (a GAN renders them at its resolution); labels 0.
IMAGE_DATASETS.register("faces", DatasetInfo("faces", _load_faces, 3, 64, 1,
                                             "animation.faces synthetic cartoon faces (options count, seed, size)"))


def write_face_folder(folder: str | Path, n: int, size: int = 64, seed: int = 0,
                      identities: np.ndarray | None = None) -> Path:
    """Write face_00000.png ... and factors.jsonl ({"file", "factors", "caption"} per image, in file order).

    Files are written atomically; PNGs of an earlier, larger run are removed so that a generic image-folder
    loader (sorted paths) sees exactly the rows of factors.jsonl. factors.jsonl is removed first and written
    last, so a folder without it is an interrupted write.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    factors = sample_factors(n, np.random.default_rng(seed), identities)
    names = [f"face_{i:0{max(5, len(str(n - 1)))}d}.png" for i in range(n)]
    (folder / "factors.jsonl").unlink(missing_ok=True)
    for stale in set(p.name for p in folder.glob("face_*.png")) - set(names):
        (folder / stale).unlink(missing_ok=True)
    for start in range(0, n, 256):
        for j, img in enumerate(render_faces(factors[start:start + 256], size)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            atomic_write_bytes(folder / names[start + j], buf.getvalue())
    records = [json.dumps({"file": name, "factors": FaceFactors.from_vector(v).to_dict(), "caption": describe(v)})
               for name, v in zip(names, factors)]
    atomic_write_text(folder / "factors.jsonl", "\n".join(records) + "\n")
    return folder


def read_face_folder(folder: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(file names, factors [N, F], captions) from a folder written by `write_face_folder`."""
    rows = [json.loads(line) for line in (Path(folder) / "factors.jsonl").read_text().splitlines() if line]
    factors = np.array([FaceFactors.from_dict(r["factors"]).to_vector() for r in rows], np.float32)
    return [r["file"] for r in rows], factors.reshape(len(rows), len(FACTOR_NAMES)), [r["caption"] for r in rows]
