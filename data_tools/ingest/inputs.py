"""Reading untrusted input files: regular files only, never more than a size cap.

A transcript or manifest may be a FIFO (opening or reading it blocks forever), a device such as /dev/zero
(endless), or simply huge. `read_input_bytes` opens without blocking, checks the opened file itself
(fstat, so a swapped path cannot slip past the check) and reads at most `max_bytes + 1` bytes.
"""
from __future__ import annotations

import errno
import os
import stat

__all__ = ["InputFileError", "read_input_bytes", "check_input_file", "file_kind"]


class InputFileError(ValueError):
    """The file cannot be used as an input; the message is a plain-words reason (without the path)."""


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _size_text(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _check(st: os.stat_result, max_bytes: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{what} is {file_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise InputFileError(f"{what} is {_size_text(st.st_size)}, over the limit of {_size_text(max_bytes)}")


def check_input_file(path: str | os.PathLike, max_bytes: int, what: str = "file") -> None:
    """Raise InputFileError unless `path` (links followed) is a regular file of at most `max_bytes`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{what} not found") from None
    except OSError as exc:
        raise InputFileError(f"cannot read the {what}: {exc.strerror or exc}") from None
    _check(st, max_bytes, what)


def read_input_bytes(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; InputFileError saying why not otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputFileError(f"{what} not found") from None
    except IsADirectoryError:
        raise InputFileError(f"{what} is a folder, not a regular file") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO or socket without the other end
            raise InputFileError(f"{what} is not a regular file") from None
        raise InputFileError(f"cannot read the {what}: {exc.strerror or exc}") from None
    try:
        _check(os.fstat(fd), max_bytes, what)
        chunks: list[bytes] = []
        left = max_bytes + 1  # one byte more than allowed shows a file that grew past the cap
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise InputFileError(f"cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise InputFileError(f"{what} grew past the limit of {_size_text(max_bytes)} while being read")
    return data
