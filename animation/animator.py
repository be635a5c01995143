"""The language-guided face animator: a recurrent motion generator over W+ of a frozen StyleGAN2, driven by a
sentence embedding, trained with the shared trainer.

    hdvila animate train --config animation/faces32-animator
    hdvila animate run --model RUN/animator --image face.png --text "the person smiles" --frames 16 --out out.mp4

A still face is inverted to W+ (an inversion encoder, then a few optimisation steps); the sentence is embedded
by a text encoder the caller supplies (the CLI uses the HD-VILA text encoder, `hdvila.load_pretrained(...)
.encode_text`; this package never imports `hdvila`) and the image by a small trainable CNN. The motion
generator turns both into W+ offsets Δw_t with Δw_0 = 0, so frame 0 is exactly the inversion, and frame t is
G(w_inv + Δw_t). Losses (weights in `loss`): latent anchor and feature identity (frames stay the person), second
difference smoothness, first-vs-last consistency, and a contrastive text-video loss on the last frame scored
by a frozen encoder that is not the input encoder (`animation.oracle.FaceTextScorer`). Like the reference,
training needs no video: still faces and sentences only.

The export (RUN/animator) is a pretrained folder of kind "face-animator": the trained parts (image encoder and
motion generator) as model.safetensors, the inversion encoder as the nested pretrained folder inversion/, the run
config as run_config.yaml; the frozen GAN and the text model are referenced by path. `FaceAnimator.from_pretrained`
loads it, `animate_file` is what `hdvila animate run` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import data_tools.training.distributed as dist
from data_tools.cache import cached
from data_tools.config import dump_config, from_dict, load_config, to_dict
from data_tools.files import atomic_write_bytes
from data_tools.images import save_image_grid
from data_tools.logs import get_logger
from data_tools.pretrained import PretrainedFolder, PretrainedMixin, read_pretrained, sha256_file
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.run import run_summary, start_run
from data_tools.training.trainer import Trainer

from .legacy import ANIMATOR_MODEL_KEYS, animator_model_config, run_config_file
from .motion import (MotionGenerator, contrastive_text_loss, endpoint_loss, feature_identity_loss, frame_latents,
                     latent_anchor_loss, single_text_loss, smoothness_loss)
from .stylegan2 import Generator

log = get_logger(__name__)

TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # sentences -> [N, D] embeddings
INVERSION_DIR = "inversion"
RUN_CONFIG = "run_config.yaml"


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
    encoder_steps: int = 1500  # inversion encoder, trained once on the generator's own samples (no inversion_dir)
    invert_steps: int = 30  # optimisation steps after the encoder
    # Gaussian noise of about this norm on each unit sentence embedding the motion generator sees in training:
    # a few hundred training sentences are points; noise makes the motion a smooth function of the embedding,
    # so held-out paraphrases (nearby points) move the face alike. The scorer's side stays clean.
    text_noise: float = 0.0


@dataclass
class AnimatorConfig:
    gan_dir: str = "runs/animation/faces32-gan/gan"
    # an inversion encoder made with this generator (a heads prior's inversion/ folder, whose generator was never
    # sampled from z, so one cannot be trained on its samples); empty: train one on the GAN's samples
    inversion_dir: str = ""
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


class Animator(PretrainedMixin, nn.Module):
    """Frozen generator + trainable image encoder and motion generator. Its pretrained folder holds the trained
    parts only; the generator is read from the GAN folder its config names (gan_dir)."""

    pretrained_kind = "face-animator"

    def __init__(self, generator: Generator, text_dim: int, cfg: AnimatorConfig):
        super().__init__()
        self.cfg, self.text_dim = cfg, int(text_dim)
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

    # -- the pretrained folder ----------------------------------------------------------------------------
    def pretrained_config(self) -> dict:
        return animator_model_config(to_dict(self.cfg), self.text_dim, self.cfg.data.invert_steps)

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict) -> "Animator":
        cfg = from_dict(AnimatorConfig, {**{k: config[k] for k in ANIMATOR_MODEL_KEYS if k in config},
                                         "data": {"invert_steps": config["invert_steps"]}})
        return cls(Generator.from_pretrained(cfg.gan_dir), config["text_dim"], cfg)

    def pretrained_weights(self) -> dict:
        return {"model": self.trainable_state()}

    def load_pretrained_weights(self, folder: PretrainedFolder, device) -> None:
        missing, unexpected = self.load_state_dict(folder.tensors("model", device), strict=False)
        if unexpected or any(not k.startswith("generator.") for k in missing):
            raise ValueError(f"{folder.path}: weights do not match the animator (missing "
                             f"{[k for k in missing if not k.startswith('generator.')]}, unexpected {unexpected})")


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
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + dist.rank() * 104_729)
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


def weights_digest(directory: str | Path, kind: str) -> str:
    """The sha256 of an exported model's weights (from its folder's config; hashed for an older layout):
    train-once caches built on a frozen part (the generator, a given inversion encoder) are keyed by it, so a
    model retrained into the same folder gets fresh ones."""
    folder = read_pretrained(directory, kind)
    return folder.checksums.get("model") or sha256_file(folder.weights["model"])


def generator_digest(gan_dir: str | Path) -> str:
    return weights_digest(gan_dir, "stylegan2")


def _save_tensor(value: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({"w_inv": value.contiguous()}))


def _load_tensor(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["w_inv"]


def prepare_data(cfg: AnimatorConfig, generator: Generator, text_encoder: TextEncoder, scorer, inversion_encoder,
                 progress: bool = True, cache_dir: str | Path | None = None) -> AnimatorData:
    """Training faces, their inversions (kept in `cache_dir` if given, keyed by the generator's weights and the
    data settings) and the sentences' embeddings by both encoders."""
    from . import inversion
    from .faces import ACTIONS, action_sentences, face_tensors, identity_split, sample_factors

    data = cfg.data
    train_ids, _ = identity_split(data.identities, data.test_fraction, data.seed)
    factors = sample_factors(data.faces, np.random.default_rng(data.seed), identities=train_ids)
    images = face_tensors(factors, generator.cfg.resolution)

    def build() -> torch.Tensor:
        return inversion.invert(generator, images, steps=data.invert_steps, init="encoder",
                                encoder=inversion_encoder, progress=progress).ws

    if cache_dir is None:
        w_inv = build()
    else:  # the inversions depend on the generator, the encoder and which faces: all in the key
        encoder = ({"encoder": weights_digest(cfg.inversion_dir, "inversion-encoder")} if cfg.inversion_dir
                   else {"encoder_steps": data.encoder_steps})
        settings = {"generator": generator_digest(cfg.gan_dir), **encoder,
                    "seed": data.seed, "faces": data.faces, "identities": data.identities,
                    "test_fraction": data.test_fraction, "invert_steps": data.invert_steps}
        w_inv = cached(cache_dir, "inverted", settings, build=build, load=_load_tensor, save=_save_tensor,
                       readable=("faces", "seed"))
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
        if self.preview is not None and dist.is_main():
            sheet = self.preview(getattr(model, "module", model))
            path = self.output_dir / "samples" / f"step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image_grid(sheet, path, nrow=self.cfg.run_frames, scale=2)
        return {}


# ------------------------------------------------------------------------------------------------ inference

class FaceAnimator:
    """Everything `animate run` needs: the animator, the inversion encoder and the text encoder.

    `save_pretrained(dir, run_config=cfg)` exports the animator with its inversion encoder (nested folder);
    `FaceAnimator.from_pretrained(dir, text_encoder, map_location)` loads one on a device (the text encoder
    runs wherever the caller put it)."""

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

    def save_pretrained(self, directory: str | Path, run_config: AnimatorConfig | None = None) -> Path:
        extra: dict[str, Any] = {INVERSION_DIR: lambda path: self.inversion_encoder.save_pretrained(path)}
        if run_config is not None:
            extra[RUN_CONFIG] = dump_config(run_config)
        return self.animator.save_pretrained(directory, extra_files=extra, dtype=torch.float32)

    @classmethod
    def from_pretrained(cls, directory: str | Path, text_encoder: TextEncoder,
                        map_location: str | torch.device = "cpu") -> "FaceAnimator":
        from .inversion import InversionEncoder

        animator = Animator.from_pretrained(directory, map_location=map_location)
        with torch.no_grad():
            text_dim = text_encoder(["a face"]).shape[1]
        if text_dim != animator.text_dim:
            raise ValueError(f"{directory}: the animator was trained on {animator.text_dim}-d sentence embeddings, "
                             f"the text encoder gives {text_dim}-d ones")
        encoder = InversionEncoder.from_pretrained(Path(directory) / INVERSION_DIR, map_location=map_location)
        return cls(animator, encoder, text_encoder, animator.cfg.data.invert_steps)


def exported_run_config(directory: str | Path) -> AnimatorConfig:
    """The run config an exported animator was trained with."""
    return load_config(AnimatorConfig, run_config_file(directory))


def exported_text_model(directory: str | Path) -> str:
    """The text model (an HD-VILA pretrained folder) an exported animator was trained with."""
    return str(read_pretrained(directory, Animator.pretrained_kind).config["text_model"])


def animate_file(model_dir: str | Path, image: str | Path, text: str, out: str | Path, *,
                 text_encoder: TextEncoder, frames: int = 16, fps: int = 10, seed: int = 0,
                 device: str = "auto") -> tuple[Path, Path]:
    """`hdvila animate run`: animate the face in an image file with a sentence; writes `out` (.mp4 or .gif) and
    a contact sheet beside it (.png). device "auto" takes a GPU if there is one. Returns (animation, sheet)."""
    from PIL import Image

    from data_tools.training.distributed import pick_device

    runner = FaceAnimator.from_pretrained(model_dir, text_encoder,
                                          map_location=pick_device() if device == "auto" else device)
    with Image.open(image) as im:
        pixels = np.array(im.convert("RGB"))
    clips = runner.animate(pixels, [text], frames=frames, seed=seed)
    animation = write_animation(clips[0], out, fps=fps)
    sheet = save_image_grid(contact_sheet(clips), Path(out).with_suffix(".png"), nrow=frames, scale=2)
    return animation, sheet


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
    """Everything the motion generator trains against, each trained once and cached in cfg.cache_dir
    (`data_tools.cache.cached`): the oracle, the scorer, the inversion encoder (keyed by the generator's
    weights) and the training faces' inversions. Runs that share a cache (ablations) pay for these once."""
    from .inversion import InversionEncoder, train_inversion_encoder
    from .oracle import get_oracle, get_scorer

    generator = Generator.from_pretrained(cfg.gan_dir)
    size = generator.cfg.resolution
    cache = Path(cfg.cache_dir)
    oracle = get_oracle(cache, size=size, **cfg.oracle).eval().requires_grad_(False)
    scorer = get_scorer(cache, size=size, **cfg.scorer).eval().requires_grad_(False)
    if cfg.inversion_dir:
        inversion_encoder = InversionEncoder.from_pretrained(cfg.inversion_dir)
        inversion_encoder.check_compatible(generator)
    else:
        settings = {"generator": generator_digest(cfg.gan_dir), "steps": cfg.data.encoder_steps,
                    "seed": cfg.data.seed}
        inversion_encoder = cached(
            cache, "inversion-encoder", settings, readable=("steps", "seed"), load=InversionEncoder.from_pretrained,
            build=lambda: train_inversion_encoder(generator, steps=cfg.data.encoder_steps, seed=cfg.data.seed,
                                                  progress=progress),
            save=lambda encoder, path: encoder.save_pretrained(path))
    data = prepare_data(cfg, generator, text_encoder, scorer, inversion_encoder, progress=progress, cache_dir=cache)
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
    if dist.is_main():
        FaceAnimator(animator, inversion_encoder, text_encoder, cfg.data.invert_steps).save_pretrained(
            out / "animator", run_config=cfg)
        save_image_grid(preview(animator), out / "contact_sheet.png", nrow=cfg.run_frames, scale=2)
    dist.barrier()
    return run_summary(summary, cfg)
