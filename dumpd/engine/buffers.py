"""Reusable read buffers for large flights.

A fresh multi-MiB buffer comes from mmap and costs a page fault per 4 KiB when it
is first written (about 7 ms for 8 MiB on a small VM, several times the read
itself); a buffer that is reused costs nothing. The pool keeps at most
`max_bytes` of buffers and hands one out again only once nothing refers to it any
more: a reply still being written holds a view, and so a reference.
"""

from __future__ import annotations

import sys

MiB = 1 << 20
POOLED_MIN = 1 * MiB  # smaller buffers come cheaply from the heap
_ZEROS = bytes(MiB)


class BufferPool:
    """Buffers of at least POOLED_MIN bytes, reused once unreferenced."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffers: list[bytearray] = []

    @property
    def held(self) -> int:
        """Bytes the pool keeps (in use or free)."""
        return sum(len(buf) for buf in self._buffers)

    def take(self, size: int) -> tuple[memoryview, bool]:
        """A writable view of `size` bytes, and whether it is already all zeros."""
        if size < POOLED_MIN:
            return memoryview(bytearray(size)), True
        for buf in self._buffers:
            # Three references while unused: the list, `buf`, and getrefcount's argument.
            if len(buf) >= size and sys.getrefcount(buf) == 3:
                return memoryview(buf)[:size], False
        buf = bytearray(size)
        if self.held + size <= self.max_bytes:
            self._buffers.append(buf)
        return memoryview(buf), True


def zero(view: memoryview, start: int, end: int) -> None:
    """Write zeros over `view[start:end]` without allocating."""
    while start < end:
        n = min(end - start, len(_ZEROS))
        view[start : start + n] = _ZEROS[:n]
        start += n
