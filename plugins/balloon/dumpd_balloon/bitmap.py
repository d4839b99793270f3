"""Balloon bitmaps: one bit per pfn over a span, used in place through `mmap`.

Layout (little-endian), a 32-byte header then the bitmap:

    offset  size  field
    0       8     magic b"DUMPDBMP"
    8       4     version, u32 = 1
    12      4     header_size, u32 >= 32: the bitmap starts here
    16      8     first_pfn, u64
    24      8     pfn_count, u64; first_pfn + pfn_count <= 2**64
    header_size   ceil(pfn_count / 8) bytes

Bit i (byte i >> 3, bit i & 7, least significant first) set: pfn first_pfn+i is
ballooned (not RAM). Pfns outside the span are RAM; padding bits in the last byte
and bytes past the bitmap are ignored.

The file is mapped read-only: it costs page cache, not heap. A lookup is O(1);
a batched lookup skips whole bytes at C speed. A mapped file truncated in place
makes the next access raise SIGBUS and kill the process: replace a bitmap by
writing a new file and renaming it over the old one (`write_bitmap` does).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from dumpd.hooks.contract import HookConfigError
from dumpd.hooks.pfnrange import MAX_PFN, PFN_LIMIT

from .atomic import replacing
from .ranges import PfnRanges

MAGIC = b"DUMPDBMP"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = HEADER.size  # 32

_SCAN_START = 64
"""Bytes a scan compares first past its first word; doubles up to `_SCAN_MAX`."""
_SCAN_MAX = 64 * 1024
_FILL = {False: bytes(_SCAN_MAX), True: b"\xff" * _SCAN_MAX}
"""A block of 0x00 (RAM) and of 0xff (ballooned) bytes: `block.startswith(chunk)` is a
memcmp telling whether `chunk` is all that byte."""
_WORD = 0xFFFF_FFFF_FFFF_FFFF
_WRITE_CHUNK = 1 << 20
_HOLE = 64 * 1024
"""Runs of zero bytes at least this long are skipped with a seek (a hole), not written."""


def _low_bit(byte: int) -> int:
    """The index of the lowest set bit of a non-zero int."""
    return (byte & -byte).bit_length() - 1


def _span(first: int, count: int) -> str:
    return f"{first:#x}+{count:#x}"


class PfnBitmap:
    """A mapped balloon bitmap: `holds(pfn)` in O(1), `runs` skipping whole bytes."""

    __slots__ = ("_base", "_count", "_map", "first_pfn", "header_size", "pfn_count", "source")

    def __init__(self, file: BinaryIO, source: str) -> None:
        """Map the bitmap open in `file` (at offset 0); HookConfigError when it is bad.

        `file` may be closed afterwards: the mapping holds its own reference.
        """
        size = os.fstat(file.fileno()).st_size
        raw = file.read(HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            raise HookConfigError(
                f"balloon: {source}: bitmap header holds {len(raw)} bytes, needs {HEADER_SIZE}"
            )
        magic, version, header_size, first, count = HEADER.unpack(raw)
        if magic != MAGIC:
            raise HookConfigError(f"balloon: {source}: not a bitmap (magic {magic!r})")
        if version != VERSION:
            raise HookConfigError(
                f"balloon: {source}: bitmap version {version} is not supported (known: {VERSION})"
            )
        if header_size < HEADER_SIZE:
            raise HookConfigError(
                f"balloon: {source}: bitmap header_size {header_size} is below {HEADER_SIZE}"
            )
        if first + count > PFN_LIMIT:
            raise HookConfigError(
                f"balloon: {source}: bitmap span {_span(first, count)} ends past the largest"
                f" pfn {MAX_PFN:#x}"
            )
        if header_size > size:
            raise HookConfigError(
                f"balloon: {source}: bitmap header_size {header_size} is past the end of"
                f" the file ({size} bytes)"
            )
        need = (count + 7) >> 3
        if size - header_size < need:
            raise HookConfigError(
                f"balloon: {source}: bitmap holds {size - header_size} bytes, header says {need}"
            )
        self._map = mmap.mmap(file.fileno(), header_size + need, access=mmap.ACCESS_READ)
        self._base: int = header_size
        self._count: int | None = None
        self.header_size: int = header_size
        self.first_pfn: int = first
        self.pfn_count: int = count
        self.source = source

    def close(self) -> None:
        """Unmap the bitmap (idempotent); lookups raise ValueError afterwards."""
        self._map.close()

    @property
    def closed(self) -> bool:
        """Whether `close` has unmapped the bitmap."""
        return self._map.closed

    def __repr__(self) -> str:
        return f"PfnBitmap({self.source!r}: {self.describe()})"

    def describe(self) -> str:
        """The span, in words (cheap: it does not count the bits)."""
        return f"bitmap of {self.pfn_count} pfns from {self.first_pfn:#x}"

    @property
    def count(self) -> int:
        """How many pfns are ballooned; counted once, a chunk at a time, at C speed."""
        if self._count is None:
            self._count = self._count_bits()
        return self._count

    def _count_bits(self) -> int:
        """Set bits, a `_SCAN_MAX` slice at a time: all-0x00 and all-0xff slices by memcmp,
        others by `int.bit_count`; padding bits past `pfn_count` do not count."""
        mm, base, whole = self._map, self._base, self.pfn_count >> 3
        zeros, ones = _FILL[False], _FILL[True]
        total = 0
        for p in range(base, base + whole, _SCAN_MAX):
            chunk = mm[p : min(p + _SCAN_MAX, base + whole)]
            if zeros.startswith(chunk):
                continue
            if ones.startswith(chunk):
                total += 8 * len(chunk)
            else:
                total += int.from_bytes(chunk, "little").bit_count()
        tail = self.pfn_count & 7
        if tail:
            total += (mm[base + whole] & ((1 << tail) - 1)).bit_count()
        return total

    def holds(self, pfn: int) -> bool:
        """Whether `pfn`'s bit is set, in O(1); False outside the span."""
        i = pfn - self.first_pfn
        if 0 <= i < self.pfn_count:
            return (self._map[self._base + (i >> 3)] >> (i & 7)) & 1 == 1
        return False

    def _next_change(self, i: int, stop: int, held: bool) -> int:
        """The first bit index in `[i, stop)` whose value is not `held`, else `stop`.

        Indexes are relative to `first_pfn`, `stop <= pfn_count`. One 8-byte word
        settles short runs; past it whole bytes are compared at C speed, in slices
        growing to `_SCAN_MAX` bytes, and only the slice holding the change is
        searched byte by byte (`bytes.lstrip`, also C).
        """
        mm, base = self._map, self._base
        p = base + (i >> 3)
        word = int.from_bytes(mm[p : p + 8], "little")
        word = ((word ^ _WORD) if held else word) >> (i & 7)
        if word:  # bits a short slice lacks read as changes: `stop` clamps them
            return min(i + _low_bit(word), stop)
        block, fill, flip = _FILL[held], b"\xff" if held else b"\x00", 0xFF if held else 0
        p, end, size = p + 8, base + ((stop + 7) >> 3), _SCAN_START
        while p < end:
            chunk = mm[p : min(p + size, end)]
            if not block.startswith(chunk):
                rest = chunk.lstrip(fill)
                at = p + len(chunk) - len(rest) - base
                return min(at * 8 + _low_bit(rest[0] ^ flip), stop)
            p, size = p + len(chunk), min(size * 2, _SCAN_MAX)
        return stop

    def _bit_runs(self, i: int, end: int) -> Iterator[tuple[int, bool]]:
        """Bits `[i, end)` (relative, `end <= pfn_count`) as maximal `(length, held)` runs."""
        if i >= end:
            return
        held = (self._map[self._base + (i >> 3)] >> (i & 7)) & 1 == 1
        change = self._next_change
        while i < end:
            j = change(i, end, held)
            yield j - i, held
            i, held = j, not held

    def runs(self, first: int, count: int) -> list[tuple[int, bool]]:
        """`[first, first+count)` as maximal `(length, held)` runs.

        O(runs) Python steps plus a C-speed pass over the bytes the window covers;
        pfns outside the span are not held.
        """
        span_first = self.first_pfn
        stop = first + count
        lo, hi = max(first, span_first), min(stop, span_first + self.pfn_count)
        if lo >= hi:
            return [(count, False)] if count > 0 else []
        out = list(self._bit_runs(lo - span_first, hi - span_first))
        if lo > first:  # RAM before the span: a run of its own or part of the first
            if out[0][1]:
                out.insert(0, (lo - first, False))
            else:
                out[0] = (out[0][0] + lo - first, False)
        if stop > hi:  # RAM after the span: likewise with the last run
            if out[-1][1]:
                out.append((stop - hi, False))
            else:
                out[-1] = (out[-1][0] + stop - hi, False)
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The ballooned ranges as `(start, end_exclusive)`, in order (a scan)."""
        at = self.first_pfn
        for length, held in self._bit_runs(0, self.pfn_count):
            if held:
                yield at, at + length
            at += length


def header(first_pfn: int, pfn_count: int) -> bytes:
    """The 32-byte header of a version 1 bitmap for the span."""
    return HEADER.pack(MAGIC, VERSION, HEADER_SIZE, first_pfn, pfn_count)


def _span_for(ranges: PfnRanges, first: int | None, count: int | None) -> tuple[int, int]:
    """The span to write: as given, else from the ranges' bounds; ValueError when bad."""
    low, high = ranges.bounds() or (0, 0)
    first = low if first is None else first
    count = max(high - first, 0) if count is None else count
    if first < 0 or count < 0:
        raise ValueError(f"span {first}+{count}: first and count must not be negative")
    if count > MAX_PFN:
        raise ValueError(f"span count {count:#x} does not fit pfn_count, a u64")
    stop = first + count
    if stop > PFN_LIMIT:
        raise ValueError(f"span {_span(first, count)} ends past the largest pfn {MAX_PFN:#x}")
    if low < first and len(ranges):
        raise ValueError(f"listed pfn {low:#x} lies below the span {_span(first, count)}")
    if high > stop:
        raise ValueError(f"listed pfn {high - 1:#x} lies past the span {_span(first, count)}")
    return first, count


def _zeros(out: BinaryIO, n: int) -> None:
    """`n` zero bytes: written when few, skipped with a seek (a hole) when many."""
    if n >= _HOLE:
        out.seek(n, os.SEEK_CUR)
    elif n > 0:
        out.write(bytes(n))


def _ones(out: BinaryIO, n: int) -> None:
    """`n` 0xff bytes, written a bounded chunk at a time."""
    chunk = b"\xff" * min(n, _WRITE_CHUNK)
    while n > 0:
        out.write(chunk if n >= len(chunk) else chunk[:n])
        n -= len(chunk)


def _write_bits(out: BinaryIO, ranges: Iterable[tuple[int, int]], first: int, count: int) -> None:
    """Stream the bitmap of sorted, disjoint, in-span `ranges` after the header."""
    at, pending = 0, 0  # the byte being built: its index and its bits so far
    for start, end in ranges:
        s, e = start - first, end - first - 1  # bit indexes, both inclusive
        sb, eb = s >> 3, e >> 3
        if sb > at:
            out.write(bytes((pending,)))
            _zeros(out, sb - at - 1)
            at, pending = sb, 0
        if sb == eb:
            pending |= ((1 << (e - s + 1)) - 1) << (s & 7)
            continue
        out.write(bytes((pending | ((0xFF << (s & 7)) & 0xFF),)))
        _ones(out, eb - sb - 1)
        at, pending = eb, (1 << ((e & 7) + 1)) - 1
    need = (count + 7) >> 3
    if need:
        out.write(bytes((pending,)))
        _zeros(out, need - at - 1)
    out.truncate(HEADER_SIZE + need)  # sizes the file when it ends in a hole


def write_bitmap(
    path: str | os.PathLike[str],
    ranges: Iterable[tuple[int, int]],
    first_pfn: int | None = None,
    pfn_count: int | None = None,
) -> tuple[int, int]:
    """Write `(start, end_exclusive)` pairs as a bitmap at `path`, atomically; its span.

    The span defaults to the lowest listed pfn up to past the highest. A span past
    2**64 or pfns listed outside it raise ValueError before anything is written.
    The bitmap is streamed in bounded chunks to a temporary file beside `path`
    (long zero runs become holes), fsynced and renamed over `path`.
    """
    merged = ranges if isinstance(ranges, PfnRanges) else PfnRanges(ranges)
    first, count = _span_for(merged, first_pfn, pfn_count)
    with replacing(path) as out:
        out.write(header(first, count))
        _write_bits(out, merged, first, count)
    return first, count
