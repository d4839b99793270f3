"""The pages of a kdump-compressed file by pfn: which are dumped (the 2nd bitmap),
where each one's bytes are (its page descriptor, found by its rank in the bitmap),
and the page itself, decompressed.

Design rules:
- A read of pages `[first, first + count)` asks the bitmap once for the dumped runs
  and the rank of the first, reads their descriptors in one read, and their data in
  as few reads as the file allows (runs that follow each other in the file, the shared
  zero page makedumpfile writes at `-d 1` read once), then decompresses page by page
  straight into the caller's buffer. Pages not dumped are zeros, never read.
- A page whose descriptor is wrong (past the end of the file, a size that is no page,
  an unknown compression) or that does not decompress is `BadPage` for that page
  alone: the caller fails it, and the pages around it are still served.
- Nothing is held per pfn: the bitmap's `Rank` (dumpd.kdump.bitmap) keeps a few
  arrays and LRUs whatever the dump's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn

from dumpd import codecs
from dumpd.errors import DumpdError
from dumpd.kdump.bitmap import Rank, Runs
from dumpd.kdump.format import DESC, Layout
from dumpd.sources.kdumpfile import KdumpBytes, WouldBlock

GAP = 4096  # bytes between two pages' data still read in one read
SPAN_MAX = 4 << 20  # the most bytes of page data read at once
Descriptor = tuple[int, int, int, int]
"""A `page_desc`: offset, size, flags, page_flags."""


class BadPage(Exception):
    """Page `pfn` cannot be had; `reason` says why in the words of a log line."""

    def __init__(self, pfn: int, reason: str) -> None:
        super().__init__(f"pfn {pfn:#x}: {reason}")
        self.pfn = pfn
        self.reason = reason


class Pages:
    """The dumped pages of one kdump-compressed file (`layout` its parts); `incomplete`:
    its header says makedumpfile did not finish it."""

    def __init__(self, file: KdumpBytes, layout: Layout, incomplete: bool) -> None:
        self._file = file
        self.page_size = layout.block_size
        self._descriptors = layout.descriptors
        self._incomplete = incomplete
        self._decoders: dict[int, Callable[[bytes | memoryview, int], bytes]] = {}
        base = layout.bitmap2
        self.dumped = Rank(lambda offset, length: file.pread(base + offset, length),
                           layout.max_mapnr, layout.block_size,
                           lambda offset: file.data_at(base + offset) - base)

    def runs(self, first: int, end: int) -> Runs:
        """The dumped runs of pfns `[first, end)`."""
        return self.dumped.runs(first, end)

    def read(self, first: int, count: int, out: memoryview, nowait: bool = False) -> None:
        """Pages `[first, first + count)` into `out` (`count` pages). BadPage for the
        first page that cannot be had; OSError from the file; with `nowait`,
        WouldBlock (sources/kdumpfile.py) when it would have to wait."""
        ps = self.page_size
        if nowait:
            found = self.dumped.peek(first, first + count)
            if found is None:
                raise WouldBlock
            rank, runs = found
        else:
            runs = self.runs(first, first + count)
            rank = self.dumped.rank(first) if runs else 0
        pos = first
        for start, end in runs:  # what is not dumped is zeros
            out[(pos - first) * ps : (start - first) * ps] = bytes((start - pos) * ps)
            pos = end
        out[(pos - first) * ps : count * ps] = bytes((first + count - pos) * ps)
        if not runs:
            return
        pfns = [pfn for start, end in runs for pfn in range(start, end)]
        descriptors = self._descriptors_of(pfns, rank, nowait)
        blobs = self._data(pfns, descriptors, nowait)
        for pfn, (_, _, flags, _), blob in zip(pfns, descriptors, blobs, strict=True):
            at = (pfn - first) * ps
            if flags == 0:
                out[at : at + ps] = blob
                continue
            try:
                out[at : at + ps] = self._decoder(flags)(blob, ps)
            except DumpdError as exc:
                raise BadPage(pfn, exc.message) from None

    def _decoder(self, flags: int) -> Callable[[bytes | memoryview, int], bytes]:
        """The decompression of a page descriptor's `flags` (DumpdError when none)."""
        found = self._decoders.get(flags)
        if found is None:
            found = self._decoders[flags] = codecs.by_flag(flags).decompress
        return found

    def _descriptors_of(self, pfns: Sequence[int], rank: int, nowait: bool
                        ) -> list[Descriptor]:
        """The page descriptors of `pfns` (dumped, consecutive in the bitmap, the first
        of rank `rank`), checked."""
        data = self._file.pread(self._descriptors + rank * DESC.size, len(pfns) * DESC.size,
                                nowait)
        found: list[Descriptor] = list(DESC.iter_unpack(data[: len(data) // DESC.size
                                                              * DESC.size]))
        if len(found) < len(pfns):
            raise BadPage(pfns[len(found)], "its page descriptor (number "
                          f"{rank + len(found)}) is past the end of the file")
        ps, lowest, highest = self.page_size, self._descriptors, self._file.size
        for pfn, (offset, size, flags, _) in zip(pfns, found, strict=True):
            if not (0 < size <= ps and lowest <= offset <= highest - size) or (
                    flags == 0 and size != ps):
                raise BadPage(pfn, f"{self._wrong(offset, size, flags)} (page descriptor "
                              f"{offset:#x}, {size:#x}, flags {flags:#x})")
        return found

    def _wrong(self, offset: int, size: int, flags: int) -> str:
        """What is wrong with a page descriptor that is."""
        if offset == size == flags == 0:
            return ("not written: the dump is incomplete (makedumpfile stopped before "
                    "this page)") if self._incomplete else "an empty page descriptor"
        if flags == 0 and size != self.page_size:
            return f"an uncompressed page of {size} bytes, not {self.page_size}"
        if not 0 < size <= self.page_size:
            return f"a compressed page of {size} bytes"
        return f"its data is outside the page data of the file ({self._file.size:#x} bytes)"

    def _data(self, pfns: Sequence[int], descriptors: Sequence[Descriptor], nowait: bool
              ) -> list[bytes | memoryview]:
        """Each page's stored bytes, in one read when they follow each other in the file
        (as makedumpfile writes them), else in as few reads as their places allow."""
        start = end = descriptors[0][0]
        for offset, size, _, _ in descriptors:
            if offset != end:
                return self._scattered(pfns, descriptors, nowait)
            end += size
        if end - start > SPAN_MAX:
            return self._scattered(pfns, descriptors, nowait)
        view = memoryview(self._file.pread(start, end - start, nowait))
        if len(view) < end - start:
            self._past_end(pfns, descriptors, start + len(view))
        out: list[bytes | memoryview] = []
        pos = 0
        for _, size, _, _ in descriptors:
            out.append(view[pos : pos + size])
            pos += size
        return out

    def _scattered(self, pfns: Sequence[int], descriptors: Sequence[Descriptor],
                   nowait: bool) -> list[bytes | memoryview]:
        wanted = sorted({(offset, size) for offset, size, _, _ in descriptors})
        spans: list[list[int]] = []  # [start, end] of each read
        for offset, size in wanted:
            if spans and offset <= spans[-1][1] + GAP and offset + size - spans[-1][0] <= SPAN_MAX:
                spans[-1][1] = max(spans[-1][1], offset + size)
            else:
                spans.append([offset, offset + size])
        got: dict[tuple[int, int], bytes | memoryview] = {}
        k = 0
        for start, end in spans:
            view = memoryview(self._file.pread(start, end - start, nowait))
            if len(view) < end - start:
                self._past_end(pfns, descriptors, start + len(view))
            while k < len(wanted) and wanted[k][0] < end:
                offset, size = wanted[k]
                got[wanted[k]] = view[offset - start : offset - start + size]
                k += 1
        return [got[(offset, size)] for offset, size, _, _ in descriptors]

    def _past_end(self, pfns: Sequence[int], descriptors: Sequence[Descriptor], at: int
                  ) -> NoReturn:
        """BadPage for the first page whose data a read cut short at `at` (the file shrank)."""
        pfn = next(pfn for pfn, (offset, size, _, _) in zip(pfns, descriptors, strict=True)
                   if offset + size > at)
        raise BadPage(pfn, f"its data ends past the end of the file (cut short at {at:#x})")
