"""Named model configs, open_clip/timm style: YAML files in model_configs/ are registered at import.

    list_models()                       -> ["hdvila-base", "hdvila-paper", "hdvila-small", "hdvila-tiny"]
    create_model("hdvila-tiny", video={"d": 32}, vtm=True)   # nested overrides merge into the config
    register_model_config("mine", "path/to/mine.yaml")        # or a mapping
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from data_tools.config import ConfigError, to_dict

from .config import HDVILAConfig, config_from_dict, deep_update
from .hdvila import HDVILA

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

_REGISTRY: dict[str, dict[str, Any]] = {}


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def register_model_config(name: str, path_or_dict: str | os.PathLike | dict[str, Any]) -> None:
    """Register (or replace) a named config from a YAML file or a (partial) mapping over the defaults."""
    data = copy.deepcopy(path_or_dict) if isinstance(path_or_dict, dict) else _read_yaml(Path(path_or_dict))
    data["name"] = name
    config_from_dict(data)  # fail at registration, not at first use
    _REGISTRY[name] = data


def _scan_builtin() -> None:
    for path in sorted(MODEL_CONFIG_DIR.glob("*.yaml")):
        register_model_config(path.stem, path)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_config(name: str, **overrides: Any) -> HDVILAConfig:
    """The named config with nested `overrides` merged in (e.g. text={"init_from": "/models/bert"})."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    return config_from_dict(deep_update(copy.deepcopy(_REGISTRY[name]), overrides))


def create_model(name_or_config: str | HDVILAConfig | dict[str, Any], **overrides: Any) -> HDVILA:
    """Build a randomly initialised HDVILA (plus any local weights the config names).

    To count parameters without allocating memory, build under `with torch.device("meta"):`
    (local weights are then skipped).
    """
    import torch

    if isinstance(name_or_config, str):
        config = get_model_config(name_or_config, **overrides)
    else:
        data = to_dict(name_or_config) if isinstance(name_or_config, HDVILAConfig) else copy.deepcopy(name_or_config)
        config = config_from_dict(deep_update(data, overrides))
    on_meta = torch.empty(0).device.type == "meta"  # inside `with torch.device("meta")`
    return HDVILA(config, load_weights=not on_meta)


_scan_builtin()
