"""Raw physical memory (`/dev/oldmem`, raw images): file offset == physical address."""

from __future__ import annotations

import os
import stat

from dumpd.errors import StartupError
from dumpd.sources.base import Segment, Source


def detected_size(fd: int) -> int:
    """The file's size: st_size for a regular file, else where SEEK_END lands (0 if unknown)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        return 0


def view_size(path: str, fd: int, size: int | None) -> int:
    """The size of the file view: the detected size, or `size` from the configuration.

    An explicit size is needed for devices that report 0; for a regular file it may
    shrink the view but not extend it past the end of the file.
    """
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    found = detected_size(fd)
    if size is None:
        size = found
    elif size < 0:
        raise StartupError(f"{path}: size {size} is negative")
    elif regular and size > found:
        raise StartupError(
            f"{path}: size {size:#x} is larger than the file ({found:#x} bytes)"
        )
    if size == 0 and regular and found == 0:
        raise StartupError(f"{path}: the file is empty")
    if size == 0:
        raise StartupError(f"{path}: size unknown: set `size` in the configuration")
    return size


def open_raw(path: str, fd: int, page_size: int, size: int | None = None) -> Source:
    """A raw source over `fd`: one segment covering the whole file view.

    On failure the caller still owns `fd`.
    """
    size = view_size(path, fd, size)
    return Source("raw", path, fd, size, page_size, [Segment(0, 0, size, size)])
