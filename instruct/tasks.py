"""Vision tasks as image edits with a sentence (InstructDiffusion, Geng et al., CVPR 2024, in miniature).

Every example is (source image, instruction, target image); the target is what the source should become:

* segment   "Mark the pixels of the red circle in blue and leave the rest unchanged." The target blends the
            named object's mask half-way to the mark colour (0.5 * pixel + 0.5 * colour). In ABSENT_FRACTION of
            the examples the named object is not in the scene and the target is the source. Eight mark colours.
* keypoint  "Circle the top of the red circle with green. Circle the centre of the blue star with cyan." 1-5
            parts, each an opaque disk of radius `keypoint_radius(size)` in its own colour of nine, at the exact
            part position, on a scene (data_tools.scenes) or a synthetic face (animation.faces landmarks).
            A part is only asked for when it is visible, its disk does not touch another one, and its colour
            stands out from every source pixel under the disk (MIN_MARK_CONTRAST).
* restore   denoise (Gaussian noise), deblur (Gaussian blur) or watermark removal (semi-transparent text) of a
            crop of a real photo or video frame (data_tools.photos); the target is the clean crop.
* edit      "Make the red circle blue." / "Remove the red circle." / "Make the red circle bigger." The target
            re-renders the scene with that one object changed, so everything else is identical pixel for pixel.

Generalisation is measured on two axes, both deterministic from a seed and kept out of every training example:
paraphrases (TEMPLATES[family]["train"] vs ["heldout"]) and combinations (`heldout_combos`: (shape, colour)
pairs of the named object for segment and edit, never drawn in any training scene; (part, mark colour) pairs
for keypoints). Restoration has no combinations; its held-out axis is the photos (val / test pools).

`make_instruct_batches` streams training batches for the shared trainer; `make_eval_set` draws validation or
test examples; `instruct.decode` scores an output image against an example.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from animation.faces import FACE_LANDMARKS, face_landmarks, render_faces, sample_factors
from data_tools.images import from_uint8_images, save_image_grid
from data_tools.photos import SOURCES, PhotoPool
from data_tools.scenes import MIN_SIZE, PARTS, Scene, sample_scene
from data_tools.synth import COLOURS, SHAPES, heldout_combos as _heldout_object_pairs

TASKS: tuple[str, ...] = ("segment", "keypoint", "restore", "edit")
RESTORE_KINDS: tuple[str, ...] = ("denoise", "deblur", "watermark")
EDIT_KINDS: tuple[str, ...] = ("recolour", "remove", "bigger")
SPLITS: tuple[str, ...] = ("train", "val", "test")
AXES: tuple[str, ...] = ("train", "heldout")  # values of the phrasing and combination axes

# The paper's eight segmentation colours and nine keypoint colours, at fixed RGB values.
MARK_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "purple": (128, 0, 255), "blue": (0, 0, 255), "green": (0, 255, 0),
    "yellow": (255, 255, 0), "white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128),
}
KEYPOINT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0), "cyan": (0, 255, 255),
    "magenta": (255, 0, 255), "gray": (128, 128, 128), "white": (255, 255, 255), "black": (0, 0, 0),
}
KEYPOINT_PARTS: tuple[str, ...] = PARTS + FACE_LANDMARKS
FACE_OBJECT = "the person"

ABSENT_FRACTION = 0.2
MIN_MARK_CONTRAST = 64.0  # RGB distance between a keypoint colour and every source pixel under its disk
BIGGER_FACTOR = 1.4
MAX_PARTS = 5

# Paraphrases per template family. {object} is "the red circle" (or "the person"), {colour} a colour name.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "segment": {
        "train": (
            "Mark the pixels of {object} in {colour} and leave the rest unchanged.",
            "Mark {object} in {colour} and keep everything else as it is.",
            "Highlight {object} in {colour}.",
            "Cover {object} with a {colour} mask.",
            "Mark every pixel belonging to {object} with {colour}, leaving the rest untouched.",
            "Segment {object} and mark it in {colour}.",
            "Fill the area of {object} with translucent {colour}.",
            "Use {colour} to mark where {object} is.",
            "Put a {colour} overlay on {object} and change nothing else.",
            "Show the region of {object} in {colour}.",
        ),
        "heldout": (
            "Apply a {colour} tint to every pixel of {object}, nothing else.",
            "Which pixels are {object}? Mark them {colour}.",
            "Shade {object} {colour} and do not touch the rest of the image.",
            "Tint {object} {colour}.",
        ),
    },
    "keypoint": {  # one sentence per part; an instruction joins 1-5 of them with spaces
        "train": (
            "Circle the {part} of {object} with {colour}.",
            "Draw a {colour} circle on the {part} of {object}.",
            "Mark the {part} of {object} with a {colour} dot.",
            "Put a {colour} disk on the {part} of {object}.",
            "Place a {colour} spot at the {part} of {object}.",
            "Use {colour} to circle the {part} of {object}.",
            "Locate the {part} of {object} and circle it in {colour}.",
            "Indicate the {part} of {object} with {colour}.",
            "Dot the {part} of {object} in {colour}.",
        ),
        "heldout": (
            "Pin a {colour} marker to the {part} of {object}.",
            "Where is the {part} of {object}? Show it with a {colour} circle.",
            "Stamp a {colour} blob onto the {part} of {object}.",
        ),
    },
    "denoise": {
        "train": (
            "Remove the noise from this image.", "Denoise the picture.", "Clean up the grainy noise in this photo.",
            "Make this noisy image clean.", "Get rid of the noise.", "Reduce the noise in the image.",
            "Remove the grain and keep the details.", "Restore this noisy photo.",
        ),
        "heldout": ("Suppress the speckles in this picture.", "Make the photo less grainy.",
                    "Filter out the static from this image."),
    },
    "deblur": {
        "train": (
            "Deblur this image.", "Make the picture sharp.", "Remove the blur from this photo.",
            "Sharpen the blurry image.", "Bring this photo into focus.", "Fix the blur in the picture.",
            "Make this blurry photo crisp.", "Restore the sharp details of this image.",
        ),
        "heldout": ("Undo the softness of this photo.", "This picture is out of focus; fix it.",
                    "Recover a clear image from this blurry one."),
    },
    "watermark": {
        "train": (
            "Remove the watermark.", "Erase the watermark from this image.", "Get rid of the text overlay.",
            "Clean the watermark off this photo.", "Delete the watermark and keep the picture.",
            "Take the watermark out of the image.", "Remove the overlaid text from the photo.",
            "Make the image free of watermarks.",
        ),
        "heldout": ("Strip the logo text from this picture.", "Wipe away the translucent lettering.",
                    "Lift the stamp off this photo."),
    },
    "recolour": {
        "train": (
            "Make {object} {colour}.", "Turn {object} {colour}.", "Change the colour of {object} to {colour}.",
            "Paint {object} {colour}.", "Recolour {object} {colour}.", "Give {object} a {colour} colour.",
            "Colour {object} {colour} instead.", "Let {object} become {colour}.",
        ),
        "heldout": ("Switch {object} to {colour}.", "I want {object} to be {colour}.", "Dye {object} {colour}."),
    },
    "remove": {
        "train": (
            "Remove {object}.", "Delete {object}.", "Erase {object} from the picture.", "Get rid of {object}.",
            "Take {object} away.", "Make {object} disappear.", "Take {object} out of the image.", "Wipe out {object}.",
        ),
        "heldout": ("Eliminate {object}.", "Clear {object} away.", "I don't want {object} in the picture any more."),
    },
    "bigger": {
        "train": (
            "Make {object} bigger.", "Enlarge {object}.", "Increase the size of {object}.", "Scale up {object}.",
            "Make {object} larger.", "Grow {object}.", "Blow up {object}.", "Make {object} a bit bigger.",
        ),
        "heldout": ("Expand {object}.", "Magnify {object}.", "I'd like {object} to be larger."),
    },
}
WATERMARK_TEXTS = ("SAMPLE", "PROOF", "DRAFT", "STOCK", "COPY", "PREVIEW", "hdvila", "(c) 2024")


@dataclass
class InstructExample:
    """One (source, instruction, target). `meta` always has size, split, combos and phrasing, and per task:

    segment   object ("the red circle"), shape, colour, mark (colour name), rgb (mark RGB), mask (bool [H, W], all
              False when absent), absent, heldout_combo, scene (data_tools.scenes.Scene)
    keypoint  source_kind ("scene" | "face"), objects, parts, colours (lists, one entry per point), points (float32
              [K, 2] of (x, y) in pixels, pixel k spanning [k, k + 1)), rgb (uint8 [K, 3]), radius (disk radius,
              px), tolerance (px; = radius), heldout_combo (list of bool), scene or factors (float32 [1, F])
    restore   kind ("denoise" | "deblur" | "watermark"), level (noise sigma in levels, blur sigma in px, or
              watermark opacity), photo (the pool image's name)
    edit      kind ("recolour" | "remove" | "bigger"), object, shape, colour, rgb (new colour for recolour, else
              the object's), new_colour (recolour), mask (the object's visible mask in the source), core (its
              fully covered pixels), region (bool [H, W]: every pixel the edit may change), grown (bigger: pixels
              the grown object newly covers), heldout_combo, scene
    """

    source: np.ndarray  # uint8 [H, W, 3]
    target: np.ndarray  # uint8 [H, W, 3]
    instruction: str
    task: str  # one of TASKS
    meta: dict = field(default_factory=dict)  # what the scorer needs; see `instruct.decode` and the converters


def keypoint_radius(size: int) -> int:
    """Radius in pixels of the keypoint disks (the paper's 10 px at 256 would vanish at 32 px)."""
    return max(1, int(round(size / 16)))


def object_phrase(shape: str, colour: str) -> str:
    return f"the {colour} {shape}"


# ---------------------------------------------------------------------------------------------------------
# Held-out combinations


@dataclass(frozen=True)
class HeldOutCombos:
    objects: tuple[tuple[str, str], ...]  # (shape, colour) of a named object
    keypoints: tuple[tuple[str, str], ...]  # (part, keypoint colour)


@functools.lru_cache(maxsize=16)
def heldout_combos(seed: int = 0, fraction: float = 0.25) -> HeldOutCombos:
    """The combinations kept out of training, deterministic from `seed`.

    Objects: `fraction` of the (shape, colour) pairs, spread so every shape and colour keeps training pairs
    (the synthetic corpus's own rule, `data_tools.synth.heldout_combos`). Keypoints: two colours per part,
    dealt round a shuffled colour list so each colour is held out for about the same number of parts.
    """
    objects = tuple(tuple(p) for p in _heldout_object_pairs(seed, fraction))
    rng = np.random.default_rng([seed, 0x4B50])
    colours = [list(KEYPOINT_COLOURS)[i] for i in rng.permutation(len(KEYPOINT_COLOURS))]
    parts = [KEYPOINT_PARTS[i] for i in rng.permutation(len(KEYPOINT_PARTS))]
    keypoints = sorted((part, colours[(2 * k + j) % len(colours)]) for k, part in enumerate(parts) for j in range(2))
    return HeldOutCombos(objects, tuple(keypoints))


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class InstructDataConfig:
    """What the instruction examples are made of (plain fields, loaded from YAML by data_tools.config)."""

    size: int = 32
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    task_weights: dict[str, float] = field(default_factory=dict)  # task -> sampling weight; missing tasks weigh 1
    restore_kinds: list[str] = field(default_factory=lambda: list(RESTORE_KINDS))
    edit_kinds: list[str] = field(default_factory=lambda: list(EDIT_KINDS))
    absent_fraction: float = ABSENT_FRACTION  # segment: the named object is not in the scene
    face_fraction: float = 0.5  # keypoint: examples on synthetic faces rather than scenes
    photo_source: str = "both"  # restore: photos | frames | both
    frame_fraction: float = 0.5  # restore with both: share of crops from the video's frames
    cache_dir: Optional[str] = None  # restore: keep the decoded photo pools here (nothing is written otherwise)
    heldout_seed: int = 0
    heldout_fraction: float = 0.25  # share of (shape, colour) pairs held out
    epoch_batches: int = 1000  # batches per epoch of the training stream


def check_config(cfg: InstructDataConfig) -> None:
    """Raise ValueError naming the first bad field."""
    if not isinstance(cfg.size, int) or cfg.size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {cfg.size!r}")
    if not cfg.tasks:
        raise ValueError(f"tasks must name at least one of {TASKS}")
    for name, given, known in (("tasks", cfg.tasks, TASKS), ("task_weights", list(cfg.task_weights), TASKS),
                               ("restore_kinds", cfg.restore_kinds, RESTORE_KINDS),
                               ("edit_kinds", cfg.edit_kinds, EDIT_KINDS)):
        unknown = [t for t in given if t not in known]
        if unknown:
            raise ValueError(f"unknown {name} {unknown}; known: {list(known)}")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ValueError(f"tasks has duplicates: {cfg.tasks}")
    if "restore" in cfg.tasks and not cfg.restore_kinds:
        raise ValueError("restore_kinds is empty")
    if "edit" in cfg.tasks and not cfg.edit_kinds:
        raise ValueError("edit_kinds is empty")
    weights = task_weights(cfg)
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"task_weights must be >= 0 with a positive sum over tasks, got {cfg.task_weights}")
    for name in ("absent_fraction", "face_fraction", "frame_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    if not 0.0 <= cfg.heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {cfg.heldout_fraction}")
    if cfg.photo_source not in SOURCES:
        raise ValueError(f"photo_source must be one of {SOURCES}, got {cfg.photo_source!r}")
    if cfg.epoch_batches < 1:
        raise ValueError(f"epoch_batches must be >= 1, got {cfg.epoch_batches}")


def task_weights(cfg: InstructDataConfig) -> list[float]:
    """Sampling weight of each task in cfg.tasks (default 1)."""
    return [float(cfg.task_weights.get(t, 1.0)) for t in cfg.tasks]


# ---------------------------------------------------------------------------------------------------------
# Converters


def _choice(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def blend_mask(image: np.ndarray, mask: np.ndarray, rgb: Sequence[int]) -> np.ndarray:
    """The segmentation target: 0.5 * pixel + 0.5 * colour inside `mask` (rounded half up), the image elsewhere."""
    out = image.copy()
    mixed = (image.astype(np.uint16) + np.asarray(rgb, np.uint16) + 1) // 2
    out[mask] = mixed[mask].astype(np.uint8)
    return out


def disk_mask(size: int, x: float, y: float, radius: float) -> np.ndarray:
    """bool [size, size]: pixels whose centres lie within `radius` of (x, y)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return (c[None, :] - x) ** 2 + (c[:, None] - y) ** 2 <= radius * radius


@functools.lru_cache(maxsize=32)
def _font(px: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=px)


def watermark_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [size, size] in [0, 1]: a word in a random place and angle, 0.6-1.0 of the image wide."""
    from PIL import Image, ImageDraw

    text = _choice(rng, WATERMARK_TEXTS)
    target_width = rng.uniform(0.6, 1.0) * size
    px = max(6, int(round(target_width / max(1.0, _font(100).getlength(text) / 100))))
    canvas = Image.new("L", (size, size), 0)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    ImageDraw.Draw(canvas).text((cx, cy), text, fill=255, font=_font(px), anchor="mm")
    canvas = canvas.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BILINEAR, center=(cx, cy))
    return np.asarray(canvas, np.float32) / 255.0


class ExampleSampler:
    """Draws examples of one split along the two held-out axes.

    combos "train": only training pairs anywhere; "heldout": the named object's (shape, colour) pair (segment,
    edit) or every requested (part, colour) pair (keypoint) is a held-out one, the other objects training ones.
    phrasing "train" / "heldout": which paraphrases. split: which photo pool restoration crops come from.
    """

    def __init__(self, cfg: InstructDataConfig, split: str = "train", combos: str = "train", phrasing: str = "train"):
        check_config(cfg)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for name, value in (("combos", combos), ("phrasing", phrasing)):
            if value not in AXES:
                raise ValueError(f"{name} must be one of {AXES}, got {value!r}")
        self.cfg, self.split, self.combos, self.phrasing = cfg, split, combos, phrasing
        self.size = cfg.size
        self.heldout = heldout_combos(cfg.heldout_seed, cfg.heldout_fraction)
        held = set(self.heldout.objects)
        self.train_objects = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in held]
        self.named_objects = list(self.heldout.objects) if combos == "heldout" else self.train_objects
        if not self.named_objects:
            raise ValueError("combos='heldout' needs heldout_fraction > 0")
        self.heldout_keypoints = set(self.heldout.keypoints)
        self._photos: PhotoPool | None = None

    @property
    def photos(self) -> PhotoPool:
        if self._photos is None:  # only restoration needs them, and loading takes a second
            self._photos = PhotoPool.load(self.split, self.size, self.cfg.photo_source, self.cfg.frame_fraction,
                                          self.cfg.cache_dir)
        return self._photos

    def template(self, family: str, rng: np.random.Generator) -> str:
        return _choice(rng, TEMPLATES[family][self.phrasing])

    def example(self, task: str, rng: np.random.Generator) -> InstructExample:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {TASKS}")
        return getattr(self, task)(rng)

    def _base_meta(self, **extra: Any) -> dict:
        return {"size": self.size, "split": self.split, "combos": self.combos, "phrasing": self.phrasing, **extra}

    # --- segmentation ------------------------------------------------------------------------------------

    def segment(self, rng: np.random.Generator) -> InstructExample:
        shape, colour = _choice(rng, self.named_objects)
        absent = bool(rng.random() < self.cfg.absent_fraction)
        if absent:  # the named pair is left out of the scene
            scene = sample_scene(rng, self.size, combos=[c for c in self.train_objects if c != (shape, colour)])
            mask = np.zeros((self.size, self.size), bool)
        else:
            scene = sample_scene(rng, self.size, combos=self.train_objects, include=(shape, colour))
            mask = scene.masks()[scene.index(shape, colour)]
        source = scene.render()
        mark = _choice(rng, list(MARK_COLOURS))
        target = blend_mask(source, mask, MARK_COLOURS[mark])
        obj = object_phrase(shape, colour)
        instruction = self.template("segment", rng).format(object=obj, colour=mark)
        meta = self._base_meta(object=obj, shape=shape, colour=colour, mark=mark, rgb=MARK_COLOURS[mark],
                               mask=mask, absent=absent, heldout_combo=(shape, colour) in self.heldout.objects,
                               scene=scene)
        return InstructExample(source, target, instruction, "segment", meta)

    # --- keypoints ---------------------------------------------------------------------------------------

    def keypoint(self, rng: np.random.Generator) -> InstructExample:
        radius = keypoint_radius(self.size)
        n_parts = int(rng.integers(1, MAX_PARTS + 1))
        while True:  # a scene where no part can be asked for (rare) is drawn again
            source, candidates, kind, drawn = self._keypoint_source(rng, radius)
            chosen = self._choose_parts(rng, source, candidates, n_parts, radius)
            if chosen:
                break
        target = source.copy()
        for _, _, (x, y), colour in chosen:
            target[disk_mask(self.size, x, y, radius)] = KEYPOINT_COLOURS[colour]
        sentences = [self.template("keypoint", rng).format(part=part, object=obj, colour=colour)
                     for obj, part, _, colour in chosen]
        meta = self._base_meta(
            source_kind=kind, objects=[c[0] for c in chosen], parts=[c[1] for c in chosen],
            points=np.array([c[2] for c in chosen], np.float32).reshape(-1, 2), colours=[c[3] for c in chosen],
            rgb=np.array([KEYPOINT_COLOURS[c[3]] for c in chosen], np.uint8).reshape(-1, 3), radius=radius,
            tolerance=float(radius), heldout_combo=[(c[1], c[3]) in self.heldout_keypoints for c in chosen],
            **{"factors" if kind == "face" else "scene": drawn})
        return InstructExample(source, target, " ".join(sentences), "keypoint", meta)

    def _keypoint_source(self, rng: np.random.Generator, radius: int):
        """(image, [(object phrase, part, (x, y))], kind, the face's factors [1, F] or the Scene), listing every
        visible part at least a disk radius inside the image."""
        if rng.random() < self.cfg.face_fraction:
            factors = sample_factors(1, rng)
            image = render_faces(factors, self.size)[0]
            points = face_landmarks(factors, self.size)
            cands = [(FACE_OBJECT, part, tuple(float(v) for v in points[part][0])) for part in FACE_LANDMARKS]
            cands = [c for c in cands if radius <= min(c[2]) and max(c[2]) <= self.size - radius]
            return image, cands, "face", factors
        scene = sample_scene(rng, self.size, combos=self.train_objects)
        cands = [(object_phrase(*obj.combo), part, p) for i, obj in enumerate(scene.objects)
                 for part, p in scene.visible_keypoints(i, margin=radius).items()]
        return scene.render(), cands, "scene", scene

    def _choose_parts(self, rng: np.random.Generator, source: np.ndarray, candidates: list, n_parts: int,
                      radius: int) -> list[tuple[str, str, tuple[float, float], str]]:
        chosen: list[tuple[str, str, tuple[float, float], str]] = []
        for k in rng.permutation(len(candidates)):
            if len(chosen) == n_parts:
                break
            obj, part, (x, y) = candidates[k]
            if any((x - cx) ** 2 + (y - cy) ** 2 < (2 * radius + 1) ** 2 for _, _, (cx, cy), _ in chosen):
                continue  # disks must not touch, so each one decodes to its own centre
            under = source[disk_mask(self.size, x, y, radius)].astype(np.float32)
            used = {c[3] for c in chosen}
            allowed = [
                c for c, rgb in KEYPOINT_COLOURS.items()
                if c not in used
                and ((part, c) in self.heldout_keypoints) == (self.combos == "heldout")
                and np.sqrt(((under - np.asarray(rgb, np.float32)) ** 2).sum(-1)).min() >= MIN_MARK_CONTRAST
            ]
            if allowed:
                chosen.append((obj, part, (x, y), _choice(rng, allowed)))
        return chosen

    # --- restoration -------------------------------------------------------------------------------------

    def restore(self, rng: np.random.Generator) -> InstructExample:
        kind = _choice(rng, self.cfg.restore_kinds)
        clean, name = self.photos.crop(rng, self.size)
        degraded, level = degrade(clean, kind, rng)
        instruction = self.template(kind, rng)
        meta = self._base_meta(kind=kind, level=level, photo=name)
        return InstructExample(degraded, clean, instruction, "restore", meta)

    # --- editing -----------------------------------------------------------------------------------------

    def edit(self, rng: np.random.Generator) -> InstructExample:
        kind = _choice(rng, self.cfg.edit_kinds)
        shape, colour = _choice(rng, self.named_objects)
        obj = object_phrase(shape, colour)
        for _ in range(100):
            scene = sample_scene(rng, self.size, combos=self.train_objects, include=(shape, colour))
            made = self._edit_target(scene, scene.index(shape, colour), kind, rng)
            if made is not None:
                break
        else:  # pragma: no cover - every kind succeeds on most scenes
            raise RuntimeError(f"could not draw a {kind} edit of {obj}")
        target_scene, i_target, new_colour = made
        i = scene.index(shape, colour)
        cov, masks = scene.coverage(), scene.masks()
        region = cov[i] > 0
        meta = self._base_meta(kind=kind, object=obj, shape=shape, colour=colour, mask=masks[i],
                               core=_core(cov[i], masks[i]), heldout_combo=(shape, colour) in self.heldout.objects,
                               scene=scene)
        if kind == "recolour":
            meta.update(new_colour=new_colour, rgb=COLOURS[new_colour])
            instruction = self.template("recolour", rng).format(object=obj, colour=new_colour)
        else:
            meta.update(rgb=COLOURS[colour])
            instruction = self.template(kind, rng).format(object=obj)
        if kind == "bigger":
            t_cov = target_scene.coverage()[i_target]
            region |= t_cov > 0
            meta["grown"] = target_scene.masks()[i_target] & ~masks[i]
        meta["region"] = region  # every pixel the edit may change
        return InstructExample(scene.render(), target_scene.render(), instruction, "edit", meta)

    def _edit_target(self, scene: Scene, i: int, kind: str, rng: np.random.Generator):
        """(target scene, index of the object there or None, new colour or None); None when the scene does not
        suit this edit (no allowed new colour, or too little of the grown object would show)."""
        obj = scene.objects[i]
        if kind == "remove":
            return scene.removed(i), None, None
        if kind == "recolour":
            taken = {o.combo for o in scene.objects}
            options = [c for c in COLOURS if c != obj.colour and (obj.shape, c) not in taken
                       and (self.combos == "heldout" or (obj.shape, c) in self.train_objects)]
            if not options:
                return None
            new = _choice(rng, options)
            return scene.recoloured(i, new), i, new
        bigger = scene.scaled(i, BIGGER_FACTOR)
        grown = bigger.masks()[i] & ~scene.masks()[i]
        if grown.sum() < max(4, 0.3 * scene.masks()[i].sum()):
            return None  # mostly hidden behind later objects or the border: the change would barely show
        return bigger, i, None


def _core(coverage: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels fully the object's colour (for colour checks), or the mask when the object has none."""
    core = coverage >= 0.99
    return core if core.any() else mask


def degrade(clean: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(degraded uint8 image, level): Gaussian noise of sigma 10-35 levels, Gaussian blur of sigma 0.6-1.6 px per
    32 px of image, or a watermark word blended at opacity 0.35-0.65 in white or black."""
    size = clean.shape[0]
    x = clean.astype(np.float32)
    if kind == "denoise":
        level = float(rng.uniform(10.0, 35.0))
        out = x + rng.standard_normal(x.shape, dtype=np.float32) * level
    elif kind == "deblur":
        from scipy.ndimage import gaussian_filter

        level = float(rng.uniform(0.6, 1.6) * size / 32)
        out = gaussian_filter(x, sigma=(level, level, 0), mode="reflect")
    elif kind == "watermark":
        level = float(rng.uniform(0.35, 0.65))
        ink = 255.0 if rng.random() < 0.6 else 0.0
        a = watermark_alpha(rng, size)[:, :, None] * level
        out = x + a * (ink - x)
    else:
        raise ValueError(f"unknown restoration kind {kind!r}; known: {RESTORE_KINDS}")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), level


# ---------------------------------------------------------------------------------------------------------
# Training stream and evaluation sets


def _seed_words(*parts: int | str) -> list[int]:
    """Non-negative ints for numpy's SeedSequence (strings hashed stably, never with Python's hash())."""
    words = []
    for p in parts:
        if isinstance(p, str):
            words.append(int.from_bytes(p.encode("utf-8")[:8].ljust(8, b"\0"), "little"))
        else:
            words.append(int(p) % (1 << 63))
    return words


def training_examples(sampler: ExampleSampler, batch_size: int, seed: int, epoch: int, index: int,
                      rank: int = 0) -> list[InstructExample]:
    """The examples of one training batch, a function of (seed, epoch, batch index, rank) alone."""
    cfg = sampler.cfg
    rng = np.random.default_rng(_seed_words(seed, rank, epoch, index, "train"))
    weights = np.asarray(task_weights(cfg))
    tasks = rng.choice(len(cfg.tasks), size=batch_size, p=weights / weights.sum())
    return [sampler.example(cfg.tasks[t], rng) for t in tasks]


def collate(examples: Sequence[InstructExample]) -> dict:
    """{"source", "target": float32 [B, 3, H, W] in [-1, 1], "instruction", "task": list[str]}."""
    return {
        "source": from_uint8_images(np.stack([e.source for e in examples])),
        "target": from_uint8_images(np.stack([e.target for e in examples])),
        "instruction": [e.instruction for e in examples],
        "task": [e.task for e in examples],
    }


class InstructEpoch:
    """The batches of one epoch of the training stream; `skip_batches` lets a resumed run start mid-epoch
    without drawing the batches before it."""

    def __init__(self, sampler: ExampleSampler, batch_size: int, seed: int, epoch: int, rank: int):
        self.sampler, self.batch_size, self.seed, self.epoch, self.rank = sampler, batch_size, seed, epoch, rank
        self.start = 0

    def skip_batches(self, n: int) -> None:
        self.start = int(n)

    def __len__(self) -> int:
        return self.sampler.cfg.epoch_batches

    def __iter__(self) -> Iterator[dict]:
        for index in range(self.start, len(self)):
            yield collate(training_examples(self.sampler, self.batch_size, self.seed, self.epoch, index, self.rank))


def make_instruct_batches(cfg: InstructDataConfig, batch_size: int, seed: int, rank: int = 0,
                          world_size: int = 1) -> Callable[[int], InstructEpoch]:
    """The trainer's data source: epoch -> that epoch's `cfg.epoch_batches` batches for this rank, drawn on the
    fly from training phrasings and training combinations only. Batches depend on (seed, epoch, index, rank)
    alone, so a resumed run sees the same batches and every rank sees different ones."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    sampler = ExampleSampler(cfg, "train", combos="train", phrasing="train")

    def epoch_batches(epoch: int) -> InstructEpoch:
        return InstructEpoch(sampler, batch_size, seed, epoch, rank)

    return epoch_batches


def make_eval_set(cfg: InstructDataConfig, n_per_task: int, split: str = "val", seed: int = 0,
                  combos: str = "heldout", phrasing: str = "heldout") -> list[InstructExample]:
    """`n_per_task` examples of every task in cfg.tasks (in that order). Example j of a task depends only on
    (seed, split, task, j, combos, phrasing), so a larger set extends a smaller one. split "val" or "test":
    different scenes and photo pools, so settings tuned on val are reported once on test."""
    if split not in ("val", "test"):
        raise ValueError(f"evaluation split must be 'val' or 'test', got {split!r}")
    if n_per_task < 0:
        raise ValueError(f"n_per_task must be >= 0, got {n_per_task}")
    sampler = ExampleSampler(cfg, split, combos=combos, phrasing=phrasing)
    return [sampler.example(task, np.random.default_rng(_seed_words(seed, split, task, j, combos, phrasing)))
            for task in cfg.tasks for j in range(n_per_task)]


# ---------------------------------------------------------------------------------------------------------
# Looking at examples


def template_pattern(template: str, groups: dict[str, str] | None = None) -> re.Pattern:
    """A regex matching the sentences a template makes: each placeholder a named group, matching the regex
    `groups[name]` if given, else any text."""
    groups = groups or {}
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(f"(?P<{p[1:-1]}>{groups.get(p[1:-1], '.+?')})" if p.startswith("{") else re.escape(p)
                              for p in parts))


def example_grid(examples: Sequence[InstructExample], path: str | Path, outputs: Sequence[np.ndarray] | None = None,
                 scale: int = 4) -> Path:
    """A PNG with one row per example: source | target (| output, when given as uint8 [H, W, 3])."""
    if not examples:
        raise ValueError("no examples to draw")
    if outputs is not None and len(outputs) != len(examples):
        raise ValueError(f"{len(outputs)} outputs for {len(examples)} examples")
    tiles = []
    for k, e in enumerate(examples):
        tiles += [e.source, e.target] + ([np.asarray(outputs[k], np.uint8)] if outputs is not None else [])
    return save_image_grid(from_uint8_images(np.stack(tiles)), path, nrow=3 if outputs is not None else 2, scale=scale)
