"""How far a bridge's ends are from their targets, and how far it moves samples.

After each half-bridge, from a fixed evaluation seed:

    data_swd / prior_swd    sliced Wasserstein-2 between the generated end (backward walk from prior samples, or
                            forward walk from data samples, ending on the last step's mean) and fresh samples of
                            that end (images: the held-out split)
    data_w2 / prior_w2      2-D only: the exact W2 on `exact_ot_points` points per side (POT's network simplex)
    data_fd                 images of a registered set: Fréchet distance in the core's feature classifier
    class_kept              image to image with `eval.class_kept` (both sets label the same classes): how often the
                            data set's classifier reads the generated image as the class of the prior image it was
                            walked from (a translation should keep the digit)
    transport_cost          E ||x_0 − x_N||² over the backward walk's (start, end) pairs
    coupling_gap            2-D: that cost minus the exact W2² between the walk's own two ends (its excess over the
                            optimal pairing of the same marginals)
"""
from __future__ import annotations

from typing import Any

import torch

from data_tools.distances import sliced_wasserstein

from .ends import sample_end, sample_labelled_images


def exact_w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two equal-weight point sets (POT's emd2 on squared distances)."""
    import ot

    cost = torch.cdist(a.double().flatten(1), b.double().flatten(1)).pow(2).numpy()
    return float(ot.emd2([], [], cost, numItermax=1_000_000)) ** 0.5


def coupling_gap(data_end: torch.Tensor, prior_end: torch.Tensor) -> float:
    """How far a walk's pairing is from the cheapest pairing of its own two ends: E||x_0 − x_N||² over the walk's
    pairs minus the exact W2² between the two point sets (>= 0). Unlike the cost itself, it cannot fall by
    shrinking the generated end."""
    pair_cost = float((data_end - prior_end).flatten(1).pow(2).sum(dim=1).mean())
    return pair_cost - exact_w2(data_end, prior_end) ** 2


def data_classifier(cfg: Any):
    """The fixed feature classifier of the data end's image set (trained once and cached)."""
    from diffusion.metrics import get_feature_classifier

    return get_feature_classifier(cfg.data.name, "runs/diffusion/feature-classifiers", size=cfg.data.size)


def class_kept(classifier: Any, generated: torch.Tensor, prior_labels: torch.Tensor) -> float:
    """The share of generated data-end images that the data set's classifier reads as their prior image's class."""
    return float((classifier.predict(generated.clamp(-1, 1)) == prior_labels).float().mean())


@torch.no_grad()
def evaluate_bridge(cfg: Any, nets: dict) -> dict[str, float]:
    from .ipf import simulate

    e = cfg.eval
    generator = torch.Generator().manual_seed(e.seed)
    out: dict[str, float] = {}
    if nets.get("backward") is not None:
        labels = None
        if cfg.prior.kind == "image" and e.class_kept:
            prior, labels = sample_labelled_images(cfg.prior, e.samples, generator, split="test")
        else:
            prior = sample_end(cfg.prior, e.samples, generator, split="test")
        walk = simulate(cfg, nets["backward"], "backward", prior, generator, last_noise=False)
        generated = walk[0]
        real = sample_end(cfg.data, e.samples, generator, split="test")
        out["data_swd"] = sliced_wasserstein(generated, real, projections=e.projections, seed=e.seed)
        out["transport_cost"] = float((walk[0] - walk[-1]).flatten(1).pow(2).sum(dim=1).mean())
        if generated.dim() == 2 and e.exact_ot_points > 0:  # points, not images
            out["data_w2"] = exact_w2(generated[:e.exact_ot_points], real[:e.exact_ot_points])
            out["coupling_gap"] = coupling_gap(walk[0][:e.exact_ot_points], walk[-1][:e.exact_ot_points])
        if cfg.data.kind == "image":
            from diffusion.metrics import sample_quality

            classifier = data_classifier(cfg)
            out["data_fd"] = float(sample_quality(generated.clamp(-1, 1), real, classifier)["fd"])
            if labels is not None:
                out["class_kept"] = class_kept(classifier, generated, labels)
    if nets.get("forward") is not None:
        data = sample_end(cfg.data, e.samples, generator, split="test")
        generated = simulate(cfg, nets["forward"], "forward", data, generator, last_noise=False)[-1]
        real = sample_end(cfg.prior, e.samples, generator, split="test")
        out["prior_swd"] = sliced_wasserstein(generated, real, projections=e.projections, seed=e.seed)
        if generated.dim() == 2 and e.exact_ot_points > 0:
            out["prior_w2"] = exact_w2(generated[:e.exact_ot_points], real[:e.exact_ot_points])
    return out


__all__ = ["class_kept", "coupling_gap", "data_classifier", "evaluate_bridge", "exact_w2"]
