"""File helpers of the whole platform: atomic writes (temporary name in the same folder, fsync, rename) and
reading UTF-8 text with a readable error."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _default_mode() -> int:
    """Permissions a plain open() would give (mkstemp's 0600 would hide shards from other users)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()
_DIR_MODE = _FILE_MODE | ((_FILE_MODE & 0o444) >> 2)  # r -> r-x, as mkdir under the same umask would give


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on clean exit fsync and rename it onto `path`.

    A crash or exception leaves `path` untouched (and removes the temporary file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete `.NAME.*.tmp` files that a killed writer left behind; returns how many."""
    removed = 0
    for p in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on clean exit it replaces `path` as a whole.

    Readers see either the old folder or the complete new one, never a half-written mix. An exception
    removes the temporary folder and leaves `path` as it was.
    """
    import shutil
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, _DIR_MODE)  # mkdtemp's 0700 would hide it from other users
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class TextFileError(ValueError):
    """A text file that cannot be read as UTF-8; the message names the file and the reason."""


def read_utf8_text(path: str | os.PathLike) -> str:
    """The file's text (UTF-8, a byte-order mark dropped), or TextFileError saying why not."""
    path = Path(path)
    if path.is_dir():
        raise TextFileError(f"{path}: is a folder, not a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TextFileError(f"{path}: file not found") from None
    except OSError as exc:
        raise TextFileError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextFileError(f"{path}: not valid UTF-8: first bad byte at byte offset {exc.start}") from None
