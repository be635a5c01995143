"""Procedural still scenes with exact ground truth: 1-3 coloured shapes on a textured background.

The shapes, colours, backgrounds and the antialiased drawing are those of the synthetic video corpus
(`data_tools.synth`), so the two share one visual vocabulary. A scene keeps its objects as data (shape, colour,
centre, radius) and its background as pixels, which gives, exactly:

* per-object visible coverage and masks, occlusion-aware (objects are drawn in order, later ones on top);
* named keypoints per object (PARTS: the centre and where the shape's outline crosses the vertical and
  horizontal lines through it), and whether a later object hides one;
* re-renders with one object recoloured, removed or scaled, on the identical background with every other
  object identical pixel for pixel (the edit targets of instruction-following models).

Coordinates are continuous pixels: pixel k spans [k, k + 1), so its centre is k + 0.5. Object centres are
pixel corners (integers), which is where `synth.paste_shape` puts a shape's centre.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .synth import BACKGROUNDS, COLOURS, SHAPES, draw_background, paste_shape, shape_alpha, shape_distance

MIN_SIZE = 16
PARTS: tuple[str, ...] = ("centre", "top", "bottom", "left side", "right side")
RADIUS_RANGE = (0.13, 0.22)  # object radius as a fraction of the image size
EXTENT = 1.2  # every shape fits in a disk of EXTENT * radius (the triangle's vertices; the star's tips are 1.1)
MIN_VISIBLE = 0.6  # an occluded object keeps at least this share of its own area in view


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"scene size must be an integer >= {MIN_SIZE}, got {size!r}")
    return int(size)


# --- keypoints ---------------------------------------------------------------------------------------

_DIRECTIONS = {"top": (0.0, -1.0), "bottom": (0.0, 1.0), "left side": (-1.0, 0.0), "right side": (1.0, 0.0)}


def _outline_crossing(shape: str, ux: float, uy: float) -> float:
    """Distance t (in radii) from the centre along (ux, uy) to the outline (where the coverage is one half)."""
    lo, hi = 0.0, 2.0  # every shape's centre is inside it and its outline within 1.2 radii
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        d = float(shape_distance(shape, np.float64(mid * ux), np.float64(mid * uy), 1.0))
        lo, hi = (mid, hi) if d < 0 else (lo, mid)
    return 0.5 * (lo + hi)


# Offsets of each part for a shape of radius 1; shape_distance is linear in the radius, so they scale with it.
PART_OFFSETS: dict[str, dict[str, tuple[float, float]]] = {
    shape: {"centre": (0.0, 0.0), **{part: (ux * t, uy * t) for part, (ux, uy) in _DIRECTIONS.items()
                                    for t in [_outline_crossing(shape, ux, uy)]}}
    for shape in SHAPES
}


# --- objects and scenes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str  # a name in synth.COLOURS
    x: int  # centre, a pixel corner
    y: int
    r: float  # radius in pixels, as synth draws it

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def name(self) -> str:
        """'red circle'."""
        return f"{self.colour} {self.shape}"

    @property
    def combo(self) -> tuple[str, str]:
        return self.shape, self.colour

    def keypoints(self) -> dict[str, tuple[float, float]]:
        """Part name -> (x, y) in pixels."""
        offsets = PART_OFFSETS[self.shape]
        return {part: (self.x + ox * self.r, self.y + oy * self.r) for part, (ox, oy) in offsets.items()}

    def covers(self, x: float, y: float) -> bool:
        """Whether any of the object's ink reaches the point (coverage above zero there)."""
        return bool(shape_distance(self.shape, np.float64(x - self.x), np.float64(y - self.y), self.r) < 0.5)


@functools.lru_cache(maxsize=256)
def _alpha(shape: str, r: float) -> np.ndarray:
    # a scene is rendered several times (source, targets, masks): draw each object's coverage patch once
    return shape_alpha(shape, r)


def _place(alpha: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """The patch on a zero canvas [size, size], centred on pixel corner (x, y) as `paste_shape` puts it."""
    canvas = np.zeros((size, size), np.float32)
    half = alpha.shape[0] // 2
    x0, y0 = x - half, y - half
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(size, x0 + 2 * half), min(size, y0 + 2 * half)
    if fx0 < fx1 and fy0 < fy1:
        canvas[fy0:fy1, fx0:fx1] = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    return canvas


@dataclass(frozen=True, eq=False)
class Scene:
    """A background (uint8 [S, S, 3]) and objects drawn over it in order."""

    background: np.ndarray
    objects: tuple[SceneObject, ...]

    @property
    def size(self) -> int:
        return int(self.background.shape[0])

    def render(self) -> np.ndarray:
        """uint8 [S, S, 3]."""
        frame = self.background.copy()
        for obj in self.objects:
            paste_shape(frame, _alpha(obj.shape, obj.r), obj.rgb, obj.x, obj.y)
        return frame

    def coverage(self) -> np.ndarray:
        """float32 [n, S, S]: the share of each pixel's colour that comes from each object once later objects
        are drawn over it (alpha_i times the product of (1 - alpha_j) over later j). The rendered image is
        sum_i coverage_i * colour_i + (1 - sum_i coverage_i) * background, up to the rounding of each paste."""
        n, s = len(self.objects), self.size
        out = np.empty((n, s, s), np.float32)
        through = np.ones((s, s), np.float32)  # what is still seen through every object drawn later
        for i in range(n - 1, -1, -1):
            obj = self.objects[i]
            a = _place(_alpha(obj.shape, obj.r), obj.x, obj.y, s)
            out[i] = a * through
            through *= 1.0 - a
        return out

    def masks(self, coverage: np.ndarray | None = None) -> np.ndarray:
        """bool [n, S, S]: pixels whose colour is at least half the object's; disjoint (a tie of two halves
        goes to the object drawn later)."""
        cov = self.coverage() if coverage is None else coverage
        masks = cov >= 0.5
        for i in range(len(masks) - 2, -1, -1):
            masks[i] &= ~masks[i + 1:].any(0)
        return masks

    def index(self, shape: str, colour: str) -> int | None:
        for i, obj in enumerate(self.objects):
            if obj.shape == shape and obj.colour == colour:
                return i
        return None

    def part_visible(self, i: int, x: float, y: float, margin: float = 0.0) -> bool:
        """Whether point (x, y) of object i lies `margin` px inside the image and no later object's ink covers it."""
        s = self.size
        if not (margin <= x <= s - margin and margin <= y <= s - margin):
            return False
        return not any(obj.covers(x, y) for obj in self.objects[i + 1:])

    def visible_keypoints(self, i: int, margin: float = 0.0) -> dict[str, tuple[float, float]]:
        return {part: p for part, p in self.objects[i].keypoints().items() if self.part_visible(i, *p, margin=margin)}

    # re-renders for edit targets: the same background and, apart from object i, the same objects
    def recoloured(self, i: int, colour: str) -> "Scene":
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; known: {sorted(COLOURS)}")
        return self._with(i, dataclasses.replace(self.objects[i], colour=colour))

    def scaled(self, i: int, factor: float) -> "Scene":
        return self._with(i, dataclasses.replace(self.objects[i], r=self.objects[i].r * float(factor)))

    def removed(self, i: int) -> "Scene":
        return Scene(self.background, self.objects[:i] + self.objects[i + 1:])

    def _with(self, i: int, obj: SceneObject) -> "Scene":
        return Scene(self.background, self.objects[:i] + (obj,) + self.objects[i + 1:])


# --- sampling ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _background(name: str, size: int) -> np.ndarray:
    bg = draw_background(name, size, size)
    bg.flags.writeable = False  # shared between scenes
    return bg


def textured_background(rng: np.random.Generator, size: int, noise: int = 6, name: str | None = None) -> np.ndarray:
    """One of synth's backgrounds plus grey per-pixel noise of +-`noise` levels (kept achromatic, so no object
    colour is lost in it)."""
    name = name or list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    bg = _background(name, size).astype(np.int16)
    if noise:
        bg = bg + rng.integers(-noise, noise + 1, (size, size, 1), dtype=np.int16)
    return np.clip(bg, 0, 255).astype(np.uint8)


def sample_scene(rng: np.random.Generator, size: int = 32, *, combos: Sequence[tuple[str, str]] | None = None,
                 include: tuple[str, str] | None = None, n_objects: int | None = None, noise: int = 6,
                 tries: int = 30) -> Scene:
    """A random scene of 1-3 objects with distinct (shape, colour) drawn from `combos` (default: all pairs),
    plus `include` when given (it need not be in `combos`: a held-out pair). Every object lies inside the image,
    keeps at least MIN_VISIBLE of its area and its centre in view."""
    size = check_size(size)
    pool = [tuple(c) for c in (combos if combos is not None else [(s, c) for s in SHAPES for c in COLOURS])]
    for shape, colour in pool + ([include] if include else []):
        if shape not in SHAPES or colour not in COLOURS:
            raise ValueError(f"unknown shape or colour in {(shape, colour)!r}")
    n = int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 3:
        raise ValueError(f"a scene has 1-3 objects, got {n}")
    pool = [c for c in pool if c != include]
    n_free = min(n - (include is not None), len(pool))
    chosen = [pool[i] for i in rng.choice(len(pool), n_free, replace=False)] if n_free > 0 else []
    if include is not None:
        chosen.insert(int(rng.integers(len(chosen) + 1)), include)
    if not chosen:
        raise ValueError("no (shape, colour) pair to draw")
    background = textured_background(rng, size, noise)
    radii = rng.uniform(*RADIUS_RANGE, len(chosen)) * size
    while True:
        for _ in range(tries):
            objects = []
            for (shape, colour), r in zip(chosen, radii):
                m = int(np.ceil(EXTENT * r)) + 1
                x, y = rng.integers(m, size - m + 1, 2)
                objects.append(SceneObject(shape, colour, int(x), int(y), float(r)))
            scene = Scene(background, tuple(objects))
            if _well_separated(scene):
                return scene
        # crowded: drop one object (never `include`) and try again
        drop = next(k for k in range(len(chosen) - 1, -1, -1) if chosen[k] != include)
        chosen.pop(drop)
        radii = np.delete(radii, drop)


def _well_separated(scene: Scene) -> bool:
    if len(scene.objects) == 1:
        return True
    cov = scene.coverage()
    for i, obj in enumerate(scene.objects):
        own = _alpha(obj.shape, obj.r).sum()
        if cov[i].sum() < MIN_VISIBLE * own or not scene.part_visible(i, obj.x, obj.y):
            return False
    return True
