"""What a preference fine-tune is judged by in the miniature, on samples drawn the way the policy samples
(DDIM η over its grid, guided), from a fixed noise seed so that checkpoints, not draws, differ:

    crispness        the hidden aesthetic (spo.preference.stroke_crispness), mean over samples: what the preference
                     is meant to raise
    centring         the labellers' layout confounder, mean over samples
    class_accuracy   share of samples a fixed digit classifier reads as the prompted class (prompt alignment)
    fd               Fréchet distance to the held-out real digits in that classifier's features (diffusion.metrics)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .collect import sample_chain
from .preference import centring, stroke_crispness


@dataclass
class SPOEvalConfig:
    samples: int = 500  # 0: validation records the compute count only
    seed: int = 1234
    dataset: str = "digits"  # the real images for FD and the classifier's training set
    classifier_cache: str = "runs/diffusion/feature-classifiers"
    batch_size: int = 500


class PolicyJudge:
    """The fixed classifier and held-out reference of a data set, built once and reused for every evaluation."""

    def __init__(self, cfg: SPOEvalConfig):
        from data_tools.image_datasets import load_image_dataset
        from diffusion.metrics import get_feature_classifier

        self.cfg = cfg
        self.classifier = get_feature_classifier(cfg.dataset, cfg.classifier_cache)
        reference, _ = load_image_dataset(cfg.dataset, split="test")
        self.reference = torch.as_tensor(reference, dtype=torch.float32)

    @torch.no_grad()
    def samples(self, policy: Any, net: Any, n: int | None = None, seed: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples with prompts 0, 1, 2, ... cycling, and their prompt ids."""
        n = self.cfg.samples if n is None else n
        generator = torch.Generator().manual_seed(self.cfg.seed if seed is None else seed)
        prompts = torch.arange(n) % len(policy.prompts)
        images = [sample_chain(policy, net, prompts[i:i + self.cfg.batch_size], generator)[1].cpu()
                  for i in range(0, n, self.cfg.batch_size)]
        return torch.cat(images).float().clamp(-1, 1), prompts

    def judge(self, images: torch.Tensor, prompts: torch.Tensor, policy: Any) -> dict[str, float]:
        """The scores of samples; a policy that diverged (non-finite samples) scores NaN, so a training run's
        curve shows the collapse instead of the run dying in its validation."""
        from diffusion.metrics import sample_quality

        finite = torch.isfinite(images.flatten(1)).all(dim=1)
        if not bool(finite.all()):
            return {"crispness": float("nan"), "centring": float("nan"), "class_accuracy": float("nan"),
                    "fd": float("nan"), "finite_share": float(finite.float().mean())}
        classes = policy.condition(prompts)
        return {"crispness": float(stroke_crispness(images).mean()), "centring": float(centring(images).mean()),
                "class_accuracy": float((self.classifier.predict(images) == classes).float().mean()),
                "fd": float(sample_quality(images, self.reference, self.classifier)["fd"]), "finite_share": 1.0}

    def __call__(self, policy: Any, net: Any) -> dict[str, float]:
        images, prompts = self.samples(policy, net)
        return self.judge(images, prompts, policy)


__all__ = ["PolicyJudge", "SPOEvalConfig"]
