"""StyleGAN2 training on the shared trainer, with images from the shared data layer.

    hdvila animate train-gan --config animation/faces32-gan [key=value ...]

The trainer steps one optimizer over both networks, each in its own parameter group with StyleGAN2's lazy-
regularisation learning rate and betas. By default the steps alternate as in StyleGAN2: even steps train G,
odd steps D (the other network gets no gradient, so Adam leaves it alone). With `loss.alternate: false` one
step trains both simultaneously from the same weights. Either way each loss reaches only its own network (the
generator's loss goes through a detached copy of D's weights, the discriminator sees detached fakes). R1 (every `r1_interval` steps) and path length (every
`pl_interval` steps) are added scaled by their interval, as in StyleGAN2. An EMA of the generator (half-life
in thousands of images) samples the validation grids and is what gets exported.

Images come from the one image-data config (`data_tools.image_datasets.ImageDataConfig`): by default the
synthetic faces registered as the image set "faces", scored (SWD) against the training images themselves
(`test_fraction: 0`); or `data.kind=folder` / `data.kind=video`.

Run folder: config.yaml, metrics.jsonl, tensorboard/, checkpoints/, samples/stepXXXXXXX.png and gan/, a
pretrained folder (kind "stylegan2": the generator EMA as model.safetensors, the discriminator as
discriminator.safetensors, the run config as run_config.yaml): `Generator.from_pretrained(gan_dir)`,
`Discriminator.from_pretrained(gan_dir)`.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

import data_tools.training.distributed as dist
from data_tools.config import dump_config
from data_tools.distances import sliced_wasserstein
from data_tools.ema import EMA, ema_decay_from_half_life
from data_tools.image_datasets import IMAGE_DATASETS, ImageData, ImageDataConfig, make_image_data
from data_tools.images import frames_to_images, save_image_grid
from data_tools.logs import get_logger
from data_tools.training.config import OptimConfig, ParamGroupConfig, TrainConfig
from data_tools.training.run import run_summary, start_run, step_generator
from data_tools.training.trainer import Trainer

from . import faces as _faces  # noqa: F401  (registers the image set "faces")
from .stylegan2 import (Generator, PathLengthPenalty, create_gan, d_logistic_loss, g_nonsaturating_loss,
                        get_gan_config, lazy_adam_params, mix_styles, r1_penalty)

log = get_logger(__name__)

EXPORT_DIR = "gan"


def default_gan_data() -> ImageDataConfig:
    """4096 synthetic faces, rendered at the generator's resolution; SWD against the training images."""
    return ImageDataConfig(kind="array", name="faces", options={"count": 4096, "seed": 0}, channels=3,
                           test_fraction=0.0)


@dataclass
class GANLossConfig:
    r1_gamma: float = 0.1  # StyleGAN2 uses 10 at FFHQ-1024; small images want far less
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing: float = 0.9
    # alternate: even steps train G, odd steps D (as StyleGAN2 does); else one simultaneous step trains both
    alternate: bool = True


@dataclass
class GANEvalConfig:
    grid_images: int = 64
    samples: int = 512  # for the sliced Wasserstein distance to real images
    seed: int = 1234
    truncation_psi: float = 1.0


@dataclass
class GANConfig:
    gan: str = "sg2-faces32"
    gan_overrides: dict = field(default_factory=dict)
    loss: GANLossConfig = field(default_factory=GANLossConfig)
    ema_kimg: float = 10.0  # half-life of the generator EMA, in thousands of images
    output_dir: str = "runs/animation/gan"
    data: ImageDataConfig = field(default_factory=default_gan_data)
    eval: GANEvalConfig = field(default_factory=GANEvalConfig)
    # no gradient clipping: one global norm over G and D together lets D's gradients starve G's
    train: TrainConfig = field(default_factory=lambda: TrainConfig(grad_clip=0.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.0025, betas=(0.0, 0.99), weight_decay=0.0,
                                                                   schedule="constant"))


# ------------------------------------------------------------------------------------------------ model

class GANPair(nn.Module):
    """Generator + discriminator + path-length state as one module, so the trainer, DeepSpeed and the
    checkpoints see one model. `forward` returns every loss term of one simultaneous step."""

    def __init__(self, generator: Generator, discriminator: nn.Module, pl_decay: float = 0.01):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.path_length = PathLengthPenalty(pl_decay)

    def forward(self, real: torch.Tensor, z: torch.Tensor, z_mix: torch.Tensor, *, mixing: float,
                r1_weight: float, pl_weight: float, pl_batch: int, train_g: bool = True,
                train_d: bool = True) -> dict[str, torch.Tensor]:
        gen, disc = self.generator, self.discriminator
        ws = gen.mapping(z)
        if mixing > 0:
            ws = mix_styles(ws, gen.mapping(z_mix), mixing)
        fake = gen.synthesis(ws, noise_mode="random")
        out, total = {}, real.new_zeros(())
        if train_g:  # the discriminator's weights detached, so this loss moves only the generator
            frozen = {name: p.detach() for name, p in disc.named_parameters()}
            frozen.update(dict(disc.named_buffers()))
            out["g_loss"] = g_nonsaturating_loss(functional_call(disc, frozen, (fake,)))
            total = total + out["g_loss"]
            if pl_weight > 0:
                ws_pl = gen.mapping(z[:pl_batch])
                penalty, lengths = self.path_length(gen.synthesis(ws_pl, noise_mode="random"), ws_pl)
                out["pl_penalty"], out["pl_length"] = penalty, lengths.detach().mean()
                total = total + pl_weight * penalty
        if train_d:  # fakes detached, so this loss moves only the discriminator
            real = real.detach().requires_grad_(r1_weight > 0)
            real_logits = disc(real)
            out["d_loss"] = d_logistic_loss(real_logits, disc(fake.detach()))
            out["real_score"] = real_logits.detach().mean()
            total = total + out["d_loss"]
            if r1_weight > 0:
                out["r1"] = r1_penalty(real, real_logits)
                total = total + r1_weight * out["r1"]
        out["loss"] = total
        return out


def build_gan(cfg: GANConfig) -> GANPair:
    generator, discriminator = create_gan(cfg.gan, **cfg.gan_overrides)
    return GANPair(generator, discriminator, cfg.loss.pl_decay)


def lazy_param_groups(cfg: GANConfig) -> OptimConfig:
    """The optimizer config with G and D groups at StyleGAN2's lazy-regularisation lr and betas:
    lr·c and β^c with c = k/(k+1) for regularisation interval k (4 for G, 16 for D)."""
    groups = []
    for name, pattern, interval in (("generator", r"^generator\.", cfg.loss.pl_interval),
                                    ("discriminator", r"^discriminator\.", cfg.loss.r1_interval)):
        lr, betas = lazy_adam_params(cfg.optim.lr, tuple(cfg.optim.betas), interval)
        groups.append(ParamGroupConfig(name=name, pattern=pattern, lr=lr, betas=betas))
    return OptimConfig(**{**asdict(cfg.optim), "param_groups": groups})


# ------------------------------------------------------------------------------------------------ data

def image_size(cfg: GANConfig) -> int:
    return cfg.data.size or get_gan_config(cfg.gan, **cfg.gan_overrides).resolution


def make_data(cfg: GANConfig) -> ImageData:
    """This rank's training batches and the real images samples are scored against (the shared image-data
    config). An in-memory set whose loader takes a `size` option (the faces) is rendered at the generator's
    resolution rather than resized to it."""
    size, data = image_size(cfg), cfg.data
    if data.kind == "array" and data.name in IMAGE_DATASETS and "size" not in data.options:
        if "size" in inspect.signature(IMAGE_DATASETS.get(data.name).loader).parameters:
            data = ImageDataConfig(**{**asdict(data), "options": {**data.options, "size": size}})
    return make_image_data(data, size, cfg.train.batch_size, cfg.train.seed, dist.rank(), dist.world_size())


# ------------------------------------------------------------------------------------------------ objective

class GANObjective:
    def __init__(self, cfg: GANConfig, pair: GANPair, reference: torch.Tensor | None, output_dir: Path):
        self.cfg = cfg
        self.ema = EMA(pair.generator, ema_decay_from_half_life(cfg.ema_kimg * 1000.0,
                                                                cfg.train.batch_size * dist.world_size()))
        self.reference = reference
        self.output_dir = output_dir

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        images = batch["images"] if "images" in batch else frames_to_images(batch["frames"])
        return {"images": images.to(device)}

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        real = batch["images"]
        b, lc = real.shape[0], self.cfg.loss
        z_dim = getattr(model, "module", model).generator.z_dim
        generator = step_generator(self.cfg.train.seed, step)
        z = torch.randn(b, z_dim, generator=generator).to(real.device)
        z_mix = torch.randn(b, z_dim, generator=generator).to(real.device)
        # lazy intervals count the steps that train the network concerned
        train_g = train_d = True
        phase_step = step
        if lc.alternate:
            train_g, train_d, phase_step = step % 2 == 0, step % 2 == 1, step // 2
        r1 = (lc.r1_gamma / 2 * lc.r1_interval
              if train_d and lc.r1_gamma > 0 and phase_step % lc.r1_interval == 0 else 0.0)
        pl = (lc.pl_weight * lc.pl_interval
              if train_g and lc.pl_weight > 0 and phase_step % lc.pl_interval == 0 else 0.0)
        out = model(real, z, z_mix, mixing=lc.style_mixing, r1_weight=r1, pl_weight=pl,
                    pl_batch=max(1, b // lc.pl_batch_shrink), train_g=train_g, train_d=train_d)
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    def after_step(self, model: nn.Module, step: int) -> None:
        self.ema.follow(getattr(model, "module", model).generator)  # w_avg, fixed noise: copied, not averaged

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        samples = sample_images(self.ema.module, self.cfg.eval.samples if self.reference is not None
                                else self.cfg.eval.grid_images, self.cfg.eval.seed, self.cfg.eval.truncation_psi)
        if dist.is_main():
            save_grid(samples[:self.cfg.eval.grid_images], self.output_dir / "samples" / f"step{step:07d}.png")
        if self.reference is None:
            return {}
        return {"swd": sliced_wasserstein(samples, self.reference[:len(samples)], seed=self.cfg.eval.seed)}


@torch.no_grad()
def sample_images(generator: Generator, n: int, seed: int, truncation_psi: float = 1.0,
                  batch_size: int = 256) -> torch.Tensor:
    """n images [n, C, H, W] on the CPU from a fixed seed, with constant noise (the same call, the same images)."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    out = [generator.synthesis(generator.mapping(chunk.to(device), truncation_psi=truncation_psi),
                               noise_mode="const").float().cpu()
           for chunk in z.split(batch_size)]
    return torch.cat(out)


def save_grid(images: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image_grid(images, path, scale=max(1, 128 // images.shape[-1]))


# ------------------------------------------------------------------------------------------------ run

def run_train_gan(cfg: GANConfig, resume: bool = False) -> dict[str, Any] | None:
    """Train, export the generator EMA and the discriminator to output_dir/gan, write samples.png."""
    out = start_run(cfg)
    pair = build_gan(cfg)
    batches, epoch_setter, data_state, reference = make_data(cfg)
    objective = GANObjective(cfg, pair, reference, out)
    if dist.is_main():
        log.info("StyleGAN2 %s: G %.2fM, D %.2fM parameters, %d px, data %s", cfg.gan,
                 sum(p.numel() for p in pair.generator.parameters()) / 1e6,
                 sum(p.numel() for p in pair.discriminator.parameters()) / 1e6, image_size(cfg), cfg.data.kind)
    trainer = Trainer(cfg.train, lazy_param_groups(cfg), pair, objective, batches, out, epoch_setter=epoch_setter,
                      data_state=data_state, resume=resume)
    summary = trainer.fit()
    if dist.is_main():
        objective.ema.module.save_pretrained(out / EXPORT_DIR, discriminator=pair.discriminator, dtype=torch.float32,
                                             extra_files={"run_config.yaml": dump_config(cfg)})
        save_grid(sample_images(objective.ema.module, cfg.eval.grid_images, cfg.eval.seed, cfg.eval.truncation_psi),
                  out / "samples.png")
    dist.barrier()
    return run_summary(summary, cfg)
