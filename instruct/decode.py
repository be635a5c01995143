"""Reading a model's output image back as a prediction, and scoring it, per task (as InstructDiffusion decodes
its edited images back to masks and keypoints).

segment   Pixels that moved towards the mark colour: the output's displacement from the source, projected on
          the direction (colour - source), is at least SEG_MIN_FRACTION of |colour - source| (the true blend
          moves half-way) and at least SEG_MIN_SHIFT levels, and the colour it implies for a half-way blend
          (2 * output - source) is nearer the requested mark colour than any other of the eight (so a blend
          towards another colour, or towards black when gray was asked, is no match). Pixels whose source is
          within SEG_IGNORE_BELOW of the colour cannot show the blend and are left out of prediction and truth
          (white on the white background, gray on grey stripes). Value: IoU with the true mask. When the named
          object is absent the truth is empty: the value is 1 if at most ABSENT_MAX_MOVED of the pixels moved,
          else 0 (extra "absent": 1), so an unchanged output scores 1 there: report iou_present beside iou.
          Marking every object in the scene, whichever was named, scores 1 on a lone object (about 0.7
          iou_present): iou_with_others (present objects with other objects in the scene) shows the name is read.
          The decoder is made for the half-way blend; an opaque paint-over may or may not count.
keypoint  For each requested colour, pixels within KP_COLOUR_TOL of it that changed by at least KP_MIN_CHANGE
          from the source; the centroid of their largest 8-connected blob is the predicted point. Correct if
          within the example's tolerance (its disk radius) of the true point; no blob is wrong. Value: the share
          of the example's points that are correct (PCK). Diagnostic, colour-blind: a point is "marked" when any
          pixel within the tolerance of it changed by KP_MIN_CHANGE (summary marked_points, beside
          changed_share, the share of changed pixels: changing every pixel marks every point).
restore   PSNR(output, clean) - PSNR(degraded input, clean) in dB; PSNR is capped at PSNR_MAX (an exact copy).
edit      Correct (1) when the attribute changed AND the rest is unchanged: mean absolute error against the
          target outside the object's region (grown by one pixel) at most EDIT_REST_MAE levels. Attribute:
          recolour, the mean output colour over the object's interior is nearest the requested colour among
          synth's palette; remove, the region's error against the target re-render is at most half the source's;
          bigger, at least half the newly covered pixels are closer to the object's colour than to the source.

Images are uint8 [H, W, 3] (or float [3, H, W] in [-1, 1], as a model gives them).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from data_tools.synth import COLOURS

from .tasks import MARK_COLOURS, InstructExample

SEG_IGNORE_BELOW = 40.0  # the blend then moves >= 20 levels, clear of SEG_MIN_SHIFT
SEG_MIN_FRACTION = 0.25
SEG_MIN_SHIFT = 14.0  # output noise of sigma 4 levels moves almost no pixel this far
ABSENT_MAX_MOVED = 0.01
KP_COLOUR_TOL = 60.0
KP_MIN_CHANGE = 32.0
PSNR_MAX = 60.0
EDIT_REST_MAE = 10.0

METRICS = {"segment": "iou", "keypoint": "pck", "restore": "psnr_gain", "edit": "edit_acc"}


def as_uint8_image(image: Any, like: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] from uint8 [H, W, 3] or float [3, H, W] in [-1, 1] (numpy or torch)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise ValueError(f"a float image must be [3, H, W] in [-1, 1], got shape {arr.shape}")
        arr = np.clip((arr.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an image [H, W, 3], got shape {arr.shape}")
    if like is not None and arr.shape != like.shape:
        raise ValueError(f"output shape {arr.shape} differs from the source's {like.shape}")
    return arr


# ---------------------------------------------------------------------------------------------------------
# Decoders


def decode_segment(source: np.ndarray, output: np.ndarray, rgb) -> tuple[np.ndarray, np.ndarray]:
    """(moved, decidable): bool [H, W] each; see the module docstring."""
    src, out = source.astype(np.float32), output.astype(np.float32)
    colour = np.asarray(rgb, np.float32)
    towards = colour - src
    length = np.sqrt((towards ** 2).sum(-1))
    decidable = length >= SEG_IGNORE_BELOW
    along = ((out - src) * towards).sum(-1) / np.maximum(length, 1e-6)
    implied = 2.0 * out - src  # the colour a half-way blend would have come from
    palette = np.array(list({tuple(rgb), *MARK_COLOURS.values()}), np.float32)  # [P, 3]
    nearest = palette[np.argmin(((implied[:, :, None, :] - palette) ** 2).sum(-1), axis=-1)]
    moved = decidable & (along >= np.maximum(SEG_MIN_FRACTION * length, SEG_MIN_SHIFT)) & (nearest == colour).all(-1)
    return moved, decidable


def changed_pixels(source: np.ndarray, output: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose RGB moved at least KP_MIN_CHANGE (Euclidean) from the source."""
    return np.sqrt(((output.astype(np.float32) - source.astype(np.float32)) ** 2).sum(-1)) >= KP_MIN_CHANGE


def decode_keypoints(source: np.ndarray, output: np.ndarray, colours) -> np.ndarray:
    """float32 [K, 2]: the (x, y) in pixels of each colour's blob, NaN where there is none."""
    from scipy.ndimage import label

    out = output.astype(np.float32)
    changed = changed_pixels(source, output)
    points = np.full((len(colours), 2), np.nan, np.float32)
    for k, rgb in enumerate(colours):
        close = np.sqrt(((out - np.asarray(rgb, np.float32)) ** 2).sum(-1)) <= KP_COLOUR_TOL
        labels, n = label(close & changed, structure=np.ones((3, 3), int))
        if n == 0:
            continue
        biggest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        ys, xs = np.nonzero(labels == biggest)
        points[k] = xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres
    return points


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float(min(PSNR_MAX, 10.0 * np.log10(255.0 ** 2 / max(mse, 1e-12))))


def _mae(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return 0.0
    return float(np.abs(a[where].astype(np.float32) - b[where].astype(np.float32)).mean())


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    dist = [float(((rgb - np.asarray(COLOURS[n], np.float32)) ** 2).sum()) for n in names]
    return names[int(np.argmin(dist))]


# ---------------------------------------------------------------------------------------------------------
# Scores


def score(example: InstructExample, output) -> dict[str, Any]:
    """{"task", "metric", "value", ...extras} for one output image; see the module docstring."""
    out = as_uint8_image(output, like=example.source)
    scorer = {"segment": _score_segment, "keypoint": _score_keypoint, "restore": _score_restore,
              "edit": _score_edit}.get(example.task)
    if scorer is None:
        raise ValueError(f"unknown task {example.task!r}")
    return {"task": example.task, "metric": METRICS[example.task], **scorer(example, out)}


def _score_segment(ex: InstructExample, out: np.ndarray) -> dict[str, Any]:
    moved, decidable = decode_segment(ex.source, out, ex.meta["rgb"])
    if ex.meta["absent"]:
        ok = moved.sum() <= ABSENT_MAX_MOVED * moved.size
        return {"value": float(ok), "absent": 1.0, "moved": float(moved.mean())}
    truth = ex.meta["mask"] & decidable
    union = (moved | truth).sum()
    iou = float((moved & truth).sum() / union) if union else 1.0
    scene = ex.meta.get("scene")
    others = float(len(scene.objects) - 1) if scene is not None else float("nan")
    return {"value": iou, "absent": 0.0, "moved": float(moved.mean()), "others": others}


def _score_keypoint(ex: InstructExample, out: np.ndarray) -> dict[str, Any]:
    pred = decode_keypoints(ex.source, out, ex.meta["rgb"])
    dist = np.sqrt(((pred - ex.meta["points"]) ** 2).sum(-1))
    correct = np.where(np.isnan(dist), False, dist <= ex.meta["tolerance"])
    # colour-blind diagnostic: did anything change at the requested place (whatever its colour)?
    changed = changed_pixels(ex.source, out)
    ys, xs = np.nonzero(changed)
    centres = np.stack([xs + 0.5, ys + 0.5], axis=1)  # pixel centres, as decode_keypoints measures
    marked = [bool(len(centres)) and bool((np.sqrt(((centres - point) ** 2).sum(-1)) <= ex.meta["tolerance"]).any())
              for point in np.asarray(ex.meta["points"], np.float32)]
    return {"value": float(correct.mean()), "points": float(len(correct)), "correct": float(correct.sum()),
            "found": float((~np.isnan(dist)).sum()), "marked": float(sum(marked)),
            "changed_share": float(changed.mean())}


def _score_restore(ex: InstructExample, out: np.ndarray) -> dict[str, Any]:
    after, before = psnr(out, ex.target), psnr(ex.source, ex.target)
    return {"value": after - before, "psnr": after, "psnr_input": before, "kind": ex.meta["kind"]}


def _score_edit(ex: InstructExample, out: np.ndarray) -> dict[str, Any]:
    from scipy.ndimage import binary_dilation

    m = ex.meta
    region = m["region"]
    rest = ~binary_dilation(region, structure=np.ones((3, 3), bool))
    rest_mae = _mae(out, ex.target, rest)
    if m["kind"] == "recolour":
        mean = out[m["core"]].astype(np.float32).mean(0)
        attribute = _nearest_colour(mean) == m["new_colour"]
    elif m["kind"] == "remove":
        attribute = _mae(out, ex.target, region) <= 0.5 * _mae(ex.source, ex.target, region)
    elif m["kind"] == "bigger":
        ring = m["grown"]
        o, s = out[ring].astype(np.float32), ex.source[ring].astype(np.float32)
        nearer = np.sqrt(((o - np.asarray(m["rgb"], np.float32)) ** 2).sum(-1)) < np.sqrt(((o - s) ** 2).sum(-1))
        attribute = bool(nearer.size) and nearer.mean() >= 0.5
    else:
        raise ValueError(f"unknown edit kind {m['kind']!r}")
    rest_ok = rest_mae <= EDIT_REST_MAE
    return {"value": float(bool(attribute) and rest_ok), "attribute_ok": float(bool(attribute)),
            "rest_ok": float(rest_ok), "rest_mae": rest_mae, "kind": m["kind"]}


def summarise(scores: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task: the mean of its metric and "n"; per kind ("<metric>/<kind>") for restore and edit;
    segment adds iou_present and absent_acc, keypoint pck_points (points pooled over examples) and the
    colour-blind marked_points with changed_share, edit the attribute and rest rates."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for s in scores:
        by_task[s["task"]].append(s)
    out: dict[str, dict[str, float]] = {}
    for task, rows in by_task.items():
        metric = rows[0]["metric"]
        summary = {metric: float(np.mean([r["value"] for r in rows])), "n": float(len(rows))}
        kinds = sorted({r["kind"] for r in rows if "kind" in r})
        for kind in kinds:
            summary[f"{metric}/{kind}"] = float(np.mean([r["value"] for r in rows if r.get("kind") == kind]))
        if task == "segment":
            present = [r["value"] for r in rows if not r["absent"]]
            absent = [r["value"] for r in rows if r["absent"]]
            summary["iou_present"] = float(np.mean(present)) if present else float("nan")
            summary["absent_acc"] = float(np.mean(absent)) if absent else float("nan")
            # present objects with other objects in the scene: marking every object scores 1 on a lone object
            crowded = [r["value"] for r in rows if not r["absent"] and r.get("others", 0) >= 1]
            summary["iou_with_others"] = float(np.mean(crowded)) if crowded else float("nan")
        elif task == "keypoint":
            points = max(1.0, sum(r["points"] for r in rows))
            summary["pck_points"] = float(sum(r["correct"] for r in rows) / points)
            summary["marked_points"] = float(sum(r["marked"] for r in rows) / points)
            summary["changed_share"] = float(np.mean([r["changed_share"] for r in rows]))
        elif task == "edit":
            summary["attribute_acc"] = float(np.mean([r["attribute_ok"] for r in rows]))
            summary["rest_acc"] = float(np.mean([r["rest_ok"] for r in rows]))
        out[task] = summary
    return out
