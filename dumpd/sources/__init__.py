"""Sources of a crashed kernel's memory: ELF cores (/proc/vmcore) and raw oldmem."""

from __future__ import annotations

import errno
import os
import stat

from dumpd.errors import StartupError
from dumpd.sources.base import Segment, Source
from dumpd.sources.elf import ELF_MAGIC, is_valid_page_size, open_elf
from dumpd.sources.raw import open_raw

__all__ = ["KINDS", "Segment", "Source", "open_source"]

KINDS = ("auto", "elf", "raw")


def _open_fd(path: str) -> int:
    """Open `path` read-only; only regular files and devices are accepted.

    O_NONBLOCK keeps a FIFO from blocking the open until a writer appears (it is refused
    right after); it is cleared again before anything is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise StartupError(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise StartupError(f"{path}: cannot open: {os.strerror(errno.EISDIR)}")
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):
            raise StartupError(f"{path}: cannot open: not a regular file or a device")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _looks_like_elf(path: str, fd: int) -> bool:
    try:
        return os.pread(fd, len(ELF_MAGIC), 0) == ELF_MAGIC
    except OSError as exc:
        raise StartupError(f"{path}: cannot read: {exc.strerror}") from exc


def open_source(
    path: str, kind: str = "auto", page_size: int = 4096, size: int | None = None
) -> Source:
    """Open `path` as a source of kind "elf", "raw", or "auto" (ELF if it starts with \\x7fELF).

    `page_size` is used unless an ELF core's VMCOREINFO gives PAGESIZE; `size` overrides
    the detected file size (needed for devices that report 0).
    """
    if kind not in KINDS:
        raise StartupError(f"{path}: unknown source kind {kind!r} (expected auto, elf or raw)")
    if not is_valid_page_size(page_size):
        raise StartupError(f"{path}: page_size {page_size} is not a power of two >= 512")
    fd = _open_fd(path)
    try:
        if kind == "elf" or (kind == "auto" and _looks_like_elf(path, fd)):
            return open_elf(path, fd, page_size, size)
        return open_raw(path, fd, page_size, size)
    except BaseException:
        os.close(fd)
        raise
