"""The encode API: a pretrained HD-VILA as a text and video embedder.

    import hdvila
    model = hdvila.load_pretrained("runs/demo/pretrain/pretrained")
    t = model.encode_text(["a red circle moves left", "a rabbit in a meadow"])    # [2, D], L2-normalised
    v = model.encode_video(["clip.mp4", frames_uint8_THW3])                     # [2, D], L2-normalised
    scores = t @ v.T
    model.save_pretrained("my_model")

Videos are sampled as in evaluation: `n_segments` evenly spaced segments, each one high-res keyframe plus
low-res neighbours, centre crop (settings in the folder's inference.yaml, written at export). Paths and
bytes are decoded by the data layer's decoders; frame arrays are resized in memory.

A pretrained folder is the shared format (data_tools.pretrained, kind "hdvila": config.json + model.safetensors)
with tokenizer/ and inference.yaml as extra files; folders of the older layout (config.yaml + model.safetensors)
load too, and `hdvila pretrained migrate DIR` rewrites them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from data_tools.config import dump_config, load_config
from data_tools.decoders import DEFAULT_BACKEND
from data_tools.loading.pipeline import clip_from_frames, decode_clip
from data_tools.loading.sampling import ClipSamplingConfig
from data_tools.pretrained import CONFIG_FILE, read_pretrained
from data_tools.tokenizer import DEFAULT_TOKENIZER_DIR, CaptionTokenizer, load_tokenizer

from .models import HDVILA
from .models.hdvila import LEGACY_WEIGHTS_FILE, PRETRAINED_KIND, TOKENIZER_DIR

INFERENCE_FILE = "inference.yaml"


@dataclass
class InferenceConfig:
    """How a pretrained folder turns a video or a sentence into model input."""

    n_segments: int = 4  # segments averaged per video (HD-VILA tests with 4 on MSR-VTT)
    num_frm: int | None = None  # frames per segment; None = the model's (time embeddings interpolate)
    sample_rate: int = 12
    canvas_short_side: int | None = None
    max_text_len: int = 40
    backend: str = DEFAULT_BACKEND


class VideoTextEncoder:
    """An HD-VILA model with its tokenizer and sampling settings; embeddings come back on the CPU in fp32."""

    def __init__(self, model: HDVILA, tokenizer: CaptionTokenizer | str | os.PathLike | None = None,
                 inference: InferenceConfig | None = None, device: str | torch.device = "cpu",
                 tokenizer_dir: str | os.PathLike | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if isinstance(tokenizer, CaptionTokenizer):
            self.tokenizer = tokenizer
            self.tokenizer_dir = tokenizer_dir
        else:
            self.tokenizer = load_tokenizer(tokenizer)
            self.tokenizer_dir = tokenizer if tokenizer is not None else DEFAULT_TOKENIZER_DIR
        if self.tokenizer.vocab_size != model.config.text.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} tokens, the model "
                             f"{model.config.text.vocab_size}")
        self.inference = inference or InferenceConfig()

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Half-precision weights (a bf16 training engine's module) run under autocast; fp32 runs as is."""
        dtype = next(self.model.parameters()).dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def sampling(self) -> ClipSamplingConfig:
        video = self.model.config.video
        inf = self.inference
        return ClipSamplingConfig(n_segments=inf.n_segments, num_frm=inf.num_frm or video.num_frm, sample_rate=inf.sample_rate,
                                  hr_size=tuple(video.hr_size), lr_factor=video.lr_factor, hflip_prob=0.0,
                                  random=False, canvas_short_side=inf.canvas_short_side)

    # --- text

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), max_len=self.inference.max_text_len)
        return {k: torch.from_numpy(v) for k, v in enc.items()}

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """[N, D] L2-normalised embeddings of N sentences."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text takes a list of strings")
        out = []
        for start in tqdm(range(0, len(texts), batch_size), desc="encode text", disable=not progress, leave=False):
            enc = self.tokenize(texts[start:start + batch_size])
            with self._autocast():
                emb, _ = self.model.encode_text(enc["input_ids"].to(self.device),
                                                enc["attention_mask"].to(self.device))
            out.append(emb.float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    # --- video

    def load_clip(self, video: Any) -> dict[str, np.ndarray]:
        """One HD-VILA sample (hr, lr uint8 arrays) from a path, encoded bytes or a [T, H, W, 3] uint8 array."""
        if isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)):
            source = bytes(video) if isinstance(video, (bytearray, memoryview)) else video
            if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
                raise FileNotFoundError(f"video not found: {source}")
            return decode_clip(source, None, {}, self.sampling, self.inference.backend, seed=0)
        if isinstance(video, (torch.Tensor, np.ndarray)):
            return clip_from_frames(video, self.sampling)
        raise TypeError(f"expected a video path, bytes or a [T, H, W, 3] uint8 array, got {type(video).__name__}")

    @torch.no_grad()
    def encode_clips(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """Embeddings of a batch already sampled: hr [B, S, H, W, 3], lr [B, S, T-1, h, w, 3] uint8."""
        with self._autocast():
            emb, _ = self.model.encode_video(hr.to(self.device), lr.to(self.device))
        return emb.float().cpu()

    @torch.no_grad()
    def encode_video(self, videos: Sequence[Any], batch_size: int = 8, progress: bool = False) -> torch.Tensor:
        """[N, D] L2-normalised embeddings of N videos (paths, bytes or [T, H, W, 3] uint8 frame arrays);
        each is the projection of its tokens averaged over all segments."""
        if isinstance(videos, (str, os.PathLike, bytes)) or (isinstance(videos, (torch.Tensor, np.ndarray))
                                                             and videos.ndim == 4):
            videos = [videos]
        videos = list(videos)
        out = []
        for start in tqdm(range(0, len(videos), batch_size), desc="encode video", disable=not progress,
                          leave=False):
            clips = [self.load_clip(v) for v in videos[start:start + batch_size]]
            hr = torch.from_numpy(np.stack([c["hr"] for c in clips]))
            lr = torch.from_numpy(np.stack([c["lr"] for c in clips]))
            out.append(self.encode_clips(hr, lr))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    # --- files

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The model's pretrained folder with tokenizer/ and inference.yaml, written as a whole."""
        tokenizer = self.tokenizer_dir
        if tokenizer is None:
            raise ValueError("this encoder's tokenizer object has no folder to copy; pass tokenizer_dir=")
        return self.model.save_pretrained(directory, tokenizer=tokenizer,
                                          extra_files={INFERENCE_FILE: dump_config(self.inference)})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> VideoTextEncoder:
        """A folder of the current format or of the older layout (config.yaml + model.safetensors)."""
        directory = Path(directory)
        if directory.is_dir() and not any((directory / name).is_file() for name in (CONFIG_FILE, LEGACY_WEIGHTS_FILE)):
            raise FileNotFoundError(f"{directory} is not a pretrained folder (no {CONFIG_FILE}); "
                                    "`hdvila pretrain` and `hdvila retrieval finetune` export one")
        folder = read_pretrained(directory, PRETRAINED_KIND)
        model = HDVILA.from_pretrained_config(folder.config, folder.meta)
        model.load_pretrained_weights(folder, "cpu")
        tokenizer_dir = folder.file(TOKENIZER_DIR)
        tokenizer_dir = tokenizer_dir if tokenizer_dir.is_dir() else None
        inference_path = folder.file(INFERENCE_FILE)
        inference = load_config(InferenceConfig, inference_path) if inference_path.is_file() else InferenceConfig()
        return cls(model, tokenizer_dir, inference, device, tokenizer_dir=tokenizer_dir)


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu") -> VideoTextEncoder:
    """A pretrained folder (from `hdvila pretrain`, `hdvila retrieval finetune` or `save_pretrained`) as an
    encoder with `encode_text(list_of_str)` and `encode_video(list_of_paths_or_frames)`. CPU by default;
    nothing is downloaded and nothing is unpickled."""
    return VideoTextEncoder.from_pretrained(path, device)
