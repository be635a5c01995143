"""Evaluation of both heads on held-out identities of the synthetic faces, read by the frozen attribute oracle.

Manipulation (`evaluate_manipulation`): every face of the evaluation set gets all 24 actions, each phrased by a
held-out paraphrase (or a training sentence, as a diagnostic). For every edit the oracle reads the input image
and the edited image; `heads.attributes.edit_outcomes` scores success (every factor the action asks to change
by more than 0.1 of its range moved the requested way by at least half the request), the achieved fraction of
the request, the unrelated expression factors that stayed (within 0.1 of their range) and identity drift; and
the same "kept" against the input's reconstruction G(w) instead of the input (what the edit moves, apart from
what the inversion already lost: the no-edit arm keeps everything by this measure).
Arms: the text mapper; the same mapper given a sentence of another action (what the criterion grants by
chance); the no-text mapper (trained without the sentence); no edit at all (the inversion); and per-image
latent optimisation against the scorer (StyleCLIP-style), with the time each takes per edit.

Super-resolution (`evaluate_superres`): held-out faces box-downsampled by the model's scale. PSNR and SSIM
against the truth, and the oracle's balanced accuracy on two attributes that the low resolution hides (both
eyes shut; mouth open), for bicubic upsampling, the no-text head, the text head, and the text head given
another face's sentence (if the text matters, a wrong sentence must hurt).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats

from animation.faces import ACTIONS, action_sentences, describe, face_tensors

from .attributes import balanced_accuracy, edit_outcomes, eyes_closed, mouth_open
from .manipulation import TextManipulator, optimise_edits
from .superres import TextSuperResolver, downsample, psnr, ssim, upsample_bicubic

ACTION_NAMES = [a.name for a in ACTIONS]


def edit_plan(faces: int, sentences: str, seed: int) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Every face x every action, each with one sentence of the split drawn at random; plus, for the shuffled
    arm, a sentence of a different action. Returns (face index per edit, actions, sentences, other sentences)."""
    rng = np.random.default_rng(seed)
    by_action: dict[str, list[str]] = {}
    for action, sentence in action_sentences(sentences):
        by_action.setdefault(action, []).append(sentence)
    face_idx, actions, texts, others = [], [], [], []
    for f in range(faces):
        for a in ACTION_NAMES:
            face_idx.append(f)
            actions.append(a)
            texts.append(by_action[a][rng.integers(len(by_action[a]))])
            other = ACTION_NAMES[(ACTION_NAMES.index(a) + 1 + rng.integers(len(ACTION_NAMES) - 1)) % len(ACTION_NAMES)]
            others.append(by_action[other][rng.integers(len(by_action[other]))])
    return np.array(face_idx), actions, texts, others


def summarise_edits(outcomes: dict[str, np.ndarray]) -> dict[str, float]:
    scored = outcomes["scored"]
    return {"success": float(outcomes["success"][scored].mean()), "scored_edits": int(scored.sum()),
            "achieved": float(np.nanmean(outcomes["achieved"][scored])),
            "kept": float(outcomes["kept"].mean()), "identity_drift": float(outcomes["identity_drift"].mean())}


def _read(oracle, images: torch.Tensor) -> np.ndarray:
    return oracle.predict(images).numpy()


def _prior_of(runner: TextManipulator) -> tuple[str, int]:
    return str(Path(runner.model.config["prior_dir"]).resolve()), runner.invert_steps


def evaluate_manipulation(manipulator: TextManipulator, judges, factors: np.ndarray, *, sentences: str = "test",
                          seed: int = 0, no_text: TextManipulator | None = None, optimise_steps: int = 0,
                          extra_arms: dict[str, TextManipulator] | None = None) -> dict[str, Any]:
    """Metrics per arm (see the module docstring) on the faces `factors` [K, F], plus per-edit success arrays
    under "per_edit" for paired tests. Arms trained without text ignore the sentence."""
    generator = manipulator.model.generator
    images = face_tensors(factors, generator.cfg.resolution)
    face_idx, actions, texts, others = edit_plan(len(factors), sentences, seed)
    start = _read(judges.oracle, images)[face_idx]
    t0 = time.perf_counter()
    w_faces = manipulator.invert(images)
    invert_s = (time.perf_counter() - t0) / len(images)
    w = w_faces[face_idx]
    with torch.no_grad():  # what the edit itself moves: readings of the input's reconstruction G(w)
        reconstructed = _read(judges.oracle, generator.synthesis(w_faces, noise_mode="const"))[face_idx]
    arms: dict[str, dict[str, float]] = {}
    per_edit: dict[str, np.ndarray] = {}
    samples: dict[str, torch.Tensor] = {}

    def score(name: str, edited: torch.Tensor, seconds: float) -> None:
        readings = _read(judges.oracle, edited)
        out = edit_outcomes(start, readings, actions)
        arms[name] = {**summarise_edits(out), "seconds_per_edit": seconds / len(actions) + invert_s,
                      "kept_vs_reconstruction": float(edit_outcomes(reconstructed, readings, actions)["kept"].mean())}
        per_edit[name] = out["success"][out["scored"]]
        samples[name] = edited

    # an arm on another prior edits its own prior's codes of the faces (same prior folder: the same codes)
    codes = {_prior_of(manipulator): w}

    def run_mapper(name: str, runner: TextManipulator, sentence_list: Sequence[str]) -> None:
        t = time.perf_counter()
        if _prior_of(runner) not in codes:
            codes[_prior_of(runner)] = runner.invert(images)[face_idx]
        text_emb = runner.encode_texts(sentence_list)
        edited, _ = runner.edit_codes(codes[_prior_of(runner)], text_emb)
        score(name, edited, time.perf_counter() - t)

    run_mapper("text", manipulator, texts)
    run_mapper("text, another action's sentence", manipulator, others)
    if no_text is not None:
        run_mapper("no-text mapper", no_text, texts)
    for name, runner in (extra_arms or {}).items():
        run_mapper(name, runner, texts)
    with torch.no_grad():
        score("no edit (inversion)", generator.synthesis(w, noise_mode="const"), 0.0)
    if optimise_steps:
        t = time.perf_counter()
        with torch.no_grad():
            scorer_emb = judges.scorer.encode_texts(texts).float()
        edited, _ = optimise_edits(generator, w, scorer_emb, actions, judges, steps=optimise_steps,
                                   subspace=manipulator.model.mapper, encoder=manipulator.encoder)
        score(f"latent optimisation ({optimise_steps} steps)", edited, time.perf_counter() - t)
    # paired: the same edits under the text mapper and each other arm (McNemar's exact test on discordant pairs)
    tests = {}
    for name, success in per_edit.items():
        if name == "text":
            continue
        b = int(np.sum(per_edit["text"] & ~success))
        c = int(np.sum(~per_edit["text"] & success))
        p = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
        tests[name] = {"text_only": b, "other_only": c, "p_text_better": float(p)}
    return {"faces": len(factors), "edits": len(actions), "sentences": sentences, "arms": arms,
            "paired_vs_text": tests, "per_edit": per_edit, "samples": samples, "face_index": face_idx,
            "actions": actions, "texts": texts, "images": images}


def evaluate_superres(text_model: TextSuperResolver, factors: np.ndarray, judges, *,
                      no_text: TextSuperResolver | None = None, seed: int = 0,
                      extra_arms: dict[str, TextSuperResolver] | None = None) -> dict[str, Any]:
    """PSNR / SSIM and the oracle's balanced accuracy on LR-hidden attributes per arm (see the module docstring);
    `extra_arms` are more text heads given the true sentences."""
    size = text_model.model.generator.cfg.resolution
    high = face_tensors(factors, size)
    low = downsample(high, text_model.scale)
    texts = [describe(f) for f in factors]
    shuffled = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))]
    outputs = {"bicubic": upsample_bicubic(low, size)}
    if no_text is not None:
        outputs["no-text head"] = no_text.upscale(low)
    outputs["text head"] = text_model.upscale(low, texts)
    outputs["text head, another face's sentence"] = text_model.upscale(low, shuffled)
    for name, runner in (extra_arms or {}).items():
        outputs[name] = runner.upscale(low, texts)
    truth_eyes, truth_mouth = eyes_closed(factors), mouth_open(factors)
    arms = {}
    for name, out in {"truth (oracle ceiling)": high, **outputs}.items():
        readings = _read(judges.oracle, out)
        p, s = psnr(out, high), ssim(out, high)
        arms[name] = {"psnr": float(p.mean()), "psnr_std": float(p.std(ddof=1)), "ssim": float(s.mean()),
                      "eyes_closed_bacc": balanced_accuracy(truth_eyes, eyes_closed(readings)),
                      "mouth_open_bacc": balanced_accuracy(truth_mouth, mouth_open(readings)),
                      "psnr_per_image": p}
    return {"faces": len(factors), "scale": text_model.scale, "arms": arms, "outputs": outputs, "high": high,
            "low": low, "texts": texts, "eyes_closed_rate": float(truth_eyes.mean()),
            "mouth_open_rate": float(truth_mouth.mean())}


def paired_t(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value (e.g. PSNR per image of two arms on the same faces)."""
    return float(stats.ttest_rel(a, b).pvalue)


__all__ = ["edit_plan", "evaluate_manipulation", "evaluate_superres", "paired_t", "summarise_edits"]
