"""Sets of page frames as sorted, disjoint, non-adjacent `[first, end)` runs: what the
kdump bitmaps, dumpd's holes and their comparison are written in."""

from __future__ import annotations

import re
from collections.abc import Iterable

Range = tuple[int, int]
Ranges = tuple[Range, ...]

_NOT_CLEAR = re.compile(rb"[^\x00]")
_NOT_SET = re.compile(rb"[^\xff]")


def normal(runs: Iterable[Range]) -> Ranges:
    """`runs` (any order, overlapping, empty ones) as sorted disjoint merged runs."""
    out: list[Range] = []
    for first, end in sorted(r for r in runs if r[0] < r[1]):
        if out and first <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((first, end))
    return tuple(out)


def count(ranges: Ranges) -> int:
    return sum(end - first for first, end in ranges)


def union(*sets: Ranges) -> Ranges:
    return normal(r for ranges in sets for r in ranges)


def subtract(a: Ranges, b: Ranges) -> Ranges:
    """The pfns of `a` not in `b` (both normal)."""
    out: list[Range] = []
    j = 0
    for first, end in a:
        while j < len(b) and b[j][1] <= first:
            j += 1
        k, start = j, first
        while k < len(b) and b[k][0] < end:
            if b[k][0] > start:
                out.append((start, b[k][0]))
            start = max(start, b[k][1])
            k += 1
        if start < end:
            out.append((start, end))
    return tuple(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    return subtract(a, subtract(a, b))


def contains(ranges: Ranges, pfn: int) -> bool:
    return any(first <= pfn < end for first, end in ranges)


def _lowest(byte: int) -> int:
    return (byte & -byte).bit_length() - 1


def _next_change(bits: bytes, pos: int, state: int, nbits: int) -> int:
    """The first bit at or after `pos` that is not `state` (bit i is byte i // 8's bit
    i % 8, least significant first), or `nbits` when there is none before it."""
    byte = pos >> 3
    if byte >= len(bits):
        return nbits
    flip = 0xFF if state else 0
    rest = (bits[byte] ^ flip) >> (pos & 7)
    if rest:
        return min(pos + _lowest(rest), nbits)
    found = (_NOT_SET if state else _NOT_CLEAR).search(bits, byte + 1)
    if found is None:
        return nbits
    at = found.start()
    return min((at << 3) + _lowest(bits[at] ^ flip), nbits)


def bitmap_runs(bits: bytes, nbits: int) -> Ranges:
    """The runs of set bits among the first `nbits` of a little-endian bitmap."""
    out: list[Range] = []
    pos = 0
    while pos < nbits:
        first = _next_change(bits, pos, 0, nbits)
        if first >= nbits:
            break
        pos = _next_change(bits, first, 1, nbits)
        out.append((first, pos))
    return tuple(out)


def nth_pfns(ranges: Ranges, indices: Iterable[int]) -> Ranges:
    """The pfns at the (ascending) positions `indices` in the set `ranges`, as runs."""
    out: list[Range] = []
    it = iter(ranges)
    base, run = 0, next(it, None)
    for index in indices:
        while run is not None and index >= base + run[1] - run[0]:
            base += run[1] - run[0]
            run = next(it, None)
        if run is None:
            raise IndexError(f"position {index} is past the set's {base} pfns")
        pfn = run[0] + index - base
        if out and out[-1][1] == pfn:
            out[-1] = (out[-1][0], pfn + 1)
        else:
            out.append((pfn, pfn + 1))
    return tuple(out)


def show(ranges: Ranges, most: int = 4) -> str:
    """A few runs in hex, for a line of output."""
    text = ", ".join(f"{first:#x}-{end - 1:#x}" if end - first > 1 else f"{first:#x}"
                     for first, end in ranges[:most])
    return text + (f", ... ({len(ranges) - most} more runs)" if len(ranges) > most else "")
