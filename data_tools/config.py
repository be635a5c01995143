"""Typed configs: YAML files -> nested dataclasses, dotted `key=value` overrides, resolved copy per run.

Every command's config is a dataclass tree. `load_config(Cls, "pretrain/small", ["train.max_steps=20"])`
reads the YAML (a file path, or a name looked up in the roots given to `register_config_root`; hdvila registers
its packaged `hdvila/configs`), applies the overrides (values parsed as YAML, so `a.b=[1,2]` and `a.c=null` work), checks
every key and type, and returns an instance. `save_config(cfg, run_dir / "config.yaml")` writes the resolved
config atomically.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar, Union

import yaml

from .files import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` to the annotated type `tp`, or raise ConfigError naming `where`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, f"{where}." if where else "")
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-3 (no dot in the mantissa) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{where + key}'{hint}")
    kwargs = {k: _coerce(v, hints[k], where + k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict | None) -> T:
    """Build a config dataclass from a plain mapping, checking keys and types."""
    return _from_dict(cls, dict(data or {}))


def to_dict(cfg: Any) -> Any:
    """Plain-data view of a config (tuples become lists), suitable for YAML/JSON."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Set dotted keys in a nested mapping (the mapping is changed in place and returned)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


_CONFIG_ROOTS: list[Path] = []


def register_config_root(path: str | Path) -> None:
    """Add a folder of YAML configs whose files `resolve_config` finds by name (`pretrain/small`)."""
    path = Path(path).resolve()
    if path not in _CONFIG_ROOTS:
        _CONFIG_ROOTS.append(path)


def find_named_file(name_or_path: str | Path, roots: Iterable[Path], suffixes: tuple[str, ...]) -> Path:
    """An existing file path as it is; otherwise `name` or `name<suffix>` under the first root holding it.
    A miss raises FileNotFoundError naming the closest names found under the roots."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    roots = list(roots)
    text = str(name_or_path)
    candidates = [text] if text.endswith(suffixes) else [text + suffix for suffix in suffixes]
    if not path.is_absolute():
        for root in roots:
            for candidate in candidates:
                if (root / candidate).is_file():
                    return root / candidate
    names = sorted({f.relative_to(root).with_suffix("").as_posix()
                    for root in roots if root.is_dir() for f in root.rglob("*") if f.suffix in suffixes})
    close = difflib.get_close_matches(str(Path(text).with_suffix("")) if text.endswith(suffixes) else text,
                                      names, n=5, cutoff=0.4)
    where = ", ".join(str(r) for r in roots) or "no registered folders"
    hint = f"; close names: {', '.join(close)}" if close else (f"; known names: {', '.join(names)}" if names else "")
    raise FileNotFoundError(f"{name_or_path}: no such file, nor a name under {where}{hint}")


def resolve_config(name_or_path: str | Path) -> Path:
    """The YAML for a config name (`pretrain/small` or `pretrain/small.yaml`, looked up in the registered roots)
    or a path to an existing file (which wins). A miss raises ConfigError listing close names."""
    try:
        return find_named_file(name_or_path, _CONFIG_ROOTS, (".yaml", ".yml"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config not found: {exc}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of `cls`, updated by the YAML at `path` (a file or a config name, see `resolve_config`),
    updated by the dotted overrides."""
    data: dict = to_dict(cls())
    if path is not None:
        path = resolve_config(path)
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        deep_update(data, loaded)
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def replace_checked(cfg: T, what: str = "config", **overrides: Any) -> T:
    """A deep copy of dataclass `cfg` with top-level `overrides`; an unknown key is an error (never dropped)."""
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; known: {sorted(known)}")
    return dataclasses.replace(copy.deepcopy(cfg), **copy.deepcopy(overrides))


def deep_update(base: dict, new: dict, replace_keys: Iterable[str] = ()) -> dict:
    """Merge `new` into `base` in place, recursing into mappings present in both; returns `base`.
    Mappings under `replace_keys` (free-form keyword dicts) are replaced whole rather than merged."""
    replace_keys = frozenset(replace_keys)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in replace_keys:
            deep_update(base[key], value, replace_keys)
        else:
            base[key] = value
    return base


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, dump_config(cfg))
