"""The face attributes the generation heads edit, as classes the oracle's readings can be compared on.

Each edited factor of `animation.faces` gets coarse classes with the same cut points the captions use
(`faces.describe`): a smile above 0.35 of its range is "smiling", below -0.35 "frowning", between "neutral";
a mouth open above 0.5 is "open"; an eye above 0.5 is "open"; brows beyond ±0.5 are raised / furrowed; a head
beyond ±0.4 is turned. Agreement = the same class for two readings of the same face (the truth and the oracle's
reading of a reconstruction). Edit success is measured on the continuous readings (`edit_outcomes`).
"""
from __future__ import annotations

import numpy as np

from animation.faces import (ACTION_BY_NAME, EXPRESSION_FACTORS, FACTOR_NAMES, FACTOR_RANGES, IDENTITY_FACTORS,
                             apply_action)

# factor -> ascending cut points (classes are the intervals between them)
ATTRIBUTE_CUTS: dict[str, tuple[float, ...]] = {
    "smile": (-0.35, 0.35),
    "mouth_open": (0.5,),
    "eye_left": (0.5,),
    "eye_right": (0.5,),
    "brow_raise": (-0.5, 0.5),
    "head_turn": (-0.4, 0.4),
}
EDITED_ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_CUTS)
SPAN = np.array([FACTOR_RANGES[n][1] - FACTOR_RANGES[n][0] for n in FACTOR_NAMES], np.float32)
INDEX = {n: i for i, n in enumerate(FACTOR_NAMES)}
IDENTITY_INDEX = np.array([INDEX[n] for n in IDENTITY_FACTORS])


def attribute_classes(factors: np.ndarray, name: str) -> np.ndarray:
    """Class index of one attribute for factor rows [N, F]."""
    return np.searchsorted(np.asarray(ATTRIBUTE_CUTS[name]), np.asarray(factors)[:, INDEX[name]])


def eyes_closed(factors: np.ndarray) -> np.ndarray:
    """Both eyes shut, as the captions say it ("with the eyes closed": both below 0.25)."""
    f = np.asarray(factors)
    return np.maximum(f[:, INDEX["eye_left"]], f[:, INDEX["eye_right"]]) < 0.25


def mouth_open(factors: np.ndarray) -> np.ndarray:
    return np.asarray(factors)[:, INDEX["mouth_open"]] > 0.5


def agreement(reference: np.ndarray, readings: np.ndarray) -> dict[str, float]:
    """Per edited attribute, the fraction of faces whose readings fall in the reference's class."""
    return {name: float(np.mean(attribute_classes(reference, name) == attribute_classes(readings, name)))
            for name in EDITED_ATTRIBUTES}


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall of the two classes of a binary attribute (0.5 = chance whatever the class balance); nan when
    one class is missing from the truth."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    if truth.all() or not truth.any():
        return float("nan")
    return float((np.mean(predicted[truth]) + np.mean(~predicted[~truth])) / 2)


def requested_change(start: np.ndarray, action: str) -> np.ndarray:
    """[N, F] change the action asks of each face, in units of each factor's range (0 where untouched)."""
    return (apply_action(start, ACTION_BY_NAME[action]) - start) / SPAN


def touched(action: str) -> np.ndarray:
    a = ACTION_BY_NAME[action]
    mask = np.zeros(len(FACTOR_NAMES), bool)
    mask[[INDEX[n] for n in (*a.targets, *a.deltas)]] = True
    return mask


def edit_outcomes(start: np.ndarray, edited: np.ndarray, actions: list[str], *, min_request: float = 0.1,
                  min_fraction: float = 0.5, keep_tolerance: float = 0.1) -> dict[str, np.ndarray]:
    """Score edits from the oracle's readings before (`start`) and after (`edited`), [N, F] each.

    For edit i with action a: the factors a touches whose requested change exceeds `min_request` of the range
    are its targets. The edit succeeds when every target moved the requested way by at least `min_fraction`
    of what was asked. Edits with no target (closing a closed mouth) are left out of the rate (`scored`
    False). Unrelated expression factors "stay" when they move less than `keep_tolerance` of their range.
    Returns per edit: scored, success, achieved (mean achieved / requested over the targets), kept (fraction
    of unrelated expression factors that stayed) and identity drift (mean |change| of the identity factors in
    range units)."""
    start, edited = np.asarray(start, np.float32), np.asarray(edited, np.float32)
    n = len(actions)
    scored, success = np.zeros(n, bool), np.zeros(n, bool)
    achieved, kept = np.full(n, np.nan), np.zeros(n)
    expression = np.array([INDEX[x] for x in EXPRESSION_FACTORS])
    moved = (edited - start) / SPAN
    for i, action in enumerate(actions):
        asked = requested_change(start[i:i + 1], action)[0]
        mask = touched(action)
        targets = mask & (np.abs(asked) > min_request)
        if targets.any():
            scored[i] = True
            ratio = moved[i, targets] / asked[targets]
            success[i] = bool(np.all(ratio >= min_fraction))
            achieved[i] = float(np.mean(ratio))
        others = [j for j in expression if not mask[j]]
        kept[i] = float(np.mean(np.abs(moved[i, others]) < keep_tolerance)) if others else 1.0
    drift = np.abs(moved[:, IDENTITY_INDEX]).mean(axis=1)
    return {"scored": scored, "success": success, "achieved": achieved, "kept": kept, "identity_drift": drift}
