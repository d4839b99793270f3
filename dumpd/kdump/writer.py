"""Writing a kdump-compressed file as makedumpfile lays it out, given its pages in pfn
order; every byte goes through `put(offset, data)` (a file's pwrite, or the flattened
form's records), so nothing here does I/O.

Design rules:
- The 2nd bitmap (the pfns dumped) is written before any page, so the descriptor
  table's size is known and the data area starts after it: a page's data is appended
  at the data cursor, its descriptor is the `rank`-th of the table (the number of
  dumped pfns below it), both in pfn order as makedumpfile writes them.
- A page is compressed on its own and kept compressed only if it shrank; else it is
  stored as it is, flags 0 (makedumpfile's rule).
- Zero pages and pages that must read as zeros (the stream said so, or could not read
  them) stay dumped, their descriptor that of one zero page: with zero pages left out
  (dump level bit 1) makedumpfile's, the raw page written first in the data area; else
  one compressed zero page written when first needed.
- Data before the descriptors that point at it: `flush` puts the buffered pages, then
  their descriptors, so a caller that checkpoints `Cursor` after a flush never saves a
  position whose bytes are not written. At most `FLUSH` bytes of each are held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dumpd.kdump.format import DESC, HEADER_VERSION, INCOMPLETE, Layout, MainHeader, SubHeader
from dumpd.kdump.notes import NoteFacts

FLUSH = 4 << 20
U64 = (1 << 64) - 1
Put = Callable[[int, bytes | bytearray | memoryview], None]
Compress = Callable[[memoryview], bytes]


@dataclass(frozen=True, slots=True)
class Plan:
    """What the headers say: the dump's page size and pfns, its notes (copied whole) and
    what they hold, the dead kernel's `utsname` and crash time, the codec's flag, and
    the dump level the pages were chosen at."""

    page_size: int
    max_mapnr: int
    notes: bytes
    facts: NoteFacts
    utsname: tuple[bytes, ...]
    crashtime: int
    codec_flag: int
    phys_base: int
    dump_level: int

    @property
    def layout(self) -> Layout:
        return Layout.for_notes(self.page_size, self.max_mapnr, len(self.notes))

    def main(self, complete: bool) -> bytes:
        """The `disk_dump_header`, DUMP_DH_COMPRESSED_INCOMPLETE until `complete`."""
        layout = self.layout
        status = self.codec_flag | (0 if complete else INCOMPLETE)
        return MainHeader(HEADER_VERSION, self.utsname, (self.crashtime, 0), status,
                          self.page_size, layout.sub_hdr_size, layout.bitmap_blocks,
                          self.max_mapnr, nr_cpus=self.facts.nr_cpus).pack()

    def sub(self) -> bytes:
        """The `kdump_sub_header` and the notes after it (put at `layout.sub_header`)."""
        at = self.layout.notes
        info = self.facts.vmcoreinfo
        phys_base = self.phys_base & U64  # an unsigned long: KASLR's may be negative
        sub = SubHeader(phys_base, self.dump_level,
                        offset_vmcoreinfo=at + info[0] if info else 0,
                        size_vmcoreinfo=info[1] if info else 0,
                        offset_note=at if self.notes else 0, size_note=len(self.notes),
                        max_mapnr_64=self.max_mapnr)
        return sub.pack() + self.notes

    def data_start(self, dumped: int) -> int:
        """Where the data area starts when `dumped` pfns are in the 2nd bitmap."""
        return self.layout.descriptors + dumped * DESC.size


@dataclass(slots=True)
class Cursor:
    """How far the pages went: the next rank (descriptor), where the next page's data
    goes, and the zero page's descriptor `[offset, size, flags]` once written."""

    rank: int
    data: int
    zero: list[int] | None = field(default=None)


class PageWriter:
    """Pages and their descriptors, held up to `FLUSH` bytes, then `put`."""

    def __init__(self, put: Put, plan: Plan, cursor: Cursor, compress: Compress) -> None:
        self._put = put
        self.page_size = plan.page_size
        self._table = plan.layout.descriptors
        self._flag = plan.codec_flag
        self._compress = compress
        self.cursor = cursor
        self._data = bytearray()
        self._data_at = cursor.data  # where `_data` goes
        self._descs = bytearray()
        self._base = cursor.rank  # the rank of the first descriptor in `_descs`

    def first_zero_page(self) -> None:
        """makedumpfile's zero page, raw, at the start of the data area."""
        self.cursor.zero = [self.cursor.data, self.page_size, 0]
        self._add(bytes(self.page_size))

    def _add(self, blob: bytes | memoryview) -> None:
        self._data += blob
        self.cursor.data += len(blob)

    def _desc(self, rank: int, packed: bytes) -> None:
        end = self._base + len(self._descs) // DESC.size
        if rank == end:
            self._descs += packed
        elif self._base <= rank < end:
            at = (rank - self._base) * DESC.size
            self._descs[at : at + DESC.size] = packed
        else:  # another part of the table (a range fetched again)
            self.flush()
            self._base = rank
            self._descs += packed
        if len(self._descs) >= FLUSH or len(self._data) >= FLUSH:
            self.flush()

    def raw(self, rank: int, pages: memoryview) -> None:
        """Pages of the view (`len(pages)` a multiple of the page size) for the
        descriptors from `rank` on, compressed one by one."""
        size, compress, flag = self.page_size, self._compress, self._flag
        for at in range(0, len(pages), size):
            page = pages[at : at + size]
            blob = compress(page)
            if len(blob) < size:
                self._desc(rank, DESC.pack(self.cursor.data, len(blob), flag, 0))
                self._add(blob)
            else:
                self._desc(rank, DESC.pack(self.cursor.data, size, 0, 0))
                self._add(page)
            rank += 1

    def blob(self, rank: int, blob: bytes | memoryview) -> None:
        """One page as its compressor left it: compressed with the plan's codec when
        shorter than a page, else the page as it is (it did not shrink)."""
        flags = self._flag if len(blob) < self.page_size else 0
        self._desc(rank, DESC.pack(self.cursor.data, len(blob), flags, 0))
        self._add(blob)

    def zero(self, rank: int, count: int) -> None:
        """`count` descriptors from `rank` on, of the zero page (written if not yet)."""
        if self.cursor.zero is None:
            blob = self._compress(memoryview(bytes(self.page_size)))
            flags = self._flag if len(blob) < self.page_size else 0
            if not flags:
                blob = bytes(self.page_size)
            self.cursor.zero = [self.cursor.data, len(blob), flags]
            self._add(blob)
        packed = DESC.pack(*self.cursor.zero, 0)
        for r in range(rank, rank + count):
            self._desc(r, packed)

    def flush(self) -> None:
        """Put the pages held, then their descriptors."""
        if self._data:
            self._put(self._data_at, self._data)
            self._data = bytearray()
        self._data_at = self.cursor.data
        if self._descs:
            self._put(self._table + self._base * DESC.size, self._descs)
            self._base += len(self._descs) // DESC.size
            self._descs = bytearray()
