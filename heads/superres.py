"""Text-guided super-resolution (HD-VILA supplement D.3): a low-resolution face and a sentence describing it ->
the high-resolution face, rendered by the prior's generator.

    hdvila heads train-superres --config heads/faces32-superres
    hdvila heads superres --model RUN/superres --image lr.png --text "a person ... with the eyes closed" \
        --scale 4 --out hr.png

The low-resolution image is upsampled (bicubic) to the generator's resolution and encoded to W+ by an encoder
that starts as a copy of the prior's inversion encoder; the sentence's embedding (a frozen text encoder the
caller supplies, HD-VILA's in the CLI) adds a W+ offset through the shared mapper (`heads.mapper`); the frozen
generator renders the sum. Losses (weights in `loss`):
- reconstruction: L1 against the high-resolution face, at full and at 1/2, 1/4 resolution;
- consistency: the output, box-downsampled to the input's size, equals the input (L1);
- text: 1 - cos between the frozen scorer's embeddings of the output and of the sentence;
- offset: mean squared W+ offset from the prior's reference w (keeps codes where the generator is trained).
- perceptual (off unless set): the prior's LPIPS-style distance on the frozen scorer's conv features, which
  weighs the few pixels of an eye or a mouth that the L1 terms average away.
What is invisible at 8x8 (eyes open or shut, a closed or open mouth) can only come from the sentence, so the
reconstruction loss itself teaches the mapper to read it; `use_text: false` trains the same network without
the sentence, the fair no-text reference.

The export (RUN/superres) is a pretrained folder of kind "text-superres" (encoder and mapper weights; the
generator is read from the prior folder its config names).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import data_tools.training.distributed as dist
from data_tools.config import dump_config, from_dict
from data_tools.images import resize_images, save_image_grid
from data_tools.logs import get_logger
from data_tools.training.run import run_summary, start_run
from data_tools.training.trainer import Trainer

from animation.faces import describe, face_tensors
from animation.inversion import EncoderConfig, InversionEncoder
from animation.stylegan2 import Generator

from .manipulation import build_mapper
from .mapper import GeneratorHead, HeadConfig, MapperConfig, TextMapper, offset_penalty, save_preview
from .prior import FeatureDistance, load_prior, multiscale_l1

log = get_logger(__name__)
TextEncoder = Callable[[Sequence[str]], torch.Tensor]


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Box downsampling by an integer factor (the degradation the head inverts, and its consistency check)."""
    if factor < 1 or images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(f"cannot box-downsample {tuple(images.shape[-2:])} by {factor}")
    return F.avg_pool2d(images, factor) if factor > 1 else images


def upsample_bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    """The bicubic baseline (and the encoder's input), clamped to [-1, 1]."""
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


@dataclass
class SuperResLossConfig:
    reconstruction: float = 1.0  # L1, plus the same at 1/2 and 1/4 resolution
    consistency: float = 1.0
    text: float = 0.1
    offset: float = 0.01
    perceptual: float = 0.0  # the prior's LPIPS-style term on the scorer's conv features (heads.prior.FeatureDistance)


@dataclass
class SuperResConfig(HeadConfig):
    scale: int = 4  # 32 px faces from 8 px inputs
    faces: int = 8192  # training faces, train-side identities
    output_dir: str = "runs/heads/faces32-superres"
    loss: SuperResLossConfig = field(default_factory=SuperResLossConfig)


class SuperResModel(GeneratorHead):
    """LR encoder + text mapper (trained) over the frozen generator."""

    pretrained_kind = "text-superres"

    def __init__(self, generator: Generator, encoder: InversionEncoder, mapper: TextMapper, config: dict):
        super().__init__()
        encoder.check_compatible(generator)
        self.generator = generator.eval().requires_grad_(False)
        self.encoder, self.mapper, self.config = encoder, mapper, dict(config)

    @property
    def scale(self) -> int:
        return int(self.config["scale"])

    def forward(self, low: torch.Tensor, text_emb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """low [B, 3, r, r] in [-1, 1] -> (ws, image [B, 3, r*scale, r*scale])."""
        size = self.generator.cfg.resolution
        if low.shape[-1] * self.scale != size:
            raise ValueError(f"this model takes {size // self.scale} px inputs, got {low.shape[-1]} px")
        w = self.encoder(upsample_bicubic(low, size))
        ws = w + self.mapper(w, text_emb)
        return ws, self.generator.synthesis(ws, noise_mode="const")

    def pretrained_config(self) -> dict:
        return {**self.config, "mapper": asdict(self.mapper.cfg), "encoder": asdict(self.encoder.cfg)}

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict) -> "SuperResModel":
        generator, _ = load_prior(config["prior_dir"])
        return cls(generator, InversionEncoder(EncoderConfig(**config["encoder"])),
                   TextMapper(from_dict(MapperConfig, config["mapper"])), config).eval()



class SuperResBatches:
    """Shuffled (HR face, its description's embeddings) batches; a new seeded order every epoch."""

    def __init__(self, images: torch.Tensor, text_emb: torch.Tensor, scorer_emb: torch.Tensor, batch_size: int,
                 seed: int):
        self.images, self.text_emb, self.scorer_emb = images, text_emb, scorer_emb
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield {"high": self.images[idx], "text_emb": self.text_emb[idx], "scorer_emb": self.scorer_emb[idx]}


class SuperResObjective:
    def __init__(self, cfg: SuperResConfig, scorer: nn.Module, output_dir: Path, preview=None):
        self.cfg, self.scorer, self.output_dir, self.preview = cfg, scorer, output_dir, preview
        # pixel losses average the few pixels of an eye away; the scorer's features weigh them (as in the prior)
        self.features = FeatureDistance(scorer.image_tower, scorer.size) if cfg.loss.perceptual else None

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        lc, module, high = self.cfg.loss, getattr(model, "module", model), batch["high"]
        low = downsample(high, self.cfg.scale)
        ws, out = model(low, batch["text_emb"] if self.cfg.use_text else None)
        terms = {
            "reconstruction": (out - high).abs().mean() + multiscale_l1(out, high),
            "consistency": (downsample(out, self.cfg.scale) - low).abs().mean(),
            "text": (1 - F.cosine_similarity(self.scorer.encode_images(out), batch["scorer_emb"], dim=-1)).mean(),
            "offset": offset_penalty(ws - module.encoder.w_mean, module.encoder.w_std),
        }
        if self.features is not None:
            terms["perceptual"] = self.features(out, high)
        total = sum(getattr(lc, k) * v for k, v in terms.items())
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.preview is not None and dist.is_main():
            save_preview(self.output_dir, step, self.preview(getattr(model, "module", model)), nrow=8)
        return {}


class TextSuperResolver:
    """`upscale(low, texts)`: low-resolution faces [N, 3, r, r] in [-1, 1] and their sentences -> [N, 3, R, R]."""

    def __init__(self, model: SuperResModel, text_encoder: TextEncoder | None):
        self.model, self.text_encoder = model.eval(), text_encoder

    @property
    def scale(self) -> int:
        return self.model.scale

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor | None:
        if not self.model.mapper.cfg.use_text:
            return None
        if self.text_encoder is None:
            raise ValueError("this model reads text: give it a text encoder")
        return self.text_encoder(list(texts)).float().cpu()

    @torch.no_grad()
    def upscale(self, low: torch.Tensor, texts: Sequence[str] | None = None, batch_size: int = 256) -> torch.Tensor:
        if texts is not None and len(texts) != len(low):
            raise ValueError(f"{len(low)} images but {len(texts)} sentences")
        text_emb = self.encode_texts(texts) if texts is not None else None
        if self.model.mapper.cfg.use_text and text_emb is None:
            raise ValueError("this model reads text: give a sentence per image")
        device = next(self.model.parameters()).device
        outs = []
        for i in range(0, len(low), batch_size):
            t = None if text_emb is None else text_emb[i:i + batch_size].to(device)
            outs.append(self.model(low[i:i + batch_size].to(device), t)[1].cpu())
        return torch.cat(outs)

    def save_pretrained(self, directory: str | Path, run_config: SuperResConfig | None = None) -> Path:
        extra = {"run_config.yaml": dump_config(run_config)} if run_config is not None else None
        return self.model.save_pretrained(directory, extra_files=extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path, text_encoder: TextEncoder | None,
                        map_location: str | torch.device = "cpu") -> "TextSuperResolver":
        return cls(SuperResModel.from_pretrained(directory, map_location=map_location), text_encoder)


def superres_file(model_dir: str | Path, image: str | Path, text: str, out: str | Path, *, scale: int,
                  text_encoder: TextEncoder | None, device: str = "cpu") -> Path:
    """`hdvila heads superres`: the low-resolution image (resized to the model's input size if it is not) and
    its sentence -> the high-resolution image at `out` (PNG, at the generator's resolution)."""
    from data_tools.images import from_uint8_images, read_image_file

    runner = TextSuperResolver.from_pretrained(model_dir, text_encoder, map_location=device)
    if scale != runner.scale:
        raise ValueError(f"this model upscales {runner.scale}x, not {scale}x")
    size = runner.model.generator.cfg.resolution // runner.scale
    low = resize_images(from_uint8_images(read_image_file(image)[None]), size)
    high = runner.upscale(low, [text] if runner.model.mapper.cfg.use_text else None)
    return save_image_grid(high, out, nrow=1, scale=1, padding=0)


def run_train_superres(cfg: SuperResConfig, text_encoder: TextEncoder | None, resume: bool = False,
                       progress: bool = True) -> dict[str, Any] | None:
    """Train the LR encoder and text mapper against the frozen prior; export to output_dir/superres."""
    from animation.oracle import get_scorer

    out = start_run(cfg)
    generator, prior_encoder = load_prior(cfg.prior_dir)
    size = generator.cfg.resolution
    if size % cfg.scale:
        raise ValueError(f"scale {cfg.scale} does not divide the generator's {size} px")
    scorer = get_scorer(cfg.cache_dir, size=size, **cfg.scorer).eval().requires_grad_(False)
    factors = cfg.split.faces("train", cfg.faces, cfg.train.seed)
    images = face_tensors(factors, size)
    sentences = [describe(f) for f in factors]
    with torch.no_grad():
        scorer_emb = scorer.encode_texts(sentences).float().cpu()
        text_emb = text_encoder(sentences).float().cpu() if cfg.use_text else torch.zeros(len(sentences), 1)
    encoder = copy.deepcopy(prior_encoder).train().requires_grad_(True)
    codes = prior_encoder.encode(images) if cfg.components else None
    mapper = build_mapper(cfg, generator, text_emb.shape[1], encoder, codes, torch.as_tensor(factors))
    model = SuperResModel(generator, encoder, mapper, {"prior_dir": str(cfg.prior_dir), "scale": cfg.scale,
                                                       "text_model": str(cfg.text_model)})
    preview_factors = cfg.split.faces("val", 8, 0)
    preview_high = face_tensors(preview_factors, size)
    preview_texts = [describe(f) for f in preview_factors]

    def preview(module: nn.Module) -> torch.Tensor:
        low = downsample(preview_high, cfg.scale)
        sr = TextSuperResolver(module, text_encoder).upscale(low, preview_texts)
        module.train()
        return torch.cat([upsample_bicubic(low, size), sr, preview_high])

    batches = SuperResBatches(images, text_emb, scorer_emb, cfg.train.batch_size, cfg.train.seed)
    objective = SuperResObjective(cfg, scorer, out, preview)
    trainer = Trainer(cfg.train, cfg.optim, model, objective, batches, out, epoch_setter=batches.set_epoch,
                      resume=resume)
    t0 = time.perf_counter()
    summary = trainer.fit()
    if dist.is_main():
        TextSuperResolver(model, text_encoder).save_pretrained(out / "superres", run_config=cfg)
        save_image_grid(preview(model), out / "preview.png", nrow=8, scale=3)
        log.info("super-resolution head trained in %.0f s", time.perf_counter() - t0)
    dist.barrier()
    return run_summary(summary, cfg)


# ------------------------------------------------------------------------------------------------ metrics

def psnr(output: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (output.float() - target.float()).square().mean(dim=(1, 2, 3)).clamp(min=1e-12)
    return (10 * torch.log10(4.0 / mse)).numpy()


def ssim(output: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-image SSIM (scikit-image, 7x7 Gaussian-free window, over RGB channels) of images in [-1, 1]."""
    from skimage.metrics import structural_similarity

    a = output.float().permute(0, 2, 3, 1).numpy()
    b = target.float().permute(0, 2, 3, 1).numpy()
    return np.array([structural_similarity(x, y, channel_axis=2, data_range=2.0) for x, y in zip(a, b)])


__all__ = ["SuperResConfig", "SuperResLossConfig", "SuperResModel", "TextSuperResolver", "downsample", "psnr",
           "run_train_superres", "ssim", "superres_file", "upsample_bicubic"]
