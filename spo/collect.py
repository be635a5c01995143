"""Preference pairs from a policy's own samples: SPO's step-wise resampler and the trajectory-level baseline.

Both return `Transitions`: for each pair a parent state (or two), the step, and the preferred and dispreferred
next states, which is all the loss needs (it re-evaluates the policy and the reference at the parents). Both
count what they spend in denoiser evaluations: network rows, so a classifier-free guided prediction of one
image costs 2.

* `step_pairs` (SPO): sample with DDIM η; from step `divert_start` on, draw k candidates x_{i+1} from one parent
  x_i (one model call gives the mean, k noise draws), predict each candidate's x0_hat at its own λ_{i+1},
  decode, score with the (step-aware) scorer at λ_{i+1}, keep (best, worst) when the softmax margin exceeds
  the threshold, then continue from a candidate chosen uniformly at random ("random") or from the winner
  ("winner", the ablation). The candidate x0_hat calls are reused: the continuing candidate's prediction is the
  next step's mean, so a chain costs divert_start + k (N − divert_start) + 1 predictions instead of N + 1.
* `trajectory_pairs` (Diffusion-DPO-style): two full DDIM η chains per prompt, the final images scored once,
  and the final label given to every step: N pairs per prompt, each with two different parents.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .policy import randn_like_on
from .steps import ddim_transition, next_parent, select_pairs

# (images, prompt ids, λ) -> scores [B] as CPU floats; higher = preferred (spo.scorers)
Scorer = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample [B] tensor shaped to broadcast over `like` [B, ...], on its device."""
    return mask.to(like.device).view(-1, *([1] * (like.dim() - 1)))


@dataclass
class Transitions:
    parent_win: torch.Tensor  # [P, ...] state x_i the preferred next state came from
    parent_lose: torch.Tensor  # [P, ...] (the same tensor as parent_win for SPO: a shared parent)
    win: torch.Tensor  # [P, ...] preferred x_{i+1}
    lose: torch.Tensor  # [P, ...] dispreferred x_{i+1}
    step: torch.Tensor  # [P] index i of the transition λ_i -> λ_{i+1}
    prompt_ids: torch.Tensor  # [P]
    shared_parent: bool
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def subset(self, index: torch.Tensor) -> "Transitions":
        lose_parent = self.parent_win[index] if self.shared_parent else self.parent_lose[index]
        return Transitions(self.parent_win[index], lose_parent, self.win[index], self.lose[index], self.step[index],
                           self.prompt_ids[index], self.shared_parent, dict(self.stats))


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros((0, *x.shape[1:]))


@torch.no_grad()
def step_pairs(policy: Any, net: Any, scorer: Scorer, prompt_ids: torch.Tensor, k: int = 4, divert_start: int = 2,
               threshold: float = 0.3, continue_rule: str = "random",
               generator: torch.Generator | None = None) -> tuple[Transitions, int]:
    """SPO's resampler over a batch of prompts; returns the kept pairs and the denoiser rows it spent."""
    grid = policy.grid
    steps = len(grid) - 1
    if k < 2:
        raise ValueError(f"k must be >= 2 candidates per parent, got {k}")
    if not 0 <= divert_start < steps:
        raise ValueError(f"divert_start must be in [0, {steps}), got {divert_start}")
    b = prompt_ids.shape[0]
    cond = policy.condition(prompt_ids)
    x = policy.start(b, generator)
    device = x.device
    rows = 0

    def predict(x_, lam):
        nonlocal rows
        rows += x_.shape[0] * policy.rows_per_call
        return policy.predict(net, x_, torch.full((x_.shape[0],), lam), _repeat(cond, x_.shape[0] // b))

    x0, eps = predict(x, grid[0])
    parents, wins, loses, step_index, prompts = [], [], [], [], []
    margins, kept = [], 0
    for i in range(steps):
        mean, std = ddim_transition(x0, eps, grid[i], grid[i + 1], policy.eta)
        if i < divert_start:
            x = mean + std * randn_like_on(mean.shape, generator, device)
            x0, eps = predict(x, grid[i + 1])
            continue
        # k candidates per parent, laid out candidate-major: [k * B, ...]
        noise = randn_like_on((k, *mean.shape), generator, device)
        candidates = (mean[None] + std * noise).reshape(k * b, *mean.shape[1:])
        c_x0, c_eps = predict(candidates, grid[i + 1])
        scores = scorer(policy.decode(c_x0), prompt_ids.repeat(k), grid[i + 1]).float().cpu().reshape(k, b).T
        best, worst, keep = select_pairs(scores, threshold)  # [B] each, on the CPU
        by_parent = candidates.reshape(k, b, *mean.shape[1:]).transpose(0, 1)  # [B, k, ...]
        rows_idx = torch.arange(b, device=device)
        if bool(keep.any()):
            on = keep.to(device)
            parents.append(x[on])
            wins.append(by_parent[rows_idx, best.to(device)][on])
            loses.append(by_parent[rows_idx, worst.to(device)][on])
            step_index.append(torch.full((int(keep.sum()),), i, dtype=torch.long))
            prompts.append(prompt_ids[keep])
        kept += int(keep.sum())
        margins.append((scores.max(dim=1).values - scores.min(dim=1).values).mean())
        chosen = next_parent(scores, continue_rule, generator).to(device)
        x = by_parent[rows_idx, chosen]
        x0 = c_x0.reshape(k, b, *mean.shape[1:]).transpose(0, 1)[rows_idx, chosen]
        eps = c_eps.reshape(k, b, *mean.shape[1:]).transpose(0, 1)[rows_idx, chosen]
    offered = b * (steps - divert_start)
    stats = {"pairs_offered": offered, "pairs_kept": kept, "score_spread": float(torch.stack(margins).mean())}
    if not parents:
        empty = _empty_like(x)
        return Transitions(empty, empty, empty, empty, torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, dtype=torch.long), True, stats), rows
    parent = torch.cat(parents)
    return Transitions(parent, parent, torch.cat(wins), torch.cat(loses), torch.cat(step_index), torch.cat(prompts),
                       True, stats), rows


@torch.no_grad()
def sample_chain(policy: Any, net: Any, prompt_ids: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """One DDIM η chain per prompt: the states x_0 .. x_N, the final image, and the rows spent (N + 1 calls)."""
    grid = policy.grid
    b = prompt_ids.shape[0]
    cond = policy.condition(prompt_ids)
    x = policy.start(b, generator)
    states = [x]
    for i in range(len(grid) - 1):
        x0, eps = policy.predict(net, x, torch.full((b,), grid[i]), cond)
        mean, std = ddim_transition(x0, eps, grid[i], grid[i + 1], policy.eta)
        x = mean + std * randn_like_on(mean.shape, generator, x.device)
        states.append(x)
    x0, _ = policy.predict(net, x, torch.full((b,), grid[-1]), cond)
    return states, policy.decode(x0), b * len(grid) * policy.rows_per_call


@torch.no_grad()
def trajectory_pairs(policy: Any, net: Any, scorer: Scorer, prompt_ids: torch.Tensor, threshold: float = 0.0,
                     generator: torch.Generator | None = None) -> tuple[Transitions, int]:
    """Two chains per prompt, labelled by the scorer on the final images, the label copied to every step.
    Diffusion-DPO keeps every labelled pair (threshold 0)."""
    states_a, final_a, rows_a = sample_chain(policy, net, prompt_ids, generator)
    states_b, final_b, rows_b = sample_chain(policy, net, prompt_ids, generator)
    clean = policy.grid[-1]
    scores = torch.stack([scorer(final_a, prompt_ids, clean).float().cpu(),
                          scorer(final_b, prompt_ids, clean).float().cpu()], dim=1)
    best, _, keep = select_pairs(scores, threshold)
    a_wins = _per_sample(best == 0, states_a[0])
    on = keep.to(states_a[0].device)
    steps = len(policy.grid) - 1
    pw, pl, w, lo, idx, pr = [], [], [], [], [], []
    for i in range(steps):
        pw.append(torch.where(a_wins, states_a[i], states_b[i])[on])
        pl.append(torch.where(a_wins, states_b[i], states_a[i])[on])
        w.append(torch.where(a_wins, states_a[i + 1], states_b[i + 1])[on])
        lo.append(torch.where(a_wins, states_b[i + 1], states_a[i + 1])[on])
        idx.append(torch.full((int(keep.sum()),), i, dtype=torch.long))
        pr.append(prompt_ids[keep])
    stats = {"pairs_offered": prompt_ids.shape[0] * steps, "pairs_kept": int(keep.sum()) * steps,
             "score_spread": float((scores[:, 0] - scores[:, 1]).abs().mean())}
    return Transitions(torch.cat(pw), torch.cat(pl), torch.cat(w), torch.cat(lo), torch.cat(idx), torch.cat(pr),
                       False, stats), rows_a + rows_b


def _repeat(cond: Any, times: int) -> Any:
    """The batch's conditioning for `times` stacked copies of the batch (candidate-major)."""
    if cond is None or times == 1:
        return cond
    return torch.cat([cond] * times)


__all__ = ["Scorer", "Transitions", "sample_chain", "step_pairs", "trajectory_pairs"]
