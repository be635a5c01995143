"""StyleGAN2 training on the shared trainer, with images from the shared data layer.

    hdvila animate train-gan --config configs/animation/faces32-gan.yaml [key=value ...]

The trainer steps one optimizer over both networks, each in its own parameter group with StyleGAN2's lazy-
regularisation learning rate and betas. By default the steps alternate as in StyleGAN2: even steps train G,
odd steps D (the other network gets no gradient, so Adam leaves it alone). With `loss.alternate: false` one
step trains both simultaneously from the same weights. Either way each loss reaches only its own network (the
generator's loss goes through a detached copy of D's weights, the discriminator sees detached fakes). R1 (every `r1_interval` steps) and path length (every
`pl_interval` steps) are added scaled by their interval, as in StyleGAN2. An EMA of the generator (half-life
in thousands of images) samples the validation grids and is what gets exported.

Run folder: config.yaml, metrics.jsonl, tensorboard/, checkpoints/, samples/stepXXXXXXX.png and gan/
(generator EMA + discriminator as safetensors, with their config).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.func import functional_call

from data_tools.config import dump_config, from_dict
from data_tools.distances import sliced_wasserstein
from data_tools.images import ArrayBatches, ImageFolderDataset, frames_to_images, save_image_grid, video_frame_loader
from data_tools.files import atomic_directory, atomic_write_json
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, ParamGroupConfig, TrainConfig
from data_tools.training.trainer import Trainer
from data_tools.training.run import run_summary, start_run

from .stylegan2 import (Generator, PathLengthPenalty, StyleGAN2Config, create_gan, d_logistic_loss,
                        g_nonsaturating_loss, get_gan_config, lazy_adam_params, mix_styles, r1_penalty)

log = get_logger(__name__)

EXPORT_DIR = "gan"


@dataclass
class GANDataConfig:
    kind: str = "faces"  # faces (the built-in synthetic domain) | folder (image files) | video (frames from shards)
    size: Optional[int] = None  # default: the generator's resolution
    count: int = 4096  # faces: how many to render
    seed: int = 0  # faces: which ones
    folder: Optional[str] = None
    shards: list[str] = field(default_factory=list)
    num_workers: int = 2
    backend: str = "decord"
    epoch_samples: int = 2048


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
    data: GANDataConfig = field(default_factory=GANDataConfig)
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
        G, D = self.generator, self.discriminator
        ws = G.mapping(z)
        if mixing > 0:
            ws = mix_styles(ws, G.mapping(z_mix), mixing)
        fake = G.synthesis(ws, noise_mode="random")
        out, total = {}, real.new_zeros(())
        if train_g:  # D's weights detached, so this loss moves only G
            frozen = {name: p.detach() for name, p in D.named_parameters()}
            frozen.update(dict(D.named_buffers()))
            out["g_loss"] = g_nonsaturating_loss(functional_call(D, frozen, (fake,)))
            total = total + out["g_loss"]
            if pl_weight > 0:
                ws_pl = G.mapping(z[:pl_batch])
                penalty, lengths = self.path_length(G.synthesis(ws_pl, noise_mode="random"), ws_pl)
                out["pl_penalty"], out["pl_length"] = penalty, lengths.detach().mean()
                total = total + pl_weight * penalty
        if train_d:  # fakes detached, so this loss moves only D
            real = real.detach().requires_grad_(r1_weight > 0)
            real_logits = D(real)
            out["d_loss"] = d_logistic_loss(real_logits, D(fake.detach()))
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


def make_data(cfg: GANConfig):
    """(training batches, epoch setter, data state, real images for evaluation or None)."""
    data, size = cfg.data, image_size(cfg)
    rank, world = D.rank(), D.world_size()
    if data.kind in ("faces", "folder"):
        if data.kind == "faces":
            from .faces import SyntheticFaces

            images = SyntheticFaces(data.count, size=size, seed=data.seed).tensors()
        else:
            if not data.folder:
                raise ValueError("data.kind: folder needs data.folder")
            images = ImageFolderDataset(data.folder, size, channels=3).tensors()
        batches = ArrayBatches(images, torch.zeros(len(images), dtype=torch.long), cfg.train.batch_size,
                               cfg.train.seed, rank, world)
        return batches, batches.set_epoch, None, images
    if data.kind == "video":
        loader, dataset = video_frame_loader(data.shards, size, cfg.train.batch_size, num_workers=data.num_workers,
                                             epoch_samples=data.epoch_samples, seed=cfg.train.seed,
                                             backend=data.backend)
        return loader, dataset.set_epoch, dataset, None
    raise ValueError(f"data.kind must be faces, folder or video, got {data.kind!r}")


# ------------------------------------------------------------------------------------------------ objective

class GANObjective:
    def __init__(self, cfg: GANConfig, pair: GANPair, reference: torch.Tensor | None, output_dir: Path):
        self.cfg = cfg
        self.ema = copy.deepcopy(pair.generator).eval().requires_grad_(False)
        images_per_step = cfg.train.batch_size * D.world_size()
        self.ema_beta = 0.5 ** (images_per_step / max(cfg.ema_kimg * 1000.0, 1e-8))
        self.reference = reference
        self.output_dir = output_dir

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        images = batch["images"] if "images" in batch else frames_to_images(batch["frames"])
        return {"images": images.to(device)}

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        real = batch["images"]
        b, lc = real.shape[0], self.cfg.loss
        z_dim = getattr(model, "module", model).generator.z_dim
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step * 1009 + D.rank())
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

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        live = getattr(model, "module", model).generator
        for ema_p, p in zip(self.ema.parameters(), live.parameters()):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - self.ema_beta)
        for ema_b, b in zip(self.ema.buffers(), live.buffers()):  # w_avg, fixed noise: copied, not averaged
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        samples = sample_images(self.ema, self.cfg.eval.samples if self.reference is not None
                                else self.cfg.eval.grid_images, self.cfg.eval.seed, self.cfg.eval.truncation_psi)
        if D.is_main():
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


# ------------------------------------------------------------------------------------------------ export

def save_gan(directory: str | Path, generator: Generator, discriminator: nn.Module, cfg: GANConfig) -> Path:
    """gan/: config.yaml (the run config), stylegan2.json, generator.safetensors (the EMA), discriminator.safetensors."""
    from safetensors.torch import save_file

    def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}

    with atomic_directory(directory) as tmp:
        (tmp / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        atomic_write_json(tmp / "stylegan2.json", asdict(generator.cfg))
        save_file(tensors(generator), str(tmp / "generator.safetensors"))
        save_file(tensors(discriminator), str(tmp / "discriminator.safetensors"))
    return Path(directory)


def load_generator(directory: str | Path, with_discriminator: bool = False):
    """The exported generator (eval mode), or (generator, discriminator); no pickle involved."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "generator.safetensors").is_file():
        raise FileNotFoundError(f"{directory} holds no generator.safetensors; `hdvila animate train-gan` "
                                f"exports one to <output_dir>/{EXPORT_DIR}")
    config = from_dict(StyleGAN2Config, json.loads((directory / "stylegan2.json").read_text()))
    generator, discriminator = create_gan(config)
    generator.load_state_dict(load_file(str(directory / "generator.safetensors")))
    generator.eval().requires_grad_(False)
    if not with_discriminator:
        return generator
    discriminator.load_state_dict(load_file(str(directory / "discriminator.safetensors")))
    return generator, discriminator.eval()


# ------------------------------------------------------------------------------------------------ run

def run_train_gan(cfg: GANConfig, resume: bool = False) -> dict[str, Any] | None:
    """Train, export the generator EMA and the discriminator to output_dir/gan, write samples.png."""
    out = start_run(cfg)
    pair = build_gan(cfg)
    batches, epoch_setter, data_state, reference = make_data(cfg)
    objective = GANObjective(cfg, pair, reference, out)
    if D.is_main():
        log.info("StyleGAN2 %s: G %.2fM, D %.2fM parameters, %d px, data %s", cfg.gan,
                 sum(p.numel() for p in pair.generator.parameters()) / 1e6,
                 sum(p.numel() for p in pair.discriminator.parameters()) / 1e6, image_size(cfg), cfg.data.kind)
    trainer = Trainer(cfg.train, lazy_param_groups(cfg), pair, objective, batches, out, epoch_setter=epoch_setter,
                      data_state=data_state, resume=resume)
    summary = trainer.fit()
    if D.is_main():
        save_gan(out / EXPORT_DIR, objective.ema, pair.discriminator, cfg)
        save_grid(sample_images(objective.ema, cfg.eval.grid_images, cfg.eval.seed, cfg.eval.truncation_psi),
                  out / "samples.png")
    D.barrier()
    return run_summary(summary, cfg)
