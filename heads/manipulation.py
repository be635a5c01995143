"""Text-to-visual manipulation (HD-VILA supplement D.3): edit a face by a sentence in the W+ space of a prior.

    hdvila heads train-manipulation --config heads/faces32-manipulation
    hdvila heads manipulate --model RUN/manipulator --image face.png --text "she smiles" --out edited.png

The input image is inverted into W+ by the prior's encoder (plus a few optimisation steps): that is the visual
embedding's path to its W+ code. The sentence is embedded by a frozen text encoder the caller supplies (the CLI
wires HD-VILA's `encode_text`; this package never imports `hdvila`), and the mapper (`heads.mapper`) turns
(w, sentence) into a W+ offset; the generator renders w + Δw.

Losses (weights in `loss`), all through the frozen generator:
- text: the edited face must match its sentence by a frozen image-text scorer that is not the input encoder
  (`animation.oracle.FaceTextScorer`), contrastively against the batch's other sentences (of other actions);
- direction: the change the edit makes to the scorer's image embedding must match the sentence's offset from
  the mean training sentence (StyleGAN-NADA's directional loss), contrastively or not as the text term;
- offset: mean squared Δw in units of w's spread (StyleCLIP's latent L2);
- paired (off by default): w + Δw must match the code the prior's encoder gives the renderer's acted face,
  the training face with the action applied (synthetic faces have that truth; the oracle is not involved);
- cycle: the prior's encoder, applied to the edited image, must give back w + Δw (mean squared error in units
  of w's spread). An autoencoding prior renders faces only near codes its encoder produces; elsewhere it draws
  colourful noise that can fool the frozen scorer and oracle alike. Codes that survive the round trip are on
  the prior's manifold, so this is the realism term a discriminator would otherwise give;
- keep: what the sentence does not name must not move. The frozen attribute oracle reads the identity factors
  and the expression factors the action leaves alone on G(w) and G(w + Δw); their squared change is the loss.
  The oracle never sees the factors an action targets, so it does not teach the edit itself; the evaluation
  reads those with the same oracle, which is why the text term alone has to produce them.

At inference a sentence the mapper never saw arrives as the training sentences it learned from (`snap`):
"soft" blends their embeddings by a softmax of the head's own cosines (`snap_temperature`; 0 turns it off);
"nearest" hands over the one training sentence nearest to it, by the head's cosines and, with `snap_also_by`, a
second sentence encoder's (the packaged MiniLM), each z-scored per sentence and summed with equal weights. The
mapper still reads only the head's own text embedding; the second encoder only picks which training sentence.

The export (RUN/manipulator) is a pretrained folder of kind "text-manipulator": the mapper's weights and config;
the prior and text model are referenced by path. `TextManipulator.from_pretrained` loads it.
"""
from __future__ import annotations

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
from data_tools.images import save_image_grid
from data_tools.logs import get_logger
from data_tools.training.run import run_summary, start_run
from data_tools.training.trainer import Trainer

from animation.faces import (ACTIONS, EXPRESSION_FACTORS, FACTOR_NAMES, action_sentences, apply_action,
                             face_tensors)
from animation.inversion import invert
from animation.motion import contrastive_text_loss, single_text_loss
from animation.stylegan2 import Generator

from .attributes import touched
from .mapper import (GeneratorHead, HeadConfig, MapperConfig, TextMapper, attribute_basis, offset_penalty,
                     save_preview)
from .prior import load_prior

log = get_logger(__name__)
TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # sentences -> [N, D]
ACTION_NAMES = [a.name for a in ACTIONS]
# [A, F] True where the oracle's reading must stay: identity factors and the expression factors an action leaves
KEEP_MASK = torch.tensor(np.stack([~touched(name) for name in ACTION_NAMES]))
EXPRESSION_INDEX = [FACTOR_NAMES.index(n) for n in EXPRESSION_FACTORS]


@dataclass
class ManipulationLossConfig:
    text: float = 1.0
    contrastive: bool = True  # InfoNCE over the batch's sentences (distinct actions); false: 1 - cos
    temperature: float = 0.07
    # weight of the directional text term (StyleGAN-NADA's): the scorer's embedding of the edit minus that of G(w)
    # against the sentence's embedding minus the mean training sentence's, contrastive as `contrastive` says. The
    # absolute term rewards any change that raises the similarity, unrelated ones included; a direction does not,
    # but it carries no size: alone it makes faint edits
    direction: float = 0.0
    offset: float = 0.3
    keep: float = 30.0  # change of the oracle's kept factors, in units of their range
    keep_norm: str = "l2"  # "l2": squared change; "l1": absolute change (a steady pull on small moves too)
    cycle: float = 1.0  # the edited image, re-encoded by the prior's encoder, gives back its code (see below)
    # weight of the paired term: w + Δw must match the prior encoder's code of the renderer's own acted face (the
    # training face with the action applied), in units of w's spread. The renderer's truth, not the oracle
    paired: float = 0.0

    def __post_init__(self):
        if self.keep_norm not in ("l1", "l2"):
            raise ValueError(f"loss.keep_norm must be l1 or l2, got {self.keep_norm!r}")


@dataclass
class TextAugmentConfig:
    """Training-time perturbations of the sentence embedding the mapper sees (not of the scorer's), so that a
    paraphrase it never saw lands where it has learned something. With only a few phrasings per action the
    mapper otherwise learns isolated points of the text space."""
    same_action_mix: bool = False  # a random convex mix of two phrasings of the same action (the scorer's too)
    noise: float = 0.0  # norm of isotropic Gaussian noise added to the unit-normalised embedding


@dataclass
class ManipulationConfig(HeadConfig):
    oracle: dict = field(default_factory=dict)  # training settings of the frozen oracle (animation.oracle.get_oracle)
    faces: int = 4096  # training faces, train-side identities
    invert_steps: int = 0  # optimisation steps after the prior's encoder (training faces and inference)
    # how a sentence reaches the mapper at inference (`ManipulationModel.snap`; training sees the sentences as
    # they are): "soft", a softmax blend of the training sentences' embeddings at snap_temperature on the head's
    # cosines (0: the sentence as it is); "nearest", the training sentence nearest by the head's cosines plus
    # those of the encoders in snap_also_by (SNAP_ENCODERS), z-scored per sentence and summed
    snap: str = "soft"
    snap_temperature: float = 0.0
    snap_also_by: list = field(default_factory=list)
    output_dir: str = "runs/heads/faces32-manipulation"
    loss: ManipulationLossConfig = field(default_factory=ManipulationLossConfig)
    text_augment: TextAugmentConfig = field(default_factory=TextAugmentConfig)

    def __post_init__(self):
        super().__post_init__()
        check_snap(self.snap, self.snap_temperature, self.snap_also_by)


SNAP_RULES = ("soft", "nearest")
SNAP_ENCODERS = ("minilm",)  # second opinions on which training sentence is nearest (`snap_also_by`)


def check_snap(rule: str, temperature: float, also_by) -> None:
    if rule not in SNAP_RULES:
        raise ValueError(f"snap must be one of {SNAP_RULES}, got {rule!r}")
    if temperature < 0:
        raise ValueError(f"snap_temperature must be >= 0, got {temperature}")
    unknown = [name for name in also_by if name not in SNAP_ENCODERS]
    if unknown:
        raise ValueError(f"snap_also_by names unknown sentence encoders {unknown}; known: {SNAP_ENCODERS}")
    if also_by and rule != "nearest":
        raise ValueError("snap_also_by picks the nearest training sentence: it needs snap: nearest")


def snap_encoder(name: str) -> TextEncoder:
    """A second sentence encoder for the nearest snap, by name (packaged weights only; nothing is downloaded)."""
    if name == "minilm":
        from animation.oracle import get_sentence_encoder

        return get_sentence_encoder().encode
    raise ValueError(f"unknown snap encoder {name!r}; known: {SNAP_ENCODERS}")


def combined_cosines(sims: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several encoders' cosines [queries, keys] as one score: each z-scored per query and summed with equal
    weights (the encoders' cosines live on different scales); a single encoder's cosines as they are."""
    if len(sims) == 1:
        return sims[0]
    return sum((sim - sim.mean(1, keepdim=True)) / sim.std(1, keepdim=True) for sim in sims)


class ManipulationModel(GeneratorHead):
    """Frozen generator + trainable mapper. Its pretrained folder holds the mapper only (the generator comes from
    the prior folder its config names)."""

    pretrained_kind = "text-manipulator"

    def __init__(self, generator: Generator, mapper: TextMapper, config: dict, phrasings: torch.Tensor | None = None,
                 snap_banks: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.mapper, self.config = mapper, dict(config)
        self.snap_rule, self.snap_temperature, self.snap_also_by = "soft", 0.0, []
        rule = self.config.get("snap", "soft")  # exports made before the nearest rule have only the temperature
        if rule == "nearest" or self.config.get("snap_temperature", 0.0):
            # the training sentences' embeddings `snap` uses; loading, zeros of the exported shapes to be filled
            count = len(phrasings) if phrasings is not None else int(self.config["phrasings"])
            if snap_banks is None:
                snap_banks = {name: torch.zeros(count, dim) for name, dim in self.config.get("snap_banks", {}).items()}
            self.set_phrasings(torch.zeros(count, mapper.cfg.text_dim) if phrasings is None else phrasings,
                               self.config.get("snap_temperature", 0.0), rule, snap_banks)

    def set_phrasings(self, phrasings: torch.Tensor, snap_temperature: float, rule: str = "soft",
                      banks: dict[str, torch.Tensor] | None = None) -> None:
        """The training sentences' embeddings [S, D] by the head's own encoder, the snap rule and its temperature,
        and for rule "nearest" the same sentences by each second encoder ({name: [S, D_name]}, `snap_also_by`);
        all kept in the export."""
        banks = dict(banks or {})
        check_snap(rule, snap_temperature, list(banks))
        if any(len(bank) != len(phrasings) for bank in banks.values()):
            raise ValueError("every snap bank needs one row per training sentence")
        self.snap_rule, self.snap_temperature, self.snap_also_by = rule, float(snap_temperature), sorted(banks)
        self.config.update(snap=rule, snap_temperature=self.snap_temperature, phrasings=len(phrasings),
                           snap_banks={name: int(banks[name].shape[1]) for name in self.snap_also_by})
        self.register_buffer("phrasings", F.normalize(phrasings.float(), dim=-1))
        for name in SNAP_ENCODERS:
            if name in banks:
                self.register_buffer(f"phrasings_{name}", F.normalize(banks[name].float(), dim=-1))
            elif f"phrasings_{name}" in self._buffers:
                del self._buffers[f"phrasings_{name}"]

    def snap(self, text_emb: torch.Tensor, also: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The embedding the mapper reads for a sentence the head's encoder embeds as `text_emb` (`also`: the same
        sentences by the encoders of `snap_also_by`). "soft": the softmax-weighted mean (cosine /
        snap_temperature) of the training sentences' embeddings, unchanged at temperature 0; "nearest": the
        embedding of the training sentence with the highest combined cosine (`combined_cosines`)."""
        if self.snap_rule == "nearest":
            also = also or {}
            missing = [name for name in self.snap_also_by if name not in also]
            if missing:
                raise ValueError(f"this head snaps by {missing} too: give their embeddings of the sentences")
            sims = [F.normalize(text_emb.float(), dim=-1) @ self.phrasings.t()]
            sims += [F.normalize(also[name].float(), dim=-1) @ getattr(self, f"phrasings_{name}").t()
                     for name in self.snap_also_by]
            return self.phrasings[combined_cosines(sims).argmax(1)]
        if not self.snap_temperature:
            return text_emb
        weights = torch.softmax(F.normalize(text_emb.float(), dim=-1) @ self.phrasings.t() / self.snap_temperature,
                                dim=-1)
        return weights @ self.phrasings

    def forward(self, w: torch.Tensor, text_emb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        dw = self.mapper(w, text_emb)
        return dw, self.generator.synthesis(w + dw, noise_mode="const")

    def pretrained_config(self) -> dict:
        return {**self.config, "mapper": asdict(self.mapper.cfg)}

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict) -> "ManipulationModel":
        generator, _ = load_prior(config["prior_dir"])
        return cls(generator, TextMapper(from_dict(MapperConfig, config["mapper"])), config).eval()


# ------------------------------------------------------------------------------------------------ frozen parts

@dataclass
class Judges:
    oracle: nn.Module
    scorer: nn.Module


def get_judges(cache_dir: str | Path, size: int, oracle: dict | None = None, scorer: dict | None = None) -> Judges:
    """The frozen attribute oracle and image-text scorer (trained once per settings, cached)."""
    from animation.oracle import get_oracle, get_scorer

    return Judges(get_oracle(cache_dir, size=size, **(oracle or {})).eval().requires_grad_(False),
                  get_scorer(cache_dir, size=size, **(scorer or {})).eval().requires_grad_(False))


def invert_images(generator: Generator, encoder, images: torch.Tensor, steps: int, progress: bool = False
                  ) -> torch.Tensor:
    """W+ codes of images: the prior's encoder, then `steps` of optimisation (0: the encoder alone)."""
    if steps == 0:
        return encoder.encode(images)
    return invert(generator, images, steps=steps, init="encoder", encoder=encoder, progress=progress).ws


class ManipulationBatches:
    """B training faces and B sentences of distinct actions (so the contrastive loss has true negatives); a new
    seeded draw every epoch. `augment` perturbs the mapper's sentence embeddings (`TextAugmentConfig`)."""

    def __init__(self, ws: torch.Tensor, sentence_action: torch.Tensor, text_emb: torch.Tensor,
                 scorer_emb: torch.Tensor, batch_size: int, seed: int, steps_per_epoch: int = 100,
                 augment: TextAugmentConfig | None = None, factors: np.ndarray | None = None):
        self.ws, self.sentence_action, self.text_emb, self.scorer_emb = ws, sentence_action, text_emb, scorer_emb
        self.factors = factors  # the faces' own factors [N, F], for the paired term
        self.batch_size, self.seed, self.steps, self.epoch = batch_size, seed, steps_per_epoch, 0
        self.augment = augment or TextAugmentConfig()
        if self.augment.noise < 0:
            raise ValueError(f"text_augment.noise must be >= 0, got {self.augment.noise}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + dist.rank() * 104_729)
        by_action = [torch.nonzero(self.sentence_action == a).flatten() for a in range(len(ACTION_NAMES))]
        for _ in range(self.steps):
            faces = torch.randint(len(self.ws), (self.batch_size,), generator=gen)
            order = torch.randperm(len(ACTION_NAMES), generator=gen)
            actions = order[torch.arange(self.batch_size) % len(order)]
            sentence = torch.stack([by_action[a][torch.randint(len(by_action[a]), (1,), generator=gen)][0]
                                    for a in actions.tolist()])
            text_emb, scorer_emb = self.text_emb[sentence], self.scorer_emb[sentence]
            if self.augment.same_action_mix:
                other = torch.stack([by_action[a][torch.randint(len(by_action[a]), (1,), generator=gen)][0]
                                     for a in actions.tolist()])
                mix = torch.rand(self.batch_size, 1, generator=gen)
                text_emb = _unit(mix * _unit(text_emb) + (1 - mix) * _unit(self.text_emb[other]))
                scorer_emb = _unit(mix * _unit(scorer_emb) + (1 - mix) * _unit(self.scorer_emb[other]))
            if self.augment.noise:
                noise = torch.randn(text_emb.shape, generator=gen) / text_emb.shape[1] ** 0.5
                text_emb = _unit(text_emb) + self.augment.noise * noise
            batch = {"w": self.ws[faces], "text_emb": text_emb, "scorer_emb": scorer_emb, "action": actions}
            if self.factors is not None:
                batch["factors"] = torch.as_tensor(self.factors[faces.numpy()])
            yield batch


def kept_change(change: torch.Tensor, mask: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """[N, F] penalty on the oracle's readings' change where the action leaves a factor alone (`mask`), 0
    elsewhere: squared ("l2") or absolute ("l1"). The evaluation counts a factor as kept below a tenth of its
    range, where a squared penalty has almost no gradient left; the absolute one pulls on small moves as hard as
    on large ones."""
    return (change.abs() if norm == "l1" else change.square()) * mask


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class ManipulationObjective:
    def __init__(self, cfg: ManipulationConfig, judges: Judges, output_dir: Path,
                 preview: Callable[[nn.Module], torch.Tensor] | None = None, encoder: nn.Module | None = None,
                 text_anchor: torch.Tensor | None = None):
        self.cfg, self.judges, self.output_dir, self.preview = cfg, judges, output_dir, preview
        self.encoder = encoder  # the prior's (frozen) inversion encoder, for the cycle term
        self.text_anchor = text_anchor  # the scorer's mean training sentence, the origin of `loss.direction`
        if cfg.loss.direction and text_anchor is None:
            raise ValueError("loss.direction needs the mean training sentence's scorer embedding (text_anchor)")
        if cfg.loss.paired and encoder is None:
            raise ValueError("loss.paired needs the prior's encoder")

    @torch.no_grad()
    def acted_codes(self, factors: torch.Tensor, action: torch.Tensor, size: int) -> torch.Tensor:
        """The prior encoder's codes of the faces `factors` [B, F] rendered with their actions applied."""
        acted = np.concatenate([apply_action(f[None].numpy(), ACTION_NAMES[a])
                                for f, a in zip(factors, action.tolist())])
        return self.encoder.encode(face_tensors(acted, size))

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        lc, module = self.cfg.loss, getattr(model, "module", model)
        w, action = batch["w"], batch["action"]
        dw, edited = model(w, batch["text_emb"] if self.cfg.use_text else None)
        image_emb, text_emb = self.judges.scorer.encode_images(edited), batch["scorer_emb"]
        with torch.no_grad():
            reconstruction = module.generator.synthesis(w, noise_mode="const")
            before = self.judges.oracle(reconstruction)
        same = action[:, None] == action[None, :]

        def text_loss(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
            if lc.contrastive:
                return contrastive_text_loss(image_emb, text_emb, lc.temperature, same_text=same)
            return single_text_loss(image_emb, text_emb)

        terms = {"text": text_loss(image_emb, text_emb)}
        if lc.direction:
            with torch.no_grad():
                start_emb = self.judges.scorer.encode_images(reconstruction)
            terms["direction"] = text_loss(image_emb - start_emb, text_emb - self.text_anchor.to(text_emb.device))
        keep_mask = KEEP_MASK.to(w.device)[action]
        keep = (kept_change(self.judges.oracle(edited) - before, keep_mask, lc.keep_norm).sum()
                / keep_mask.sum().clamp(min=1))
        terms.update(offset=module.mapper.penalty(dw), keep=keep)
        if lc.paired:
            terms["paired"] = offset_penalty(w + dw - self.acted_codes(batch["factors"], action, edited.shape[-1]),
                                             module.mapper.w_std)
        if self.encoder is not None and lc.cycle:
            terms["cycle"] = offset_penalty(self.encoder(edited) - (w + dw), module.mapper.w_std)
        total = sum(getattr(lc, k) * v for k, v in terms.items())
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.preview is not None and dist.is_main():
            save_preview(self.output_dir, step, self.preview(getattr(model, "module", model)),
                         nrow=len(PREVIEW_ACTIONS) + 1)
        return {}


PREVIEW_ACTIONS = ["smile", "frown", "open_mouth", "close_eyes", "raise_brows", "turn_left", "turn_right"]


# ------------------------------------------------------------------------------------------------ inference

class TextManipulator:
    """Everything `heads manipulate` needs: the mapper with its generator, the prior's encoder and a text
    encoder. `edit(images, texts)` returns (edited images, W+ codes of the inputs, offsets)."""

    def __init__(self, model: ManipulationModel, encoder, text_encoder: TextEncoder | None, invert_steps: int = 0,
                 snap_encoders: dict[str, TextEncoder] | None = None):
        self.model, self.encoder, self.text_encoder = model.eval(), encoder, text_encoder
        self.invert_steps = invert_steps
        # the second sentence encoders the model's nearest snap consults (packaged, loaded on demand)
        self.snap_encoders = (snap_encoders if snap_encoders is not None
                              else {name: snap_encoder(name) for name in model.snap_also_by})

    @property
    def resolution(self) -> int:
        return self.model.generator.cfg.resolution

    def prepare_images(self, images) -> torch.Tensor:
        from data_tools.images import from_uint8_images, resize_images

        x = torch.as_tensor(images)
        if x.dtype == torch.uint8:  # [N, H, W, 3] or [H, W, 3]
            x = from_uint8_images(x.numpy() if x.ndim == 4 else x.numpy()[None])
        if x.ndim == 3:
            x = x[None]
        return resize_images(x.float(), self.resolution)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor | None:
        if not self.model.mapper.cfg.use_text:
            return None
        if self.text_encoder is None:
            raise ValueError("this manipulator reads text: give it a text encoder")
        texts = list(texts)
        also = {name: self.snap_encoders[name](texts).float().cpu() for name in self.model.snap_also_by}
        return self.model.snap(self.text_encoder(texts).float().cpu(), also)

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        return invert_images(self.model.generator, self.encoder, images, self.invert_steps)

    @torch.no_grad()
    def edit_codes(self, w: torch.Tensor, text_emb: torch.Tensor | None, batch_size: int = 256
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        outs, offsets = [], []
        for i in range(0, len(w), batch_size):
            dw, img = self.model(w[i:i + batch_size], None if text_emb is None else text_emb[i:i + batch_size])
            outs.append(img)
            offsets.append(dw)
        return torch.cat(outs), torch.cat(offsets)

    def edit(self, images, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.prepare_images(images)
        if len(texts) != len(x):
            raise ValueError(f"{len(x)} images but {len(texts)} sentences")
        w = self.invert(x)
        edited, dw = self.edit_codes(w, self.encode_texts(texts))
        return edited, w, dw

    def save_pretrained(self, directory: str | Path, run_config: ManipulationConfig | None = None) -> Path:
        extra = {"run_config.yaml": dump_config(run_config)} if run_config is not None else None
        return self.model.save_pretrained(directory, extra_files=extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path, text_encoder: TextEncoder | None,
                        map_location: str | torch.device = "cpu") -> "TextManipulator":
        model = ManipulationModel.from_pretrained(directory, map_location=map_location)
        _, encoder = load_prior(model.config["prior_dir"], map_location=map_location)
        return cls(model, encoder, text_encoder, int(model.config.get("invert_steps", 0)))


def manipulate_file(model_dir: str | Path, image: str | Path, text: str, out: str | Path, *,
                    text_encoder: TextEncoder | None, device: str = "cpu") -> Path:
    """`hdvila heads manipulate`: edit the face in an image file by a sentence; writes `out` (PNG) as the input's
    reconstruction beside the edit, upscaled for viewing."""
    from data_tools.images import read_image_file

    runner = TextManipulator.from_pretrained(model_dir, text_encoder, map_location=device)
    pixels = read_image_file(image)
    edited, w, _ = runner.edit(pixels, [text])
    with torch.no_grad():
        recon = runner.model.generator.synthesis(w, noise_mode="const")
    return save_image_grid(torch.cat([runner.prepare_images(pixels), recon, edited]).cpu(), out, nrow=3,
                           scale=max(1, 128 // runner.resolution))


# ------------------------------------------------------------------------------------------------ baseline

def optimise_edits(generator: Generator, w: torch.Tensor, scorer_emb: torch.Tensor, actions: Sequence[str],
                   judges: Judges, *, steps: int = 100, lr: float = 0.05, loss: ManipulationLossConfig | None = None,
                   subspace: TextMapper | None = None, encoder: nn.Module | None = None,
                   batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleCLIP-style latent optimisation: one W+ offset per (image, sentence), Adam on 1 - cos(scorer(G(w+Δw)),
    sentence) plus the mapper's offset, keep and (with `encoder`) cycle terms at the same weights. With
    `subspace` (a mapper with components), the offset lives in the same principal directions and is penalised
    the same way. No network is trained, so every edit pays `steps` generator forward and backward passes. `lr`
    is in units of w's spread. Returns (edited, Δw)."""
    from animation.inversion import frozen, w_statistics

    lc = loss or ManipulationLossConfig()
    _, w_std = w_statistics(generator)
    keep_mask = KEEP_MASK[[ACTION_NAMES.index(a) for a in actions]]
    use_subspace = subspace is not None and subspace.cfg.components > 0
    outs, offsets = [], []
    with frozen(generator):
        for i in range(0, len(w), batch_size):
            wb, target, mask = w[i:i + batch_size], scorer_emb[i:i + batch_size], keep_mask[i:i + batch_size]
            with torch.no_grad():
                before = judges.oracle(generator.synthesis(wb, noise_mode="const"))
            shape = (len(wb), subspace.cfg.components) if use_subspace else wb.shape
            coef = torch.zeros(shape, requires_grad=True)
            scale = subspace.component_std if use_subspace else w_std
            opt = torch.optim.Adam([coef], lr=lr * (1.0 if use_subspace else float(w_std)))

            def offset_of(c: torch.Tensor) -> torch.Tensor:
                return ((c * scale) @ subspace.basis).view_as(wb) if use_subspace else c

            for _ in range(steps):
                dw = offset_of(coef)
                edited = generator.synthesis(wb + dw, noise_mode="const")
                text = 1 - torch.cosine_similarity(judges.scorer.encode_images(edited), target, dim=-1)
                keep = kept_change(judges.oracle(edited) - before, mask, lc.keep_norm).sum(1) / mask.sum(1).clamp(min=1)
                size = coef.square().flatten(1).mean(1) if use_subspace else (dw / w_std).square().mean(dim=(1, 2))
                per_image = lc.text * text + lc.offset * size + lc.keep * keep
                if encoder is not None and lc.cycle:
                    per_image = per_image + lc.cycle * ((encoder(edited) - (wb + dw)) / w_std).square().mean(dim=(1, 2))
                opt.zero_grad(set_to_none=True)
                per_image.sum().backward()
                opt.step()
            with torch.no_grad():
                dw = offset_of(coef)
                outs.append(generator.synthesis(wb + dw, noise_mode="const"))
                offsets.append(dw.detach().clone())
    return torch.cat(outs), torch.cat(offsets)


# ------------------------------------------------------------------------------------------------ run

def prepare_training(cfg: ManipulationConfig, text_encoder: TextEncoder | None, progress: bool = True):
    """(generator, encoder, judges, batches, factors) for a run: training faces inverted, sentences embedded by
    both encoders; `factors` are the training faces' own [N, F]."""
    generator, encoder = load_prior(cfg.prior_dir)
    size = generator.cfg.resolution
    judges = get_judges(cfg.cache_dir, size, cfg.oracle, cfg.scorer)
    factors = cfg.split.faces("train", cfg.faces, cfg.train.seed)
    images = face_tensors(factors, size)
    ws = invert_images(generator, encoder, images, cfg.invert_steps, progress)
    pairs = action_sentences("train")
    sentences = [s for _, s in pairs]
    action = torch.tensor([ACTION_NAMES.index(a) for a, _ in pairs])
    with torch.no_grad():
        scorer_emb = judges.scorer.encode_texts(sentences).float().cpu()
        text_emb = (text_encoder(sentences).float().cpu() if cfg.use_text
                    else torch.zeros(len(sentences), 1))
    batches = ManipulationBatches(ws, action, text_emb, scorer_emb, cfg.train.batch_size, cfg.train.seed,
                                  augment=cfg.text_augment if cfg.use_text else None,
                                  factors=factors if cfg.loss.paired else None)
    return generator, encoder, judges, batches, torch.as_tensor(factors)


def build_mapper(cfg: HeadConfig, generator: Generator, text_dim: int, encoder, codes: torch.Tensor | None = None,
                 factors: torch.Tensor | None = None) -> TextMapper:
    """A fresh mapper for the generator, in the units of the encoder's w spread; with `cfg.components`, its edit
    subspace from the training `codes` (and, for `edit_basis=attributes`, their faces' `factors`)."""
    attributes = cfg.edit_basis == "attributes"
    mapper = TextMapper(MapperConfig(generator.num_ws, generator.w_dim, text_dim, cfg.hidden, cfg.layers,
                                     cfg.use_text, len(EXPRESSION_INDEX) if attributes else cfg.components))
    mapper.w_std.copy_(encoder.w_std)
    if attributes:
        if factors is None:
            raise ValueError("edit_basis=attributes needs the training faces' factors")
        basis, r2 = attribute_basis(codes, factors, EXPRESSION_INDEX, cfg.components)
        mapper.set_basis(basis, codes)
        log.info("edit basis: one direction per expression factor; read-out R^2 %s",
                 ", ".join(f"{n} {v:.2f}" for n, v in zip(FACTOR_NAMES, r2.tolist())))
    elif cfg.components:
        mapper.set_code_statistics(codes)
    return mapper


def run_train_manipulation(cfg: ManipulationConfig, text_encoder: TextEncoder | None, resume: bool = False,
                           progress: bool = True) -> dict[str, Any] | None:
    """Train the mapper against the frozen prior and judges; export to output_dir/manipulator."""
    out = start_run(cfg)
    generator, encoder, judges, batches, factors = prepare_training(cfg, text_encoder, progress)
    mapper = build_mapper(cfg, generator, batches.text_emb.shape[1], encoder, batches.ws, factors)
    config = {"prior_dir": str(cfg.prior_dir), "text_model": str(cfg.text_model), "invert_steps": cfg.invert_steps,
              "snap": cfg.snap if cfg.use_text else "soft", "snap_temperature": cfg.snap_temperature if cfg.use_text
              else 0.0}
    snap_encoders = {name: snap_encoder(name) for name in cfg.snap_also_by} if cfg.use_text else {}
    with torch.no_grad():  # the training sentences by each second encoder, in the order of batches.text_emb
        banks = {name: encode([s for _, s in action_sentences("train")]).float().cpu()
                 for name, encode in snap_encoders.items()}
    model = ManipulationModel(generator, mapper, config, phrasings=batches.text_emb if cfg.use_text else None,
                              snap_banks=banks)
    preview_faces = face_tensors(cfg.split.faces("val", 4, 0), generator.cfg.resolution)
    preview_texts = {a: s for a, s in reversed(action_sentences("test"))}

    def preview(module: nn.Module) -> torch.Tensor:
        runner = TextManipulator(module, encoder, text_encoder, cfg.invert_steps, snap_encoders)
        w = runner.invert(preview_faces)
        rows = []
        for face in range(len(preview_faces)):
            texts = [preview_texts[a] for a in PREVIEW_ACTIONS]
            text_emb = runner.encode_texts(texts)
            edited, _ = runner.edit_codes(w[face:face + 1].expand(len(texts), -1, -1), text_emb)
            rows += [preview_faces[face:face + 1], edited]
        module.train()
        return torch.cat(rows)

    encoder.requires_grad_(False).eval()
    objective = ManipulationObjective(cfg, judges, out, preview, encoder=encoder,
                                      text_anchor=batches.scorer_emb.mean(0))
    trainer = Trainer(cfg.train, cfg.optim, model, objective, batches, out, epoch_setter=batches.set_epoch,
                      resume=resume)
    t0 = time.perf_counter()
    summary = trainer.fit()
    if dist.is_main():
        model.mapper.eval()
        TextManipulator(model, encoder, text_encoder, cfg.invert_steps, snap_encoders).save_pretrained(
            out / "manipulator", run_config=cfg)
        save_image_grid(preview(model), out / "preview.png", nrow=len(PREVIEW_ACTIONS) + 1, scale=3)
        log.info("manipulation mapper trained in %.0f s", time.perf_counter() - t0)
    dist.barrier()
    return run_summary(summary, cfg)


__all__ = ["SNAP_ENCODERS", "SNAP_RULES", "ManipulationConfig", "ManipulationLossConfig", "ManipulationModel",
           "TextAugmentConfig", "TextManipulator", "combined_cosines", "get_judges", "invert_images", "manipulate_file",
           "optimise_edits", "run_train_manipulation", "snap_encoder"]
