"""Evaluation of the face animator on the synthetic face domain, where every factor is known.

The evaluation set is K faces of *held-out identities*, each animated with every one of the 24 actions, each
action phrased by a *held-out sentence* (a paraphrase never seen in training). The frozen attribute oracle
(`animation.oracle.FaceOracle`, never a training signal for the motion) reads the 12 factors of every frame.

Metrics (`clip_metrics`):
- text match: the action whose expected end state (`faces.apply_action` on the oracle's reading of frame 0) is
  nearest the oracle's reading of the last frame, over expression factors in units of their range; accuracy is
  compared with chance (1/24) (with a one-sided binomial p-value), with the same rule on shuffled sentences, and
  with the ceiling the rule reaches
  on the renderer's own ground-truth end frames (some actions leave some faces unchanged, so even a perfect
  animator stays below 100%);
- direction: the fraction of (clip, target factor) pairs with a requested change > 0.1 of the range whose
  last-minus-first change has the requested sign (chance 0.5);
- monotone: over the same pairs, the fraction of frame-to-frame steps that do not go backwards by more than
  2% of the range, and the mean Spearman correlation between frame index and the (sign-adjusted) factor;
- identity error: mean |identity factor(frame t) - identity factor(frame 0)| in units of the range, and the
  same for the expression factors the action does not touch (drift);
- smoothness energy: mean squared second difference of the W+ offsets (the smoothness loss itself), the same
  divided by the mean squared first difference (size-free), and the frames' pixels' second difference;
- ACD-I: mean distance between the oracle's normalised identity features of consecutive frames (MoCoGAN's
  average content distance, with the oracle's identity head as the face embedding);
- last-frame spread: mean pairwise distance between the expression readings of one face's last frames under
  different sentences (does the text change the outcome, or does every sentence give the same motion?);
- frame 0: L1 to the input image and the identity error of the inversion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .faces import (ACTION_BY_NAME, ACTIONS, EXPRESSION_FACTORS, FACTOR_NAMES, FACTOR_RANGES, IDENTITY_FACTORS,
                    action_sentences, apply_action, face_tensors, identity_split, sample_factors)

_SPAN = np.array([FACTOR_RANGES[n][1] - FACTOR_RANGES[n][0] for n in FACTOR_NAMES], np.float32)
_ID = np.array([FACTOR_NAMES.index(n) for n in IDENTITY_FACTORS])
_EX = np.array([FACTOR_NAMES.index(n) for n in EXPRESSION_FACTORS])
MIN_CHANGE = 0.1  # a requested change smaller than this fraction of the range is not scored for direction
BACKSTEP_TOLERANCE = 0.02  # frame-to-frame reversals smaller than this fraction of the range are noise


@dataclass
class EvalSet:
    """K held-out faces x every action: clip i shows face i // len(ACTIONS) doing action i % len(ACTIONS)."""
    factors: np.ndarray  # [K, 12] the input faces' true factors
    images: torch.Tensor  # [K, 3, R, R] in [-1, 1]
    actions: list[str]  # [K * A]
    sentences: list[str]  # [K * A], held-out phrasings

    @property
    def faces(self) -> int:
        return len(self.factors)

    def clip_faces(self) -> np.ndarray:
        """Index of the input face of each clip."""
        return np.repeat(np.arange(self.faces), len(ACTIONS))


def make_eval_set(size: int, faces: int = 8, *, identities: int = 500, test_fraction: float = 0.2,
                  identity_seed: int = 0, seed: int = 1, split: str = "test") -> EvalSet:
    """Faces drawn from the held-out side of `identity_split(identities, test_fraction, identity_seed)` (the
    animator's data config uses the same arguments), sentences from `split`'s phrasings."""
    _, test_ids = identity_split(identities, test_fraction, identity_seed)
    return eval_set_from_identities(test_ids, size, faces, np.random.default_rng(seed), split)


def eval_set_from_identities(identity_pool: np.ndarray, size: int, faces: int, rng: np.random.Generator,
                             split: str = "test") -> EvalSet:
    """`faces` faces drawn from `identity_pool`, each with every action, phrased from `split`'s sentences."""
    factors = sample_factors(faces, rng, identities=identity_pool)
    by_action: dict[str, list[str]] = {a.name: [] for a in ACTIONS}
    for name, sentence in action_sentences(split):
        by_action[name].append(sentence)
    actions = [a.name for _ in range(faces) for a in ACTIONS]
    sentences = [by_action[name][int(rng.integers(len(by_action[name])))] for name in actions]
    images = face_tensors(factors, size)
    return EvalSet(factors, images, actions, sentences)


def ground_truth_clips(evalset: EvalSet, frames: int, size: int | None = None) -> torch.Tensor:
    """What a perfect animator would show: the renderer's faces at amounts 0, 1/(T-1), ..., 1 of each action.
    [N, T, 3, R, R] in [-1, 1]; used for the metric's ceiling."""
    size = size or evalset.images.shape[-1]
    start = evalset.factors[evalset.clip_faces()]
    amounts = np.linspace(0.0, 1.0, frames)
    factors = np.stack([np.stack([apply_action(start[i], evalset.actions[i], float(a)) for a in amounts])
                        for i in range(len(start))])  # [N, T, 12]
    clips = face_tensors(factors.reshape(-1, len(FACTOR_NAMES)), size)
    return clips.view(len(start), frames, *clips.shape[1:])


def _end_states(start: np.ndarray) -> np.ndarray:
    """[N, 12] -> expected end state under every action [N, A, 12]."""
    return np.stack([apply_action(start, a) for a in ACTIONS], axis=1)


def _nearest_action_accuracy(end: np.ndarray, candidates: np.ndarray, requested: np.ndarray) -> float:
    """Fraction of clips whose requested action has the nearest expected end state; ties share the credit."""
    d = (((end[:, None, _EX] - candidates[:, :, _EX]) / _SPAN[_EX]) ** 2).sum(-1)  # [N, A]
    nearest = d <= d.min(axis=1, keepdims=True) + 1e-6
    hit = nearest[np.arange(len(end)), requested]
    return float((hit / nearest.sum(axis=1)).mean())


def _above_chance_p_value(accuracy: float, clips: int) -> float:
    """One-sided binomial p-value of at least this many hits among `clips` if each hit has chance 1/24."""
    from scipy.stats import binomtest

    return float(binomtest(int(round(accuracy * clips)), clips, 1 / len(ACTIONS), alternative="greater").pvalue)


def _spearman(x: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of x [M, T] with 0..T-1 (0 for constant rows)."""
    from scipy.stats import rankdata

    ranks = rankdata(x, axis=1).astype(np.float64)  # ties share their mean rank
    t = np.arange(x.shape[1], dtype=np.float64)
    rc, tc = ranks - ranks.mean(1, keepdims=True), t - t.mean()
    denom = np.sqrt((rc ** 2).sum(1) * (tc ** 2).sum())
    return np.where(denom > 0, (rc * tc).sum(1) / np.maximum(denom, 1e-12), 0.0)


@torch.no_grad()
def clip_metrics(clips: torch.Tensor, evalset: EvalSet, oracle, dw: torch.Tensor | None = None,
                 seed: int = 0) -> dict[str, float]:
    """Every metric of the module docstring for clips [N, T, 3, R, R] (N = faces x actions, in EvalSet order)."""
    n, t = clips.shape[:2]
    if n != len(evalset.actions):
        raise ValueError(f"{n} clips for an evaluation set of {len(evalset.actions)}")
    read = oracle.predict(clips.flatten(0, 1).float()).numpy().reshape(n, t, -1)  # factors, own units
    first, last = read[:, 0], read[:, -1]
    action_index = {a.name: i for i, a in enumerate(ACTIONS)}
    requested = np.array([action_index[a] for a in evalset.actions])
    candidates = _end_states(first)
    shuffled = np.random.default_rng(seed).permutation(requested)

    # direction and monotonicity on the factors each action asks to move
    expected = candidates[np.arange(n), requested] - first  # [N, 12]
    moved = np.abs(expected) / _SPAN > MIN_CHANGE
    moved[:, _ID] = False
    rows, cols = np.nonzero(moved)
    sign = np.sign(expected[rows, cols])
    trajectories = read[rows, :, cols] * sign[:, None] / _SPAN[cols][:, None]  # rising = the requested way
    steps = np.diff(trajectories, axis=1)

    untouched = ~moved
    untouched[:, _ID] = False
    for i, name in enumerate(evalset.actions):  # factors an action names are "touched" even if already there
        act = ACTION_BY_NAME[name]
        for f in list(act.targets) + list(act.deltas):
            untouched[i, FACTOR_NAMES.index(f)] = False
    drift = np.abs(read - first[:, None]) / _SPAN  # [N, T, 12]

    faces = evalset.clip_faces()
    input_read = oracle.predict(evalset.images.float()).numpy()
    id_feat = F.normalize(oracle.identity_features(clips.flatten(0, 1).float()), dim=-1).view(n, t, -1)
    last_ex = last[:, _EX] / _SPAN[_EX]
    spread = []
    for k in range(evalset.faces):
        e = torch.from_numpy(last_ex[faces == k])
        spread.append(torch.pdist(e).mean().item())

    text_match = _nearest_action_accuracy(last, candidates, requested)
    out = {
        "clips": n, "frames": t, "faces": evalset.faces, "actions": len(ACTIONS),
        "text_match": text_match,
        "text_match_shuffled": _nearest_action_accuracy(last, candidates, shuffled),
        "chance": 1 / len(ACTIONS),
        "text_match_p_value": _above_chance_p_value(text_match, n),
        "direction": float((np.sign(last[rows, cols] - first[rows, cols]) == sign).mean()) if len(rows) else 0.0,
        "scored_factor_changes": int(len(rows)),
        "monotone_steps": float((steps >= -BACKSTEP_TOLERANCE).mean()) if len(rows) else 0.0,
        "spearman": float(_spearman(trajectories).mean()) if len(rows) else 0.0,
        "target_change": float(np.mean((read[rows, -1, cols] - read[rows, 0, cols]) * sign / _SPAN[cols]))
        if len(rows) else 0.0,
        "identity_error": float(drift[:, :, _ID].mean()),
        "identity_error_vs_input": float((np.abs(read[:, :, _ID] - input_read[faces][:, None, _ID])
                                          / _SPAN[_ID]).mean()),
        "untouched_drift": float(drift[untouched[:, None, :].repeat(t, 1)].mean()) if untouched.any() else 0.0,
        "smoothness_pixels": float((clips[:, 2:] - 2 * clips[:, 1:-1] + clips[:, :-2]).square().mean())
        if t >= 3 else 0.0,
        "acd_identity": float((id_feat[:, 1:] - id_feat[:, :-1]).norm(dim=-1).mean()) if t >= 2 else 0.0,
        "last_frame_spread": float(np.mean(spread)),
        "frame0_l1": float((clips[:, 0] - evalset.images[faces]).abs().mean() / 2),
        "frame0_identity_error": float((np.abs(first[:, _ID] - input_read[faces][:, _ID]) / _SPAN[_ID]).mean()),
    }
    if dw is not None:
        second = dw[:, 2:] - 2 * dw[:, 1:-1] + dw[:, :-2]
        out["smoothness_latent"] = float(second.square().mean()) if dw.shape[1] >= 3 else 0.0
        # the same relative to the squared velocity: a clip that moves further is not penalised for its size
        velocity = (dw[:, 1:] - dw[:, :-1]).square().mean()
        out["smoothness_relative"] = float(second.square().mean() / velocity) if dw.shape[1] >= 3 and velocity > 0 \
            else 0.0
        out["offset_norm"] = float(dw[:, -1].flatten(1).norm(dim=1).mean())
    return out


def target_trajectories(clips: torch.Tensor, evalset: EvalSet, oracle) -> dict[str, np.ndarray]:
    """Mean oracle reading [T] of each atomic action's first target factor over its clips, for plots."""
    n, t = clips.shape[:2]
    read = oracle.predict(clips.flatten(0, 1).float()).numpy().reshape(n, t, -1)
    out = {}
    for action in ACTIONS:
        if action.parts:
            continue
        factor = next(iter(action.targets or action.deltas))
        rows = [i for i, name in enumerate(evalset.actions) if name == action.name]
        out[f"{action.name}: {factor}"] = read[rows, :, FACTOR_NAMES.index(factor)].mean(0)
    return out


@torch.no_grad()
def animate_eval_set(face_animator, evalset: EvalSet, frames: int = 16, decay: str = "linear", seed: int = 0,
                     batch_size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips [N, T, 3, R, R], offsets dw [N, T, num_ws, w_dim]) for every clip of the set. Each face is inverted
    once and reused for all its sentences."""
    from .inversion import invert

    animator = face_animator.animator
    images = face_animator.prepare_images(evalset.images)
    with torch.enable_grad():
        w_inv = invert(animator.generator, images, steps=face_animator.invert_steps, init="encoder",
                       encoder=face_animator.inversion_encoder, progress=False).ws
    text = face_animator.text_encoder(list(evalset.sentences)).float()
    faces = torch.from_numpy(evalset.clip_faces())
    clips, offsets = [], []
    for start in range(0, len(faces), batch_size):
        idx = faces[start:start + batch_size]
        gen = torch.Generator().manual_seed(seed + start)
        out, dw, _ = animator(images[idx], w_inv[idx], text[start:start + batch_size], frames, decay=decay,
                              generator=gen)
        clips.append(out.clamp(-1, 1))
        offsets.append(dw)
    return torch.cat(clips), torch.cat(offsets)


def reconstructed_clips(face_animator, clips: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Every frame of clips [N, T, 3, R, R] inverted into the animator's GAN (its encoder + its optimisation
    steps, as `animate` does for the input) and rendered back: what the frozen generator can show of them."""
    from .inversion import invert

    generator = face_animator.animator.generator
    flat = clips.flatten(0, 1).to(face_animator.device)
    out = []
    for start in range(0, len(flat), batch_size):
        with torch.enable_grad():
            ws = invert(generator, flat[start:start + batch_size], steps=face_animator.invert_steps, init="encoder",
                        encoder=face_animator.inversion_encoder, progress=False).ws
        out.append(generator.synthesis(ws, noise_mode="const").clamp(-1, 1).cpu())
    return torch.cat(out).view_as(clips)


def animator_eval_set(cfg, resolution: int, faces: int, seed: int = 1, sentences: str = "test") -> EvalSet:
    """The evaluation set for an animator trained with AnimatorConfig `cfg`: its held-out identities."""
    return make_eval_set(resolution, faces, identities=cfg.data.identities, test_fraction=cfg.data.test_fraction,
                         identity_seed=cfg.data.seed, seed=seed, split=sentences)


def evaluate_animator(model_dir, text_encoder, *, faces: int = 8, frames: int = 16, seed: int = 1,
                      decay: str = "linear", with_ceiling: bool = True, with_gan_ceiling: bool = False,
                      sentences: str = "test") -> tuple[dict, torch.Tensor, EvalSet]:
    """Load an exported animator, animate the held-out evaluation set, return (metrics, clips, eval set).
    metrics["model"] holds the animator's numbers; metrics["ground_truth"] the same metrics on the
    renderer's perfect clips (the ceiling of each metric under this protocol); with `with_gan_ceiling`,
    metrics["gan_ceiling"] those of the perfect clips inverted into the frozen GAN frame by frame (how much of
    each true state the generator reproduces; a reference rather than a strict bound, since a motion can
    exaggerate a state past its reconstruction).
    `sentences="train"` phrases the actions with training sentences instead of held-out paraphrases (the faces
    stay held out): the gap between the two is how far the motion generalises across phrasings."""
    from .animator import FaceAnimator, exported_run_config
    from .oracle import get_oracle

    cfg = exported_run_config(model_dir)
    runner = FaceAnimator.from_pretrained(model_dir, text_encoder)
    oracle = get_oracle(cfg.cache_dir, size=runner.resolution, **cfg.oracle).eval()
    evalset = animator_eval_set(cfg, runner.resolution, faces, seed, sentences)
    clips, dw = animate_eval_set(runner, evalset, frames, decay=decay, seed=seed)
    metrics = {"model": clip_metrics(clips, evalset, oracle, dw, seed=seed)}
    if with_ceiling or with_gan_ceiling:
        truth = ground_truth_clips(evalset, frames)
    if with_ceiling:
        metrics["ground_truth"] = clip_metrics(truth, evalset, oracle, seed=seed)
    if with_gan_ceiling:
        metrics["gan_ceiling"] = clip_metrics(reconstructed_clips(runner, truth), evalset, oracle, seed=seed)
    return metrics, clips, evalset
