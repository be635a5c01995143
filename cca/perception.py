"""What the discriminator agents can see: an image-reading oracle for the synthetic scenes and image comparisons.

Nothing here knows the scene an image was rendered from: objects are read off the pixels (saturated pixels
grouped by their nearest named colour into connected parts, each part's shape the best-fitting template in any
of the eight square symmetries, so a rotated triangle is still a triangle). That keeps the agents' checks honest:
they use the same evidence a vision model would, not the benchmark's ground truth.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from data_tools.synth import COLOURS, SHAPES, shape_alpha

MIN_SATURATION = 60.0  # max - min channel: the named colours are >= 190, the backgrounds (grey, sky) <= 150
MAX_COLOUR_DISTANCE = 60.0  # RGB distance to the nearest named colour (the sky gradient's top is 74 from blue)
MIN_AREA_SHARE = 0.01  # a part smaller than this share of the image is noise (an object at 32 px is >= 5%)

# the eight symmetries of the square, each as the function applied to an [H, W, ...] array
TRANSFORMS: dict[str, Any] = {
    "identity": lambda a: a,
    "flip_horizontal": lambda a: a[:, ::-1],
    "flip_vertical": lambda a: a[::-1],
    "rotate_90_clockwise": lambda a: np.rot90(a, k=-1),
    "rotate_180": lambda a: np.rot90(a, k=2),
    "rotate_90_counterclockwise": lambda a: np.rot90(a, k=1),
    "transpose": lambda a: np.swapaxes(a, 0, 1),
    "antitranspose": lambda a: np.rot90(np.swapaxes(a, 0, 1), k=2),
}


def check_image(image: Any, name: str = "image") -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 [H, W, 3], got {a.dtype} {a.shape}")
    return a


def colour_labels(image: np.ndarray) -> np.ndarray:
    """int [H, W]: index into COLOURS of each saturated pixel's nearest named colour, -1 for the rest."""
    px = check_image(image).astype(np.float32)
    names = list(COLOURS)
    ref = np.asarray([COLOURS[n] for n in names], np.float32)
    dist = np.sqrt(((px[:, :, None, :] - ref[None, None]) ** 2).sum(-1))
    nearest = dist.argmin(-1)
    saturated = (px.max(-1) - px.min(-1)) >= MIN_SATURATION
    close = np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= MAX_COLOUR_DISTANCE
    return np.where(saturated & close, nearest, -1)


@functools.lru_cache(maxsize=512)
def _template(shape: str, radius_px: int) -> list[np.ndarray]:
    """The shape's mask at a radius, in each distinct square symmetry (centred on an even-sized patch)."""
    mask = shape_alpha(shape, float(radius_px)) >= 0.5
    variants, seen = [], set()
    for fn in TRANSFORMS.values():
        m = np.ascontiguousarray(fn(mask))
        key = m.tobytes()
        if key not in seen:
            seen.add(key)
            variants.append(m)
    return variants


_UNIT_AREA = {s: float((shape_alpha(s, 20.0) >= 0.5).sum()) / 400.0 for s in SHAPES}  # area / r^2


def classify_shape(part: np.ndarray) -> tuple[str, float]:
    """(shape, IoU) of the template that best fits a boolean mask of one connected part: every shape, in each
    square symmetry, at the radius its area implies and one pixel either side, centred within a pixel of the
    part's centroid."""
    ys, xs = np.nonzero(part)
    cy, cx = int(round(ys.mean() + 0.5)), int(round(xs.mean() + 0.5))
    h, w = part.shape
    best = ("circle", 0.0)
    for shape in SHAPES:
        r0 = int(round(np.sqrt(part.sum() / _UNIT_AREA[shape])))
        for r in range(max(1, r0 - 1), r0 + 2):
            for tmpl in _template(shape, r):
                half = tmpl.shape[0] // 2
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        y0, x0 = cy + dy - half, cx + dx - half
                        fy0, fx0, fy1, fx1 = max(0, y0), max(0, x0), min(h, y0 + 2 * half), min(w, x0 + 2 * half)
                        if fy0 >= fy1 or fx0 >= fx1:
                            continue
                        inside = tmpl[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
                        overlap = (inside & part[fy0:fy1, fx0:fx1]).sum()
                        iou = float(overlap / max(1, part.sum() + tmpl.sum() - overlap))
                        if iou > best[1]:
                            best = (shape, iou)
    return best


def find_objects(image: np.ndarray) -> list[dict[str, Any]]:
    """The coloured objects in an image: [{colour, shape, x, y, area, fit}], largest first. x, y are the part's
    centroid in pixels; fit is the shape template's IoU (low: an odd blob, e.g. a half-erased object)."""
    from scipy.ndimage import label

    labels = colour_labels(image)
    h, w = labels.shape
    min_area = max(3, int(MIN_AREA_SHARE * h * w))
    objects = []
    for k, name in enumerate(COLOURS):
        parts, n = label(labels == k, structure=np.ones((3, 3), int))
        for j in range(1, n + 1):
            part = parts == j
            area = int(part.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(part)
            shape, fit = classify_shape(part)
            objects.append({"colour": name, "shape": shape, "x": round(float(xs.mean() + 0.5), 1),
                            "y": round(float(ys.mean() + 0.5), 1), "area": area, "fit": round(fit, 3)})
    return sorted(objects, key=lambda o: -o["area"])


def object_changes(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """Objects of both images matched by (colour, shape) (each pair at most once in a scene: the largest part
    counts): what appeared, what disappeared, and each kept object's area ratio after / before."""
    def by_key(objs):
        out: dict[tuple[str, str], dict] = {}
        for o in objs:
            out.setdefault((o["colour"], o["shape"]), o)  # largest first, so the main part wins
        return out

    b, a = by_key(find_objects(before)), by_key(find_objects(after))
    kept = [{"colour": k[0], "shape": k[1], "area_ratio": round(a[k]["area"] / max(1, b[k]["area"]), 3)}
            for k in b if k in a]
    return {"before": list(b.values()), "after": list(a.values()),
            "appeared": [a[k] for k in a if k not in b], "disappeared": [b[k] for k in b if k not in a], "kept": kept}


def object_mask(image: np.ndarray, colour: str, shape: str) -> np.ndarray | None:
    """bool [H, W]: the largest part of `colour` read as `shape` (else the largest part of that colour), or None."""
    from scipy.ndimage import label

    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown colour or shape {colour!r}, {shape!r}; known: {list(COLOURS)}, {list(SHAPES)}")
    parts, n = label(colour_labels(image) == list(COLOURS).index(colour), structure=np.ones((3, 3), int))
    if n == 0:
        return None
    masks = sorted((parts == j for j in range(1, n + 1)), key=lambda m: -int(m.sum()))
    return next((m for m in masks if classify_shape(m)[0] == shape), masks[0])


def region_change(before: np.ndarray, after: np.ndarray, colour: str, shape: str, grow: float = 1.0) -> dict[str, Any]:
    """What an edit of one object did, in and around it: the object's part in `before`, widened by 2 px (and by
    (grow - 1) radii for an enlargement), splits the image. Outside it: the mean absolute change (levels) and
    the share of pixels changed by more than 24 levels; inside: how far the part's mean colour in `after` is
    from the mean colour of a ring just around it (small when the place now looks like its surroundings); and
    the share of a band 0.4 radii wide around the part whose colour moved towards the object's (an
    enlargement fills it)."""
    from scipy.ndimage import binary_dilation

    before, after = check_image(before, "before"), check_image(after, "after")
    if before.shape != after.shape:
        return {"error": f"the images differ in size: {before.shape[:2]} and {after.shape[:2]}"}
    part = object_mask(before, colour, shape)
    if part is None:
        return {"error": f"no {colour} object in the first image"}
    radius = float(np.sqrt(part.sum() / np.pi))
    widen = 2 + int(np.ceil(max(0.0, grow - 1.0) * radius))
    region = binary_dilation(part, np.ones((3, 3), bool), iterations=widen)
    ring = binary_dilation(part, np.ones((3, 3), bool), iterations=3) & ~binary_dilation(part, np.ones((3, 3), bool))
    a, b = after.astype(np.float32), before.astype(np.float32)
    diff = np.abs(a - b)
    outside = ~region
    inside_mean, ring_mean = a[part].mean(0), a[ring].mean(0) if ring.any() else a[~part].mean(0)
    # the band a 1.4x enlargement would cover: how much of it moved towards the object's colour
    band = binary_dilation(part, np.ones((3, 3), bool), iterations=max(1, int(round(0.4 * radius)))) & ~part
    own = b[part].mean(0)
    towards = (np.sqrt(((a[band] - own) ** 2).sum(-1)) < np.sqrt(((a[band] - b[band]) ** 2).sum(-1)))
    return {"object_area": int(part.sum()), "outside_mean_change": round(float(diff[outside].mean()), 2),
            "band_towards_object": round(float(towards.mean()) if towards.size else 0.0, 3),
            "outside_changed_share": round(float((diff.max(-1) > 24)[outside].mean()), 4),
            "inside_vs_surround": round(float(np.abs(inside_mean - ring_mean).mean()), 1),
            "inside_mean_rgb": [round(float(v)) for v in inside_mean]}


def sharpness(image: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of the grey image (levels): falls when an image is blurred."""
    g = check_image(image).astype(np.float32).mean(-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


def saturation(image: np.ndarray) -> float:
    """Mean (max - min) over the channels, in [0, 1]: 0 for a grey image."""
    px = check_image(image).astype(np.float32)
    return float((px.max(-1) - px.min(-1)).mean() / 255.0)


def compare_images(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """How `after` relates to `before`: the square symmetry of `before` it is nearest to (mean absolute error in
    grey levels, so a recoloured or grey image still aligns), that error and the share of pixels changed by more
    than 24 levels once aligned, and the ratios of sharpness and colourfulness."""
    before, after = check_image(before, "before"), check_image(after, "after")
    if before.shape != after.shape:
        return {"same_size": False, "size_before": list(before.shape[:2]), "size_after": list(after.shape[:2])}
    gb, ga = before.astype(np.float32).mean(-1), after.astype(np.float32).mean(-1)
    errors = {name: float(np.abs(fn(gb) - ga).mean()) for name, fn in TRANSFORMS.items()
              if fn(gb).shape == ga.shape}
    best = min(errors, key=errors.get)
    aligned = TRANSFORMS[best](before).astype(np.float32)
    changed = np.abs(aligned - after.astype(np.float32)).max(-1) > 24
    return {"same_size": True, "nearest_transform": best, "grey_error": round(errors[best], 2),
            "identity_grey_error": round(errors["identity"], 2), "changed_share": round(float(changed.mean()), 4),
            "sharpness_ratio": round(sharpness(after) / max(1e-6, sharpness(before)), 3),
            "saturation_before": round(saturation(before), 3), "saturation_after": round(saturation(after), 3)}


__all__ = ["TRANSFORMS", "classify_shape", "colour_labels", "compare_images", "find_objects", "object_changes",
           "object_mask", "region_change", "saturation", "sharpness"]
