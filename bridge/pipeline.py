"""Sampling a trained bridge without the training code: the latest network of each direction in a run folder.

    run = BridgeRun.from_dir("runs/bridge/checkerboard")
    walk = run.walk("prior", 1024, seed=0)      # [N + 1, 1024, ...] states, k = 0 the data end
    run.write_figure(walk, "from_prior.png")    # 2-D: samples and trajectories; images: a grid of both ends
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from data_tools.config import from_dict

from .ends import sample_end
from .networks import BridgeNet


@dataclass
class BridgeRun:
    config: object  # BridgeConfig
    nets: dict  # direction -> BridgeNet or None

    @classmethod
    def from_dir(cls, directory: str | Path) -> "BridgeRun":
        from .ipf import BridgeConfig

        root = Path(directory)
        if not (root / "config.yaml").is_file():
            raise FileNotFoundError(f"{root}: no config.yaml (expected the output_dir of `hdvila bridge train`)")
        cfg = from_dict(BridgeConfig, yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")))
        nets: dict = {"forward": None, "backward": None}
        for folder in sorted(root.glob("ipf*-*/net")):  # the latest finished half-bridge of each direction wins
            direction = folder.parent.name.split("-", 1)[1]
            nets[direction] = BridgeNet.from_pretrained(folder).eval()
        if nets["backward"] is None and cfg.init_backward:
            nets["backward"] = BridgeNet.from_pretrained(cfg.init_backward).eval()
        return cls(cfg, nets)

    def walk(self, start: str, n: int, seed: int = 0) -> torch.Tensor:
        """Walk from `start` ("prior": the backward network generates data; "data": the forward one)."""
        from .ipf import simulate

        if start not in ("prior", "data"):
            raise ValueError(f"start must be 'prior' or 'data', got {start!r}")
        direction = "backward" if start == "prior" else "forward"
        net = self.nets[direction]
        if net is None:
            raise ValueError(f"the run has no trained {direction} network yet")
        generator = torch.Generator().manual_seed(seed)
        end = self.config.prior if start == "prior" else self.config.data
        return simulate(self.config, net, direction, sample_end(end, n, generator, split="test"), generator,
                        last_noise=False)

    def write_figure(self, walk: torch.Tensor, path: str | Path, trajectories: int = 64) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if walk.dim() == 3:  # [N + 1, B, 2]: points
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            from data_tools.training.metrics import save_figure

            fig, axes = plt.subplots(1, 3, figsize=(12, 4))
            draw_walk(axes, walk, trajectories)
            fig.tight_layout()
            return save_figure(fig, path, dpi=100)
        from data_tools.images import save_image_grid

        n = min(16, walk.shape[1])
        rows = torch.cat([walk[-1, :n], walk[walk.shape[0] // 2, :n], walk[0, :n]])  # prior, middle, data
        return save_image_grid(rows.clamp(-1, 1), path, nrow=n)


def draw_walk(axes, walk: torch.Tensor, trajectories: int = 64) -> None:
    """A 2-D walk [N + 1, B, 2] on three matplotlib axes: its prior end, its data end, some trajectories."""
    for ax, k, title in ((axes[0], walk.shape[0] - 1, "prior end (k = N)"), (axes[1], 0, "data end (k = 0)")):
        ax.scatter(walk[k, :, 0], walk[k, :, 1], s=1)
        ax.set_title(title)
    for i in range(min(trajectories, walk.shape[1])):
        axes[2].plot(walk[:, i, 0], walk[:, i, 1], lw=0.6, alpha=0.7)
    axes[2].set_title("trajectories")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set(xlim=(-5, 5), ylim=(-5, 5))


__all__ = ["BridgeRun", "draw_walk"]
