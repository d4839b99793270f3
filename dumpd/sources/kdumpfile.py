"""The bytes of a kdump-compressed file, read positionally: the file itself
(`PlainFile`), or the file a flattened one stands for (`sources/flattened.py`), behind
one interface (`KdumpBytes`).

Design rule: a read asked not to wait (`nowait`: the event loop's inline reads) is
done only when the OS page cache holds all of it (RWF_NOWAIT), else `WouldBlock` and
nothing is read; a file system that cannot say is always `WouldBlock`.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol


class WouldBlock(Exception):
    """A read asked not to wait would have had to."""


class KdumpBytes(Protocol):
    """The bytes of a kdump-compressed file: `size` of them."""

    size: int
    records: int  # the flattened form's records indexed (0: a plain file)

    def pread(self, offset: int, length: int, nowait: bool = False) -> bytes:
        """`length` bytes at `offset`, fewer where the file ends; OSError from the OS."""

    def data_at(self, offset: int) -> int:
        """Where the first byte at or after `offset` that may not be zero is (`size`
        if none): the bytes before it are a hole and need no read."""


class Reader:
    """Positional reads of one descriptor of `size` bytes, waiting or not."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._nowait = hasattr(os, "RWF_NOWAIT")  # until the file system says it cannot

    def pread(self, offset: int, length: int, nowait: bool = False) -> bytes:
        """`length` bytes at `offset`, fewer where the file ends (or the file shrank);
        with `nowait`, WouldBlock unless the OS page cache holds them all."""
        length = max(0, min(length, self.size - offset))
        if not nowait:
            return os.pread(self.fd, length, offset)
        if not self._nowait:
            raise WouldBlock
        buffer = bytearray(length)
        try:
            got = os.preadv(self.fd, [buffer], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            raise WouldBlock from None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait = False
            raise WouldBlock from None
        if got < length:
            raise WouldBlock  # part of it is not cached
        return bytes(buffer)


class PlainFile:
    """A kdump-compressed file on its own descriptor."""

    records = 0

    def __init__(self, fd: int, size: int) -> None:
        self._reader = Reader(fd, size)
        self._fd = fd
        self.size = size
        self._seeks = True  # SEEK_DATA works here (until the file system says no)

    def pread(self, offset: int, length: int, nowait: bool = False) -> bytes:
        return self._reader.pread(offset, length, nowait)

    def data_at(self, offset: int) -> int:
        if not self._seeks or offset >= self.size:
            return min(offset, self.size)
        try:
            return min(self.size, os.lseek(self._fd, offset, os.SEEK_DATA))
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return self.size
            self._seeks = False
            return offset
