"""The bitmaps of a kdump-compressed file: runs of set bits, the rank of a pfn (how
many set bits come before it: the index of its page descriptor), and a bitmap made
from runs (`blocks`), no I/O.

Design rules:
- Bit `pfn` is bit `pfn % 8` of byte `pfn // 8`, least significant first (format.py).
- A bitmap is never whole in memory: `blocks` makes one from sorted pfn runs a block
  at a time, and says nothing of all-zero blocks (a writer leaves them as holes).
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
- No lock is held across a read, and `peek` answers from what is at hand or not at
  all, so the event loop never waits for a read of another thread.
"""

from __future__ import annotations

import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
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
    all zero and are not read.

    Thread-safe, and no lock is held across a read: `_lock` guards the arrays and the
    LRUs for the moment it takes to look them up or change them; counting superblocks
    in order (which reads) is serialized by `_counting` alone, so a `peek` (the event
    loop's) never waits for a read another thread does."""

    def __init__(self, read: Callable[[int, int], bytes], nbits: int, block_size: int,
                 skip: Callable[[int], int] | None = None) -> None:
        self._read = read
        self._skip = skip
        self.nbits = nbits
        self._block = block_size
        self._block_bits = 8 * block_size
        self._size = -(-nbits // 8)  # bytes that hold bits
        self._super_bytes = SUPER * block_size
        self._super_bits = 8 * self._super_bytes
        self._before = array("Q", [0])  # set bits before superblock s, s < len
        self._inside: OrderedDict[int, array[int]] = OrderedDict()  # superblock -> prefix
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._counting = threading.Lock()
        self.blocks_read = 0  # bitmap blocks read so far (a block read again counts again)

    def rank(self, bit: int) -> int:
        """The set bits before `bit` (0 <= bit <= nbits)."""
        if not 0 <= bit <= self.nbits:
            raise ValueError(f"bit {bit} is outside [0, {self.nbits}]")
        index, within = divmod(bit, self._super_bits)
        start = self._superblock_start(index)
        block, offset = divmod(within, self._block_bits)
        total = start + self._prefix(index)[block]
        return total + (_count_before(self._block_bytes(index * SUPER + block), offset)
                        if offset else 0)

    def runs(self, first: int, end: int) -> Runs:
        """The runs of set bits in `[first, end)` (clipped to the bitmap)."""
        end = min(end, self.nbits)
        bits = self._block_bits
        blocks = {index: self._block_bytes(index)
                  for index in range(first // bits, (end - 1) // bits + 1)} if first < end else {}
        return self._runs(first, end, blocks)

    def peek(self, first: int, end: int) -> tuple[int, Runs] | None:
        """`(rank(first), runs(first, end))` if they need no read now, else None."""
        end = min(end, self.nbits)
        bits = self._block_bits
        index, within = divmod(first, self._super_bits)
        with self._lock:
            inside = self._inside.get(index)
            blocks = {block: self._blocks.get(block)
                      for block in range(first // bits, max(first, end - 1) // bits + 1)}
            if index >= len(self._before) or inside is None or None in blocks.values():
                return None
            start = self._before[index]
        block, offset = divmod(within, bits)
        found = {key: value for key, value in blocks.items() if value is not None}
        rank = start + inside[block] + (_count_before(found[first // bits], offset)
                                        if offset else 0)
        return rank, self._runs(first, end, found)

    @property
    def memory(self) -> int:
        """Bytes held now (the arrays and the blocks cached), for the bounded-memory checks."""
        with self._lock:
            return (self._before.itemsize * len(self._before)
                    + sum(a.itemsize * len(a) for a in self._inside.values())
                    + sum(len(b) for b in self._blocks.values()))

    def _runs(self, first: int, end: int, blocks: dict[int, bytes]) -> Runs:
        """The runs of `[first, end)` (inside the bitmap) in `blocks`, which hold them."""
        out: Runs = []
        bits = self._block_bits
        for index, block in sorted(blocks.items()):
            lo = max(first, index * bits) - index * bits
            hi = min(end, (index + 1) * bits) - index * bits
            part = block[lo // 8 : -(-hi // 8)]
            base = index * bits
            if hi - lo <= SHORT:  # all set or all clear, most often: no search
                mask = ((1 << (hi - lo)) - 1) << lo % 8
                value = int.from_bytes(part, "little") & mask
                if value in (0, mask):
                    if value:
                        _add(out, base + lo, base + hi)
                    continue
            for start, stop in set_runs(part, base + lo // 8 * 8):
                start, stop = max(start, base + lo), min(stop, base + hi)
                if start < stop:
                    _add(out, start, stop)
        return out

    def _superblock_start(self, index: int) -> int:
        """Set bits before superblock `index`, counting the superblocks before it that
        are not counted yet, in order (their inside counts go to the LRU on the way)."""
        with self._lock:
            if index < len(self._before):
                return self._before[index]
        with self._counting:
            while True:
                with self._lock:
                    if index < len(self._before):
                        return self._before[index]
                    done, total = len(self._before) - 1, self._before[-1]
                empty = 0
                if self._skip is not None:  # superblocks wholly before the next data: 0
                    empty = min(index, self._skip(done * self._super_bytes)
                                // self._super_bytes) - done
                with self._lock:
                    if empty > 0:
                        self._before.extend(array("Q", [total]) * empty)
                        continue
                counted = self._prefix(done)[SUPER]
                with self._lock:
                    self._before.append(total + counted)

    def _prefix(self, index: int) -> array[int]:
        """Set bits before each block of superblock `index` (SUPER + 1 counts)."""
        with self._lock:
            found = self._inside.get(index)
            if found is not None:
                self._inside.move_to_end(index)
                return found
        start = index * self._super_bytes
        length = max(0, min(self._size, start + self._super_bytes) - start)
        view = memoryview(self._read(start, length) if length else b"")
        counts = array("I", [0])
        for block in range(SUPER):
            lo = block * self._block
            counts.append(counts[-1] + (_count(view[lo : lo + self._block]) if lo < len(view)
                                        else 0))
        with self._lock:
            self.blocks_read += -(-length // self._block)
            _remember(self._inside, index, counts, SUPERS_CACHED)
        return counts

    def _block_bytes(self, index: int) -> bytes:
        with self._lock:
            found = self._blocks.get(index)
            if found is not None:
                self._blocks.move_to_end(index)
                return found
        start = index * self._block
        length = max(0, min(self._size, start + self._block) - start)
        data = (self._read(start, length) if length else b"").ljust(self._block, b"\0")
        with self._lock:
            self.blocks_read += 1
            _remember(self._blocks, index, data, max(16, BLOCK_CACHE_BYTES // self._block))
        return data


def _count_before(block: bytes, offset: int) -> int:
    """Set bits of `block` before bit `offset`."""
    whole, rest = divmod(offset, 8)
    total = _count(block[:whole])
    return total + ((block[whole] & ((1 << rest) - 1)).bit_count() if rest else 0)


def _add(runs: Runs, first: int, end: int) -> None:
    if runs and runs[-1][1] == first:
        runs[-1] = (runs[-1][0], end)
    else:
        runs.append((first, end))


def _remember(cache: OrderedDict[int, T], key: int, value: T, most: int) -> None:
    cache[key] = value
    if len(cache) > most:
        cache.popitem(last=False)


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
