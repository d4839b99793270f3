"""Synthetic kernel memory as an ELF core: what dumpd's kernel readers are tested on.

    k = SyntheticKernel(variant="6.12", levels=5, kaslr=True, sme=True, omit=("KERNELOFFSET",))
    k.write(path)                # the ELF core (sparse: all-zero pages are holes)
    k.vmcoreinfo                 # the note's text; `omit` leaves those keys out
    k.kinds[pfn]                 # what each pfn of the dump is (below)
    k.expected_excluded(31)      # pfns makedumpfile 1.7.7 leaves out at -d 31
    k.reasons(31)[pfn]           # why: free, cache, cache_private, user, hwpoison, offline, zero
    k.markers["direct_1g"]       # (vaddr, bytes) to find there: uts_sysname, uts_release,
                                 # direct_4k, direct_2m, direct_1g, direct_4k_2m, vmalloc_split
    k.unmapped["pmd"]            # a vaddr whose walk stops there (pgd, pud, pmd, pte);
    k.unmapped_vaddr             # == unmapped["pmd"]
    k.zero_pfns                  # pfns whose bytes are all zero (-d 1)
    k.struct_page(pfn)           # the 64 bytes of its struct page (KeyError: no mem_map)
    k.read_phys(paddr, n)        # the dump's bytes without a file; k.ram: [first, end) pfns
    k.direct(pfn), k.symbols     # direct-map address; SYMBOL()s; also page_offset,
                                 # vmalloc_start, vmemmap, phys_base, kernel_offset, text

Kinds: ram, nomap (its section has no mem_map), offline, hwpoison, hwpoison_user (anon
too), cache, cache_private, swapcache, fs_checked (PG_checked, not swap cache), anon,
ksm, slab, and blocks whose first page is free, unaccepted (6.12+), thp, hugetlb,
cache_folio or slab, the others "<kind>_tail".

`VARIANTS` (kernelpages) are the releases modelled; `exclusion` holds the rules table
the expectations follow. The physical layout (pfns; sections of 2**24 bytes):

| pfns | what | section |
|---|---|---|
| 1-159, 256-2559 | page tables, one-page kinds, free orders 9..0, vmemmap | 0 (mem_map) |
| 4096-8191 | image (no KASLR), free order 10, THP, hugetlb, unaccepted | 1 (mem_map) |
| - | hole: no RAM, no section | 2 |
| 12288-12543 | RAM whose section has no mem_map (never excluded) | 3 |
| 16384-24575 | one hugetlb page of order 13 across two sections, all zero | 4, 5 |
| 0x200000-0x200bff | kernel image (KASLR), mem_section roots (8 GiB: root 1 is NULL) | 512 |

The direct map uses 4 KiB pages in the first 2 MiB and at 48 MiB, 2 MiB pages up to
96 MiB, one 1 GiB page at 8 GiB; vmemmap one 2 MiB page (sections 0-7) and 4 KiB pages
out of order (section 512); text one 2 MiB page; a vmalloc pair of 4 KiB pages apart.
Everything is derived from the kernel's definitions, not from dumpd's readers.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Collection, Iterator
from functools import cached_property

from dumpd.testing.elfwriter import LoadSpec, Note, pattern, prstatus_note, write_elf_core
from dumpd.testing.exclusion import excluded
from dumpd.testing.kernelinfo import Facts, vmcoreinfo_lines
from dumpd.testing.kernelpages import PAGE_SIZE, STRUCT_PAGE, VARIANTS, Objects, block
from dumpd.testing.pagetables import TEXT, PageTables

__all__ = ["VARIANTS", "SyntheticKernel"]

SECTION_SIZE_BITS = 24
PAGES_PER_SECTION = 1 << (SECTION_SIZE_BITS - 12)
SECTIONS_PER_ROOT = PAGE_SIZE // 16  # SIZE(mem_section) 16
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
START_KERNEL = START_KERNEL_MAP + 0x100_0000  # _text without KASLR (LOAD_PHYSICAL_ADDR)
KASLR_OFFSET = 0x2E0_0000
SME_MASK = 1 << 47  # the C-bit of an AMD EPYC
MiB, GiB = 1 << 20, 1 << 30
HIGH = 0x200000  # pfn of 8 GiB: section 512, root 2
IMAGE_PAGES = 512  # a 2 MiB kernel image
SECTION_FLAGS = {0: 0xF, 1: 0xF, 4: 0x7, 5: 0x7, 512: 0xF}  # PRESENT|HAS_MEM_MAP|ONLINE|EARLY
RAM = ((1, 160), (256, 2560), (4096, 8192), (12288, 12544), (16384, 24576), (HIGH, HIGH + 3072))
POOL, OBJECTS, VMEMMAP_2M, VMEMMAP_4K = 256, 383, 1536, 2048
VMALLOC_PAGES = (2401, 2398)
_BASES = {  # (levels, kaslr) -> page_offset_base, vmalloc_base, vmemmap_base
    (4, False): (0xFFFF_8880_0000_0000, 0xFFFF_C900_0000_0000, 0xFFFF_EA00_0000_0000),
    (4, True): (0xFFFF_9B5C_4000_0000, 0xFFFF_B1E0_C000_0000, 0xFFFF_DB4F_4000_0000),
    (5, False): (0xFF11_0000_0000_0000, 0xFFA0_0000_0000_0000, 0xFFD4_0000_0000_0000),
    (5, True): (0xFF2F_2D80_0000_0000, 0xFFAA_1580_0000_0000, 0xFFDC_9E00_0000_0000),
}
_IMAGE = {"init_top_pgt": 0x10_0000, "init_uts_ns": 0x14_0000, "node_online_map": 0x15_0000,
          "vmap_area_list": 0x15_0100, "prb": 0x15_0200, "printk_rb_static": 0x15_0300,
          "clear_seq": 0x15_0400, "node_data": 0x15_0500, "kallsyms_names": 0x16_0000,
          "kallsyms_num_syms": 0x16_8000, "kallsyms_token_table": 0x17_0000,
          "kallsyms_token_index": 0x17_1000, "kallsyms_offsets": 0x17_2000}
COMPOUND = ("thp", "hugetlb", "cache_folio", "slab")

Run = tuple[int, int, str, int]  # first pfn, pages, kind, order of each block in it


def _layout(unaccepted: bool, kaslr: bool, roots_pages: int) -> list[Run]:
    """Every page of RAM: runs of blocks, in pfn order (see the module's table)."""
    free_low = [(1536 - (2 << o), 1 << o, "free", o) for o in range(9, -1, -1)]  # 512-1534
    image, other = (HIGH, 4096) if kaslr else (4096, HIGH)
    runs: list[Run] = [
        (1, 159, "ram", 0), (POOL, 128, "reserved", 0), (384, 4, "offline", 0),
        (388, 1, "hwpoison", 0), (389, 1, "hwpoison_user", 0), (390, 4, "cache", 0),
        (394, 2, "cache_private", 0), (396, 2, "swapcache", 0), (398, 1, "fs_checked", 0),
        (399, 1, "ram", 0), (400, 4, "anon", 0), (404, 1, "ksm", 0), (405, 3, "slab", 0),
        (408, 2, "slab", 1), (410, 2, "ram", 0), (412, 4, "cache_folio", 2),
        (416, 96, "ram", 0), *free_low, (1535, 1, "ram", 0), (VMEMMAP_2M, 576, "reserved", 0),
        (2112, 192, "ram", 0), (2304, 32, "offline", 0), (2336, 224, "ram", 0),
        (image, IMAGE_PAGES, "reserved", 0), (other, IMAGE_PAGES, "ram", 0),
        (4608, 512, "ram", 0), (5120, 1024, "free", 10), (6144, 512, "thp", 9),
        (6656, 512, "hugetlb", 9), (7168, 1024, "unaccepted", 10) if unaccepted
        else (7168, 1024, "ram", 0), (12288, 256, "nomap", 0), (16384, 8192, "hugetlb", 13),
        (HIGH + 512, 1, "reserved", 0), (HIGH + 513, 511, "ram", 0),
        (HIGH + 1024, roots_pages, "reserved", 0),
        (HIGH + 1024 + roots_pages, 2048 - roots_pages, "ram", 0),
    ]
    return sorted(runs)


class _Memory:
    """Physical memory: `pattern` by default, zero where asked, pages written over."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.zero: set[int] = set()
        self._special: list[int] | None = None  # sorted pfns of pages and zero

    def page(self, pfn: int) -> bytearray:
        if pfn not in self.pages:
            base = bytes(PAGE_SIZE) if pfn in self.zero else pattern(pfn * PAGE_SIZE, PAGE_SIZE)
            self.pages[pfn] = bytearray(base)
            self._special = None
        return self.pages[pfn]

    def write(self, paddr: int, data: bytes) -> None:
        done = 0
        while done < len(data):
            pfn, offset = divmod(paddr + done, PAGE_SIZE)
            n = min(PAGE_SIZE - offset, len(data) - done)
            self.page(pfn)[offset : offset + n] = data[done : done + n]
            done += n

    def read(self, paddr: int, length: int) -> bytes:
        """`length` bytes at `paddr` (the ELF writer's `fill`): runs of plain pages in
        one `pattern` call, written and zero pages one by one."""
        if self._special is None:
            self._special = sorted(self.zero.union(self.pages))
        special, out, pos, end = self._special, bytearray(), paddr, paddr + length
        at = bisect.bisect_left(special, paddr // PAGE_SIZE)
        while pos < end:
            if at == len(special) or special[at] * PAGE_SIZE > pos:
                upto = end if at == len(special) else min(special[at] * PAGE_SIZE, end)
                out += pattern(pos, upto - pos)
                pos = upto
                continue
            pfn, hi = special[at], min((special[at] + 1) * PAGE_SIZE, end)
            page = self.pages.get(pfn)
            base = pfn * PAGE_SIZE
            out += bytes(hi - pos) if page is None else page[pos - base : hi - base]
            pos, at = hi, at + 1
        return bytes(out)

    def is_zero(self, pfn: int) -> bool:
        page = self.pages.get(pfn)
        return pfn in self.zero if page is None else not any(page)


class SyntheticKernel:
    """One dead x86_64 kernel's memory; see the module docstring for the API."""

    def __init__(self, variant: str = "6.1", levels: int = 4, kaslr: bool = True,
                 sme: bool = False, omit: Collection[str] = ()) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
        if levels not in (4, 5):
            raise ValueError(f"x86_64 pages with 4 or 5 levels, not {levels}")
        self.variant, self.levels, self.kaslr = VARIANTS[variant], levels, kaslr
        self.sme_mask = SME_MASK if sme else 0
        self.page_offset, self.vmalloc_start, self.vmemmap = _BASES[(levels, kaslr)]
        self.kernel_offset = KASLR_OFFSET if kaslr else 0
        self.text = START_KERNEL + self.kernel_offset  # _text == _stext
        self.image_paddr = (HIGH if kaslr else 4096) * PAGE_SIZE
        self.phys_base = self.image_paddr - (self.text - START_KERNEL_MAP)
        self.max_physmem_bits = 52 if levels == 5 else 46
        self.section_roots = (1 << (self.max_physmem_bits - SECTION_SIZE_BITS)) // SECTIONS_PER_ROOT
        roots_pages = self.section_roots * 8 // PAGE_SIZE
        self.runs = tuple(_layout("unaccepted" in self.variant.types, kaslr, roots_pages))
        self.ram = RAM
        self.symbols = {name: self.text + off for name, off in _IMAGE.items()}
        self.symbols["_stext"] = self.text
        self.symbols["mem_section"] = self.direct(HIGH + 1024)
        self._mem = _Memory()
        self._objects = Objects(self.direct(OBJECTS))
        self._pool = iter(range(POOL, OBJECTS))
        self._mem.zero.update(range(POOL, OBJECTS))
        self._mem.zero.update(range(VMEMMAP_2M, VMEMMAP_2M + 576))
        self._mem.zero.update(range(HIGH + 1024, HIGH + 1024 + roots_pages))
        self._mem.zero.update(range(7168, 8192))  # unaccepted memory reads as zeros
        self._mem.zero.update(range(16384, 24576))  # the hugetlb page of order 13
        self._mem.zero.update([16, 17, 18, 19, *range(448, 456)])
        self.tables = self._page_tables()
        self._mem_section()
        self._mem_map()
        self.markers = self._markers()
        self.unmapped = self._unmapped()
        self.unmapped_vaddr = self.unmapped["pmd"]
        for paddr, data in self.tables.pages().items():
            self._mem.write(paddr, data)
        omit = set(omit)
        lines = vmcoreinfo_lines(self.variant, self._facts())
        unknown = omit - {line.split("=", 1)[0] for line in lines}
        if unknown:
            raise ValueError(f"omit names keys the note does not have: {sorted(unknown)}")
        kept = (line for line in lines if line.split("=", 1)[0] not in omit)
        self.vmcoreinfo = "".join(f"{line}\n" for line in kept)

    def direct(self, pfn: int) -> int:
        """The direct-map address of `pfn`'s first byte."""
        return self.page_offset + pfn * PAGE_SIZE

    def _alloc(self) -> int:
        return next(self._pool) * PAGE_SIZE

    def _page_tables(self) -> PageTables:
        t = PageTables(self.levels, self.image_paddr + _IMAGE["init_top_pgt"], self._alloc,
                       self.sme_mask)
        for first, end in ((1, 160), (256, 512), (12288, 12544)):
            for pfn in range(first, end):
                t.map(self.direct(pfn), pfn * PAGE_SIZE, PAGE_SIZE)
        t.poke(self.direct(160), 1, 160 * PAGE_SIZE | 0x62)  # not present, other bits set
        for first, end in ((2 * MiB, 10 * MiB), (16 * MiB, 32 * MiB), (64 * MiB, 96 * MiB)):
            for paddr in range(first, end, 2 * MiB):
                t.map(self.page_offset + paddr, paddr, 2 * MiB)
        t.map(self.page_offset + 8 * GiB, 8 * GiB, GiB)
        t.map(self.text, self.image_paddr, 2 * MiB, TEXT)
        t.map(self.vmemmap, VMEMMAP_2M * PAGE_SIZE, 2 * MiB)
        high = self.vmemmap + HIGH * STRUCT_PAGE
        for i in range(PAGES_PER_SECTION * STRUCT_PAGE // PAGE_SIZE):
            t.map(high + i * PAGE_SIZE, (VMEMMAP_4K + i * 37 % 64) * PAGE_SIZE, PAGE_SIZE)
        for i, pfn in enumerate(VMALLOC_PAGES, 1):
            t.map(self.vmalloc_start + i * PAGE_SIZE, pfn * PAGE_SIZE, PAGE_SIZE)
        return t

    def _write_virt(self, vaddr: int, data: bytes) -> None:
        """Place `data` at kernel virtual `vaddr` (through what the tables map)."""
        done = 0
        while done < len(data):
            n = min(PAGE_SIZE - (vaddr + done) % PAGE_SIZE, len(data) - done)
            self._mem.write(self.tables.translate(vaddr + done), data[done : done + n])
            done += n

    def _mem_section(self) -> None:
        """SPARSEMEM_EXTREME: the root array, a page of mem_sections per non-NULL root;
        section_mem_map = mem_map - section start pfn (so: vmemmap) | flags."""
        roots: dict[int, int] = {0: self._alloc(), HIGH // PAGES_PER_SECTION // SECTIONS_PER_ROOT:
                                 (HIGH + 512) * PAGE_SIZE}
        for root, paddr in roots.items():
            self._mem.write(self.symbols["mem_section"] - self.page_offset + root * 8,
                            (self.page_offset + paddr).to_bytes(8, "little"))
        for nr, flags in SECTION_FLAGS.items():
            usage = self._objects.base + 0x800 + nr % 64 * 0x20
            entry = (self.vmemmap | flags).to_bytes(8, "little") + usage.to_bytes(8, "little")
            self._mem.write(roots[nr // SECTIONS_PER_ROOT] + nr % SECTIONS_PER_ROOT * 16, entry)

    def _mem_map(self) -> None:
        """The struct pages of every section with a mem_map (pfns not in RAM reserved),
        and bytes that look like free pages where section 3's mem_map would be."""
        pages: dict[int, bytes] = {}
        for pfn, _, kind, order in self._blocks():
            if kind != "nomap":
                structs = block(self.variant, kind, pfn, order, self.vmemmap, self._objects)
                pages.update(zip(range(pfn, pfn + len(structs)), structs, strict=True))
        for nr in SECTION_FLAGS:
            start = nr * PAGES_PER_SECTION
            reserved = block(self.variant, "reserved", start, 0, self.vmemmap, self._objects)[0]
            self._write_virt(self.vmemmap + start * STRUCT_PAGE, b"".join(
                pages.get(pfn, reserved) for pfn in range(start, start + PAGES_PER_SECTION)))
        trap = block(self.variant, "trap", 0, 0, self.vmemmap, self._objects)[0]
        self._write_virt(self.vmemmap + 3 * PAGES_PER_SECTION * STRUCT_PAGE,
                        trap * PAGES_PER_SECTION)

    def _markers(self) -> dict[str, tuple[int, bytes]]:
        uts = self.symbols["init_uts_ns"]
        release = self._osrelease().encode()
        fields = (b"Linux", b"synth", release, b"#1 SMP PREEMPT_DYNAMIC", b"x86_64", b"(none)")
        self._write_virt(uts, b"".join(f.ljust(65, b"\0") for f in fields))
        markers = {
            "uts_sysname": (uts, b"Linux\0"),
            "uts_release": (uts + 130, release + b"\0"),
            "direct_4k": (self.direct(5) + 0x10, b"dumpd marker in a 4 KiB page"),
            "direct_2m": (self.direct(4608) + 0x123, b"dumpd marker in a 2 MiB page"),
            "direct_1g": (self.direct(HIGH + 600) + 0x456, b"dumpd marker in a 1 GiB page"),
            "direct_4k_2m": (self.page_offset + 2 * MiB - 6, b"4K|2M straddle"),
            "vmalloc_split": (self.vmalloc_start + 2 * PAGE_SIZE - 10, b"split across pages!!"),
        }
        for vaddr, data in markers.values():
            self._write_virt(vaddr, data)
        return markers

    def _unmapped(self) -> dict[str, int]:
        """One address whose walk stops at each level (the PTE one has other bits set)."""
        top = self.tables.tables[self.tables.top]
        shift = 12 + 9 * (self.levels - 1)
        free = next(i for i in range(256, 512) if not top[i])
        return {"pgd": ((-1 << (shift + 9)) | free << shift) & ((1 << 64) - 1),
                "pud": self.page_offset + 4 * GiB, "pmd": self.page_offset + 40 * MiB,
                "pte": self.direct(160)}

    def _osrelease(self) -> str:
        return f"{self.variant.name}.0-synth"

    def _facts(self) -> Facts:
        return Facts(self._osrelease(), self.symbols, SECTION_SIZE_BITS, self.max_physmem_bits,
                     self.section_roots, self.phys_base, self.kernel_offset, self.levels == 5,
                     self.sme_mask, self.vmalloc_start, self.vmemmap, 1796173927)

    def _blocks(self) -> Iterator[tuple[int, int, str, int]]:
        for first, count, kind, order in self.runs:
            for pfn in range(first, first + count, 1 << order):
                yield pfn, 1 << order, kind, order

    @cached_property
    def kinds(self) -> dict[int, str]:
        """pfn -> kind for every pfn of the dump; "<kind>_tail" after a head."""
        out: dict[int, str] = {}
        for pfn, size, kind, _ in self._blocks():
            out[pfn] = "ram" if kind == "reserved" else kind
            tail = f"{kind}_tail" if kind in COMPOUND or kind in ("free", "unaccepted") else kind
            out.update((p, tail) for p in range(pfn + 1, pfn + size))
        return out

    @cached_property
    def zero_pfns(self) -> frozenset[int]:
        return frozenset(pfn for pfn in self.kinds if self._mem.is_zero(pfn))

    def reasons(self, level: int) -> dict[int, str]:
        """pfn -> why makedumpfile 1.7.7 (1.7.8 for unaccepted) excludes it at `level`."""
        off = () if "unaccepted" in self.variant.exported else ("unaccepted",)
        blocks = ((pfn, size, kind) for pfn, size, kind, _ in self._blocks())
        return excluded(blocks, level, self.kinds, self.zero_pfns, off)

    def expected_excluded(self, level: int) -> set[int]:
        return set(self.reasons(level))

    def struct_page(self, pfn: int) -> bytes:
        vaddr = self.vmemmap + pfn * STRUCT_PAGE
        return self._mem.read(self.tables.translate(vaddr), STRUCT_PAGE)

    def read_phys(self, paddr: int, length: int) -> bytes:
        """What the dump holds at `paddr` (RAM or not: the builder's memory)."""
        return self._mem.read(paddr, length)

    def write(self, path: str | os.PathLike[str]) -> None:
        """The ELF core: PT_LOAD of the text first, then RAM at its direct-map vaddrs."""
        loads = [LoadSpec(self.image_paddr, 2 * MiB, vaddr=self.text)]
        loads += [LoadSpec(a * PAGE_SIZE, (b - a) * PAGE_SIZE, vaddr=self.direct(a))
                  for a, b in RAM]
        notes = [prstatus_note(0), prstatus_note(1),
                 Note("VMCOREINFO", 0, self.vmcoreinfo.encode())]
        write_elf_core(path, loads, notes=notes, fill=self._mem.read, sparse=True)

