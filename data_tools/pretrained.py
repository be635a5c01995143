"""One pretrained-folder format for every model kind, and the mixin that gives a model save/from_pretrained.

A folder holds

    config.json         {"format": "hdvila-pretrained", "format_version": 1, "kind": "<model kind>",
                         "config": {...what rebuilds the model...}, "meta": {...free-form facts...},
                         "weights": {"model": {"file": "model.safetensors", "sha256": "..."}, ...},
                         "files": ["tokenizer", "run_config.yaml", ...]}
    model.safetensors   (and any further weight files, e.g. discriminator.safetensors)
    <extra files>       a tokenizer folder, the training run's config, a nested pretrained folder...

The folder is written as a whole (`atomic_directory`: readers see the old folder or the complete new one, every
file fsynced) and loading checks each weight file's sha256, so a config never pairs with other weights. Weights
are safetensors: loading unpickles nothing.

    class MyNet(PretrainedMixin, nn.Module):
        pretrained_kind = "my-net"
        def pretrained_config(self) -> dict: return {"width": self.width}
        @classmethod
        def from_pretrained_config(cls, config, meta): return cls(**config)

    net.save_pretrained("out/net", meta={"accuracy": 0.9})
    net = MyNet.from_pretrained("out/net")

Folders written before this format (each package had its own) still load: a package registers a reader for its
old layout in `LEGACY_FORMATS`, and `migrate_pretrained(dir)` rewrites such a folder in this format.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar, Union

import torch

from .files import atomic_directory, recover_atomic_directory
from .registry import Registry

FORMAT = "hdvila-pretrained"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
DEFAULT_WEIGHTS = "model"

ExtraFile = Union[bytes, str, Path, Callable[[Path], Any]]
M = TypeVar("M", bound="PretrainedMixin")


class PretrainedError(ValueError):
    """A folder that is not a readable pretrained folder of the expected kind."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cpu_tensors(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (copies also untie shared storage, which safetensors refuses)."""
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu", copy=True)
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


@dataclass
class PretrainedFolder:
    """What `read_pretrained` found: the model kind, its config, free-form meta and where each weight file is."""

    path: Path
    kind: str
    config: dict
    meta: dict = field(default_factory=dict)
    weights: dict[str, Path] = field(default_factory=dict)  # weights name -> file
    checksums: dict[str, str | None] = field(default_factory=dict)  # weights name -> sha256 (None: legacy, unknown)
    files: list[str] = field(default_factory=list)  # extra files and folders, relative to `path`
    legacy: str | None = None  # name of the legacy reader that understood the folder, if any

    def tensors(self, name: str = DEFAULT_WEIGHTS, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The named weight file's tensors, after checking its sha256."""
        from safetensors.torch import load

        if name not in self.weights:
            raise PretrainedError(f"{self.path}: no weights named {name!r}; has {sorted(self.weights)}")
        blob = self.weights[name].read_bytes()
        expected = self.checksums.get(name)
        if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
            raise PretrainedError(f"{self.weights[name]}: sha256 does not match {CONFIG_FILE} (damaged or replaced "
                                  "weights, or an interrupted copy)")
        state = load(blob)
        return {k: v.to(device) for k, v in state.items()} if str(device) != "cpu" else state

    def file(self, name: str) -> Path:
        return self.path / name


# Readers of folders written before this format: name -> reader(path) returning a PretrainedFolder, or None when
# the folder is not in that layout. Packages register theirs next to the model they describe.
LEGACY_FORMATS: Registry[Callable[[Path], PretrainedFolder | None]] = Registry("legacy pretrained format")


def is_pretrained_folder(directory: str | Path) -> bool:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


def save_pretrained_folder(directory: str | Path, kind: str, config: Mapping[str, Any],
                           weights: Mapping[str, Mapping[str, torch.Tensor]], *, meta: Mapping[str, Any] | None = None,
                           extra_files: Mapping[str, ExtraFile] | None = None,
                           dtype: torch.dtype | None = None) -> Path:
    """Write a pretrained folder as a whole. `weights` maps a name ("model", "discriminator") to a state dict,
    stored as `<name>.safetensors`. `extra_files` maps a relative name to bytes, text, a file or folder to copy,
    or a callable that writes it given its path. Returns `directory`."""
    from safetensors.torch import save

    if not weights:
        raise ValueError("a pretrained folder needs at least one weight file")
    record: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                              "config": json.loads(json.dumps(dict(config), default=_plain)),
                              "meta": json.loads(json.dumps(dict(meta or {}), default=_plain)),
                              "weights": {}, "files": sorted(extra_files or {})}
    with atomic_directory(directory) as tmp:
        for name, state in weights.items():
            filename = f"{name}.safetensors"
            blob = save(cpu_tensors(state, dtype), metadata={"format": "pt", "kind": kind})
            (tmp / filename).write_bytes(blob)
            record["weights"][name] = {"file": filename, "sha256": hashlib.sha256(blob).hexdigest()}
        for name, content in (extra_files or {}).items():
            _write_extra(tmp, name, content)
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(directory)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not plain config data")


def _write_extra(root: Path, name: str, content: ExtraFile) -> None:
    target = (root / name).resolve()
    if root.resolve() not in target.parents:
        raise ValueError(f"extra file {name!r} would land outside the folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    if callable(content):
        content(target)
    elif isinstance(content, bytes):
        target.write_bytes(content)
    elif isinstance(content, str):
        target.write_text(content, encoding="utf-8")
    elif isinstance(content, Path):
        if content.is_dir():
            shutil.copytree(content, target)
        else:
            shutil.copyfile(content, target)
    else:
        raise TypeError(f"extra file {name!r}: expected bytes, str, Path or a callable, got {type(content).__name__}")


def read_pretrained(directory: str | Path, kind: str | tuple[str, ...] | None = None) -> PretrainedFolder:
    """Read a pretrained folder's config (weights are read on `tensors()`); older layouts go through their
    registered legacy reader. `kind` (one or several) makes a folder of another model kind an error."""
    path = Path(directory)
    recover_atomic_directory(path)  # a writer killed between the two renames of the fallback publish
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such pretrained folder")
    if is_pretrained_folder(path):
        folder = _read_current(path)
    else:
        folder = _read_legacy(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and folder.kind not in kinds:
        raise PretrainedError(f"{path} holds a {folder.kind!r}, not a {' or '.join(map(repr, kinds))}")
    return folder


def _read_current(path: Path) -> PretrainedFolder:
    record = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise PretrainedError(f"{path}: pretrained format version {version!r}; this code reads {FORMAT_VERSION}")
    if not isinstance(record.get("kind"), str) or not isinstance(record.get("weights"), dict):
        raise PretrainedError(f"{path}/{CONFIG_FILE}: no model kind or weights table")
    weights, checksums = {}, {}
    for name, entry in record["weights"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise PretrainedError(f"{path}/{CONFIG_FILE}: weights {name!r} names no file")
        file = Path(entry["file"])
        if file.is_absolute() or ".." in file.parts:
            raise PretrainedError(f"{path}: weight file {entry['file']!r} is outside the folder")
        weights[name], checksums[name] = path / file, entry.get("sha256")
    return PretrainedFolder(path, str(record["kind"]), dict(record.get("config") or {}), dict(record.get("meta") or {}),
                            weights, checksums, list(record.get("files") or []))


def _read_legacy(path: Path) -> PretrainedFolder:
    for name, reader in LEGACY_FORMATS.items():
        folder = reader(path)
        if folder is not None:
            folder.legacy = name
            return folder
    known = ", ".join(LEGACY_FORMATS.list()) or "none registered"
    raise PretrainedError(f"{path} is not a pretrained folder: no {CONFIG_FILE} of format {FORMAT!r}, and no older "
                          f"layout matched (known: {known}); import the package that wrote it")


def migrate_pretrained(directory: str | Path, output: str | Path | None = None) -> Path:
    """Rewrite a folder of an older layout in the current format (in place unless `output` is given).
    A folder already in the current format is left as it is. Returns the folder written."""
    folder = read_pretrained(directory)
    output = Path(output) if output is not None else folder.path
    if folder.legacy is None:
        if output.resolve() != folder.path.resolve():
            shutil.copytree(folder.path, output, dirs_exist_ok=False)
        return output
    weights = {name: folder.tensors(name) for name in folder.weights}
    extras: dict[str, ExtraFile] = {}
    for name in folder.files:
        source = folder.path / name
        if not source.exists():
            raise PretrainedError(f"{source}: listed by the {folder.legacy} reader but missing")
        extras[name] = source.read_bytes() if source.is_file() else _copied_folder(source)
    return save_pretrained_folder(output, folder.kind, folder.config, weights, meta=folder.meta, extra_files=extras)


def _copied_folder(source: Path) -> Callable[[Path], Any]:
    # read into memory first: an in-place migration replaces the folder the copy would read from
    files = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}

    def write(target: Path) -> None:
        for rel, data in files.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
        target.mkdir(parents=True, exist_ok=True)

    return write


class PretrainedMixin:
    """`save_pretrained(dir)` / `from_pretrained(dir)` for an nn.Module whose constructor a plain config rebuilds.

    A subclass sets `pretrained_kind` and implements `pretrained_config()` and `from_pretrained_config()`. Models
    with more than their own state dict (a GAN's discriminator, an animator's encoder) override
    `pretrained_weights()` / `load_pretrained_weights()`. `pretrained_meta()` (default: the model's `meta` dict,
    if it has one) is saved as the folder's meta and handed back to `from_pretrained_config`.
    """

    pretrained_kind: ClassVar[str] = ""

    def pretrained_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must say how to rebuild itself (pretrained_config)")

    @classmethod
    def from_pretrained_config(cls: type[M], config: dict[str, Any], meta: dict[str, Any]) -> M:
        raise NotImplementedError(f"{cls.__name__} must say how to build itself from its config")

    def pretrained_meta(self) -> dict[str, Any]:
        meta = getattr(self, "meta", None)
        return dict(meta) if isinstance(meta, dict) else {}

    def pretrained_weights(self) -> dict[str, Mapping[str, torch.Tensor]]:
        return {DEFAULT_WEIGHTS: self.state_dict()}  # type: ignore[attr-defined]

    def load_pretrained_weights(self, folder: PretrainedFolder, device: str | torch.device) -> None:
        self.load_state_dict(folder.tensors(DEFAULT_WEIGHTS, device), strict=True)  # type: ignore[attr-defined]

    def save_pretrained(self, directory: str | Path, *, meta: Mapping[str, Any] | None = None,
                        extra_files: Mapping[str, ExtraFile] | None = None, dtype: torch.dtype | None = None) -> Path:
        if not self.pretrained_kind:
            raise NotImplementedError(f"{type(self).__name__} sets no pretrained_kind")
        meta = {**self.pretrained_meta(), **(meta or {})}
        return save_pretrained_folder(directory, self.pretrained_kind, self.pretrained_config(),
                                      self.pretrained_weights(), meta=meta, extra_files=extra_files, dtype=dtype)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu") -> M:
        folder = read_pretrained(directory, cls.pretrained_kind)
        model = cls.from_pretrained_config(folder.config, folder.meta)
        model.load_pretrained_weights(folder, map_location)
        if hasattr(model, "to"):
            model = model.to(map_location)  # type: ignore[attr-defined]
        return model
