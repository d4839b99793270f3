"""x86_64 kernel virtual addresses to physical ones, through the dead kernel's page tables.

The walk starts at `init_top_pgt` (a kernel-text symbol: its physical address is
`vaddr - __START_KERNEL_map + phys_base`, KASLR included, as `__pa_symbol` computes
it), takes 4 or 5 levels (`NUMBER(pgtable_l5_enabled)`), stops early at 1 GiB and
2 MiB pages (PSE), and clears the SME encryption bit (`NUMBER(sme_mask)`) from every
entry. Page-table pages are cached (a few, LRU): walks of nearby addresses share them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from dumpd.errors import DumpdError
from dumpd.kernel.vmcoreinfo import MissingInfo, VmcoreInfo

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
"""`__START_KERNEL_map`: where the kernel text is mapped (arch/x86/include/asm/page_64_types.h)."""

PRESENT = 1 << 0
HUGE = 1 << 7  # _PAGE_PSE: a 1 GiB (PUD) or 2 MiB (PMD) page
ADDRESS_BITS = ((1 << 52) - 1) & ~0xFFF  # PTE_PFN_MASK: bits 12-51
TABLE_BYTES = 4096
ENTRIES = 512
CACHED_TABLES = 64

_LEVEL_NAMES = {48: "PGD", 39: "P4D/PGD", 30: "PUD", 21: "PMD", 12: "PTE"}

ReadPhys = Callable[[int, int], bytes]


class Unmapped(DumpdError):
    """A virtual address the dead kernel's page tables do not map (EFAULT)."""

    def __init__(self, message: str) -> None:
        super().__init__("EFAULT", message)


class PageTables:
    """Translation through one dump's kernel page tables."""

    def __init__(self, info: VmcoreInfo, read_phys: ReadPhys) -> None:
        top = info.require_symbol("init_top_pgt")
        phys_base = info.require_number("phys_base")
        if top < START_KERNEL_MAP:
            raise MissingInfo(f"VMCOREINFO SYMBOL(init_top_pgt)={top:#x} is not in the "
                              "kernel text mapping")
        self.levels = 5 if info.number("pgtable_l5_enabled") else 4
        self.sme_mask = info.number("sme_mask") or 0
        self._address_bits = ADDRESS_BITS & ~self.sme_mask
        self._top = top - START_KERNEL_MAP + phys_base
        self._shifts = (48, 39, 30, 21, 12) if self.levels == 5 else (39, 30, 21, 12)
        self.read_phys = read_phys
        self._tables: OrderedDict[int, memoryview] = OrderedDict()
        self.table_reads = 0  # page-table pages read from the dump (not from the cache)

    def _canonical(self, vaddr: int) -> bool:
        bits = 57 if self.levels == 5 else 48
        high = vaddr >> (bits - 1)
        return 0 <= vaddr < 1 << 64 and high in (0, (1 << (65 - bits)) - 1)

    def _table(self, paddr: int) -> memoryview:
        table = self._tables.get(paddr)
        if table is not None:
            self._tables.move_to_end(paddr)
            return table
        try:
            data = self.read_phys(paddr, TABLE_BYTES)
        except DumpdError as exc:
            raise Unmapped(f"the page table at physical {paddr:#x} is not in the dump "
                           f"({exc.message})") from None
        self.table_reads += 1
        table = memoryview(data).cast("Q")
        self._tables[paddr] = table
        if len(self._tables) > CACHED_TABLES:
            self._tables.popitem(last=False)
        return table

    def walk(self, vaddr: int) -> tuple[int, int]:
        """`(paddr, page_bytes)`: where `vaddr` is, and the size of the page holding it."""
        if not self._canonical(vaddr):
            raise Unmapped(f"virtual address {vaddr:#x} is not canonical")
        table = self._top
        for shift in self._shifts:
            entry = self._table(table)[(vaddr >> shift) & (ENTRIES - 1)]
            if not entry & PRESENT:
                raise Unmapped(f"virtual address {vaddr:#x} is not mapped "
                               f"(no {_LEVEL_NAMES[shift]} entry)")
            size = 1 << shift
            if shift == 12 or (shift in (30, 21) and entry & HUGE):
                base = entry & self._address_bits & ~(size - 1)
                return base + (vaddr & (size - 1)), size
            table = entry & self._address_bits
        raise AssertionError("unreachable: the last level is a page")

    def translate(self, vaddr: int) -> int:
        """The physical address of `vaddr`; `Unmapped` (EFAULT) when nothing maps it."""
        return self.walk(vaddr)[0]

    def read_virt(self, vaddr: int, length: int) -> bytes:
        """The bytes at `[vaddr, vaddr+length)`, bypassing nothing but what `read_phys` does."""
        return b"".join(self.read_phys(paddr, n) for paddr, n in self.pieces(vaddr, length))

    def pieces(self, vaddr: int, length: int) -> list[tuple[int, int]]:
        """`(paddr, length)` pieces covering `[vaddr, vaddr+length)`, physically
        adjacent ones merged; `Unmapped` names the first address not mapped."""
        pieces: list[tuple[int, int]] = []
        end = vaddr + length
        while vaddr < end:
            paddr, size = self.walk(vaddr)
            take = min(end - vaddr, size - (vaddr & (size - 1)))
            if pieces and pieces[-1][0] + pieces[-1][1] == paddr:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + take)
            else:
                pieces.append((paddr, take))
            vaddr += take
        return pieces
