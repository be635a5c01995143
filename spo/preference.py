"""The miniature's generic preference: a hidden "aesthetic" the base model was never trained for, judged by a
noisy labeller that also cares about layout, so labels are noisy like human ones.

Images are 1-channel [N, 1, H, W] in [-1, 1] (ink = +1, paper = −1), as the digits data set stores them.

* Aesthetic: **stroke crispness**, the ink-weighted mean ink level, Σ ink² / Σ ink with ink = (x + 1) / 2.
  It is 1 when every inked pixel is fully black and falls with grey, blurry strokes; it does not depend on how
  much ink there is, so drawing less is no way to raise it. The base model draws digits with an average
  crispness of about 0.7 (real digits: about 0.75), so there is room both ways.
* Layout confounder: **centring**, minus the distance in pixels of the ink's centre of mass from the image
  centre. Labellers like centred digits too; the aesthetic reported as the headline is crispness alone.
* Labels: u = z(crispness) + layout_weight · z(centring) with z-scores fitted on the base model's samples; for a
  pair (a, b) the label is 1 (a preferred) with probability sigmoid((u_a − u_b) / temperature), and 0.5 (a tie)
  when |u_a − u_b| < tie_band.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


def stroke_crispness(images: torch.Tensor) -> torch.Tensor:
    """Σ ink² / Σ ink per image, ink = (x + 1) / 2 in [0, 1]: [N]. An image without ink scores 0."""
    ink = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).flatten(1)
    return (ink ** 2).sum(dim=1) / ink.sum(dim=1).clamp_min(1e-6)


def centring(images: torch.Tensor) -> torch.Tensor:
    """Minus the distance (pixels) of the ink's centre of mass from the image centre: [N], 0 = centred."""
    ink = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).sum(dim=1)  # [N, H, W]
    n, h, w = ink.shape
    total = ink.flatten(1).sum(dim=1).clamp_min(1e-6)
    ys = torch.arange(h, dtype=ink.dtype)[None, :, None]
    xs = torch.arange(w, dtype=ink.dtype)[None, None, :]
    cy = (ink * ys).flatten(1).sum(dim=1) / total - (h - 1) / 2
    cx = (ink * xs).flatten(1).sum(dim=1) / total - (w - 1) / 2
    return -torch.sqrt(cx ** 2 + cy ** 2)


@dataclass
class LabellerConfig:
    layout_weight: float = 0.5  # how much the labellers' utility cares about centring, against crispness (1.0)
    temperature: float = 0.5  # sigmoid temperature of the label: larger = noisier labels
    tie_band: float = 0.1  # |u_a − u_b| below this is labelled a tie (0.5 / 0.5)


@dataclass
class PreferenceLabeller:
    """Noisy pairwise labels from the hidden utility; `fit` sets the z-score constants from reference images."""

    config: LabellerConfig = field(default_factory=LabellerConfig)
    stats: dict = field(default_factory=dict)  # {"crispness": [mean, std], "centring": [mean, std]}

    def fit(self, images: torch.Tensor) -> "PreferenceLabeller":
        for name, fn in (("crispness", stroke_crispness), ("centring", centring)):
            values = fn(images)
            self.stats[name] = [float(values.mean()), float(values.std().clamp_min(1e-6))]
        return self

    def utility(self, images: torch.Tensor) -> torch.Tensor:
        if not self.stats:
            raise RuntimeError("fit the labeller on reference images first (it z-scores both features)")
        z = {name: (fn(images) - self.stats[name][0]) / self.stats[name][1]
             for name, fn in (("crispness", stroke_crispness), ("centring", centring))}
        return z["crispness"] + self.config.layout_weight * z["centring"]

    def label(self, a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """P(a preferred) per pair as the labellers report it: 1, 0 or 0.5 (tie). [N]."""
        diff = self.utility(a) - self.utility(b)
        p = torch.sigmoid(diff / self.config.temperature)
        labels = (torch.rand(p.shape, generator=generator) < p).float()
        return torch.where(diff.abs() < self.config.tie_band, torch.full_like(labels, 0.5), labels)

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "stats": self.stats}

    @classmethod
    def from_dict(cls, data: dict) -> "PreferenceLabeller":
        return cls(LabellerConfig(**data["config"]), {k: [float(v) for v in vs] for k, vs in data["stats"].items()})


__all__ = ["LabellerConfig", "PreferenceLabeller", "centring", "stroke_crispness"]
