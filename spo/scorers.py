"""Scorers the SPO loop can judge candidates with: (images, prompt ids, λ) -> scores [B], higher = preferred.

    load_scorer("runs/spo/spm/step-aware")   a preference-model folder (spo.spm): the step-aware model, or the
                                             final-image scorer of the ablation
    load_scorer("oracle-crispness")          the shortcut a sceptic asks about: the hidden aesthetic itself, read
                                             off x0_hat without noise or confounder (a ceiling, never a method)
    load_scorer("coinflip", seed=0)          chance: random scores, so the kept pairs carry no preference
    load_scorer("brightness")                mean brightness: a stand-in preference for smoke tests of any image model

Scores are logits, returned on the CPU: SPO's pair filter compares softmax([s_best, s_worst]) with its threshold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from data_tools.registry import Registry

from .preference import stroke_crispness

Scorer = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
ORACLE_SCALE = 25.0  # logits per unit of crispness: one base-model standard deviation (0.04) is about one logit

SCORERS: Registry[Callable[..., Scorer]] = Registry("scorer")


@SCORERS.register("oracle-crispness")
def oracle_crispness(seed: int = 0) -> Scorer:
    def score(images: torch.Tensor, prompts: torch.Tensor, logsnr: float) -> torch.Tensor:
        return ORACLE_SCALE * stroke_crispness(images.float().cpu())

    return score


@SCORERS.register("coinflip")
def coinflip(seed: int = 0) -> Scorer:
    # the generator is not checkpointed: a resumed chance arm draws other (equally random) scores
    generator = torch.Generator().manual_seed(seed)

    def score(images: torch.Tensor, prompts: torch.Tensor, logsnr: float) -> torch.Tensor:
        return 2.0 * torch.randn(images.shape[0], generator=generator)  # the spread of a trained SPM's scores

    return score


@SCORERS.register("brightness")
def brightness(seed: int = 0) -> Scorer:
    """Mean image brightness times 10: a preference any image model can be pushed along, for smoke tests of new
    policies (a Stable Diffusion folder, say) before a preference model exists for them."""
    def score(images: torch.Tensor, prompts: torch.Tensor, logsnr: float) -> torch.Tensor:
        return 10.0 * images.float().flatten(1).mean(dim=1).cpu()

    return score


def load_scorer(spec: str, seed: int = 0, device: str | torch.device = "cpu") -> Scorer:
    """A registered scorer name, or a preference-model folder (its model loaded onto `device`)."""
    if spec in SCORERS:
        return SCORERS.create(spec, seed=seed)
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"scorer {spec!r} is neither a registered scorer ({', '.join(SCORERS.list())}) nor a "
                                "preference-model folder (hdvila spo spm-train writes <output_dir>/step-aware)")
    from .spm import load_spm, scorer_fn

    return scorer_fn(load_spm(spec, device))


__all__ = ["ORACLE_SCALE", "SCORERS", "Scorer", "load_scorer"]
