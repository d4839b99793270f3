"""The bitmaps of a kdump-compressed file: runs of set bits, and the rank of a pfn (how
many set bits come before it: the index of its page descriptor), no I/O.

Design rules:
- Bit `pfn` is bit `pfn % 8` of byte `pfn // 8`, least significant first (format.py).
- Runs are found a byte at a time by regular expressions over the bytes (runs of
  0xff, and a table of the runs inside any other byte), never a bit at a time in
  Python; a caller gives the most runs it takes (`TooManyRuns` past it), so a
  pathological bitmap is refused before it costs memory.
- `Rank` reads the bitmap through a callable, block by block, when asked: the set
  bits before each superblock (`SUPER` blocks) in one array grown only as far as the
  highest pfn asked, the counts inside a superblock and the blocks themselves in
  small LRUs. Memory is 8 bytes per superblock asked about (8 GiB of memory at 4 KiB
  pages) plus the LRUs, whatever the bitmap claims; nothing is kept per pfn. Blocks
  the file has no data for (`skip`: a sparse file's holes) count 0 without a read.
"""

from __future__ import annotations

import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

SUPER = 64  # bitmap blocks per superblock
BLOCK_CACHE_BYTES = 1 << 20  # bitmap blocks kept (at least 16 blocks)
SUPERS_CACHED = 256  # superblocks whose inside counts are kept
SHORT = 512  # bits of a block looked at as one int (a page or a few: the common read)

T = TypeVar("T")
Runs = list[tuple[int, int]]
"""Sorted, disjoint `[first, end)` runs of bits."""

_NONZERO = re.compile(rb"[^\x00]+")
_FULL = re.compile(rb"\xff+")


def _byte_runs(value: int) -> tuple[tuple[int, int], ...]:
    runs: list[tuple[int, int]] = []
    for bit in range(8):
        if value >> bit & 1:
            if runs and runs[-1][1] == bit:
                runs[-1] = (runs[-1][0], bit + 1)
            else:
                runs.append((bit, bit + 1))
    return tuple(runs)


_IN_BYTE = tuple(_byte_runs(value) for value in range(256))


class TooManyRuns(Exception):
    """The bitmap has more runs of set bits than the caller takes."""


def set_runs(data: bytes, base: int = 0, limit: int | None = None) -> Runs:
    """The runs of set bits of `data`, bit `i` being `base + i`, adjacent runs merged;
    TooManyRuns once there are more than `limit`."""
    runs: Runs = []

    def add(first: int, end: int) -> None:
        if runs and runs[-1][1] == first:
            runs[-1] = (runs[-1][0], end)
            return
        if limit is not None and len(runs) >= limit:
            raise TooManyRuns(f"more than {limit} runs of set bits")
        runs.append((first, end))

    for found in _NONZERO.finditer(data):
        pos, stop = found.span()
        while pos < stop:
            full = _FULL.match(data, pos, stop)
            if full is not None:
                add(base + 8 * pos, base + 8 * full.end())
                pos = full.end()
                continue
            at = base + 8 * pos
            for first, end in _IN_BYTE[data[pos]]:
                add(at + first, at + end)
            pos += 1
    return runs


def clear_runs(runs: Runs, first: int, end: int) -> Runs:
    """The runs of `[first, end)` that `runs` (inside it) leave out."""
    out: Runs = []
    pos = first
    for start, stop in runs:
        if pos < start:
            out.append((pos, start))
        pos = stop
    if pos < end:
        out.append((pos, end))
    return out


def _count(data: bytes | memoryview) -> int:
    return int.from_bytes(data, "little").bit_count()


class Rank:
    """A bitmap of `nbits` bits in blocks of `block_size` bytes, read on demand with
    `read(offset, length)` (bytes of the bitmap; fewer at its end is an error of the
    caller's). `skip(offset)`, when given, says where the first byte at or after
    `offset` that may be set is (the bitmap's size if none): the bytes before it are
    all zero and are not read. Thread-safe."""

    def __init__(self, read: Callable[[int, int], bytes], nbits: int, block_size: int,
                 skip: Callable[[int], int] | None = None) -> None:
        self._read = read
        self._skip = skip
        self.nbits = nbits
        self._block = block_size
        self._size = -(-nbits // 8)  # bytes that hold bits
        self._super_bytes = SUPER * block_size
        self._super_bits = 8 * self._super_bytes
        self._before = array("Q", [0])  # set bits before superblock s, s < len
        self._inside: OrderedDict[int, array[int]] = OrderedDict()  # superblock -> prefix
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.blocks_read = 0  # bitmap blocks read so far (a block read again counts again)

    def rank(self, bit: int) -> int:
        """The set bits before `bit` (0 <= bit <= nbits)."""
        if not 0 <= bit <= self.nbits:
            raise ValueError(f"bit {bit} is outside [0, {self.nbits}]")
        with self._lock:
            return self._rank(bit)

    def runs(self, first: int, end: int) -> Runs:
        """The runs of set bits in `[first, end)` (clipped to the bitmap)."""
        end = min(end, self.nbits)
        out: Runs = []
        if first >= end:
            return out
        bits = 8 * self._block
        with self._lock:
            for index in range(first // bits, (end - 1) // bits + 1):
                block = self._block_bytes(index)
                lo = max(first, index * bits) - index * bits
                hi = min(end, (index + 1) * bits) - index * bits
                part = block[lo // 8 : -(-hi // 8)]
                if hi - lo <= SHORT:  # all set or all clear, most often: no search
                    mask = ((1 << (hi - lo)) - 1) << lo % 8
                    value = int.from_bytes(part, "little") & mask
                    if value in (0, mask):
                        if value and out and out[-1][1] == index * bits + lo:
                            out[-1] = (out[-1][0], index * bits + hi)
                        elif value:
                            out.append((index * bits + lo, index * bits + hi))
                        continue
                for start, stop in set_runs(part, index * bits + lo // 8 * 8):
                    start, stop = max(start, index * bits + lo), min(stop, index * bits + hi)
                    if start >= stop:
                        continue
                    if out and out[-1][1] == start:
                        out[-1] = (out[-1][0], stop)
                    else:
                        out.append((start, stop))
        return out

    def cached(self, first: int, end: int) -> bool:
        """Whether `rank(first)` and `runs(first, end)` need no read now."""
        bits = 8 * self._block
        with self._lock:
            index = first // self._super_bits
            return (index < len(self._before) and index in self._inside
                    and all(block in self._blocks
                            for block in range(first // bits, max(first, end - 1) // bits + 1)))

    @property
    def memory(self) -> int:
        """Bytes held now (the arrays and the blocks cached), for the bounded-memory checks."""
        with self._lock:
            return (self._before.itemsize * len(self._before)
                    + sum(a.itemsize * len(a) for a in self._inside.values())
                    + sum(len(b) for b in self._blocks.values()))

    def _rank(self, bit: int) -> int:
        index, within = divmod(bit, self._super_bits)
        block, offset = divmod(within, 8 * self._block)
        total = self._superblock_start(index) + self._prefix(index)[block]
        if offset:
            data = self._block_bytes(index * SUPER + block)
            whole, rest = divmod(offset, 8)
            total += _count(data[:whole])
            if rest:
                total += (data[whole] & ((1 << rest) - 1)).bit_count()
        return total

    def _superblock_start(self, index: int) -> int:
        """Set bits before superblock `index`, counting the superblocks before it that
        are not counted yet (their counts are kept in the LRU on the way)."""
        before = self._before
        while len(before) <= index:
            done = len(before) - 1  # superblock `done` is the next to count
            start = done * self._super_bytes
            if self._skip is not None:
                data_at = self._skip(start)
                empty = min(index, data_at // self._super_bytes) - done
                if empty > 0:  # superblocks wholly before the next data count 0
                    before.extend([before[-1]] * empty)
                    continue
            before.append(before[-1] + self._prefix(done)[SUPER])
        return before[index]

    def _prefix(self, index: int) -> array[int]:
        """Set bits before each block of superblock `index` (SUPER + 1 counts)."""
        found = self._inside.get(index)
        if found is not None:
            self._inside.move_to_end(index)
            return found
        start = index * self._super_bytes
        length = max(0, min(self._size, start + self._super_bytes) - start)
        data = self._read(start, length) if length else b""
        self.blocks_read += -(-length // self._block)
        counts = array("I", [0])
        view = memoryview(data)
        for block in range(SUPER):
            lo = block * self._block
            counts.append(counts[-1] + (_count(view[lo : lo + self._block]) if lo < len(view)
                                        else 0))
        _remember(self._inside, index, counts, SUPERS_CACHED)
        return counts

    def _block_bytes(self, index: int) -> bytes:
        found = self._blocks.get(index)
        if found is not None:
            self._blocks.move_to_end(index)
            return found
        start = index * self._block
        length = max(0, min(self._size, start + self._block) - start)
        data = self._read(start, length) if length else b""
        self.blocks_read += 1
        data = data.ljust(self._block, b"\0")
        _remember(self._blocks, index, data, max(16, BLOCK_CACHE_BYTES // self._block))
        return data


def _remember(cache: OrderedDict[int, T], key: int, value: T, most: int) -> None:
    cache[key] = value
    if len(cache) > most:
        cache.popitem(last=False)
