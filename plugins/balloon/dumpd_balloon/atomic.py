"""Replace a file atomically: write a temporary file beside it, fsync, rename over.

A reader never sees a half-written file, and a file dumpd has mapped is never
truncated under it (that would kill the daemon with SIGBUS): the mapping keeps
the old inode, and the next reload maps the new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import BinaryIO


def _create_temp(target: str) -> tuple[str, int]:
    """A new, empty `.NAME.<8 random hex digits>.tmp` beside `target` (mode 0666 less
    the umask)."""
    directory, name = os.path.split(target)
    while True:
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return temp, os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (where the platform allows opening it)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write; on success it is fsynced and renamed over `path`.

    When the body raises, the temporary file is removed and `path` is untouched.
    """
    target = os.fspath(path)
    temp, fd = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(os.path.dirname(target))
