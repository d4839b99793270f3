"""Codes for every pfn, computed a chunk at a time when asked, the last few chunks kept.

A chunk is `size` pfns aligned to `size`, a power of two no smaller than the largest
free block (2**(LENGTH(zone.free_area)-1) pages): a free block, an unaccepted block and
any compound page up to that order lie inside one chunk, so a chunk is classified from
its own struct pages alone. A larger compound page (a gigantic hugetlb page) reaches
into the chunks after its head's: a chunk that starts with a tail page finds its head
(a few struct pages read) and takes what the head's verdict covers, as makedumpfile's
walk would have. The struct pages of a chunk are read in one `read_phys` per physically
contiguous run (MemMap's runs). pfns with no struct page (no section, no mem_map, an
unmapped piece of the vmemmap) are kept, as makedumpfile keeps them: it never looks.
"""

from __future__ import annotations

import bisect
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from dumpd.errors import DumpdError
from dumpd.kernel.sparsemem import MemMap

from .classify import ERROR, KEEP, Classifier, Jump

CHUNK_PAGES = 1024
CACHED_CHUNKS = 512
"""The LRU's bound: 512 chunks of a byte a pfn, 512 KiB at 1024 pfns a chunk: a whole
2 GiB of pfns, so that `explain` after a copy of a dump that size classifies nothing
again."""
MAX_COMPOUND_ORDER = 18  # x86_64's largest page, 1 GiB: a gigantic hugetlb page

ReadPhys = Callable[[int, int], bytes]
Piece = bytes | tuple[int, int]
"""Codes of consecutive pfns: one byte each, or `(count, code)` for `count` alike."""


class Chunks:
    """Per-pfn codes (one byte each, `classify` codes) over one dump, chunk by chunk."""

    def __init__(self, classifier: Classifier, memmap: MemMap, read_phys: ReadPhys,
                 pfn_ranges: Sequence[tuple[int, int]], max_order: int) -> None:
        self.classifier = classifier
        self.memmap = memmap
        self.read_phys = read_phys
        self.ranges = tuple(pfn_ranges)
        self._starts = [first for first, _ in self.ranges]
        self.size = max(CHUNK_PAGES, 1 << max(max_order - 1, 0))
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._empty = bytes(self.size)
        self.classified = 0  # chunks classified (not from the cache), for the bench
        self.reads = 0  # read_phys calls for struct pages

    @property
    def cached(self) -> int:
        """How many chunks the LRU holds now (at most CACHED_CHUNKS)."""
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    def pieces(self, first: int, count: int) -> Iterator[Piece]:
        """The codes of `[first, first+count)`, in pieces that cover it in order."""
        pos, end = first, first + count
        bits = self.memmap.section_bits
        while pos < end:
            section = pos >> bits
            if section >= self.memmap.sections:
                yield end - pos, KEEP  # past MAX_PHYSMEM_BITS: no struct page
                return
            if not self._mapped(section):
                stop = min(end, (section + 1) << bits)
                yield stop - pos, KEEP
                pos = stop
                continue
            index, at = divmod(pos, self.size)
            take = min(end - pos, self.size - at)
            yield self.chunk(index)[at:at + take]
            pos += take

    def _mapped(self, section: int) -> bool:
        """Whether the section has a mem_map (True when unreadable: `chunk` says so)."""
        try:
            return self.memmap.coded_map(section) is not None
        except DumpdError:
            return True

    def chunk(self, index: int) -> bytes:
        """Chunk `index`'s codes: from the cache, or classified now (and cached)."""
        found = self._cache.get(index)
        if found is not None:
            self._cache.move_to_end(index)
            return found
        try:
            codes = self._classify(index * self.size)
        except DumpdError:  # a page table or mem_section the dump does not hold
            codes = bytes([ERROR]) * self.size
        self._cache[index] = codes
        if len(self._cache) > CACHED_CHUNKS:
            self._cache.popitem(last=False)
        return codes

    def _classify(self, start: int) -> bytes:
        """The codes of the chunk from pfn `start`, its jumps applied in pfn order."""
        groups = self._groups(start, self.size)
        if not groups:
            return self._empty
        self.classified += 1
        out = bytearray(self.size)
        jumps: list[Jump] = []
        first = groups[0]
        if first.pfn == start and first.data is not None:
            jumps += self._from_head(start, first.data)
        for group in groups:
            at = group.pfn - start
            if group.data is None:
                out[at:at + group.count] = bytes([ERROR]) * group.count
                continue
            codes, found = self.classifier.run(group.pfn, group.data,
                                               self._in_dump(group.pfn, group.count))
            out[at:at + group.count] = codes
            jumps += [Jump(at + jump.offset, jump.pages, jump.code) for jump in found]
        covered = min((jump.offset for jump in jumps), default=0)  # a head's: before 0
        for jump in jumps:
            if jump.offset < covered:
                continue
            stop = min(self.size, jump.offset + jump.pages)
            begin = max(jump.offset, 0)
            out[begin:stop] = bytes([jump.code]) * (stop - begin)
            covered = jump.offset + jump.pages
        return bytes(out)

    def _groups(self, first: int, count: int) -> list[_Group]:
        """The struct pages of `[first, first+count)` in runs of consecutive pfns, read
        in one `read_phys` per physically contiguous piece (data None: unreadable)."""
        size = self.memmap.page_bytes
        groups: list[_Group] = []
        parts: list[bytes] = []
        for pfn, pages, paddr in self.memmap.struct_pages(first, count):
            try:
                data: bytes | None = self.read_phys(paddr, pages * size)
            except DumpdError:
                data = None
            self.reads += 1
            last = groups[-1] if groups else None
            if last and data is not None and last.data is not None and \
                    last.pfn + last.count == pfn:
                parts.append(data)
                last.count += pages
                continue
            if last and last.data is not None:
                last.data = b"".join(parts)
            parts = [data] if data is not None else []
            groups.append(_Group(pfn, pages, data))
        if groups and groups[-1].data is not None:
            groups[-1].data = b"".join(parts)
        return groups

    def _in_dump(self, first: int, count: int) -> int | None:
        """The lanes of `[first, first+count)` the dump holds; None: all of them."""
        index = max(bisect.bisect_right(self._starts, first) - 1, 0)
        end = first + count
        if index < len(self.ranges) and self.ranges[index][0] <= first and \
                end <= self.ranges[index][1]:
            return None
        pattern = bytearray(count * 8)
        for low, high in self.ranges[index:]:
            if low >= end:
                break
            low, high = max(low, first), min(high, end)
            if low < high:
                pattern[(low - first) * 8:(high - first) * 8:8] = b"\x01" * (high - low)
        return int.from_bytes(pattern, "little")

    def _from_head(self, start: int, data: bytes) -> list[Jump]:
        """The jump of the compound head before `start`, when page `start` is its tail
        and the head (excluded) takes it along; [] otherwise.

        A compound page of order k lies at a multiple of 2**k pfns, so its head is
        `start` rounded down to one: the candidates are tried from the nearest on
        (tails of the same page) to the first that is not a tail. That needs no head
        pointer (whose encoding 7.1 changed), only `compound_head`'s tail bit."""
        layout = self.classifier.layout
        (word,) = struct.unpack_from("<Q", data, layout.compound_head)
        if not word & 1:
            return []
        previous = start
        for order in range(self.size.bit_length(), MAX_COMPOUND_ORDER + 1):
            head = start & ~((1 << order) - 1)
            if head == previous:
                continue
            previous = head
            groups = self._groups(head, 2)
            if not groups or groups[0].pfn != head or groups[0].data is None:
                return []
            (word,) = struct.unpack_from("<Q", groups[0].data, layout.compound_head)
            if word & 1:
                continue  # a tail of the same compound page: its head is further back
            in_dump = self._in_dump(head, groups[0].count)
            if in_dump is not None and not in_dump & 1:
                return []  # makedumpfile skips a head the dump does not hold
            _, found = self.classifier.run(head, groups[0].data, in_dump)
            return [Jump(head - start, jump.pages, jump.code) for jump in found
                    if jump.offset == 0 and head + jump.pages > start]
        return []


class _Group:
    """Struct pages of `count` consecutive pfns from `pfn` (None: unreadable)."""

    __slots__ = ("count", "data", "pfn")

    def __init__(self, pfn: int, count: int, data: bytes | None) -> None:
        self.pfn = pfn
        self.count = count
        self.data = data

