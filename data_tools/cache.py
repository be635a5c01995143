"""Train-once artefacts (feature classifiers, oracles, scorers, inversions): keyed by every setting, built on a
miss, kept on disk.

    oracle = cached("runs/cache", "face-oracle", settings, build=lambda: train_oracle(**settings),
                    load=FaceOracle.from_pretrained, save=lambda m, p: m.save_pretrained(p))

The key is `<prefix>-<readable parts>-<sha256 of the settings, 12 hex>-v<version>`: any change in any setting
builds a new entry instead of silently reusing an old one, and the readable parts let a person find it. An entry
that no longer loads (damaged, an older format) is rebuilt, with a warning. `save` must write atomically (a
pretrained folder or `data_tools.files.atomic_open`), so concurrent builders leave one complete entry.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from .logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)  # a set's own order changes from process to process
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def settings_digest(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def cache_key(prefix: str, settings: Mapping[str, Any], version: int | str = 1, readable: Sequence[str] = ()) -> str:
    """File-name-safe key; `readable` names settings to spell out (e.g. size, seed) before the digest."""
    parts = [prefix] + [f"{name}{settings[name]}" for name in readable]
    parts += [settings_digest(settings), f"v{version}"]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(str(p) for p in parts))


def cached(cache_dir: str | Path, prefix: str, settings: Mapping[str, Any], *, build: Callable[[], T],
           load: Callable[[Path], T], save: Callable[[T, Path], Any], version: int | str = 1,
           readable: Sequence[str] = ()) -> T:
    """The entry for `settings` under `cache_dir`, loaded if present and readable, else built and saved."""
    path = Path(cache_dir) / cache_key(prefix, settings, version, readable)
    if path.exists():
        try:
            return load(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is rebuilt rather than fatal
            log.warning("cache entry %s unreadable (%s: %s); building it again", path, type(exc).__name__, exc)
    value = build()
    save(value, path)
    return value
