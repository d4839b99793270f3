"""The kdump-compressed format's bitmaps, made and read one block at a time.

Design rules:
- A bitmap is never whole in memory: `blocks` makes it from sorted pfn runs, one block
  (`block_size` bytes, 8 pfns a byte, least significant bit first) at a time, and says
  nothing of all-zero blocks (the file keeps them as holes); `Bits` answers questions
  about one written to a file, reading the part a question needs (the last one kept;
  `read_sparse` reads nothing of a hole).
- Runs are `(first_pfn, end_pfn)`; `normal` sorts and merges them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator

Runs = list[tuple[int, int]]


def normal(runs: Iterable[tuple[int, int]]) -> Runs:
    """`runs` sorted, with those that overlap or touch merged, empty ones dropped."""
    out: Runs = []
    for first, end in sorted(r for r in runs if r[0] < r[1]):
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((first, end))
    return out


def blocks(runs: Iterable[tuple[int, int]], block_size: int) -> Iterator[tuple[int, int]]:
    """`(block index, bits)` of each block with a bit set, in order: `bits` an int whose
    bit i is pfn `index * 8 * block_size + i` (`bits.to_bytes(block_size, "little")` is
    the block as the file holds it). `runs` in pfn order; two may share a pfn."""
    per = 8 * block_size
    current, acc = -1, 0
    for first, end in runs:
        while first < end:
            index = first // per
            if index != current:
                if index < current:
                    raise ValueError(f"pfn run {first:#x} comes after block {current}")
                if acc:
                    yield current, acc
                current, acc = index, 0
            hi = min(end, (index + 1) * per)
            acc |= ((1 << (hi - first)) - 1) << (first - index * per)
            first = hi
    if acc:
        yield current, acc


class Bits:
    """A bitmap of `size` bytes at `base` of a file that `read(offset, length)` reads
    (short or empty where the file has nothing: zeros), `WINDOW` bytes held at a time."""

    WINDOW = 256 << 10

    def __init__(self, read: Callable[[int, int], bytes], base: int, size: int) -> None:
        self._read = read
        self._base = base
        self._size = size
        self._per = 8 * self.WINDOW
        self._index = -1
        self._bytes = b""

    def _window(self, index: int) -> bytes:
        """The window's bytes (empty: all zeros)."""
        if index != self._index:
            at = index * self.WINDOW
            data = self._read(self._base + at, max(0, min(self.WINDOW, self._size - at)))
            self._index, self._bytes = index, data.ljust(self.WINDOW, b"\0") if data else b""
        return self._bytes

    def count(self, first: int, end: int) -> int:
        """How many of pfns `[first, end)` are set."""
        total = 0
        while first < end:
            index = first // self._per
            lo = first - index * self._per
            hi = min(end - index * self._per, self._per)
            window = self._window(index)
            if window:
                bits = int.from_bytes(window[lo >> 3 : (hi + 7) >> 3], "little") >> (lo & 7)
                total += (bits & ((1 << (hi - lo)) - 1)).bit_count()
            first += hi - lo
        return total

    def test(self, pfn: int) -> bool:
        index = pfn // self._per
        bit = pfn - index * self._per
        window = self._window(index)
        return bool(window) and bool(window[bit >> 3] >> (bit & 7) & 1)


def read_sparse(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes of the file at `fd` from `offset`; empty when they are all in a
    hole (a bitmap's empty part is one: it is not read)."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no data from `offset` on
            raise
        return b""
    return os.pread(fd, length, offset) if data < offset + length else b""
