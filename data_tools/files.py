"""File helpers of the whole platform: durable atomic writes and reading UTF-8 text with a readable error.

Atomic writes are durable: the new file (or every file and folder of a new tree) is fsynced, renamed into
place, and then its parent folder is fsynced so that the rename itself survives a power loss.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def _default_mode() -> int:
    """Permissions a plain open() would give (mkstemp's 0600 would hide shards from other users)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()
_DIR_MODE = _FILE_MODE | ((_FILE_MODE & 0o444) >> 2)  # r -> r-x, as mkdir under the same umask would give


def _fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or folder by path; silent where it cannot be opened or the OS cannot flush it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk; silent where the OS cannot."""
    _fsync_path(folder)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and every folder under `folder`, `folder` itself last (torch.save flushes nothing)."""
    for root, _, names in os.walk(folder, topdown=False):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _fsync_path(path)
        fsync_dir(root)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on clean exit fsync it, rename it onto `path`,
    fsync the folder.

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
        fsync_dir(path.parent)
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


# --- atomic_directory
#
# Publishing a folder cannot be one plain rename: rename(2) onto a non-empty folder fails. Where the kernel
# and filesystem offer renameat2(RENAME_EXCHANGE) (Linux 3.15+, ext4, xfs, btrfs, tmpfs, ...), the new
# folder and the old one swap names in one atomic step and the path is never missing. Elsewhere it is a
# two-step: `path` -> `.NAME.old-XXXXXXXX`, then the new folder -> `path`. A writer killed between the two
# leaves `path` missing with the complete old folder beside it; the recovery rule
# (`recover_atomic_directory`, run by every writer first and usable by readers) renames it back. Whenever
# `path` exists, `.NAME.old-*` siblings are leftovers of a finished publish and are removed. A writer killed
# just after the exchange leaves the old folder under its temporary name (`.NAME.*.tmp`, like any killed
# writer's half-filled folder); the published path is complete either way.

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_step_hook: Callable[[str], None] | None = None  # tests stop a writer at a named step


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


def _libc_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _libc_renameat2()


def _rename_exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the names `a` and `b` atomically; False where the kernel, libc or filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _rename_exchange_available(folder: str | os.PathLike) -> bool:
    """Whether RENAME_EXCHANGE works in `folder` (tried on two scratch folders)."""
    scratch = Path(tempfile.mkdtemp(prefix=".exchange-probe.", dir=folder))
    try:
        (scratch / "a").mkdir()
        (scratch / "b").mkdir()
        return _rename_exchange(scratch / "a", scratch / "b")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _old_siblings(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime_ns, reverse=True)


def recover_atomic_directory(path: str | os.PathLike) -> None:
    """Repair what a killed `atomic_directory` writer left: the recovery rule of the two-step publish.

    `path` missing but `.NAME.old-*` beside it: the writer died between its two renames, so the newest old
    folder (complete: it was `path` until then) goes back to `path`. `path` present: any `.NAME.old-*` is a
    leftover of a publish that finished, and is removed. Safe to call from readers; not meant to race a
    concurrent writer of the same path (a writer's second rename then fails and it keeps the old folder).
    """
    path = Path(path)
    olds = _old_siblings(path) if path.parent.is_dir() else []
    if not olds:
        return
    if not os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError, FileExistsError, OSError):
            os.rename(olds[0], path)
            fsync_dir(path.parent)
    if os.path.lexists(path):
        for old in olds:
            if not os.path.lexists(old):
                continue
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on clean exit it replaces `path` as a whole, durably.

    Readers see either the old folder or the complete new one, never a half-written mix, and `path` is never
    missing where RENAME_EXCHANGE exists (else see `recover_atomic_directory`). Every file and folder of the
    new tree is fsynced before it is published and the parent folder after. An exception removes the
    temporary folder and leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_atomic_directory(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, _DIR_MODE)  # mkdtemp's 0700 would hide it from other users
        yield tmp
        fsync_tree(tmp)
        _step("fsynced")
        if os.path.lexists(path) and _rename_exchange(tmp, path):
            _step("published")
            fsync_dir(path.parent)
            # `tmp` now holds the old folder
        elif os.path.lexists(path):
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            _step("moved-aside")
            os.rename(tmp, path)
            _step("published")
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
            _step("published")
            fsync_dir(path.parent)
    except BaseException:
        if old is not None and os.path.lexists(old) and not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.rename(old, path)  # undo the first step of the two-step
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
