"""The two ends of a bridge: 2-D toys (`data_tools.toy2d`), images of a registered set (`data_tools.image_datasets`)
or a Gaussian shaped like them, each drawn from a seeded generator."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from data_tools.config import ConfigError

END_KINDS = ("toy2d", "image", "gaussian")


@dataclass
class EndConfig:
    kind: str = "toy2d"  # toy2d | image | gaussian
    name: str = "gaussian"  # toy2d: a TOY2D name; image: a registered image set (digits, mnist5k)
    size: int = 16  # image and gaussian images: side in pixels
    channels: int = 1  # gaussian images
    split: str = "train"  # image: which split the end draws from (evaluation uses "test")
    dim: int = 2  # gaussian vectors when size is 0

    def __post_init__(self) -> None:
        if self.kind not in END_KINDS:
            raise ConfigError(f"end kind must be one of {END_KINDS}, got {self.kind!r}")
        if self.kind == "toy2d":
            from data_tools.toy2d import TOY2D

            try:
                TOY2D.get(self.name)
            except KeyError as exc:
                raise ConfigError(str(exc)) from None


@lru_cache(maxsize=8)
def _images(name: str, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from data_tools.image_datasets import load_image_dataset

    images, labels = load_image_dataset(name, split=split, size=size)
    return torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels)


def sample_end(cfg: EndConfig, n: int, generator: torch.Generator, split: str | None = None) -> torch.Tensor:
    """n samples of the end: [n, 2] points or [n, C, H, W] images in [-1, 1] (drawn with replacement)."""
    if cfg.kind == "toy2d":
        from data_tools.toy2d import sample_toy

        return sample_toy(cfg.name, n, generator)
    if cfg.kind == "image":
        return sample_labelled_images(cfg, n, generator, split)[0]
    if cfg.size > 0:
        return torch.randn(n, cfg.channels, cfg.size, cfg.size, generator=generator)
    return torch.randn(n, cfg.dim, generator=generator)


def sample_labelled_images(cfg: EndConfig, n: int, generator: torch.Generator, split: str | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of an image end and their class labels (the same draw as `sample_end`)."""
    if cfg.kind != "image":
        raise ValueError(f"only an image end has labels, not a {cfg.kind!r} end")
    images, labels = _images(cfg.name, split or cfg.split, cfg.size)
    idx = torch.randint(len(images), (n,), generator=generator)
    return images[idx], labels[idx]


__all__ = ["END_KINDS", "EndConfig", "sample_end", "sample_labelled_images"]
