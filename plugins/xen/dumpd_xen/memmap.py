"""Memory-type maps for the stub hypervisor: the text format and O(log n) lookups.

One item per line, `RANGE TYPE`:

    RANGE   PFN, START-END (inclusive) or START+COUNT, decimal or 0x hex
            (the syntax of `dumpd.hooks.pfnrange`)
    TYPE    an HVMMEM name: ram_rw, ram_ro, mmio_dm, unused, ioreq_server;
            a number 0..65535; or `fail`: the hypercall fails with ENOSYS there

`#` starts a comment; blank lines are ignored; pfns no line names are ram_rw.
Lines must not overlap.

A `MemTypeMap` keeps only the pfns that are not ram_rw, as sorted disjoint
segments in three parallel arrays (first pfn, last pfn, outcome): memory grows
with the number of lines, never with the number of pfns, and pfns up to 2**64-1 fit.
"""

from __future__ import annotations

import errno
import os
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import pairwise
from typing import NamedTuple

from dumpd.hooks.contract import HookConfigError
from dumpd.hooks.pfnrange import (
    PFN_LIMIT,
    PfnFileError,
    line_text,
    numbered_items,
    parse_pfn_range,
)

from .abi import HVMMEM_RAM_RW, MEM_TYPE_MAX, MEM_TYPES
from .transport import MemTypeRun, append_run

FAILED = -errno.ENOSYS
"""The outcome of a pfn whose hypercall fails (`fail` in a map)."""

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+", re.ASCII)
_KNOWN = ", ".join(MEM_TYPES) + ", a number 0..65535 or fail"


class MapFormatError(PfnFileError):
    """A line of a map is wrong; the message is `xen: FILE:LINE: reason`."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__("xen", source, line, reason)


class MapLine(NamedTuple):
    """One item of a map: pfns `[start, end)` have `outcome`; `text` is the range as written."""

    start: int
    end: int
    outcome: int
    text: str


def parse_mem_type(token: str) -> int:
    """A TYPE token as an outcome: the memory type, or `FAILED` for `fail`."""
    if token == "fail":
        return FAILED
    if token in MEM_TYPES:
        return MEM_TYPES[token]
    if _NUMBER.fullmatch(token) is None:
        raise ValueError(f"unknown memory type {token!r} (want {_KNOWN})")
    hexa = token[:2] in ("0x", "0X")
    digits = (token[2:] if hexa else token).lstrip("0") or "0"
    value = int(digits, 16 if hexa else 10) if len(digits) <= 6 else MEM_TYPE_MAX + 1
    if value > MEM_TYPE_MAX:
        raise ValueError(f"memory type {token} is above {MEM_TYPE_MAX} (mem_type is 16 bits)")
    return value


def _is_range(text: str) -> bool:
    try:
        parse_pfn_range(text)
    except ValueError:
        return False
    return True


def parse_line(line: str | bytes) -> MapLine | None:
    """One line as a `MapLine`, None when blank or a comment; ValueError says what is wrong."""
    text = line_text(line)
    if not text:
        return None
    parts = text.rsplit(None, 1)
    try:
        if len(parts) == 1:
            raise ValueError(f"expected RANGE TYPE, got {text!r}")
        start, end = parse_pfn_range(parts[0])
    except ValueError:
        if _is_range(text):  # `0x10-0x1f` or `10 - 20` with the type left out
            raise ValueError(f"missing memory type after {text!r} (want {_KNOWN})") from None
        raise
    return MapLine(start, end, parse_mem_type(parts[1]), parts[0])


def parse_lines(lines: Iterable[str | bytes], source: str) -> list[tuple[int, MapLine]]:
    """`(line_number, MapLine)` for each item, checked not to overlap; errors name `source:line`."""
    items = list(numbered_items(lines, source, parse_line, MapFormatError))
    _check_disjoint(items, source)
    return items


def _check_disjoint(items: list[tuple[int, MapLine]], source: str) -> None:
    """MapFormatError naming the first line, in file order, that overlaps an earlier one.

    `items` are in file order. Whether the first k lines clash is monotone in k, so a
    binary search over k with an O(n) scan of the lines sorted by start finds that
    line in O(n log n).
    """
    ordered = sorted(items, key=lambda pair: (pair[1].start, pair[0]))

    def clash(limit: int) -> bool:
        """Whether the lines numbered up to `limit` overlap."""
        reach = -1
        for number, item in ordered:
            if number <= limit:
                if item.start < reach:
                    return True
                reach = max(reach, item.end)
        return False

    if not items or not clash(items[-1][0]):
        return
    low, high = 0, len(items) - 1  # the first k whose lines clash is items[k]'s line
    while low < high:
        middle = (low + high) // 2
        if clash(items[middle][0]):
            high = middle
        else:
            low = middle + 1
    late, b = items[low]
    early, a = next(
        (number, item) for number, item in items if item.start < b.end and b.start < item.end
    )
    raise MapFormatError(source, late, f"{b.text} overlaps {a.text} on line {early}")


def read_map(path: str | os.PathLike[str], failing: Iterable[tuple[int, int]] = ()) -> MemTypeMap:
    """The map at `path`, with `failing` ranges failing too; HookConfigError when it is bad."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as lines:
            items = parse_lines(lines, source)
    except OSError as e:
        raise HookConfigError(f"xen: {source}: cannot read: {e.strerror or e}") from e
    return MemTypeMap(((item.start, item.end, item.outcome) for _, item in items), failing)


def _subtract(
    segments: list[tuple[int, int, int]], holes: list[tuple[int, int]]
) -> Iterator[tuple[int, int, int]]:
    """The parts of sorted disjoint `segments` outside sorted disjoint `holes`."""
    j = 0
    for start, end, outcome in segments:
        while j < len(holes) and holes[j][1] <= start:
            j += 1
        pos, k = start, j
        while k < len(holes) and holes[k][0] < end:
            if holes[k][0] > pos:
                yield pos, holes[k][0], outcome
            pos = max(pos, holes[k][1])
            k += 1
        if pos < end:
            yield pos, end, outcome


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """`(start, end)` ranges sorted, with overlapping or adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


class MemTypeMap:
    """Each pfn's outcome: a memory type, or `FAILED`; ram_rw where nothing is said."""

    __slots__ = ("_firsts", "_lasts", "_outcomes")

    def __init__(
        self,
        segments: Iterable[tuple[int, int, int]] = (),
        failing: Iterable[tuple[int, int]] = (),
    ) -> None:
        """`segments` are disjoint `(start, end_exclusive, outcome)` in any order; the
        `(start, end_exclusive)` ranges of `failing` may overlap anything and win."""
        ordered = sorted(segments)
        for start, end, _ in ordered:
            if not 0 <= start < end <= PFN_LIMIT:
                raise ValueError(f"bad segment {start}..{end}: want 0 <= start < end <= 2**64")
        for (_, end, _), (start, _, _) in pairwise(ordered):
            if start < end:
                raise ValueError(f"segments overlap at pfn {start:#x}")
        holes = _merged(failing)
        for start, end in holes:
            if not 0 <= start < end <= PFN_LIMIT:
                raise ValueError(
                    f"bad failing range {start}..{end}: want 0 <= start < end <= 2**64"
                )
        firsts, lasts, outcomes = array("Q"), array("Q"), array("i")
        layered = sorted([*_subtract(ordered, holes), *((s, e, FAILED) for s, e in holes)])
        for start, end, outcome in layered:
            if outcome == HVMMEM_RAM_RW:
                continue  # the default: not stored
            if outcomes and outcomes[-1] == outcome and lasts[-1] + 1 == start:
                lasts[-1] = end - 1
            else:
                firsts.append(start)
                lasts.append(end - 1)
                outcomes.append(outcome)
        self._firsts = firsts
        self._lasts = lasts
        self._outcomes = outcomes

    def __len__(self) -> int:
        """The number of stored segments (pfns that are not ram_rw)."""
        return len(self._firsts)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """The stored segments as `(start, end_exclusive, outcome)`, in order."""
        for first, last, outcome in zip(self._firsts, self._lasts, self._outcomes, strict=True):
            yield first, last + 1, outcome

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemTypeMap):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MemTypeMap({len(self)} segments)"

    def outcome(self, pfn: int) -> int:
        """The outcome for `pfn` (0 <= pfn < 2**64), in O(log segments)."""
        i = bisect_right(self._firsts, pfn) - 1
        if i >= 0 and pfn <= self._lasts[i]:
            return self._outcomes[i]
        return HVMMEM_RAM_RW

    def runs(self, first: int, count: int) -> list[MemTypeRun]:
        """`[first, first+count)` as maximal outcome runs, in O(log segments + runs)."""
        firsts, lasts, outcomes = self._firsts, self._lasts, self._outcomes
        n, pos, stop = len(firsts), first, first + count
        i = bisect_right(firsts, pos) - 1
        if i < 0 or lasts[i] < pos:
            i += 1  # segment i is now the first one that ends at or after pos
        runs: list[MemTypeRun] = []
        while pos < stop:
            if i < n and firsts[i] <= pos:
                end, outcome = min(lasts[i] + 1, stop), outcomes[i]
                i += 1
            else:
                end, outcome = (min(firsts[i], stop) if i < n else stop), HVMMEM_RAM_RW
            append_run(runs, end - pos, outcome)
            pos = end
        return runs
