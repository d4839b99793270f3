"""x86_64 page tables as the kernel writes them, for the synthetic kernel.

Four or five levels of 512 eight-byte entries; a leaf at level 1 maps 4 KiB, at level 2
(PSE) 2 MiB, at level 3 (PSE) 1 GiB. Every entry carries `sme_mask` (AMD SME's C-bit)
when asked, as the kernel sets `_PAGE_ENC` in tables and leaves alike; data mappings
carry NX (bit 63), text does not. The builder also keeps the list of what it mapped
(`translate`): the synthetic kernel places bytes at virtual addresses through that
list, never by walking the tables it wrote, so a test that walks them checks them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

PRESENT, RW, ACCESSED, DIRTY, PSE, GLOBAL = 0x1, 0x2, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
TABLE = PRESENT | RW | ACCESSED | DIRTY  # _KERNPG_TABLE
DATA = PRESENT | RW | ACCESSED | DIRTY | GLOBAL | NX  # __PAGE_KERNEL
TEXT = PRESENT | RW | ACCESSED | DIRTY | GLOBAL  # __PAGE_KERNEL_EXEC
ADDRESS = 0x000F_FFFF_FFFF_F000  # bits 12..51 (PTE_PFN_MASK)
LEAF_LEVEL = {1 << 12: 1, 1 << 21: 2, 1 << 30: 3}
ENTRIES = 512


def index(vaddr: int, level: int) -> int:
    """The entry that translates `vaddr` in a level-`level` table (1 = PTE)."""
    return (vaddr >> (12 + 9 * (level - 1))) & (ENTRIES - 1)


class PageTables:
    """Tables rooted at physical `top`; new tables come from `alloc()` (a free page)."""

    def __init__(self, levels: int, top: int, alloc: Callable[[], int], sme_mask: int = 0):
        if levels not in (4, 5):
            raise ValueError(f"x86_64 has 4 or 5 paging levels, not {levels}")
        self.levels, self.top, self.sme_mask = levels, top, sme_mask
        self._alloc = alloc
        self.tables: dict[int, list[int]] = {top: [0] * ENTRIES}
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, int]] = []  # (vaddr, size, paddr), sorted

    def map(self, vaddr: int, paddr: int, size: int, flags: int = DATA) -> None:
        """Map `[vaddr, vaddr+size)` to `paddr` with one leaf of `size` (4K, 2M or 1G)."""
        leaf = LEAF_LEVEL[size]
        if vaddr % size or paddr % size:
            raise ValueError(f"{vaddr:#x} -> {paddr:#x} is not aligned to {size:#x}")
        table = self._table_for(vaddr, leaf)
        slot = index(vaddr, leaf)
        if table[slot] & PRESENT:
            raise ValueError(f"{vaddr:#x} is mapped already")
        table[slot] = paddr | flags | (PSE if leaf > 1 else 0) | self.sme_mask
        at = bisect.bisect(self._starts, vaddr)
        self._starts.insert(at, vaddr)
        self._ranges.insert(at, (vaddr, size, paddr))

    def poke(self, vaddr: int, level: int, entry: int) -> None:
        """Store a raw `entry` (not present, say) where `vaddr`'s level-`level` entry is."""
        self._table_for(vaddr, level)[index(vaddr, level)] = entry

    def _table_for(self, vaddr: int, level: int) -> list[int]:
        """The level-`level` table on `vaddr`'s path, making the tables above it."""
        table = self.tables[self.top]
        for upper in range(self.levels, level, -1):
            slot = index(vaddr, upper)
            entry = table[slot]
            if not entry & PRESENT:
                new = self._alloc()
                self.tables[new] = [0] * ENTRIES
                table[slot] = entry = new | TABLE | self.sme_mask
            elif entry & PSE:
                raise ValueError(f"{vaddr:#x} lies in a large page at level {upper}")
            table = self.tables[entry & ADDRESS & ~self.sme_mask]
        return table

    def translate(self, vaddr: int) -> int:
        """The physical address of `vaddr`, from what was mapped (KeyError if nothing)."""
        at = bisect.bisect(self._starts, vaddr) - 1
        if at >= 0:
            start, size, paddr = self._ranges[at]
            if vaddr < start + size:
                return paddr + vaddr - start
        raise KeyError(f"{vaddr:#x} is not mapped")

    def pages(self) -> dict[int, bytes]:
        """Every table's page: physical address -> 4096 bytes, little endian."""
        return {paddr: b"".join(e.to_bytes(8, "little") for e in entries)
                for paddr, entries in self.tables.items()}
