"""Balloon lists: the text format, merging into sorted disjoint ranges, and lookups.

(The other format, a bitmap used through mmap, is in `bitmap.py`; `formats.py`
tells them apart by content.)

A `PfnRanges` keeps its ranges in two parallel `array('Q')` (first and last pfn of
each range, both inclusive): memory grows with the number of ranges, never with the
number of pfns, and every pfn up to 2**64-1 fits.

The text format, one item per line:

    PFN            a single page frame number
    START-END      an inclusive range
    START+COUNT    COUNT pfns from START

Numbers are decimal or `0x` hex; `#` starts a comment; blank lines are ignored.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator

from dumpd.hooks.contract import HookConfigError
from dumpd.hooks.pfnrange import (
    PFN_LIMIT,
    PfnFileError,
    line_text,
    numbered_items,
    parse_pfn_range,
)

from .atomic import replacing


class BalloonFormatError(PfnFileError):
    """A line of a balloon list is malformed; the message is `balloon: FILE:LINE: reason`."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__("balloon", source, line, reason)


def parse_line(line: str | bytes) -> tuple[int, int] | None:
    """One line as `(start, end_exclusive)`, or None when it is blank or a comment.

    Raises ValueError saying what is wrong when the line is malformed.
    """
    text = line_text(line)
    return parse_pfn_range(text) if text else None


def parse_lines(lines: Iterable[str | bytes], source: str) -> Iterator[tuple[int, int]]:
    """The `(start, end_exclusive)` of each item line; errors name `source:line`."""
    for _, item in numbered_items(lines, source, parse_line, BalloonFormatError):
        yield item


def read_file(path: str | os.PathLike[str]) -> PfnRanges:
    """Parse the balloon list at `path`; HookConfigError when it is unreadable or malformed."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as lines:
            return PfnRanges(parse_lines(lines, source))
    except OSError as e:
        raise HookConfigError(f"balloon: {source}: cannot read: {e.strerror or e}") from e


def _checked(ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """`ranges`, each checked to be a non-empty `(start, end_exclusive)` within 2**64."""
    for pair in ranges:
        start, end = pair
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= PFN_LIMIT):
            raise ValueError(f"bad range {pair!r}: want ints with 0 <= start < end <= 2**64")
        yield start, end


class PfnRanges:
    """Sorted, disjoint, non-adjacent pfn ranges, looked up with `bisect`."""

    __slots__ = ("_firsts", "_lasts", "count")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """Merge `(start, end_exclusive)` pairs given in any order; overlapping or
        adjacent ones join."""
        firsts, lasts = array("Q"), array("Q")
        for start, end in sorted(_checked(ranges)):
            if firsts and start <= lasts[-1] + 1:
                lasts[-1] = max(lasts[-1], end - 1)
            else:
                firsts.append(start)
                lasts.append(end - 1)
        self._firsts = firsts
        self._lasts = lasts
        self.count: int = sum(lasts) - sum(firsts) + len(firsts)
        """How many pfns the ranges hold."""

    def __len__(self) -> int:
        """The number of ranges."""
        return len(self._firsts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The ranges as `(start, end_exclusive)`, in order."""
        for first, last in zip(self._firsts, self._lasts, strict=True):
            yield first, last + 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PfnRanges):
            return NotImplemented
        return self._firsts == other._firsts and self._lasts == other._lasts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PfnRanges({self.describe()})"

    def __contains__(self, pfn: object) -> bool:
        """Whether `pfn` lies in one of the ranges."""
        return isinstance(pfn, int) and self.holds(pfn)

    def bounds(self) -> tuple[int, int] | None:
        """`(lowest pfn, one past the highest)`, or None when there are no ranges."""
        return (self._firsts[0], self._lasts[-1] + 1) if self._firsts else None

    def describe(self) -> str:
        """The ranges, in words."""
        return f"{len(self)} ranges, {self.count} pfns"

    def close(self) -> None:
        """Nothing to release: the ranges live on the heap."""

    def holds(self, pfn: int) -> bool:
        """Whether `pfn` lies in one of the ranges, in O(log ranges)."""
        i = bisect_right(self._firsts, pfn) - 1
        return i >= 0 and pfn <= self._lasts[i]

    def runs(self, first: int, count: int) -> list[tuple[int, bool]]:
        """`[first, first+count)` as maximal `(length, held)` runs, in O(log ranges + runs)."""
        firsts, lasts, n = self._firsts, self._lasts, len(self._firsts)
        pos, stop = first, first + count
        i = bisect_right(firsts, pos) - 1
        if i < 0 or lasts[i] < pos:
            i += 1  # range i is now the first one that ends at or after pos
        out: list[tuple[int, bool]] = []
        while pos < stop:
            if i < n and firsts[i] <= pos:
                end, held = min(lasts[i] + 1, stop), True
                i += 1
            else:
                end, held = (min(firsts[i], stop) if i < n else stop), False
            out.append((end - pos, held))
            pos = end
        return out


def format_range(start: int, end: int) -> str:
    """`(start, end_exclusive)` as a list line: `PFN` or `START-END`, in hex."""
    return f"{start:#x}" if end - start == 1 else f"{start:#x}-{end - 1:#x}"


def format_text(ranges: Iterable[tuple[int, int]]) -> str:
    """A balloon list for `(start, end_exclusive)` pairs, merged and sorted, in hex."""
    merged = ranges if isinstance(ranges, PfnRanges) else PfnRanges(ranges)
    lines = [
        "# dumpd-balloon list: the pfns listed here are not RAM (START-END is inclusive)",
        f"# {len(merged)} ranges, {merged.count} pfns",
    ]
    lines += [format_range(start, end) for start, end in merged]
    return "\n".join(lines) + "\n"


def write_text(path: str | os.PathLike[str], ranges: Iterable[tuple[int, int]]) -> None:
    """Write `(start, end_exclusive)` pairs to `path` as a balloon list, atomically
    (a temporary file beside it, fsynced, renamed over it)."""
    text = format_text(ranges)  # first, so bad ranges leave no file behind
    with replacing(path) as out:
        out.write(text.encode("utf-8"))
