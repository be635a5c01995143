"""Instruction-following image editing from an exported model, without the training code.

    pipe = InstructPipeline.from_pretrained("runs/instruct/small/model")
    edited = pipe.edit(images_uint8, ["make the circle red", ...], text_scale=5.0, image_scale=1.25, steps=50)

An exported folder is a shared pretrained folder (`data_tools.pretrained`) of kind "instruct-unet": the
InstructUNetConfig (which names the frozen text encoder) and the EMA weights, plus `edit.yaml` (the target the
model predicts and the default sampler and guidance scales) and `run_config.yaml` (the whole training config,
whose data and eval sections `instruct.evaluate` reads to rebuild the evaluation sets).

Editing runs in pixel space ([-1, 1] images); a latent model (4 image channels, e.g. from_stable_diffusion)
would also need Stable Diffusion's VAE, which this pipeline does not load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import yaml

from data_tools.config import ConfigError, dump_config, from_dict
from data_tools.images import from_uint8_images, to_uint8_images
from data_tools.pretrained import read_pretrained
from diffusion.process import TARGETS
from diffusion.samplers import SAMPLERS, logsnr_grid

from .guidance import EditCondition, two_scale_guided
from .model import PRETRAINED_KIND, InstructUNet
from .text import FrozenTextEncoder, load_text_encoder

EDIT_CONFIG_FILE = "edit.yaml"
RUN_CONFIG_FILE = "run_config.yaml"
EDIT_GRIDS = ("cosine", "linear")


@dataclass
class EditConfig:
    """How an exported model edits: what it predicts, the sampler, and the two guidance scales (the paper's
    defaults s_T = 5, s_I = 1.25, Euler-ancestral)."""

    target: str = "eps"  # what the network predicts: eps | x0 | v (set by training)
    sampler: str = "euler_ancestral"  # a registered sampler (diffusion.samplers.SAMPLERS)
    steps: int = 50
    eta: float = 1.0  # fresh noise of the ancestral samplers (0 = deterministic)
    grid: str = "cosine"  # logSNR spacing: cosine | linear
    logsnr_min: float = -10.0
    logsnr_max: float = 10.0
    clip_x0: Optional[list[float]] = field(default_factory=lambda: [-1.0, 1.0])
    text_scale: float = 5.0  # s_T
    image_scale: float = 1.25  # s_I

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"edit.target must be one of {TARGETS}, got {self.target!r}")
        try:
            SAMPLERS.get(self.sampler).check_eta(self.eta)
        except ValueError as exc:
            raise ConfigError(f"edit.sampler: {exc}") from None
        if self.steps < 1:
            raise ConfigError(f"edit.steps must be >= 1, got {self.steps}")
        if self.grid not in EDIT_GRIDS:
            raise ConfigError(f"edit.grid must be one of {EDIT_GRIDS}, got {self.grid!r}")
        if not self.logsnr_min < self.logsnr_max:
            raise ConfigError(f"edit: need logsnr_min < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")
        if self.clip_x0 is not None and (len(self.clip_x0) != 2 or not self.clip_x0[0] < self.clip_x0[1]):
            raise ConfigError(f"edit.clip_x0 must be null or [low, high] with low < high, got {self.clip_x0}")


def as_image_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    """uint8 [N, H, W, 3] or one [H, W, 3] image -> ([N, H, W, 3], whether one image came in)."""
    array = np.asarray(images)
    single = array.ndim == 3
    if single:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3] or [H, W, 3], got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {array.dtype}")
    if len(array) == 0:
        raise ValueError("no images to edit")
    return array, single


class InstructPipeline:
    """An InstructUNet, its frozen text encoder and the settings that say how to edit with it."""

    def __init__(self, model: InstructUNet, text_encoder: FrozenTextEncoder | None = None,
                 config: EditConfig | None = None, run_config: Mapping[str, Any] | None = None):
        mcfg = model.config
        if text_encoder is None:
            if not mcfg.text_encoder:
                raise ValueError("the model names no text encoder (config.text_encoder is empty); pass one")
            text_encoder = load_text_encoder(mcfg.text_encoder)
        if text_encoder.width != mcfg.cross_attention_dim:
            raise ValueError(f"text encoder {text_encoder.spec} is {text_encoder.width} wide, the model "
                             f"cross-attends to {mcfg.cross_attention_dim}")
        self.model = model
        self.text_encoder = text_encoder
        self.config = config or EditConfig()
        self.run_config = dict(run_config or {})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "InstructPipeline":
        folder = read_pretrained(directory, PRETRAINED_KIND)
        model = InstructUNet.from_pretrained_config(folder.config, folder.meta)
        model.load_pretrained_weights(folder, map_location)
        # without edit.yaml (a folder written by hand) the target comes from the meta save_pretrained records:
        # decoding a v-model's output as eps would be silently wrong
        config, run_config = EditConfig(target=folder.meta.get("target", EditConfig.target)), {}
        if EDIT_CONFIG_FILE in folder.files:
            config = from_dict(EditConfig, yaml.safe_load(folder.file(EDIT_CONFIG_FILE).read_text("utf-8")) or {})
        if RUN_CONFIG_FILE in folder.files:
            run_config = yaml.safe_load(folder.file(RUN_CONFIG_FILE).read_text("utf-8")) or {}
        return cls(model.to(map_location).eval(), config=config, run_config=run_config)

    def save_pretrained(self, directory: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        extra = {EDIT_CONFIG_FILE: dump_config(self.config)}
        if self.run_config:
            extra[RUN_CONFIG_FILE] = yaml.safe_dump(self.run_config, sort_keys=False)
        info = {"text_encoder": self.model.config.text_encoder, "target": self.config.target, **(meta or {})}
        return self.model.save_pretrained(directory, meta=info, extra_files=extra, dtype=torch.float32)

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the UNet halves the resolution once per level but the last)."""
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @torch.no_grad()
    def edit(self, images: np.ndarray, texts: str | Sequence[str], text_scale: float | None = None,
             image_scale: float | None = None, steps: int | None = None, seed: int = 0, sampler: str | None = None,
             eta: float | None = None, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Edit uint8 images [N, H, W, 3] (or one [H, W, 3]) by their instructions (one string for all, or N);
        returns uint8 images of the same shape. Unset arguments come from the folder's edit.yaml; the same
        seed and batch size give the same images."""
        batch, single = as_image_batch(images)
        n = len(batch)
        texts = [texts] * n if isinstance(texts, str) else list(texts)
        if len(texts) != n:
            raise ValueError(f"{n} images but {len(texts)} instructions")
        cfg = self.config
        if self.model.config.image_channels != 3:
            raise ValueError(f"this model works on {self.model.config.image_channels}-channel latents; the "
                             "pipeline edits RGB pixels (a latent model needs Stable Diffusion's VAE)")
        h, w = batch.shape[1:3]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"image sides must be multiples of {self.size_multiple}, got {h}x{w}")
        steps = cfg.steps if steps is None else int(steps)
        name = cfg.sampler if sampler is None else sampler
        eta = cfg.eta if eta is None else float(eta)
        run_sampler = SAMPLERS.get(name)
        if not run_sampler.stochastic:
            eta = 0.0  # the deterministic samplers take no fresh noise, whatever the ancestral default is
        model_fn = two_scale_guided(self.model, cfg.text_scale if text_scale is None else text_scale,
                                    cfg.image_scale if image_scale is None else image_scale)
        grid = logsnr_grid(steps, kind=cfg.grid, logsnr_min=cfg.logsnr_min, logsnr_max=cfg.logsnr_max)
        device = next(self.model.parameters()).device
        generator = torch.Generator().manual_seed(int(seed))
        null_states, null_mask = self.text_encoder.null(device)
        clip = tuple(cfg.clip_x0) if cfg.clip_x0 else None
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for start in range(0, n, batch_size):
                chunk = slice(start, start + batch_size)
                source = from_uint8_images(batch[chunk]).to(device)
                states, mask = self.text_encoder.encode(texts[chunk], device)
                cond = EditCondition(source, states, mask, null_states, null_mask)
                x0 = run_sampler(model_fn, source.shape, grid, cfg.target, eta=eta, generator=generator, cond=cond,
                                 clip_x0=clip, device=device, progress=progress)
                out.append(to_uint8_images(x0.float().clamp(-1, 1).cpu()))
        finally:
            self.model.train(was_training)
        edited = np.concatenate(out)
        return edited[0] if single else edited


# ------------------------------------------------------------------------------------------------ files

class EditInputError(ValueError):
    """A request that cannot be carried out: a missing or unreadable image, a size the model does not take, a
    bad output path, an unknown sampler. The message says what to change."""


MAX_INPUT_PIXELS = 50_000_000  # an input image larger than this (about 50 MP) is refused before it is decoded
MAX_SAMPLER_STEPS = 1000  # the diffusion core's longest discretisation; more only costs time


def read_input_image(path: str | Path, size: int, resize: bool = False) -> np.ndarray:
    """An image file as uint8 [size, size, 3]; another size is an error unless `resize` (cover-resize and
    centre-crop, aspect kept). The size is read from the file's header first: a wrong size (without `resize`)
    or more than MAX_INPUT_PIXELS pixels is refused before any pixel is decoded."""
    from PIL import Image

    from data_tools.images import read_image_file

    path = Path(path)
    if not path.is_file():
        raise EditInputError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:  # the header only: nothing is decoded yet
            w, h = im.size
    except Exception as exc:  # PIL raises many types for a bad file (a decompression bomb too)
        raise EditInputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if w * h > MAX_INPUT_PIXELS:
        raise EditInputError(f"{path} is {w}x{h} pixels, more than the {MAX_INPUT_PIXELS:,} this command reads; "
                             f"shrink it first (this model edits {size}x{size} images)")
    if (h, w) != (size, size) and not resize:
        raise EditInputError(f"{path} is {w}x{h} pixels; this model edits {size}x{size} images "
                             "(resize it, or pass --resize to cover-resize and centre-crop it)")
    try:
        pixels = read_image_file(path, None if (h, w) == (size, size) else size)
    except Exception as exc:  # a truncated or corrupt body fails only when decoded
        raise EditInputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return pixels  # (an EXIF rotation keeps a square image square)


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """One uint8 [H, W, 3] image as a PNG, written atomically."""
    from PIL import Image

    from data_tools.files import atomic_open

    path = Path(path)
    with atomic_open(path, "wb") as fh:
        Image.fromarray(np.asarray(image, np.uint8)).save(fh, format="PNG")
    return path


def edit_file(model_dir: str | Path, image: str | Path, text: str, out: str | Path, *,
              text_scale: float | None = None, image_scale: float | None = None, steps: int | None = None,
              seed: int = 0, sampler: str | None = None, resize: bool = False) -> tuple[Path, dict[str, Any]]:
    """`hdvila instruct edit`: edit the image in a file by an instruction and write a PNG; returns the output
    path and the settings used (unset values from the model's edit.yaml)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise EditInputError(f"--out must be a .png path, got {out.name}")
    if steps is not None and not 1 <= steps <= MAX_SAMPLER_STEPS:
        raise EditInputError(f"--steps must be between 1 and {MAX_SAMPLER_STEPS}, got {steps}")
    if sampler is not None and sampler not in SAMPLERS:
        raise EditInputError(str(SAMPLERS.unknown(sampler)))
    if out.is_dir():
        raise EditInputError(f"--out {out} is a folder; name a .png file")
    try:
        size = int(read_pretrained(model_dir, PRETRAINED_KIND).config["image_size"])
    except (OSError, ValueError, KeyError) as exc:  # missing folder, another model kind, a damaged config
        raise EditInputError(f"--model {model_dir}: not an exported instruct model ({exc})") from None
    pixels = read_input_image(image, size, resize)  # a bad input fails before the model and text encoder load
    pipeline = InstructPipeline.from_pretrained(model_dir)
    cfg = pipeline.config
    settings = {"text_scale": cfg.text_scale if text_scale is None else float(text_scale),
                "image_scale": cfg.image_scale if image_scale is None else float(image_scale),
                "steps": cfg.steps if steps is None else int(steps), "sampler": sampler or cfg.sampler,
                "seed": int(seed)}
    edited = pipeline.edit(pixels, text, **settings)
    try:
        return write_png(edited, out), settings
    except OSError as exc:  # a missing or read-only folder, a full disk: say so, not a traceback
        raise EditInputError(f"cannot write --out {out}: {exc.strerror or exc}") from None


__all__ = ["EDIT_CONFIG_FILE", "EditConfig", "EditInputError", "InstructPipeline", "MAX_INPUT_PIXELS", "MAX_SAMPLER_STEPS",
           "RUN_CONFIG_FILE", "as_image_batch", "edit_file", "read_input_image", "write_png"]
