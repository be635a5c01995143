"""The StyleGAN2 prior the heads edit: a generator plus the encoder that inverts images into its W+ space, and
the measurement that says whether it is good enough to edit with.

    hdvila heads train-prior --config heads/faces32-prior      # the autoencoding prior (below)
    hdvila heads measure-prior --prior RUN/prior                # agreement of inversions with the truth

A prior folder holds two pretrained folders: gan/ (kind "stylegan2", the generator; `Generator.from_pretrained`)
and inversion/ (kind "inversion-encoder"). Either kind of prior fits it: a GAN trained adversarially
(`hdvila animate train-gan`) with an inversion encoder trained on its samples (`prior_from_gan`), or the
autoencoding prior trained here.

Why an autoencoding prior. The adversarial 32 px GAN that 75 CPU-minutes buy draws expressions faintly: its
inversions lose closed eyes and small smiles (docs/results/heads.md measures it). The research notes'
recommended CPU route is a GLO / auto-decoder fit: train the StyleGAN2 synthesis network to reconstruct the
training faces from learned latents, with L1 and multi-scale L1; here also an LPIPS-style distance on the frozen
face-text scorer's conv features (`FeatureDistance`), without which eyes and smiles stay blurred. This is its
amortised form: the latents come
from an encoder (the same CNN as the inversion encoder, predicting W+ offsets from a reference w), so encoder
and generator train together on the shared trainer and the encoder is the inversion afterwards. Two small
penalties keep the W+ space editable: offsets from the reference w stay small (a weight-decay-like prior on
codes), and the per-layer ws stay near their mean (e4e's idea: codes near W edit more predictably). The
mapping network is not trained (nothing samples z); its mean w and spread only set the units of the offsets.
Training faces come from the train side of the identity split the oracle and scorer use, so every measurement
on held-out identities is on faces no part has seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import data_tools.training.distributed as dist
from data_tools.config import dump_config
from data_tools.images import ArrayBatches, save_image_grid
from data_tools.logs import get_logger
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.run import run_summary, start_run
from data_tools.training.trainer import Trainer

from animation.faces import face_tensors, identity_split, sample_factors
from animation.inversion import InversionEncoder, invert
from animation.stylegan2 import Generator, create_gan

from .attributes import EDITED_ATTRIBUTES, agreement

log = get_logger(__name__)
GAN_DIR, INVERSION_DIR = "gan", "inversion"


@dataclass
class FaceSplit:
    """The identity split every frozen judge (oracle, scorer) was trained on: heads train on its train side and
    are measured on its held-out side, which `val_identities` further splits into validation and test."""
    identities: int = 1000
    test_fraction: float = 0.2
    seed: int = 0
    val_identities: int = 100  # of the held-out identities: tuning; the rest: the test split, reported once

    def identities_of(self, split: str) -> np.ndarray:
        train, held_out = identity_split(self.identities, self.test_fraction, self.seed)
        if split == "train":
            return train
        if split == "val":
            return held_out[:self.val_identities]
        if split == "test":
            return held_out[self.val_identities:]
        raise ValueError(f"split must be train, val or test, got {split!r}")

    def faces(self, split: str, n: int, seed: int) -> np.ndarray:
        """n random faces (factors [n, F]) of the split's identities."""
        return sample_factors(n, np.random.default_rng([seed, 1 + ("train", "val", "test").index(split)]),
                              identities=self.identities_of(split))


@dataclass
class PriorLossConfig:
    pixel: float = 1.0  # L1 at full resolution
    multiscale: float = 1.0  # L1 at 1/2 and 1/4 resolution (average-pooled), each
    gradient: float = 0.0  # L1 between horizontal and vertical pixel differences: weights edges (eyes, mouth)
    perceptual: float = 0.0  # LPIPS-style distance on the frozen scorer's conv features (see FeatureDistance)
    latent: float = 0.01  # mean squared W+ offset from the reference w, in units of w's spread
    layer_spread: float = 0.01  # mean squared deviation of each layer's w from the image's mean w, same units


@dataclass
class PriorConfig:
    gan: str = "sg2-faces32"
    gan_overrides: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)  # EncoderConfig overrides (base_channels, max_channels, hidden)
    faces: int = 8192  # training renders, train-side identities
    # share of those renders that show a random action applied to the face (`training_faces`): the faces an edit
    # aims at (the manipulation head's paired target is the prior's code of such an acted face)
    acted_fraction: float = 0.0
    split: FaceSplit = field(default_factory=FaceSplit)
    cache_dir: str = "runs/heads/cache"  # the frozen scorer whose features the perceptual term uses
    scorer: dict = field(default_factory=dict)  # its training settings (animation.oracle.get_scorer)
    output_dir: str = "runs/heads/faces32-prior"
    loss: PriorLossConfig = field(default_factory=PriorLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=6000, batch_size=32, seed=0,
                                                                   deepspeed_config="zero0", grad_clip=0.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=2e-3, betas=(0.9, 0.99),
                                                                   weight_decay=0.0, schedule="cosine",
                                                                   warmup_ratio=0.02))


class AutoencodingPrior(nn.Module):
    """encoder: image -> W+; generator.synthesis: W+ -> image. Only the encoder and the synthesis network train."""

    def __init__(self, generator: Generator, encoder: InversionEncoder):
        super().__init__()
        encoder.check_compatible(generator)
        self.generator, self.encoder = generator, encoder
        generator.mapping.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.encoder(images)
        return ws, self.generator.synthesis(ws, noise_mode="const")


def multiscale_l1(recon: torch.Tensor, target: torch.Tensor, levels: int = 2) -> torch.Tensor:
    """Sum over 1/2, 1/4, ... resolution of the mean absolute error after average pooling."""
    total = recon.new_zeros(())
    for _ in range(levels):
        recon, target = F.avg_pool2d(recon, 2), F.avg_pool2d(target, 2)
        total = total + (recon - target).abs().mean()
    return total


def gradient_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the images' horizontal and vertical neighbour differences (edges)."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return (dx(recon) - dx(target)).abs().mean() + (dy(recon) - dy(target)).abs().mean()


class FeatureDistance(nn.Module):
    """LPIPS without learned weights, on a frozen conv trunk (a `animation.oracle` network's `_conv_trunk`):
    after each activation of the convolutional stages, unit-normalise every pixel's feature vector and take the
    mean squared difference; sum over stages. The heads use the frozen face-text scorer's image trunk: it was
    trained to tell expressions apart, so its features weigh the small parts (eyes, mouth) that pixel losses
    average away. The attribute oracle, which measures the prior, is never used for training it."""

    def __init__(self, trunk: nn.Sequential, size: int):
        super().__init__()
        self.size = size
        self.stages = nn.ModuleList()
        current: list[nn.Module] = []
        for layer in trunk:
            if isinstance(layer, nn.Flatten):
                break
            current.append(layer)
            if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):  # an activation closes a stage
                self.stages.append(nn.Sequential(*current))
                current = []
        self.requires_grad_(False).eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised feature maps of every stage (also a `feature_fn` for `animation.inversion.invert`)."""
        from animation.oracle import resize_inputs

        x = resize_inputs(x, self.size)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(F.normalize(x, dim=1))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for both in self.features(torch.cat([x, y])):
            fx, fy = both.chunk(2)
            total = total + (fx - fy).square().sum(dim=1).mean()
        return total


def latent_penalties(ws: torch.Tensor, encoder: InversionEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, layer spread): mean squared W+ offset from the encoder's reference w and mean squared deviation
    of the layers from their mean, both in units of w's spread."""
    scaled = (ws - encoder.w_mean) / encoder.w_std
    return scaled.square().mean(), (scaled - scaled.mean(dim=1, keepdim=True)).square().mean()


class PriorObjective:
    def __init__(self, cfg: PriorConfig, preview_images: torch.Tensor, output_dir: Path,
                 features: FeatureDistance | None = None):
        self.cfg, self.preview_images, self.output_dir, self.features = cfg, preview_images, output_dir, features

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        lc, images = self.cfg.loss, batch["images"]
        ws, recon = model(images)
        offset, spread = latent_penalties(ws, getattr(model, "module", model).encoder)
        terms = {"pixel": (recon - images).abs().mean(), "multiscale": multiscale_l1(recon, images),
                 "gradient": gradient_l1(recon, images), "latent": offset, "layer_spread": spread}
        if self.features is not None:
            terms["perceptual"] = self.features(recon, images)
        total = sum(getattr(lc, k) * v for k, v in terms.items())
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        module = getattr(model, "module", model)
        images = self.preview_images.to(next(module.parameters()).device)
        _, recon = module(images)
        if dist.is_main():
            path = self.output_dir / "samples" / f"step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image_grid(torch.cat([images, recon]).cpu(), path, nrow=len(images), scale=3)
        return {"recon_l1": float((recon - images).abs().mean())}


def save_prior(directory: str | Path, generator: Generator, encoder: InversionEncoder,
               run_config: Any = None) -> Path:
    """Write a prior folder: gan/ and inversion/, each an atomic pretrained folder."""
    directory = Path(directory)
    extra = {"run_config.yaml": dump_config(run_config)} if run_config is not None else None
    generator.save_pretrained(directory / GAN_DIR, dtype=torch.float32, extra_files=extra)
    encoder.save_pretrained(directory / INVERSION_DIR)
    return directory


def load_prior(directory: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[Generator, InversionEncoder]:
    """(generator, inversion encoder) of a prior folder, frozen and in eval mode."""
    directory = Path(directory)
    if not (directory / GAN_DIR).is_dir() or not (directory / INVERSION_DIR).is_dir():
        raise FileNotFoundError(f"{directory} is not a prior folder (needs {GAN_DIR}/ and {INVERSION_DIR}/)")
    generator = Generator.from_pretrained(directory / GAN_DIR, map_location=map_location)
    encoder = InversionEncoder.from_pretrained(directory / INVERSION_DIR, map_location=map_location)
    encoder.check_compatible(generator)
    return generator, encoder.eval().requires_grad_(False)


def prior_from_gan(gan_dir: str | Path, out: str | Path, *, encoder_steps: int = 2000, real_faces: int = 4096,
                   split: FaceSplit | None = None, seed: int = 0, progress: bool = True) -> Path:
    """A prior folder from an adversarially trained GAN: its generator and an inversion encoder trained on its
    own samples plus L1 reconstruction of train-side renders (`train_inversion_encoder(real_images=...)`)."""
    from animation.inversion import train_inversion_encoder

    split = split or FaceSplit()
    generator = Generator.from_pretrained(gan_dir)
    real = face_tensors(split.faces("train", real_faces, seed), generator.cfg.resolution)
    encoder = train_inversion_encoder(generator, steps=encoder_steps, real_images=real, seed=seed, progress=progress)
    return save_prior(out, generator, encoder)


def training_faces(cfg: PriorConfig) -> np.ndarray:
    """The prior's training factors [faces, F]: train-side faces, of which a random `acted_fraction` show one
    of the animator's actions applied in full (uniform over `animation.faces.ACTIONS`). Plain faces rarely sit at
    the extremes an action drives a factor to (a wide smile with shut eyes), and a prior that never drew them
    redraws them loosely, unrelated factors included."""
    from animation.faces import ACTIONS, apply_action

    if not 0.0 <= cfg.acted_fraction <= 1.0:
        raise ValueError(f"acted_fraction must lie in [0, 1], got {cfg.acted_fraction}")
    factors = cfg.split.faces("train", cfg.faces, cfg.train.seed)
    rng = np.random.default_rng([cfg.train.seed, 7])
    acted = np.flatnonzero(rng.random(len(factors)) < cfg.acted_fraction)
    for i, choice in zip(acted, rng.integers(len(ACTIONS), size=len(acted))):
        factors[i] = apply_action(factors[i], ACTIONS[choice])
    return factors


def run_train_prior(cfg: PriorConfig, resume: bool = False) -> dict[str, Any] | None:
    """Train the autoencoding prior on train-side renders; export output_dir/prior (gan/ + inversion/)."""
    out = start_run(cfg)
    generator, _ = create_gan(cfg.gan, **cfg.gan_overrides)
    encoder = InversionEncoder.for_generator(generator, seed=cfg.train.seed, **cfg.encoder)
    model = AutoencodingPrior(generator, encoder)
    size = generator.cfg.resolution
    images = face_tensors(training_faces(cfg), size)
    preview = face_tensors(cfg.split.faces("val", 16, 0), size)
    batches = ArrayBatches(images, torch.zeros(len(images), dtype=torch.long), cfg.train.batch_size,
                           cfg.train.seed, dist.rank(), dist.world_size())
    features = None
    if cfg.loss.perceptual:
        from animation.oracle import get_scorer

        scorer = get_scorer(cfg.cache_dir, size=size, **cfg.scorer)
        features = FeatureDistance(scorer.image_tower, scorer.size)
    objective = PriorObjective(cfg, preview, out, features)
    trainer = Trainer(cfg.train, cfg.optim, model, objective, batches, out, epoch_setter=batches.set_epoch,
                      resume=resume)
    summary = trainer.fit()
    if dist.is_main():
        encoder.meta.update({"trained_with": "autoencoding prior", "steps": cfg.train.max_steps})
        save_prior(out / "prior", generator.eval(), encoder.eval(), run_config=cfg)
    dist.barrier()
    return run_summary(summary, cfg)


@torch.no_grad()
def _read(oracle, images: torch.Tensor) -> np.ndarray:
    return oracle.predict(images).cpu().numpy()


def measure_prior(generator: Generator, encoder: InversionEncoder, oracle, factors: np.ndarray, *,
                  invert_steps: int = 30, progress: bool = False) -> dict[str, Any]:
    """How well the prior redraws the attributes the heads edit. Renders `factors`, inverts them (encoder, then
    `invert_steps` of W+ optimisation), and compares the classes of the edited attributes (see
    `heads.attributes`) between the truth and the oracle's reading of the reconstruction. The oracle's reading
    of the renders themselves is the ceiling any prior is held to."""
    images = face_tensors(factors, generator.cfg.resolution)
    result = invert(generator, images, steps=invert_steps, init="encoder", encoder=encoder, progress=progress)
    on_renders = agreement(factors, _read(oracle, images))
    on_inversions = agreement(factors, _read(oracle, result.images))
    return {"faces": len(factors), "invert_steps": invert_steps, "recon_mse": result.error,
            "agreement": on_inversions, "oracle_on_renders": on_renders,
            "min_agreement": min(on_inversions[a] for a in EDITED_ATTRIBUTES), "images": images,
            "reconstructions": result.images}


__all__ = ["AutoencodingPrior", "FaceSplit", "PriorConfig", "PriorLossConfig", "load_prior", "measure_prior",
           "prior_from_gan", "run_train_prior", "save_prior", "training_faces"]
