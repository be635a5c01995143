"""Two-dimensional toy distributions for transport and bridge experiments, drawn from a seeded generator.

    from data_tools.toy2d import TOY2D, sample_toy
    x = sample_toy("checkerboard", 4096, torch.Generator().manual_seed(0))     # [4096, 2] float32

Every set is scaled to lie roughly within [-4, 4]² with a spread near that of a standard normal, so that any
two of them (or a Gaussian and one of them) make a translation problem of similar difficulty:

    gaussian       N(0, I)
    checkerboard   uniform on the black squares of a 4x4 board over [-4, 4]²
    pinwheel       five curved arms (the classic "pinwheel" of Johnson et al. 2016)
    swiss_roll     scikit-learn's swiss roll seen from its axis, scaled
    moons          scikit-learn's two moons, centred and scaled
    8gaussians     eight narrow Gaussians on a circle of radius 2.8
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .registry import Registry

Sampler = Callable[[int, torch.Generator], torch.Tensor]
TOY2D: Registry[Sampler] = Registry("2-D toy distribution")


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the torch one, for the scikit-learn makers."""
    return np.random.default_rng(int(torch.randint(2 ** 31 - 1, (1,), generator=generator)))


@TOY2D.register("gaussian")
def gaussian(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 2, generator=generator)


@TOY2D.register("checkerboard")
def checkerboard(n: int, generator: torch.Generator) -> torch.Tensor:
    # x uniform on [-4, 4]; y uniform on one of the two black squares of x's column (column + row even)
    x = 8.0 * torch.rand(n, generator=generator) - 4.0
    column = torch.floor((x + 4.0) / 2.0).clamp(0, 3).long()
    row = column % 2 + 2 * torch.randint(2, (n,), generator=generator)
    y = -4.0 + 2.0 * row + 2.0 * torch.rand(n, generator=generator)
    return torch.stack([x, y], dim=1)


@TOY2D.register("pinwheel")
def pinwheel(n: int, generator: torch.Generator) -> torch.Tensor:
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    labels = torch.randint(arms, (n,), generator=generator)
    features = torch.randn(n, 2, generator=generator) * torch.tensor([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = 2 * math.pi * labels / arms + rate * torch.exp(features[:, 0])
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotated = torch.stack([cos * features[:, 0] - sin * features[:, 1], sin * features[:, 0] + cos * features[:, 1]],
                          dim=1)
    return 2.0 * rotated


@TOY2D.register("swiss_roll")
def swiss_roll(n: int, generator: torch.Generator) -> torch.Tensor:
    from sklearn.datasets import make_swiss_roll

    points, _ = make_swiss_roll(n, noise=1.0, random_state=_numpy_rng(generator).integers(2 ** 31 - 1))
    return torch.as_tensor((points[:, [0, 2]] - np.array([2.0, 0.0])) / 3.0, dtype=torch.float32)


@TOY2D.register("moons")
def moons(n: int, generator: torch.Generator) -> torch.Tensor:
    from sklearn.datasets import make_moons

    points, _ = make_moons(n, noise=0.1, random_state=_numpy_rng(generator).integers(2 ** 31 - 1))
    return torch.as_tensor((points - np.array([0.5, 0.25])) * 2.5, dtype=torch.float32)


@TOY2D.register("8gaussians")
def eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    centres = torch.tensor([[math.cos(a), math.sin(a)] for a in np.linspace(0, 2 * math.pi, 9)[:-1]]) * 2.8
    which = torch.randint(8, (n,), generator=generator)
    return centres[which] + 0.2 * torch.randn(n, 2, generator=generator)


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points [n, 2] (float32) of the registered toy `name`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return TOY2D.get(name)(int(n), generator).float()


__all__ = ["TOY2D", "sample_toy"]
