"""Where file bytes come from: which pfns a file range touches, and which of its
bytes are served from the source and which as zeros.

Pure functions over the source's `file_map` and a page size; the engine feeds
them verdicts. A file byte is zero exactly when it holds memory of a pfn whose
verdict is NOT_RAM, or of a page the dump left out (the source's `excluded`: a
kdump-compressed file's pages not dumped, whatever the hook says of them); every
other byte (RAM, error, unknown to no hook, ELF metadata) is read from the source.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence

from dumpd.engine.verdicts import Run, Stored
from dumpd.sources.base import MappedRun

Piece = tuple[int, int, bool]
"""`(file_start, file_end, is_zero)`."""

Excluded = Callable[[int, int], list[tuple[int, int]]]
"""The sorted `[start, end)` ranges of file bytes `[lo, hi)` in pages the dump left out."""


class Layout:
    """The file map of one source, indexed for range queries."""

    def __init__(self, file_map: Sequence[MappedRun], page_size: int,
                 excluded: Excluded | None = None) -> None:
        self.file_map = tuple(file_map)
        self.page_size = page_size
        self._starts = [run.file_start for run in self.file_map]
        self._excluded = excluded

    @property
    def excludes(self) -> bool:
        """Whether the source may have pages it left out (`excluded`)."""
        return self._excluded is not None

    def excluded(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The file bytes of `[lo, hi)` in pages the dump left out, sorted ranges."""
        return [] if self._excluded is None else self._excluded(lo, hi)

    def run_holding(self, lo: int, hi: int) -> MappedRun | None:
        """The one file-map run that holds all of `[lo, hi)`, or None (several, or a gap)."""
        i = bisect_right(self._starts, lo) - 1
        if i >= 0:
            run = self.file_map[i]
            if hi <= run.file_end:
                return run
        return None

    def runs_in(self, lo: int, hi: int) -> list[MappedRun]:
        """The file-map runs holding bytes of `[lo, hi)`, whole (not clipped)."""
        i = max(0, bisect_right(self._starts, lo) - 1)
        found = []
        while i < len(self.file_map) and self.file_map[i].file_start < hi:
            if self.file_map[i].file_end > lo:
                found.append(self.file_map[i])
            i += 1
        return found

    def _runs(self, lo: int, hi: int) -> list[tuple[int, int, int | None]]:
        """`(start, end, paddr_at_start)` pieces of the file map clipped to `[lo, hi)`."""
        out = []
        i = max(0, bisect_right(self._starts, lo) - 1)
        while i < len(self.file_map) and self.file_map[i].file_start < hi:
            run = self.file_map[i]
            start, end = max(lo, run.file_start), min(hi, run.file_end)
            if start < end:
                paddr = None if run.paddr is None else run.paddr + (start - run.file_start)
                out.append((start, end, paddr))
            i += 1
        return out

    def pfn_ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Sorted, disjoint `[first, end)` pfn ranges held by file bytes `[lo, hi)`."""
        ps = self.page_size
        ranges = sorted(
            (paddr // ps, (paddr + (end - start) - 1) // ps + 1)
            for start, end, paddr in self._runs(lo, hi)
            if paddr is not None
        )
        merged: list[tuple[int, int]] = []
        for first, end in ranges:
            if merged and first <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((first, end))
        return merged

    def classify(self, lo: int, hi: int, verdicts: Sequence[Run]) -> list[Piece]:
        """Split `[lo, hi)` into merged read and zero pieces.

        `verdicts` are sorted runs covering at least `pfn_ranges(lo, hi)`.
        """
        ps = self.page_size
        not_ram = Stored.NOT_RAM  # looked up once: a class attribute costs per run
        starts = [run[0] for run in verdicts]
        pieces: list[Piece] = []
        for start, end, paddr in self._runs(lo, hi):
            if paddr is None:
                _append(pieces, start, end, False)
                continue
            delta = paddr - start  # file offset + delta = physical address
            pos = start
            while pos < end:
                pfn = (pos + delta) // ps
                i = bisect_right(starts, pfn) - 1
                first, stop_pfn, code = verdicts[i]
                if not first <= pfn < stop_pfn:
                    raise AssertionError(f"no verdict for pfn {pfn:#x}")
                stop = min(end, stop_pfn * ps - delta)
                _append(pieces, pos, stop, code is not_ram)
                pos = stop
        return pieces if self._excluded is None else self._cut(pieces, self._excluded(lo, hi))

    @staticmethod
    def _cut(pieces: list[Piece], holes: list[tuple[int, int]]) -> list[Piece]:
        """`pieces` with the sorted ranges `holes` made zero pieces."""
        if not holes:
            return pieces
        starts = [start for start, _ in holes]
        out: list[Piece] = []
        for start, end, is_zero in pieces:
            pos = start
            i = max(0, bisect_right(starts, start) - 1)
            while not is_zero and i < len(holes) and holes[i][0] < end:
                hs, he = max(holes[i][0], pos), min(holes[i][1], end)
                if hs < he:
                    if pos < hs:
                        _append(out, pos, hs, False)
                    _append(out, hs, he, True)
                    pos = he
                i += 1
            if pos < end:
                _append(out, pos, end, is_zero)
        return out


def _append(pieces: list[Piece], start: int, end: int, is_zero: bool) -> None:
    if pieces and pieces[-1][1] == start and pieces[-1][2] == is_zero:
        pieces[-1] = (pieces[-1][0], end, is_zero)
    else:
        pieces.append((start, end, is_zero))
