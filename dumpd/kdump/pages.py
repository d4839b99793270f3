"""The pages of a kdump-compressed file as they arrive: bytes by physical address, in
address order, cut into pages (`Feed`) and matched with the 2nd bitmap (`Dumper`).

Design rules:
- The 2nd bitmap was written first and is the truth: each pfn set there gets exactly
  one descriptor, at its rank, whatever arrives for it (a page, zeros, an error), so
  the table never shifts; a page for a pfn not set is left out (`dropped`: the hook's
  verdict changed since the bitmap was made).
- Bytes that read as zeros (holes, gaps) cost nothing per page: only the pfns of the
  bitmap among them are looked at, a block of bits at a time.
- A page whose bytes come in parts (a view not page-aligned in the file, a page two
  PT_LOADs share) is gathered in one buffer until the next page begins; `idle` says
  none is being gathered (a position that can be checkpointed).
"""

from __future__ import annotations

from collections.abc import Callable

from dumpd.kdump.bitmap import Rank
from dumpd.kdump.writer import PageWriter

Tap = Callable[[int, memoryview], None]


class Dumper:
    """Pages in pfn order against the 2nd bitmap `bits`; `next_pfn` and `rank`: every
    pfn below was handled, `rank` of them dumped. `tap(pfn, pages)`, if given, sees
    the bytes of the pages dumped as data."""

    def __init__(self, bits: Rank, writer: PageWriter, next_pfn: int, rank: int,
                 tap: Tap | None = None) -> None:
        self.bits = bits
        self.writer = writer
        self.next_pfn = next_pfn
        self.rank = rank
        self.dropped = 0
        self._tap = tap
        self._size = writer.page_size

    def _count(self, first: int, end: int) -> int:
        """Pfns of `[first, end)` set in the 2nd bitmap."""
        return self.bits.rank(end) - self.bits.rank(first) if first < end else 0

    def zeros(self, end: int) -> None:
        """Pfns up to `end` read as zeros (those dumped get the zero page)."""
        if end <= self.next_pfn:
            return
        dumped = self._count(self.next_pfn, end)
        if dumped:
            self.writer.zero(self.rank, dumped)
            self.rank += dumped
        self.next_pfn = end

    def data(self, pfn: int, pages: memoryview) -> None:
        """Whole pages from `pfn` on, raw."""
        self.zeros(pfn)
        count = len(pages) // self._size
        if self._count(pfn, pfn + count) == count:
            self.writer.raw(self.rank, pages)
            if self._tap is not None:
                self._tap(pfn, pages)
            self.rank += count
            self.next_pfn = pfn + count
            return
        for i in range(count):
            if self._count(pfn + i, pfn + i + 1):
                self.data(pfn + i, pages[i * self._size : (i + 1) * self._size])
            else:
                self.dropped += 1
                self.next_pfn = pfn + i + 1

    def blob(self, pfn: int, blob: bytes | memoryview, page: Callable[[], memoryview]
             ) -> None:
        """One page as a compressor left it (`PageWriter.blob`); `page()` gives its
        bytes (for `tap`)."""
        self.zeros(pfn)
        if self._count(pfn, pfn + 1):
            self.writer.blob(self.rank, blob)
            if self._tap is not None:
                self._tap(pfn, page())
            self.rank += 1
        else:
            self.dropped += 1
        self.next_pfn = pfn + 1

    def unknown(self, pfn: int, count: int) -> int:
        """Pfns the source could not read: zeros, those handled already too (an error
        may follow the data it voids). The rank of the first of them."""
        if pfn < self.next_pfn:
            done = self._count(pfn, min(self.next_pfn, pfn + count))
            first_rank = self.rank - self._count(pfn, self.next_pfn)
            if done:
                self.writer.zero(first_rank, done)
        else:
            first_rank = self.rank + self._count(self.next_pfn, pfn)
        self.zeros(pfn + count)
        return first_rank


class Feed:
    """Bytes of physical memory in address order, cut into pages for `dumper`."""

    def __init__(self, dumper: Dumper) -> None:
        self.dumper = dumper
        self._size = dumper.writer.page_size
        self._zero = memoryview(bytes(self._size))
        self._pending: tuple[int, bytearray] | None = None  # a page being gathered
        self._has_data = False  # it holds bytes that are not only holes

    @property
    def idle(self) -> bool:
        return self._pending is None

    def data(self, paddr: int, data: memoryview, hole: bool = False) -> None:
        """`data` at `paddr` (`hole`: zeros the stream did not send)."""
        size = self._size
        while data:
            pfn, within = divmod(paddr, size)
            if self._pending is not None and self._pending[0] != pfn:
                self.close()
            if not within and self._pending is None and len(data) >= size:
                whole = len(data) // size * size
                if hole:
                    self.dumper.zeros(pfn + whole // size)
                else:
                    self.dumper.data(pfn, data[:whole])
                data, paddr = data[whole:], paddr + whole
                continue
            if self._pending is None:
                self._pending, self._has_data = (pfn, bytearray(size)), False
            take = min(len(data), size - within)
            if not hole:
                self._pending[1][within : within + take] = data[:take]
                self._has_data = True
            data, paddr = data[take:], paddr + take
            if not paddr % size:
                self.close()

    def zeros(self, paddr: int, length: int) -> None:
        """A hole of `length` bytes at `paddr`: its whole pages cost no bytes."""
        end, size = paddr + length, self._size
        lead = min(length, -paddr % size)
        if lead:
            self.data(paddr, self._zero[:lead], hole=True)
            paddr += lead
        whole = (end - paddr) // size * size
        if whole:
            self.close()
            self.dumper.zeros((paddr + whole) // size)
            paddr += whole
        if paddr < end:
            self.data(paddr, self._zero[: end - paddr], hole=True)

    def unknown(self, paddr: int, length: int) -> int:
        """Bytes the source could not read: their pages read as zeros. The rank of the
        first of those pages."""
        first, end = paddr // self._size, -(-(paddr + length) // self._size)
        if self._pending is not None and first <= self._pending[0] < end:
            self._pending = None
        else:
            self.close()
        return self.dumper.unknown(first, end - first)

    def unit(self, paddr: int, length: int, blob: bytes | memoryview,
             decompress: Callable[[bytes | memoryview, int], bytes]) -> None:
        """`length` bytes at `paddr` as a compressor left them: `blob` compressed with
        the plan's codec when shorter, else the bytes themselves. A whole page is
        stored as it came; a part of one is decompressed and gathered."""
        pfn, within = divmod(paddr, self._size)
        raw = len(blob) == length
        if self._pending is not None and self._pending[0] != pfn:
            self.close()
        if length == self._size and not within and self._pending is None:
            self.dumper.blob(pfn, blob, lambda: memoryview(
                blob if raw else decompress(blob, length)))
        else:
            self.data(paddr, memoryview(blob if raw else decompress(blob, length)))

    def close(self) -> None:
        """The page being gathered is what it holds (zeros where nothing came)."""
        if self._pending is None:
            return
        pfn, page = self._pending
        self._pending = None
        if self._has_data:
            self.dumper.data(pfn, memoryview(page))
        else:
            self.dumper.zeros(pfn + 1)
