"""All-zero RAM pages in a range of the file view, found by looking at its bytes: what
a stream with `zeros_as_holes` sends as holes.

Design rules:
- A page is judged only when all of its bytes are in the file, in one run of the file
  map, and in the range looked at: a page cut by a chunk's edge (where the data is
  not page-aligned in the file) or by the end of its segment stays data, as
  makedumpfile keeps a page partly in a memory hole. ELF metadata is never judged.
- Looking is a tight loop over whole pages: its first and last bytes first (a page of
  data almost always fails there), then the page against the shared zero page
  (`zero_page.startswith(page)`: one memcmp of the buffer, no copy), and after a zero
  page the pages that follow in blocks that double up to 256 KiB; no loop over bytes
  in Python.
- Pages in a hole of the source file (SEEK_HOLE: a sparse saved dump) are zero
  without being looked at, and are told apart: the file had no data for them.
"""

from __future__ import annotations

from collections.abc import Iterable

from dumpd.engine.layout import Layout

BLOCK = 256 * 1024  # the most bytes of a run of zero pages compared at once
_ZEROS = bytes(BLOCK)

Ranges = list[tuple[int, int]]
"""Sorted, disjoint `[start, end)` file ranges."""


def judged_pages(layout: Layout, lo: int, hi: int) -> Ranges:
    """The whole pages of file bytes `[lo, hi)`, as runs `[start, end)` of pages, each
    starting where a page does."""
    ps = layout.page_size
    runs: Ranges = []
    for run in layout.runs_in(lo, hi):
        if run.paddr is None:
            continue
        s, e = max(lo, run.file_start), min(hi, run.file_end)
        first = s + (-(s + run.paddr - run.file_start)) % ps  # the first page boundary
        stop = first + max(0, e - first) // ps * ps
        if first < stop:
            runs.append((first, stop))
    return runs


def split_holes(runs: Ranges, holes: Iterable[tuple[int, int]], page_size: int
                ) -> tuple[Ranges, Ranges]:
    """`runs` (as `judged_pages` gives them) split into the pages to look at and those
    that lie wholly in `holes` (file ranges with no data)."""
    looked: Ranges = list(runs)
    unallocated: Ranges = []
    for hs, he in holes:
        rest: Ranges = []
        for s, e in looked:
            k0 = max(0, -(-(hs - s) // page_size))  # the first page starting at or after hs
            a = s + k0 * page_size
            b = e if e <= he else s + (he - s) // page_size * page_size
            if a >= b or a >= e:
                rest.append((s, e))
                continue
            if s < a:
                rest.append((s, a))
            _add(unallocated, a, b)
            if b < e:
                rest.append((b, e))
        looked = rest
    return looked, unallocated


class ZeroFinder:
    """Looks at the bytes of judged page runs, handed in order as views (one buffer, or
    window after window of a mapping). `straddling`: pages cut by the edge between two
    views, for the caller to look at in a copy of their own (`look_copy`)."""

    def __init__(self, runs: Ranges, zero_page: bytes) -> None:
        self._runs = runs
        self._zero = zero_page
        self._zeros: Ranges = []
        self.straddling: Ranges = []

    def look(self, offset: int, view: memoryview) -> None:
        """Judge the pages wholly inside `view`, which holds file bytes from `offset`;
        a page running past its end is left in `straddling`."""
        ps, zero, zeros = len(self._zero), self._zero, self._zeros
        end = offset + len(view)
        for s, e in self._runs:
            if e <= offset or s >= end:
                continue
            start = s if s >= offset else s + -(-(offset - s) // ps) * ps
            stop = min(e, end)
            last = start + max(0, stop - start) // ps * ps  # after the last whole page
            skip, stop_i = 0, last - offset
            for i in range(start - offset, stop_i, ps):
                if i < skip or view[i] or view[i + ps - 1]:  # data almost always fails here
                    continue
                if not zero.startswith(view[i : i + ps]):  # memcmp, no copy
                    continue
                skip = _zero_run(view, i + ps, stop_i, ps)
                _add(zeros, offset + i, offset + skip)
            if last < stop:  # a page cut by the view's end: looked at in a copy
                self.straddling.append((last, last + ps))

    def look_copy(self, start: int, data: bytes) -> None:
        """Judge one straddling page from a copy of its bytes."""
        if data == self._zero:
            self._zeros.append((start, start + len(data)))

    def zeros(self) -> Ranges:
        """The all-zero pages found, merged."""
        merged: Ranges = []
        for start, end in sorted(self._zeros):
            _add(merged, start, end)
        return merged


def _zero_run(view: memoryview, i: int, stop: int, page_size: int) -> int:
    """Where the zero pages from `view[i]` on end (at most at `stop`), compared in blocks
    doubling from a page up to `BLOCK` (zero pages come in runs); the block that is
    not all zero is left to be looked at page by page."""
    step = page_size
    while i < stop:
        n = min(step, stop - i)
        if not _ZEROS.startswith(view[i : i + n]):
            break
        i += n
        step = min(2 * step, BLOCK)
    return i


def _add(ranges: Ranges, start: int, end: int) -> None:
    if ranges and ranges[-1][1] == start:
        ranges[-1] = (ranges[-1][0], end)
    else:
        ranges.append((start, end))
