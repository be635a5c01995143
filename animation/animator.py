"""The language-guided face animator: a recurrent motion generator over W+ of a frozen StyleGAN2, driven by a
sentence embedding, trained with the shared trainer.

    hdvila animate train --config configs/animation/faces32-animator.yaml
    hdvila animate run --model RUN/animator --image face.png --text "the person smiles" --frames 16 --out out.mp4

A still face is inverted to W+ (an inversion encoder, then a few optimisation steps); the sentence is embedded
by a text encoder the caller supplies (the CLI uses the HD-VILA text encoder, `hdvila.load_pretrained(...)
.encode_text`; this package never imports `hdvila`) and the image by a small trainable CNN. The motion
generator turns both into W+ offsets Δw_t with Δw_0 = 0, so frame 0 is exactly the inversion, and frame t is
G(w_inv + Δw_t). Losses (weights in `loss`): latent anchor and feature identity (frames stay the person), second
difference smoothness, first-vs-last consistency, and a contrastive text-video loss on the last frame scored
by a frozen encoder that is not the input encoder (`animation.oracle.FaceTextScorer`). Like the reference,
training needs no video: still faces and sentences only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_tools.config import dump_config, load_config
from data_tools.images import save_image_grid
from data_tools.files import atomic_directory
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.trainer import Trainer
from data_tools.training.run import run_summary, start_run

from .motion import (MotionGenerator, contrastive_text_loss, endpoint_loss, feature_identity_loss, frame_latents,
                     latent_anchor_loss, single_text_loss, smoothness_loss)
from .stylegan2 import Generator

log = get_logger(__name__)

TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # sentences -> [N, D] embeddings
WEIGHTS_FILE = "animator.safetensors"


@dataclass
class AnimatorLossConfig:
    anchor: float = 1.0  # frames' latents stay near the inversion
    identity: float = 1.0  # identity features of the first and last frames stay near the input's
    smoothness: float = 1.0  # second difference of Δw over time
    endpoint: float = 1.0  # first vs last offset
    text: float = 0.5  # the last frame matches the sentence
    contrastive: bool = True  # InfoNCE against the batch's other sentences; false: 1 - cos with its own only
    temperature: float = 0.07


@dataclass
class AnimatorDataConfig:
    faces: int = 2048  # training faces (identities from the train split)
    identities: int = 500
    test_fraction: float = 0.2  # held-out identities for evaluation
    seed: int = 0
    encoder_steps: int = 1500  # inversion encoder, trained once on the generator's own samples
    invert_steps: int = 30  # optimisation steps after the encoder
    # Gaussian noise of about this norm on each unit sentence embedding the motion generator sees in training:
    # a few hundred training sentences are points; noise makes the motion a smooth function of the embedding,
    # so held-out paraphrases (nearby points) move the face alike. The scorer's side stays clean.
    text_noise: float = 0.0


@dataclass
class AnimatorConfig:
    gan_dir: str = "runs/animation/faces32-gan/gan"
    text_model: str = "runs/demo/pretrain/pretrained"  # HD-VILA pretrained folder for encode_text (wired by the CLI)
    frames: int = 4  # training clips are short, as in the reference; inference uses more
    run_frames: int = 16
    h_dim: int = 96
    residual: float = 0.8
    pixel_norm: bool = True
    # rescale inference steps so a clip travels as far as a training clip (sum of r_t at `frames`, const decay)
    match_travel: bool = False
    image_width: int = 32
    cache_dir: str = "runs/animation/cache"  # oracle, scorer, inversion encoder
    oracle: dict = field(default_factory=dict)  # training settings of the frozen attribute oracle (get_oracle)
    scorer: dict = field(default_factory=dict)  # and of the frozen text-image scorer (get_scorer)
    output_dir: str = "runs/animation/animator"
    loss: AnimatorLossConfig = field(default_factory=AnimatorLossConfig)
    data: AnimatorDataConfig = field(default_factory=AnimatorDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.0, 0.999), weight_decay=0.0,
                                                                   schedule="constant"))


# ------------------------------------------------------------------------------------------------ model

class FaceImageEncoder(nn.Module):
    """Image [B, 3, H, W] in [-1, 1] -> embedding [B, D] (L2-normalised inside the motion generator)."""

    def __init__(self, resolution: int, dim: int, width: int = 32):
        super().__init__()
        layers, channels, res = [], 3, resolution
        while res > 4:
            out = min(width * (resolution // res + 1), 256)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels, res = out, res // 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * res * res, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class Animator(nn.Module):
    """Frozen generator + trainable image encoder and motion generator."""

    def __init__(self, generator: Generator, text_dim: int, cfg: AnimatorConfig):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.image_encoder = FaceImageEncoder(generator.cfg.resolution, text_dim, cfg.image_width)
        travel = cfg.residual * (cfg.frames - 1) / cfg.frames if cfg.match_travel else None
        self.motion = MotionGenerator(text_dim, generator.num_ws, generator.w_dim, h_dim=cfg.h_dim,
                                      residual=cfg.residual, pixel_norm=cfg.pixel_norm, travel=travel)

    def train(self, mode: bool = True) -> "Animator":
        super().train(mode)
        self.generator.eval()  # frozen: never update w_avg or anything else
        return self

    def forward(self, images: torch.Tensor, w_inv: torch.Tensor, text_emb: torch.Tensor, num_frames: int,
                decay: str = "const", generator: torch.Generator | None = None):
        """(frames [B, T, C, H, W], Δw [B, T, num_ws, w_dim], ws [B, T, num_ws, w_dim])."""
        dw = self.motion(text_emb, self.image_encoder(images), num_frames, decay=decay, generator=generator)
        ws = frame_latents(w_inv, dw)
        b, t = ws.shape[:2]
        frames = self.generator.synthesis(ws.flatten(0, 1), noise_mode="const")
        return frames.view(b, t, *frames.shape[1:]), dw, ws

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("generator.")}


# ------------------------------------------------------------------------------------------------ data

@dataclass
class AnimatorData:
    images: torch.Tensor  # [N, 3, H, W] training faces
    w_inv: torch.Tensor  # [N, num_ws, w_dim] their inversions
    sentences: list[str]  # training sentences
    sentence_action: torch.Tensor  # [S] action index of each sentence
    text_emb: torch.Tensor  # [S, D] input encoder
    scorer_emb: torch.Tensor  # [S, Ds] the frozen scorer's text side


class AnimatorBatches:
    """Each batch: B faces and B sentences of distinct actions (when B <= the number of actions), so the
    contrastive loss has true negatives; a new seeded draw every epoch."""

    def __init__(self, data: AnimatorData, batch_size: int, seed: int, steps_per_epoch: int = 100,
                 text_noise: float = 0.0):
        self.data, self.batch_size, self.seed, self.steps = data, batch_size, seed, steps_per_epoch
        self.text_noise = text_noise
        self.epoch = 0
        self.actions = sorted(set(data.sentence_action.tolist()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + D.rank() * 104_729)
        by_action = {a: torch.nonzero(self.data.sentence_action == a).flatten() for a in self.actions}
        for _ in range(self.steps):
            faces = torch.randint(len(self.data.images), (self.batch_size,), generator=gen)
            order = torch.randperm(len(self.actions), generator=gen)
            actions = [self.actions[int(order[i % len(order)])] for i in range(self.batch_size)]
            sentence = torch.stack([by_action[a][torch.randint(len(by_action[a]), (1,), generator=gen)][0]
                                    for a in actions])
            text = self.data.text_emb[sentence]
            if self.text_noise > 0:
                text = F.normalize(text, dim=-1)
                text = text + (self.text_noise / text.shape[1] ** 0.5) * torch.randn(text.shape, generator=gen)
            yield {"images": self.data.images[faces], "w_inv": self.data.w_inv[faces],
                   "text_emb": text, "scorer_emb": self.data.scorer_emb[sentence],
                   "action": torch.tensor(actions)}


def prepare_data(cfg: AnimatorConfig, generator: Generator, text_encoder: TextEncoder, scorer, inversion_encoder,
                 progress: bool = True, inversion_cache: Path | None = None) -> AnimatorData:
    """Training faces, their inversions (read from / written to `inversion_cache` if given) and the sentences'
    embeddings by both encoders."""
    from .faces import ACTIONS, action_sentences, identity_split, render_faces, sample_factors
    from .inversion import invert

    data = cfg.data
    train_ids, _ = identity_split(data.identities, data.test_fraction, data.seed)
    factors = sample_factors(data.faces, np.random.default_rng(data.seed), identities=train_ids)
    images = torch.from_numpy(render_faces(factors, generator.cfg.resolution)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if inversion_cache is not None and inversion_cache.is_file():
        from safetensors.torch import load_file

        w_inv = load_file(str(inversion_cache))["w_inv"]
    else:
        w_inv = invert(generator, images, steps=data.invert_steps, init="encoder", encoder=inversion_encoder,
                       progress=progress).ws
        if inversion_cache is not None:
            from safetensors.torch import save

            from data_tools.files import atomic_write_bytes

            inversion_cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(inversion_cache, save({"w_inv": w_inv.contiguous()}))
    pairs = action_sentences("train")
    index = {a.name: i for i, a in enumerate(ACTIONS)}
    sentences = [s for _, s in pairs]
    with torch.no_grad():
        text_emb = text_encoder(sentences).float().cpu()
        scorer_emb = scorer.encode_texts(sentences).float().cpu()
    return AnimatorData(images, w_inv, sentences, torch.tensor([index[a] for a, _ in pairs]), text_emb, scorer_emb)


# ------------------------------------------------------------------------------------------------ objective

class AnimatorObjective:
    def __init__(self, cfg: AnimatorConfig, oracle, scorer, output_dir: Path,
                 preview: Callable[[nn.Module], torch.Tensor] | None = None):
        self.cfg, self.oracle, self.scorer = cfg, oracle, scorer
        self.output_dir, self.preview = output_dir, preview

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        images, w_inv = batch["images"], batch["w_inv"]
        frames, dw, ws = model(images, w_inv, batch["text_emb"], self.cfg.frames)
        terms = {
            "anchor": latent_anchor_loss(ws, w_inv),
            "identity": feature_identity_loss(self.oracle.identity_features, frames[:, 0], frames[:, -1], images),
            "smoothness": smoothness_loss(dw),
            "endpoint": endpoint_loss(dw),
        }
        last = self.scorer.encode_images(frames[:, -1])
        if lc.contrastive:
            same = batch["action"][:, None] == batch["action"][None, :]
            terms["text"] = contrastive_text_loss(last, batch["scorer_emb"], lc.temperature, same_text=same)
        else:
            terms["text"] = single_text_loss(last, batch["scorer_emb"])
        total = sum(getattr(lc, name) * value for name, value in terms.items())
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.preview is not None and D.is_main():
            sheet = self.preview(getattr(model, "module", model))
            path = self.output_dir / "samples" / f"step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image_grid(sheet, path, nrow=self.cfg.run_frames, scale=2)
        return {}


# ------------------------------------------------------------------------------------------------ inference

class FaceAnimator:
    """Everything `animate run` needs: the animator, the inversion encoder and the text encoder."""

    def __init__(self, animator: Animator, inversion_encoder, text_encoder: TextEncoder, invert_steps: int = 30):
        self.animator = animator.eval()
        self.inversion_encoder = inversion_encoder
        self.text_encoder = text_encoder
        self.invert_steps = invert_steps

    @property
    def resolution(self) -> int:
        return self.animator.generator.cfg.resolution

    @property
    def device(self) -> torch.device:
        return next(self.animator.generator.parameters()).device

    def prepare_images(self, images) -> torch.Tensor:
        """uint8 [N, H, W, 3] / [H, W, 3] arrays or float [N, 3, H, W] tensors -> float [N, 3, R, R] in [-1, 1]."""
        from data_tools.images import from_uint8_images, resize_images

        if isinstance(images, np.ndarray):
            images = from_uint8_images(images[None] if images.ndim == 3 else images)
        return resize_images(images.float(), self.resolution)

    @torch.no_grad()
    def animate(self, images, texts: Sequence[str], frames: int = 16, decay: str = "linear", seed: int = 0
                ) -> torch.Tensor:
        """Frames [N, T, 3, R, R] in [-1, 1], on the CPU, for N images and N sentences; frame 0 is each image's
        inversion. The work runs on the animator's device; the seeded draws are made on the CPU, so a seed gives
        the same motion on any device."""
        from .inversion import invert

        images = self.prepare_images(images).to(self.device)
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} sentences")
        with torch.enable_grad():
            w_inv = invert(self.animator.generator, images, steps=self.invert_steps, init="encoder",
                           encoder=self.inversion_encoder).ws
        text_emb = self.text_encoder(list(texts)).float().to(self.device)
        out, _, _ = self.animator(images, w_inv, text_emb, frames, decay=decay,
                                  generator=torch.Generator().manual_seed(seed))
        return out.clamp(-1, 1).cpu()


def save_animator(directory: str | Path, animator: Animator, inversion_encoder, cfg: AnimatorConfig) -> Path:
    """animator/: config.yaml, animator.safetensors (image encoder + motion generator), inversion/ (encoder).
    The frozen GAN and the text model are referenced by path (cfg.gan_dir, cfg.text_model), not copied."""
    from safetensors.torch import save_file

    with atomic_directory(directory) as tmp:
        (tmp / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        save_file({k: v.detach().float().cpu().contiguous() for k, v in animator.trainable_state().items()},
                  str(tmp / WEIGHTS_FILE))
        inversion_encoder.save(tmp / "inversion")
    return Path(directory)


def load_animator(directory: str | Path, text_encoder: TextEncoder, device: str | torch.device = "cpu"
                  ) -> FaceAnimator:
    """An exported animator on `device`; the text encoder runs wherever the caller put it."""
    from safetensors.torch import load_file

    from .gan import load_generator
    from .inversion import InversionEncoder

    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no {WEIGHTS_FILE}; `hdvila animate train` exports one")
    cfg = load_config(AnimatorConfig, directory / "config.yaml")
    with torch.no_grad():
        text_dim = text_encoder(["a face"]).shape[1]
    animator = Animator(load_generator(cfg.gan_dir), text_dim, cfg)
    missing, unexpected = animator.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
    if unexpected or any(not k.startswith("generator.") for k in missing):
        raise ValueError(f"{directory}: weights do not match the animator (missing {missing}, unexpected {unexpected})")
    return FaceAnimator(animator.to(device), InversionEncoder.load(directory / "inversion", device=device),
                        text_encoder, cfg.data.invert_steps)


def contact_sheet(frames: torch.Tensor) -> torch.Tensor:
    """[N, T, C, H, W] -> [N*T, C, H, W]: one row per animation for save_image_grid(nrow=T)."""
    return frames.flatten(0, 1)


def write_animation(frames: torch.Tensor, path: str | Path, fps: int = 10, scale: int = 4) -> Path:
    """One animation [T, 3, H, W] in [-1, 1] -> .mp4 or .gif (upscaled `scale`x with nearest neighbour)."""
    from data_tools.images import to_uint8_images
    from data_tools.media.encode import encode_rgb24, write_gif

    u = to_uint8_images(frames).repeat(scale, axis=1).repeat(scale, axis=2)  # [T, H, W, 3]
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return write_gif(u, path, fps=fps)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"output must end in .mp4 or .gif, got {path.name}")
    return encode_rgb24(u, path, width=u.shape[2], height=u.shape[1], fps=fps)


# ------------------------------------------------------------------------------------------------ run

@dataclass
class FrozenParts:
    generator: Generator
    oracle: nn.Module  # identity features for the loss (and the evaluation's reader)
    scorer: nn.Module  # the contrastive loss's frozen text-image scorer
    inversion_encoder: nn.Module
    data: AnimatorData


def prepare_frozen_parts(cfg: AnimatorConfig, text_encoder: TextEncoder, progress: bool = True) -> FrozenParts:
    """Everything the motion generator trains against, each trained once and cached in cfg.cache_dir: the
    oracle, the scorer, the inversion encoder (keyed by the generator's weights) and the training faces'
    inversions. Runs that share a cache (ablations) pay for these once."""
    from .gan import load_generator
    from .inversion import InversionEncoder, train_inversion_encoder
    from .oracle import get_oracle, get_scorer

    generator = load_generator(cfg.gan_dir)
    size = generator.cfg.resolution
    cache = Path(cfg.cache_dir)
    oracle = get_oracle(cache, size=size, **cfg.oracle).eval().requires_grad_(False)
    scorer = get_scorer(cache, size=size, **cfg.scorer).eval().requires_grad_(False)
    # keyed by the generator's weights: a GAN retrained into the same folder gets a fresh encoder
    digest = hashlib.sha1(Path(cfg.gan_dir, "generator.safetensors").read_bytes()).hexdigest()[:12]
    encoder_path = cache / f"inversion-{digest}-{cfg.data.encoder_steps}-{cfg.data.seed}"
    if (encoder_path / "config.json").is_file():
        inversion_encoder = InversionEncoder.load(encoder_path)
    else:
        inversion_encoder = train_inversion_encoder(generator, steps=cfg.data.encoder_steps, seed=cfg.data.seed,
                                                    progress=progress)
        inversion_encoder.save(encoder_path)
    d = cfg.data  # the inversions depend on the generator, the encoder and which faces: all in the name
    inversions = cache / (f"inverted-{digest}-e{d.encoder_steps}-s{d.seed}-n{d.faces}-i{d.identities}"
                          f"-t{d.test_fraction:g}-k{d.invert_steps}.safetensors")
    data = prepare_data(cfg, generator, text_encoder, scorer, inversion_encoder, progress=progress,
                        inversion_cache=inversions)
    return FrozenParts(generator, oracle, scorer, inversion_encoder, data)


def run_train_animator(cfg: AnimatorConfig, text_encoder: TextEncoder, resume: bool = False,
                       progress: bool = True) -> dict[str, Any] | None:
    """Train the motion generator and image encoder against the frozen GAN; export to output_dir/animator."""
    from .faces import action_sentences, identity_split, render_faces, sample_factors

    out = start_run(cfg)
    parts = prepare_frozen_parts(cfg, text_encoder, progress)
    generator, oracle, scorer, inversion_encoder, data = (parts.generator, parts.oracle, parts.scorer,
                                                          parts.inversion_encoder, parts.data)
    size = generator.cfg.resolution
    animator = Animator(generator, data.text_emb.shape[1], cfg)

    # preview: held-out identities with held-out sentences, one row each, the frames along the row
    _, test_ids = identity_split(cfg.data.identities, cfg.data.test_fraction, cfg.data.seed)
    test_sentences = [s for _, s in action_sentences("test")][::max(1, len(action_sentences("test")) // 8)][:8]
    faces = render_faces(sample_factors(len(test_sentences), np.random.default_rng(1), identities=test_ids), size)
    def preview(model: nn.Module) -> torch.Tensor:
        runner = FaceAnimator(model, inversion_encoder, text_encoder, cfg.data.invert_steps)
        clips = runner.animate(faces, test_sentences, frames=cfg.run_frames)
        model.train()
        return contact_sheet(clips)

    objective = AnimatorObjective(cfg, oracle, scorer, out, preview)
    batches = AnimatorBatches(data, cfg.train.batch_size, cfg.train.seed, text_noise=cfg.data.text_noise)
    trainer = Trainer(cfg.train, cfg.optim, animator, objective, batches, out, epoch_setter=batches.set_epoch,
                      resume=resume)
    summary = trainer.fit()
    if D.is_main():
        save_animator(out / "animator", animator, inversion_encoder, cfg)
        save_image_grid(preview(animator), out / "contact_sheet.png", nrow=cfg.run_frames, scale=2)
    D.barrier()
    return run_summary(summary, cfg)
