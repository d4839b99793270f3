"""Bounded storage of hook verdicts, in chunks of pfns kept in LRU order.

A bit per pfn would not fit a crash kernel for a multi-terabyte host, so
verdicts live in fixed-size chunks (one byte per pfn, 4096 pfns per chunk) and
the least recently used chunk is dropped when the budget is reached; a pfn
whose chunk was dropped is simply asked again. A sequential pass touches each
chunk while it is the most recent one, so it still asks each pfn once.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator

UNKNOWN = 0
RAM = 1
NOT_RAM = 2
ERROR = 3

CHUNK_SHIFT = 12
CHUNK_PFNS = 1 << CHUNK_SHIFT
_RUNS = re.compile(rb"\x00+|\x01+|\x02+|\x03+")

Run = tuple[int, int, int]
"""`(first_pfn, end_pfn, code)`: pfns `[first_pfn, end_pfn)` share `code`."""


def code_of(verdict: int) -> int:
    """Map a hook's verdict (> 0, 0, < 0) to a stored code."""
    if verdict > 0:
        return RAM
    return NOT_RAM if verdict == 0 else ERROR


class VerdictCache:
    """pfn -> code, for at most `max_chunks` chunks of `CHUNK_PFNS` pfns."""

    def __init__(self, max_chunks: int) -> None:
        self._max_chunks = max(1, max_chunks)
        self._chunks: OrderedDict[int, bytearray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._chunks)

    def lookup(self, first: int, end: int) -> list[Run]:
        """Runs covering `[first, end)`, adjacent equal codes merged; UNKNOWN where not stored."""
        runs: list[Run] = []
        for index, base, lo, hi in _chunk_spans(first, end):
            chunk = self._chunks.get(index)
            if chunk is None:
                _append(runs, base + lo, base + hi, UNKNOWN)
                continue
            self._chunks.move_to_end(index)
            for match in _RUNS.finditer(chunk, lo, hi):
                _append(runs, base + match.start(), base + match.end(), chunk[match.start()])
        return runs

    def store(self, first: int, end: int, code: int) -> None:
        """Remember `code` for `[first, end)`, evicting the oldest chunks beyond the budget."""
        value = bytes([code])
        for index, _, lo, hi in _chunk_spans(first, end):
            chunk = self._chunks.get(index)
            if chunk is None:
                chunk = self._chunks[index] = bytearray(CHUNK_PFNS)
                if len(self._chunks) > self._max_chunks:
                    self._chunks.popitem(last=False)
            else:
                self._chunks.move_to_end(index)
            chunk[lo:hi] = value * (hi - lo)


def _chunk_spans(first: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """`(chunk index, its first pfn, lo, hi)`: the part `[lo, hi)` of each chunk in range."""
    pfn = first
    while pfn < end:
        index = pfn >> CHUNK_SHIFT
        base = index << CHUNK_SHIFT
        stop = min(end, base + CHUNK_PFNS)
        yield index, base, pfn - base, stop - base
        pfn = stop


def _append(runs: list[Run], first: int, end: int, code: int) -> None:
    if runs and runs[-1][1] == first and runs[-1][2] == code:
        runs[-1] = (runs[-1][0], end, code)
    else:
        runs.append((first, end, code))
