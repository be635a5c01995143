"""Synthetic captioned video corpus for testing retrieval and compositional generalisation.

Each video is a sequence of events; in each event one coloured shape moves in a named direction over a
named background, and an SRT cue beside the video says so in a sentence. A deterministic subset of
(shape, colour) combinations is kept out of the train split and used only by the held-out split, so a
model that composes "red" and "star" it saw separately can be told apart from one that memorised pairs.

Two designs of the held-out splits (`heldout_design`):
- "random": a random `heldout_fraction` of the (shape, colour) pairs, clips drawn from them at random.
- "factorial": unseen pairs come in 2x2 blocks (two shapes x two colours, all four pairs kept out of train),
  and the clips of a split come in groups of 16 that cross the block's shapes and colours with two motions
  and two backgrounds. Every clip then has, for each attribute, a clip beside it that differs in that
  attribute alone (a red circle and a blue square beside a blue circle and a red square, the same clip moving
  the other way, on the other background), so no subset of the attributes identifies a clip: a retrieval
  figure on it shows what a model adds over knowing some of the attributes. The validation split (`val`,
  `num_val_videos`) has a block of unseen pairs of its own, for choosing settings without the test clips.

Layout written by `synthesize_corpus(out_dir, cfg)`:
    out_dir/train/synth_train_0000.mp4 + .srt, ...
    out_dir/heldout/synth_heldout_0000.mp4 + .srt, ...   (the test split)
    out_dir/val/synth_val_0000.mp4 + .srt, ...           (factorial design with num_val_videos > 0)
    out_dir/metadata.jsonl     one line per event (attributes, times, frames, trajectory, text)
    out_dir/synth_config.json  the config plus the held-out (and validation) combinations

Trajectories in metadata are normalised: x as a fraction of width, y of height, r (shape radius) of
min(height, width). The value at frame f of an event is a linear blend from [0] to [1] with
p = (f - frame_start) / max(1, frame_end - frame_start - 1).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .files import atomic_write_json, atomic_write_text
from .ingest.transcripts import format_srt
from .media.encode import encode_rgb24

# --- vocabulary --------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# Saturated, hue-separated colours so each stays nameable after yuv420p chroma subsampling at 32x56.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 70, 235),
    "yellow": (245, 215, 20),
    "purple": (150, 40, 200),
    "orange": (250, 130, 10),
}

# Several phrasings per direction so captions are not one fixed string per attribute.
DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("moves to the left", "slides to the left"),
    "right": ("moves to the right", "slides to the right"),
    "up": ("moves up", "rises upward"),
    "down": ("moves down", "falls downward"),
    "grows": ("grows larger", "expands"),
    "shrinks": ("shrinks", "gets smaller"),
}

# Backgrounds are achromatic or pale so no shape colour is lost against them.
BACKGROUNDS: dict[str, str] = {
    "black": "on a black background",
    "white": "on a white background",
    "stripes": "over a striped grey background",
    "sky": "against a blue sky gradient",
    "checker": "over a grey checkerboard",
}

# {a} is the article for the colour word, {bg} the background phrase, {motion} the direction phrase.
TEMPLATES: tuple[str, ...] = (
    "{a} {colour} {shape} {motion} {bg}.",
    "The {colour} {shape} {motion} {bg}.",
    "{bg_cap}, {a_low} {colour} {shape} {motion}.",
    "We see {a_low} {colour} {shape} that {motion} {bg}.",
    "There is {a_low} {colour} {shape} {bg}, and it {motion}.",
)
# Later events may open with a connective, as a narrator would.
PREFIXES: tuple[str, ...] = ("", "Then ", "Next, ")


@dataclass
class SynthConfig:
    num_videos: int = 24  # train + held-out
    seed: int = 0
    height: int = 720
    width: int = 1280
    fps: int = 25
    events_per_video: int = 2
    event_seconds: float = 6.0
    heldout_design: str = "random"  # "random" | "factorial" (see the module docstring)
    heldout_fraction: float = 0.25  # random design: fraction of (shape, colour) combos reserved for held-out
    num_heldout_videos: int | None = None  # default: max(1, num_videos // 4); factorial: 16 clips per group
    num_val_videos: int = 0  # factorial design: validation videos, taken from num_videos like the held-out ones
    # "factorial": training clips come in groups of 16 too (2x2 blocks of training pairs x 2 motions x 2
    # backgrounds), group-mates adjacent so they share shards and batches: every attribute gets hard negatives
    train_design: str = "random"
    crf: int = 20
    preset: str = "veryfast"
    threads: int = 2  # fixed, so the same ffmpeg gives byte-identical mp4s on any machine


# --- captions ----------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def make_caption(shape: str, colour: str, direction_phrase: str, background: str,
                 template: int, prefix: str = "") -> str:
    """Fill one template; the sentence always ends with a period (one sentence per event)."""
    bg = BACKGROUNDS[background]
    a = _article(colour)
    text = TEMPLATES[template].format(
        a=a, a_low=a.lower(), colour=colour, shape=shape, motion=direction_phrase,
        bg=bg, bg_cap=bg[0].upper() + bg[1:],
    )
    if prefix:
        text = prefix + text[0].lower() + text[1:]
    return text


def all_caption_texts() -> Iterator[str]:
    """Every caption the generator can produce (for tokenizer training)."""
    for t, prefix, shape, colour, phrases, bg in itertools.product(
        range(len(TEMPLATES)), PREFIXES, SHAPES, COLOURS, DIRECTIONS.values(), BACKGROUNDS
    ):
        for phrase in phrases:
            yield make_caption(shape, colour, phrase, bg, t, prefix)


SPLITS = ("train", "heldout", "val")

# --- held-out split ----------------------------------------------------------------------------------

def heldout_combos(seed: int, fraction: float) -> list[tuple[str, str]]:
    """Deterministic (shape, colour) pairs kept out of train.

    Spread across shapes and colours (a cap per shape and per colour), so every shape and every colour
    still appears in train: held-out pairs are new compositions of seen attributes.
    """
    combos = [(s, c) for s in SHAPES for c in COLOURS]
    n = int(round(fraction * len(combos)))
    if fraction > 0:
        n = max(1, n)
    n = min(n, len(combos) - max(len(SHAPES), len(COLOURS)))  # leave each attribute a train pair
    if n <= 0:
        return []
    rng = np.random.default_rng([seed, 0xC0B0])
    order = [combos[i] for i in rng.permutation(len(combos))]
    cap_s = -(-n // len(SHAPES))
    cap_c = -(-n // len(COLOURS))
    chosen: list[tuple[str, str]] = []
    while len(chosen) < n:
        before = len(chosen)
        for s, c in order:
            if len(chosen) >= n:
                break
            if (s, c) in chosen:
                continue
            if sum(x == s for x, _ in chosen) >= cap_s or sum(y == c for _, y in chosen) >= cap_c:
                continue
            # keep at least one train pair for this shape and this colour
            if sum(x == s for x, _ in chosen) + 1 >= len(COLOURS) or sum(y == c for _, y in chosen) + 1 >= len(SHAPES):
                continue
            chosen.append((s, c))
        if len(chosen) == before and cap_s > len(COLOURS) and cap_c > len(SHAPES):
            break  # greedy got stuck; fewer held-out pairs beats looping forever
        cap_s += 1  # caps too tight for this order: relax and go again
        cap_c += 1
    return sorted(chosen, key=lambda sc: (SHAPES.index(sc[0]), list(COLOURS).index(sc[1])))


class _Cycler:
    """Draws items in shuffled rounds, so every item is used about equally often."""

    def __init__(self, items: list, rng: np.random.Generator):
        self.items = list(items)
        self.rng = rng
        self.queue: list = []

    def take(self, avoid=None):
        if not self.queue:
            self.queue = [self.items[i] for i in self.rng.permutation(len(self.items))]
        for i, item in enumerate(self.queue):
            if item != avoid or len(self.items) == 1:
                return self.queue.pop(i)
        # only `avoid` is left in this round: start the next round early
        extra = [self.items[i] for i in self.rng.permutation(len(self.items))]
        self.queue.extend(extra)
        return self.take(avoid)


# --- planning ----------------------------------------------------------------------------------------

def _frames_per_event(cfg: SynthConfig) -> int:
    return max(1, int(round(cfg.event_seconds * cfg.fps)))


def _trajectory(direction: str, rng: np.random.Generator) -> dict[str, list[float]]:
    """Normalised start/end of centre and radius for one event."""
    r = 0.16
    lo, hi = 0.25, 0.75
    u = lambda a, b: float(round(rng.uniform(a, b), 4))  # noqa: E731 - rounded so JSON is stable
    if direction in ("left", "right"):
        y = u(0.35, 0.65)
        a, b = u(hi - 0.05, hi + 0.05), u(lo - 0.05, lo + 0.05)
        x = [a, b] if direction == "left" else [b, a]
        return {"x": x, "y": [y, y], "r": [r, r]}
    if direction in ("up", "down"):
        x = u(0.3, 0.7)
        a, b = u(0.72, 0.78), u(0.22, 0.28)
        y = [a, b] if direction == "up" else [b, a]
        return {"x": [x, x], "y": y, "r": [r, r]}
    x, y = u(0.42, 0.58), u(0.42, 0.58)
    small, big = 0.07, 0.26
    rr = [small, big] if direction == "grows" else [big, small]
    return {"x": [x, x], "y": [y, y], "r": rr}


GROUP_SIZE = 16  # factorial design: 2 shapes x 2 colours x 2 motions x 2 backgrounds
Block = tuple[tuple[str, str], tuple[str, str]]  # (two shapes, two colours)


def factorial_blocks(seed: int) -> dict[str, list[Block]]:
    """The unseen 2x2 blocks of the factorial design: two for the test split, one for validation.

    Colours are split into three disjoint pairs and shapes into pairs that overlap only once, so every shape
    and every colour keeps training pairs (a shape loses at most 4 of its 6 colours, a colour 2 of 5 shapes).
    """
    rng = np.random.default_rng([seed, 0xFAC7])
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))]
    pair = lambda a, b: tuple(sorted((a, b), key=(SHAPES + tuple(COLOURS)).index))  # noqa: E731 - stable order
    return {
        "heldout": [(pair(shapes[0], shapes[1]), pair(colours[0], colours[1])),
                    (pair(shapes[2], shapes[3]), pair(colours[2], colours[3]))],
        "val": [(pair(shapes[4], shapes[0]), pair(colours[4], colours[5]))],
    }


def block_pairs(blocks: list[Block]) -> list[tuple[str, str]]:
    pairs = {(s, c) for shapes, colours in blocks for s in shapes for c in colours}
    return sorted(pairs, key=lambda sc: (SHAPES.index(sc[0]), list(COLOURS).index(sc[1])))


def held_out_pairs(cfg: SynthConfig) -> dict[str, list[tuple[str, str]]]:
    """(shape, colour) pairs never in train, per held-out split ("heldout", and "val" when it has videos)."""
    if cfg.heldout_design == "factorial":
        blocks = factorial_blocks(cfg.seed)
        out = {"heldout": block_pairs(blocks["heldout"])}
        if cfg.num_val_videos:
            out["val"] = block_pairs(blocks["val"])
        return out
    return {"heldout": heldout_combos(cfg.seed, cfg.heldout_fraction)}


def training_blocks(pairs: list[tuple[str, str]], rng: np.random.Generator) -> list[Block]:
    """Every 2x2 block made of training pairs, shuffled, with a greedy cover of all the pairs first."""
    allowed = set(pairs)
    blocks = [(s2, c2) for s2 in itertools.combinations(SHAPES, 2) for c2 in itertools.combinations(COLOURS, 2)
              if all((s, c) in allowed for s in s2 for c in c2)]
    if not blocks:
        raise ValueError("the factorial training design needs a 2x2 block of training pairs; none is left")
    blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    cover: list[Block] = []
    uncovered = {(s, c) for s2, c2 in blocks for s in s2 for c in c2}
    while uncovered:
        best = max(blocks, key=lambda b: len(uncovered & set(itertools.product(*b))))
        cover.append(best)
        uncovered -= set(itertools.product(*best))
    return cover + [b for b in blocks if b not in cover]


def factorial_events(blocks: list[Block], n_events: int, rng: np.random.Generator, split: str,
                     distinct: bool = True, shuffle: bool = True) -> list[tuple[str, str, str, str]]:
    """(shape, colour, direction, background) of `n_events` clips in full 2x2x2x2 groups (no clip twice unless
    `distinct` is off), shuffled across groups or, with `shuffle` off, within each group only."""
    if n_events % GROUP_SIZE:
        raise ValueError(f"the factorial design needs the {split} split's events (videos x events_per_video = "
                         f"{n_events}) to be a multiple of {GROUP_SIZE}")
    directions, backgrounds = list(DIRECTIONS), list(BACKGROUNDS)
    taken: set[tuple[str, str, str, str]] = set()
    events: list[tuple[str, str, str, str]] = []
    for g in range(n_events // GROUP_SIZE):
        shapes, colours = blocks[g % len(blocks)]
        for _ in range(1000):
            motions = [directions[i] for i in rng.choice(len(directions), 2, replace=False)]
            grounds = [backgrounds[i] for i in rng.choice(len(backgrounds), 2, replace=False)]
            group = set(itertools.product(shapes, colours, motions, grounds))
            if not distinct or not group & taken:
                break
        else:
            raise ValueError(f"too many {split} groups for distinct clips on {len(blocks)} block(s)")
        taken |= group
        ordered = sorted(group)
        events.extend(ordered if shuffle else [ordered[i] for i in rng.permutation(len(ordered))])
    return [events[i] for i in rng.permutation(len(events))] if shuffle else events


def _split_sizes(cfg: SynthConfig, held: dict[str, list]) -> dict[str, int]:
    n_held = cfg.num_heldout_videos
    if n_held is None:
        n_held = max(1, cfg.num_videos // 4) if (held["heldout"] and cfg.num_videos >= 2) else 0
    if n_held and not held["heldout"]:
        raise ValueError("num_heldout_videos > 0 but heldout_fraction leaves no held-out combinations")
    if cfg.num_val_videos and cfg.heldout_design != "factorial":
        raise ValueError("num_val_videos needs heldout_design: factorial")
    if not 0 <= n_held + cfg.num_val_videos <= cfg.num_videos:
        raise ValueError(f"num_heldout_videos={n_held} + num_val_videos={cfg.num_val_videos} must be within "
                         f"0..num_videos={cfg.num_videos}")
    return {"train": cfg.num_videos - n_held - cfg.num_val_videos, "heldout": n_held, "val": cfg.num_val_videos}


def plan_corpus(cfg: SynthConfig) -> tuple[list[dict], list[tuple[str, str]]]:
    """All events of all videos (no pixels): the metadata rows, plus the held-out (test) combos."""
    _check(cfg)
    held = held_out_pairs(cfg)
    unseen = {pair for pairs in held.values() for pair in pairs}
    train_combos = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in unseen]
    sizes = _split_sizes(cfg, held)
    blocks = factorial_blocks(cfg.seed) if cfg.heldout_design == "factorial" else {}
    n_frames = _frames_per_event(cfg)
    rows: list[dict] = []
    for split, combos, code in (("train", train_combos, 1), ("heldout", held["heldout"], 2),
                                ("val", held.get("val", []), 3)):
        n_videos = sizes[split]
        rng = np.random.default_rng([cfg.seed, code])
        planned = None
        if split != "train" and blocks:
            planned = iter(factorial_events(blocks[split], n_videos * cfg.events_per_video, rng, split))
        elif split == "train" and cfg.train_design == "factorial" and n_videos:
            planned = iter(factorial_events(training_blocks(combos, rng), n_videos * cfg.events_per_video, rng,
                                            split, distinct=False, shuffle=False))
        combo_cycle = _Cycler(combos, rng)
        dir_cycle = _Cycler(list(DIRECTIONS), rng)
        for v in range(n_videos):
            video_id = f"synth_{split}_{v:04d}"
            prev_combo = prev_bg = None
            for k in range(cfg.events_per_video):
                if planned is not None:
                    shape, colour, direction, background = next(planned)
                else:
                    shape, colour = combo_cycle.take(avoid=prev_combo)
                    direction = dir_cycle.take()
                    bgs = [b for b in BACKGROUNDS if b != prev_bg]
                    background = bgs[int(rng.integers(len(bgs)))]
                phrases = DIRECTIONS[direction]
                phrase = phrases[int(rng.integers(len(phrases)))]
                template = int(rng.integers(len(TEMPLATES)))
                prefix = PREFIXES[int(rng.integers(len(PREFIXES)))] if k > 0 else ""
                f0 = k * n_frames
                rows.append({
                    "video_id": video_id,
                    "split": split,
                    "video": f"{split}/{video_id}.mp4",
                    "event": k,
                    "start": round(f0 / cfg.fps, 6),
                    "end": round((f0 + n_frames) / cfg.fps, 6),
                    "frame_start": f0,
                    "frame_end": f0 + n_frames,
                    "shape": shape,
                    "colour": colour,
                    "rgb": list(COLOURS[colour]),
                    "direction": direction,
                    "background": background,
                    "traj": _trajectory(direction, rng),
                    "text": make_caption(shape, colour, phrase, background, template, prefix),
                })
                prev_combo, prev_bg = (shape, colour), background
    return rows, held["heldout"]


def _check(cfg: SynthConfig) -> None:
    if cfg.height % 2 or cfg.width % 2 or cfg.height < 16 or cfg.width < 16:
        raise ValueError(f"height and width must be even and >= 16 (yuv420p), got {cfg.height}x{cfg.width}")
    if cfg.num_videos < 0 or cfg.events_per_video < 1 or cfg.event_seconds <= 0 or cfg.fps <= 0:
        raise ValueError("num_videos >= 0, events_per_video >= 1, event_seconds > 0 and fps > 0 are required")
    if not 0.0 <= cfg.heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {cfg.heldout_fraction}")
    for name in ("heldout_design", "train_design"):
        if getattr(cfg, name) not in ("random", "factorial"):
            raise ValueError(f"{name} must be 'random' or 'factorial', got {getattr(cfg, name)!r}")


# --- drawing -----------------------------------------------------------------------------------------

def draw_background(name: str, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] background, drawn with numpy."""
    if name == "black":
        return np.full((height, width, 3), 12, np.uint8)
    if name == "white":
        return np.full((height, width, 3), 238, np.uint8)
    if name == "stripes":
        period = max(4, width // 8)  # ~8 stripes: still visible at 56 px wide
        x = np.arange(width)
        row = np.where((x // (period // 2)) % 2 == 0, 80, 150).astype(np.uint8)
        return np.broadcast_to(row[None, :, None], (height, width, 3)).copy()
    if name == "sky":
        t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
        top = np.array([70, 130, 220], np.float32)
        bottom = np.array([215, 232, 250], np.float32)
        col = (top * (1 - t) + bottom * t).astype(np.uint8)  # [H, 3]
        return np.broadcast_to(col[:, None, :], (height, width, 3)).copy()
    if name == "checker":
        cell = max(4, height // 4)
        y = (np.arange(height) // cell)[:, None]
        x = (np.arange(width) // cell)[None, :]
        val = np.where((x + y) % 2 == 0, 60, 120).astype(np.uint8)
        return np.repeat(val[:, :, None], 3, axis=2)
    raise KeyError(f"unknown background {name!r}")


_TRI = np.deg2rad([-90.0, 30.0, 150.0])
# Outward unit normals of an equilateral triangle pointing up (image y grows downwards), one per edge.
_TRI_NORMALS = np.stack([np.cos(_TRI + np.pi), np.sin(_TRI + np.pi)], 1).astype(np.float32)


def shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance in pixels (negative inside) from offsets (dx, dy) to a shape of radius r.

    Exact near the edges, which is all the 1-pixel antialiasing ramp needs.
    """
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r * 0.85
    if shape == "cross":
        w = r * 0.34
        ax, ay = np.abs(dx), np.abs(dy)
        return np.minimum(np.maximum(ax - r, ay - w), np.maximum(ax - w, ay - r))
    if shape == "triangle":
        # centred on its centroid, so the stored centre is inside the shape; inradius = r * 0.6
        d = [dx * n[0] + dy * n[1] for n in _TRI_NORMALS]
        return np.maximum(np.maximum(d[0], d[1]), d[2]) - r * 0.6
    if shape == "star":
        # Fold the angle into half of one arm's sector; there the star is one side of the tip-to-inner-vertex line.
        outer, inner, half = r * 1.1, r * 0.45, np.pi / 5
        phi = np.arctan2(dy, dx) + np.pi / 2  # tip of the first arm points up
        a = np.abs(np.mod(phi + half, 2 * half) - half)
        rho = np.sqrt(dx * dx + dy * dy)
        ex, ey = inner * np.cos(half) - outer, inner * np.sin(half)
        norm = float(np.hypot(ex, ey))
        nx, ny = ey / norm, -ex / norm
        return (rho * np.cos(a) - outer) * nx + rho * np.sin(a) * ny
    raise KeyError(f"unknown shape {shape!r}")


def shape_alpha(shape: str, r: float) -> np.ndarray:
    """float32 [S, S] coverage of a shape centred on the middle pixel corner of an even-sized patch."""
    half = int(np.ceil(r * 1.2)) + 2
    c = np.arange(-half, half, dtype=np.float32) + 0.5  # pixel centres relative to the shape centre
    dx, dy = c[None, :], c[:, None]
    dx, dy = np.broadcast_to(dx, (2 * half, 2 * half)), np.broadcast_to(dy, (2 * half, 2 * half))
    return np.clip(0.5 - shape_distance(shape, dx, dy, float(r)), 0.0, 1.0).astype(np.float32)


def paste_shape(frame: np.ndarray, alpha: np.ndarray, rgb, cx: float, cy: float) -> None:
    """Blend a coverage patch into `frame` in place, centred on the pixel corner nearest (cx, cy)."""
    h, w = frame.shape[:2]
    half = alpha.shape[0] // 2
    x0, y0 = int(round(cx)) - half, int(round(cy)) - half
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(w, x0 + 2 * half), min(h, y0 + 2 * half)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None]
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    colour = np.asarray(rgb, np.float32)
    frame[fy0:fy1, fx0:fx1] = (region + (colour - region) * a + 0.5).astype(np.uint8)


def event_state(row: dict, frame_index: int, height: int, width: int) -> tuple[float, float, float]:
    """Pixel centre (x, y) and radius of the event's shape at an absolute frame index."""
    n = row["frame_end"] - row["frame_start"]
    p = (frame_index - row["frame_start"]) / max(1, n - 1)
    p = min(1.0, max(0.0, p))
    tr = row["traj"]
    lerp = lambda v: v[0] + (v[1] - v[0]) * p  # noqa: E731
    return lerp(tr["x"]) * width, lerp(tr["y"]) * height, lerp(tr["r"]) * min(height, width)


def render_video(rows: list[dict], cfg: SynthConfig) -> Iterator[np.ndarray]:
    """Yield the uint8 RGB frames of one video (its event rows in order)."""
    h, w = cfg.height, cfg.width
    for row in rows:
        bg = draw_background(row["background"], h, w)
        cache: dict[float, np.ndarray] = {}  # a moving shape keeps its radius: draw its mask once
        for f in range(row["frame_start"], row["frame_end"]):
            frame = bg.copy()
            cx, cy, r = event_state(row, f, h, w)
            key = round(r, 3)
            if key not in cache:
                cache = {key: shape_alpha(row["shape"], r)}
            paste_shape(frame, cache[key], row["rgb"], cx, cy)
            yield frame


# --- encoding and files ------------------------------------------------------------------------------

def encode_frames(frames: Iterator[np.ndarray], out_path: str | os.PathLike, cfg: SynthConfig) -> None:
    """Pipe rgb24 frames into ffmpeg -> libx264 yuv420p CFR mp4 (faststart), written atomically."""
    encode_rgb24(frames, out_path, width=cfg.width, height=cfg.height, fps=cfg.fps, preset=cfg.preset, crf=cfg.crf,
                 keyint=cfg.fps, threads=cfg.threads)


def srt_text(rows: list[dict]) -> str:
    """One cue per event, spanning the event."""
    return format_srt((r["start"], r["end"], r["text"]) for r in rows)


def synthesize_corpus(out_dir: str | os.PathLike, cfg: SynthConfig | None = None, progress: bool = True) -> dict:
    """Write the corpus (videos, transcripts, metadata, config) and return a summary."""
    cfg = cfg or SynthConfig()
    rows, held = plan_corpus(cfg)
    val_pairs = held_out_pairs(cfg).get("val", [])
    out = Path(out_dir)
    videos: dict[str, list[dict]] = {}
    for row in rows:
        videos.setdefault(row["video_id"], []).append(row)
    for split in SPLITS:
        folder = out / split
        if split == "val" and not cfg.num_val_videos and not folder.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        # drop videos of an earlier, larger run so the folders match metadata.jsonl
        for old in itertools.chain(folder.glob("synth_*.mp4"), folder.glob("synth_*.srt")):
            if old.stem not in videos:
                old.unlink()

    from tqdm import tqdm

    for vid, vrows in tqdm(videos.items(), desc="synth videos", unit="video", disable=not progress):
        folder = out / vrows[0]["split"]
        encode_frames(render_video(vrows, cfg), folder / f"{vid}.mp4", cfg)
        atomic_write_text(folder / f"{vid}.srt", srt_text(vrows))

    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_text(out / "metadata.jsonl", lines)
    held_list = [list(c) for c in held]
    atomic_write_json(out / "synth_config.json", {
        "config": dataclasses.asdict(cfg),
        "heldout_combos": held_list,
        "val_combos": [list(c) for c in val_pairs],
        "shapes": list(SHAPES), "colours": COLOURS, "directions": list(DIRECTIONS),
        "backgrounds": BACKGROUNDS,
    })
    count = lambda split: sum(1 for v in videos.values() if v[0]["split"] == split)  # noqa: E731
    return {
        "out_dir": str(out),
        "videos": {split: count(split) for split in SPLITS if split != "val" or cfg.num_val_videos},
        "events": {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS if s != "val" or cfg.num_val_videos},
        "heldout_combos": held_list,
        "val_combos": [list(c) for c in val_pairs],
        "train_combos": len(SHAPES) * len(COLOURS) - len(held) - len(val_pairs),
        "seconds_per_video": cfg.events_per_video * _frames_per_event(cfg) / cfg.fps,
    }
