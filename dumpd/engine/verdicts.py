"""Bounded storage of hook verdicts, in chunks of pfns kept in LRU order.

A bit per pfn would not fit a crash kernel for a multi-terabyte host, so
verdicts live in fixed-size chunks (one byte per pfn, 4096 pfns per chunk) and
the least recently used chunk is dropped when the budget is reached; a pfn
whose chunk was dropped is simply asked again. A sequential pass touches each
chunk while it is the most recent one, so it still asks each pfn once.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Iterator


class Stored(enum.Enum):
    """A pfn's verdict as the cache keeps it, one byte (`value`) per pfn.

    Not an int on purpose: a hook's verdicts (`hooks.contract.RAM` and so on) are ints
    with other values, and mypy refuses to mix the two (in a call or a comparison).
    """

    UNKNOWN = 0  # not asked yet, or its chunk was dropped
    RAM = 1
    NOT_RAM = 2
    ERROR = 3


CHUNK_SHIFT = 12
CHUNK_PFNS = 1 << CHUNK_SHIFT
_RUNS = re.compile(b"|".join(re.escape(bytes([code.value])) + b"+" for code in Stored))
_BY_BYTE = tuple(Stored)  # a stored byte -> its code by index, as the values are 0, 1, 2...

Run = tuple[int, int, Stored]
"""`(first_pfn, end_pfn, code)`: pfns `[first_pfn, end_pfn)` share `code`."""


def code_of(verdict: int) -> Stored:
    """Map a hook's verdict (> 0, 0, < 0) to a stored code."""
    if verdict > 0:
        return Stored.RAM
    return Stored.NOT_RAM if verdict == 0 else Stored.ERROR


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
        by_byte = _BY_BYTE
        for index, base, lo, hi in _chunk_spans(first, end):
            chunk = self._chunks.get(index)
            if chunk is None:
                _append(runs, base + lo, base + hi, Stored.UNKNOWN)
                continue
            self._chunks.move_to_end(index)
            for match in _RUNS.finditer(chunk, lo, hi):
                start = match.start()
                _append(runs, base + start, base + match.end(), by_byte[chunk[start]])
        return runs

    def store(self, first: int, end: int, code: Stored) -> None:
        """Remember `code` for `[first, end)`, evicting the oldest chunks beyond the budget."""
        value = bytes([code.value])
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


def _append(runs: list[Run], first: int, end: int, code: Stored) -> None:
    if runs and runs[-1][1] == first and runs[-1][2] == code:
        runs[-1] = (runs[-1][0], end, code)
    else:
        runs.append((first, end, code))
