"""What both heads share: the text mapper (a W+ offset from a W+ code and a sentence embedding), the config
fields every head has, and the frozen-generator module base that exports everything but the generator.

    dw = mapper(ws, text_emb)          # ws [B, num_ws, w_dim], text_emb [B, D] -> dw [B, num_ws, w_dim]

Each layer's w (PixelNorm-ed, as StyleCLIP's mapper sees it), the projected sentence embedding and a learned
embedding of the layer index go through one MLP shared by all layers (equalised-lr linears, as in StyleGAN2's
mapping network). Its last layer starts at zero, so an untrained mapper changes nothing. Offsets come out in
units of w's spread (`w_std`, a buffer), so one learning rate fits generators with different W scales.
`use_text=False` builds the no-text ablation: the same network with the sentence input removed.

`components > 0` restricts offsets to the top principal directions of the data's codes (GANSpace's idea), set by
`set_code_statistics(codes)`, and `penalty` measures them in units of each direction's spread (a Gaussian prior
on the edit). A generator renders faces only near the codes it was trained on; an offset along directions the
data never varies in lands where it draws noise that can still fool a frozen scorer.

`attribute_basis(codes, factors, targets, principal)` gives another subspace of the same kind: one direction per
edited factor, each moving that factor's linear read-out from the codes by one unit and every other factor's
(identity included) by none, InterFaceGAN's conditional manipulation solved for all factors at once.
`set_basis` installs it. The labels are the training faces' own factors, so the attribute oracle that judges
the edits never shapes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import data_tools.training.distributed as dist
from data_tools.images import save_image_grid
from data_tools.pretrained import PretrainedMixin
from data_tools.training.config import OptimConfig, TrainConfig

from animation.motion import pixel_norm
from animation.stylegan2 import EqualLinear

from .prior import FaceSplit


@dataclass
class MapperConfig:
    num_ws: int
    w_dim: int
    text_dim: int
    hidden: int = 256
    layers: int = 3  # hidden layers of the shared MLP
    use_text: bool = True
    components: int = 0  # > 0: offsets live in the span of this many principal directions of the data's codes

    def __post_init__(self):
        if min(self.num_ws, self.w_dim, self.text_dim, self.hidden, self.layers) < 1:
            raise ValueError(f"mapper sizes must be >= 1: {self}")
        if not 0 <= self.components <= self.num_ws * self.w_dim:
            raise ValueError(f"components must be in 0..{self.num_ws * self.w_dim}, got {self.components}")


class TextMapper(nn.Module):
    def __init__(self, cfg: MapperConfig):
        super().__init__()
        self.cfg = cfg
        text_width = cfg.hidden if cfg.use_text else 0
        self.text_proj = EqualLinear(cfg.text_dim, cfg.hidden) if cfg.use_text else None
        self.layer_embedding = nn.Parameter(torch.randn(cfg.num_ws, cfg.hidden) * 0.1)
        widths = [cfg.w_dim + text_width + cfg.hidden] + [cfg.hidden] * cfg.layers
        self.body = nn.Sequential(*[EqualLinear(a, b, activation=True) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nn.Linear(cfg.hidden, cfg.w_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("w_std", torch.ones(1))
        if cfg.components:
            self.register_buffer("basis", torch.zeros(cfg.components, cfg.num_ws * cfg.w_dim))
            self.register_buffer("component_std", torch.ones(cfg.components))

    @torch.no_grad()
    def set_code_statistics(self, codes: Tensor) -> None:
        """The principal directions (and their spreads) of codes [N, num_ws, w_dim]: the subspace edits live in."""
        if not self.cfg.components:
            raise ValueError("this mapper has components=0: edits use the whole W+ space")
        self.set_basis(principal_directions(codes, self.cfg.components)[0], codes)

    @torch.no_grad()
    def set_basis(self, basis: Tensor, codes: Tensor) -> None:
        """Edits live in the span of `basis` [components, num_ws * w_dim] (orthonormalised here); the penalty
        measures them in units of the spread of codes [N, num_ws, w_dim] along each direction."""
        if basis.shape != self.basis.shape:
            raise ValueError(f"basis must be {tuple(self.basis.shape)}, got {tuple(basis.shape)}")
        orthonormal = torch.linalg.qr(basis.float().t())[0].t()
        self.basis.copy_(orthonormal)
        flat = codes.reshape(len(codes), -1).float()
        self.component_std.copy_(((flat - flat.mean(0)) @ orthonormal.t()).std(0).clamp(min=1e-8))

    def penalty(self, dw: Tensor) -> Tensor:
        """Mean squared offset: per principal direction in units of its spread, or (components=0) per coordinate
        in units of w's spread (StyleCLIP's latent L2)."""
        if self.cfg.components:
            return ((dw.flatten(1) @ self.basis.t()) / self.component_std).square().mean()
        return offset_penalty(dw, self.w_std)

    def forward(self, ws: Tensor, text_emb: Tensor | None = None) -> Tensor:
        b, num_ws, _ = ws.shape
        if num_ws != self.cfg.num_ws:
            raise ValueError(f"mapper is for {self.cfg.num_ws} ws, got {num_ws}")
        parts = [pixel_norm(ws), self.layer_embedding.expand(b, -1, -1)]
        if self.text_proj is not None:
            if text_emb is None or text_emb.shape != (b, self.cfg.text_dim):
                raise ValueError(f"text_emb must be [{b}, {self.cfg.text_dim}], got "
                                 f"{None if text_emb is None else tuple(text_emb.shape)}")
            text = self.text_proj(F.normalize(text_emb.float(), dim=-1) * self.cfg.text_dim ** 0.5)
            parts.insert(1, text[:, None].expand(-1, num_ws, -1))
        dw = self.out(self.body(torch.cat(parts, dim=-1))) * self.w_std
        if self.cfg.components:  # project onto the data's principal directions
            dw = ((dw.flatten(1) @ self.basis.t()) @ self.basis).view_as(dw)
        return dw


def principal_directions(codes: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k principal directions [k, D] of codes [N, ...] flattened, and the spread along each [k]."""
    flat = codes.reshape(len(codes), -1).float()
    if len(flat) <= k:
        raise ValueError(f"need more than {k} codes, got {len(flat)}")
    _, s, vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    return vh[:k], s[:k] / (len(flat) - 1) ** 0.5


@torch.no_grad()
def attribute_basis(codes: Tensor, factors: Tensor, targets: Sequence[int], principal: int, ridge: float = 1e-2
                    ) -> tuple[Tensor, Tensor]:
    """One W+ direction per target factor [len(targets), num_ws * w_dim], and the R^2 of each factor's read-out.

    Each factor of codes [N, num_ws, w_dim] is read out linearly (ridge regression on the codes' whitened top
    `principal` principal coordinates, factors standardised). The direction for factor k moves read-out k by one
    standard deviation and every other read-out by none: the columns of R (R^T R)^-1 for the read-out matrix R,
    the least-whitened-norm such moves, so they stay in directions the data vary in."""
    factors = torch.as_tensor(factors, dtype=torch.float32)
    if len(factors) != len(codes):
        raise ValueError(f"{len(codes)} codes but {len(factors)} factor rows")
    if principal < factors.shape[1]:
        raise ValueError(f"moving each of {factors.shape[1]} factors alone needs at least as many principal "
                         f"coordinates, got {principal}")
    directions, spread = principal_directions(codes, principal)
    flat = codes.reshape(len(codes), -1).float()
    z = (flat - flat.mean(0)) @ directions.t() / spread  # whitened coordinates [N, principal]
    y = (factors - factors.mean(0)) / factors.std(0).clamp(min=1e-8)
    readout = torch.linalg.solve(z.t() @ z + ridge * len(z) * torch.eye(principal), z.t() @ y)  # [principal, F]
    r2 = 1 - (y - z @ readout).square().mean(0) / y.square().mean(0)
    moves = readout @ torch.linalg.inv(readout.t() @ readout)  # [principal, F]: readout^T moves = I
    basis = (moves[:, list(targets)] * spread[:, None]).t() @ directions
    return basis, r2


def offset_penalty(dw: Tensor, w_std: Tensor) -> Tensor:
    """Mean squared W+ offset in units of w's spread (StyleCLIP's latent L2 term)."""
    return (dw / w_std).square().mean()


@dataclass
class HeadConfig:
    """The fields every head's run config has."""
    prior_dir: str = "runs/heads/faces32-prior/prior"
    text_model: str = "runs/demo/pretrain/pretrained"  # HD-VILA pretrained folder (or "minilm"), wired by the CLI
    cache_dir: str = "runs/heads/cache"  # the frozen oracle and scorer
    scorer: dict = field(default_factory=dict)  # training settings of the frozen scorer (animation.oracle.get_scorer)
    split: FaceSplit = field(default_factory=FaceSplit)
    hidden: int = 256  # mapper width
    layers: int = 3  # mapper depth
    use_text: bool = True  # false: the no-text reference (the mapper sees no sentence)
    components: int = 0  # > 0: offsets in the span of the training codes' top principal directions (mapper)
    # "principal": those directions; "attributes": one direction per expression factor, each moving that factor
    # alone by a linear read-out fitted on the training faces' factors in the `components` principal coordinates
    # (`attribute_basis`)
    edit_basis: str = "principal"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1500, batch_size=16, seed=0,
                                                                   deepspeed_config="zero0", grad_clip=0.0,
                                                                   log_every=50, save_every=500))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3, betas=(0.9, 0.99),
                                                                   weight_decay=0.0, schedule="cosine",
                                                                   warmup_ratio=0.02))

    def __post_init__(self):
        if self.edit_basis not in ("principal", "attributes"):
            raise ValueError(f"edit_basis must be principal or attributes, got {self.edit_basis!r}")
        if self.edit_basis == "attributes" and not self.components:
            raise ValueError("edit_basis=attributes fits its read-outs in `components` principal coordinates: set "
                             "components > 0")


class GeneratorHead(PretrainedMixin, nn.Module):
    """A head trained over a frozen generator (attribute `generator`). The generator stays in eval mode, and the
    pretrained folder holds every weight but the generator's: it is read from the prior folder the config names."""

    def train(self, mode: bool = True) -> "GeneratorHead":
        super().train(mode)
        self.generator.eval()
        return self

    def pretrained_weights(self) -> dict:
        return {"model": {k: v for k, v in self.state_dict().items() if not k.startswith("generator.")}}

    def load_pretrained_weights(self, folder, map_location) -> None:
        from safetensors.torch import load_file

        state = load_file(str(folder.weights["model"]), device=str(map_location))
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("generator.")]
        if missing or unexpected:
            raise ValueError(f"{self.pretrained_kind} weights do not fit: missing {missing}, unexpected {unexpected}")


def save_preview(output_dir: Path, step: int, images: Tensor, nrow: int) -> None:
    """A validation preview grid at output_dir/samples/stepXXXXXXX.png (rank 0)."""
    if dist.is_main():
        path = Path(output_dir) / "samples" / f"step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_grid(images, path, nrow=nrow, scale=3)
