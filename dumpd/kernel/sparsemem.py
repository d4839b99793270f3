"""Where a pfn's `struct page` is: SPARSEMEM's `mem_section` and the mem_map it points to.

Since 4.15 with SPARSEMEM_EXTREME, `SYMBOL(mem_section)` is the array of root pointers
(`LENGTH(mem_section)` of them), each root a page of `PAGE_SIZE / SIZE(mem_section)`
sections; without EXTREME it is the sections themselves. Which one is told as
makedumpfile tells it: EXTREME when the length is the number of roots. A section's
`section_mem_map` holds the mem_map pointer minus its first pfn's struct pages, with
flag bits in the low five; a section without SECTION_MARKED_PRESENT has no mem_map.
"""

from __future__ import annotations

import struct

from dumpd.kernel.vmcoreinfo import MissingInfo, VmcoreInfo
from dumpd.kernel.x86_64 import PageTables, Unmapped

MARKED_PRESENT = 1 << 0
FLAG_BITS = (1 << 5) - 1  # SECTION_MAP_LAST_BIT is 1 << 5 since 4.13 (never set before)

SECTION_SIZE_BITS_X86_64 = 27
PAGE = 4096  # the smallest page a mapping of the vmemmap can have


def max_physmem_bits(info: VmcoreInfo) -> int:
    """`NUMBER(MAX_PHYSMEM_BITS)`, or x86_64's value for the kernel's version (as
    makedumpfile assumes it for kernels that did not export it)."""
    given = info.number("MAX_PHYSMEM_BITS")
    if given is not None:
        return given
    if info.number("pgtable_l5_enabled"):
        return 52
    version = info.kernel_version or (0, 0, 0)
    return 46 if version >= (2, 6, 31) else 44 if version >= (2, 6, 26) else 40


class MemMap:
    """Struct page addresses of pfns, section by section (roots read once, lazily)."""

    def __init__(self, info: VmcoreInfo, tables: PageTables) -> None:
        self._tables = tables
        self.page_bytes = info.require_size("page")
        page_size = info.page_size or 4096
        self.section_bits = (info.number("SECTION_SIZE_BITS")
                             or SECTION_SIZE_BITS_X86_64) - (page_size.bit_length() - 1)
        self._array = info.require_symbol("mem_section")
        self._section_bytes = info.require_size("mem_section")
        self._map_offset = info.require_offset("mem_section.section_mem_map")
        sections = 1 << (max_physmem_bits(info) - (self.section_bits
                                                   + page_size.bit_length() - 1))
        per_root = page_size // self._section_bytes
        length = info.length("mem_section")
        self._extreme = length is None or length == -(-sections // per_root)
        self._per_root = per_root if self._extreme else 1
        self.sections = sections
        self._roots: dict[int, int] = {}
        self._maps: dict[int, int | None] = {}

    def _u64(self, vaddr: int) -> int:
        return int(struct.unpack("<Q", self._tables.read_virt(vaddr, 8))[0])

    def _section_address(self, number: int) -> int | None:
        if not self._extreme:
            return self._array + number * self._section_bytes
        root_index = number // self._per_root
        root = self._roots.get(root_index)
        if root is None:
            root = self._u64(self._array + root_index * 8)
            self._roots[root_index] = root
        if root == 0:
            return None
        return root + (number % self._per_root) * self._section_bytes

    def coded_map(self, section: int) -> int | None:
        """The section's `section_mem_map` with its flags cleared (mem_map minus the
        section's first pfn's struct pages), or None: no such section or no mem_map."""
        if section in self._maps:
            return self._maps[section]
        found: int | None = None
        if 0 <= section < self.sections:
            address = self._section_address(section)
            if address is not None:
                word = self._u64(address + self._map_offset)
                if word & MARKED_PRESENT:
                    found = word & ~FLAG_BITS
        self._maps[section] = found
        return found

    def struct_pages(self, first_pfn: int, count: int) -> list[tuple[int, int, int]]:
        """`(pfn, npages, paddr)` runs: the struct pages of `npages` pfns from `pfn` lie
        physically contiguous from `paddr`. Pfns with no mem_map, whose struct page is
        not mapped, or split across pages apart in physical memory, are in no run."""
        runs: list[tuple[int, int, int]] = []
        pfn, end = first_pfn, first_pfn + count
        while pfn < end:
            section = pfn >> self.section_bits
            section_end = min(end, (section + 1) << self.section_bits)
            coded = self.coded_map(section)
            if coded is not None:
                self._add_runs(runs, pfn, section_end, (coded + pfn * self.page_bytes)
                               & ((1 << 64) - 1))
            pfn = section_end
        return runs

    def _add_runs(self, runs: list[tuple[int, int, int]], pfn: int, end: int,
                  vaddr: int) -> None:
        """Runs for the struct pages of `[pfn, end)`, the first at `vaddr`."""
        size = self.page_bytes
        offset, total = 0, (end - pfn) * size
        while offset < total:
            try:
                paddr, page = self._tables.walk(vaddr + offset)
            except Unmapped:
                offset += PAGE - ((vaddr + offset) & (PAGE - 1))
                continue
            length = min(total - offset, page - ((vaddr + offset) & (page - 1)))
            first, last = -(-offset // size), (offset + length) // size
            if last > first:
                start = paddr + first * size - offset
                previous = runs[-1] if runs else None
                if previous and previous[0] + previous[1] == pfn + first and \
                        previous[2] + previous[1] * size == start:
                    runs[-1] = (previous[0], previous[1] + last - first, previous[2])
                else:
                    runs.append((pfn + first, last - first, start))
            offset += length


__all__ = ["MemMap", "MissingInfo", "max_physmem_bits"]
