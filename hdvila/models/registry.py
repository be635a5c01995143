"""Named model configs, open_clip/timm style: YAML files in model_configs/ are registered at import.

    list_models()                       -> ["hdvila-base", "hdvila-paper", "hdvila-small", "hdvila-tiny"]
    create_model("hdvila-tiny", video={"d": 32}, vtm=True)   # nested overrides merge into the config
    register_model_config("mine", "path/to/mine.yaml")        # or a mapping

The names live in `HDVILA_MODELS`, a `data_tools.registry.Registry` of config mappings (partial mappings over
the defaults), so an unknown name fails with the registry's error and a did-you-mean hint.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from data_tools.config import ConfigError, deep_update, to_dict
from data_tools.registry import Registry

from .config import REPLACE_KEYS, HDVILAConfig, config_from_dict
from .hdvila import HDVILA

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

HDVILA_MODELS: Registry[dict[str, Any]] = Registry("HD-VILA model")


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def register_model_config(name: str, path_or_dict: str | os.PathLike | dict[str, Any], *,
                          replace: bool = False) -> None:
    """Register a named config from a YAML file or a (partial) mapping over the defaults. The config is
    checked here, not at first use; a taken name needs `replace=True`."""
    data = copy.deepcopy(path_or_dict) if isinstance(path_or_dict, dict) else _read_yaml(Path(path_or_dict))
    data["name"] = name
    config_from_dict(data)
    HDVILA_MODELS.register(name, data, replace=replace)


def _scan_builtin() -> None:
    for path in sorted(MODEL_CONFIG_DIR.glob("*.yaml")):
        register_model_config(path.stem, path)


def list_models() -> list[str]:
    return HDVILA_MODELS.list()


def get_model_config(name: str, **overrides: Any) -> HDVILAConfig:
    """The named config with nested `overrides` merged in (e.g. text={"init_from": "/models/bert"})."""
    data = copy.deepcopy(HDVILA_MODELS.get(name))
    return config_from_dict(deep_update(data, overrides, replace_keys=REPLACE_KEYS))


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
        config = config_from_dict(deep_update(data, overrides, replace_keys=REPLACE_KEYS))
    on_meta = torch.empty(0).device.type == "meta"  # inside `with torch.device("meta")`
    return HDVILA(config, load_weights=not on_meta)


_scan_builtin()
