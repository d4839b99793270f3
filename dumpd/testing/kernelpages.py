"""The kernel releases the synthetic kernel models, and their `struct page`s.

Written from the kernel's definitions (include/linux/page-flags.h, mm_types.h,
kernel/vmcore_info.c), never from a reader of them. What changes between `VARIANTS`:

| variant | PG_ bits (x86_64) | `_mapcount` types | hugetlb | slab | a tail's word at 8 |
|---|---|---|---|---|---|
| 6.1 | lru 4, head 16 | `~PG_buddy`, `~PG_offline` | dtor, 1st tail | PG_slab | head + 1 |
| 6.9 | head 6; order in 1st tail's flags | + `~PG_hugetlb` | type | PG_slab | head + 1 |
| 6.10 | PG_slab gone | + `~PG_slab` | type | type | head + 1 |
| 6.12 | PG_error gone | one a page, `PGTY_x << 24` | type | type | head + 1 |
| 6.16 | | + unaccepted exported | type | type | head + 1 |
| 7.1 | | | type | type | `compound_info`: mask + 1 |

(dtor: the first tail's compound_dtor == HUGETLB_PAGE_DTOR; type: a page type.)

7.1's rename (`page.compound_head` -> `page.compound_info`) and its encoding come from
Kiryl Shutsemau's series "mm: Rename the 'compound_head' field ... to 'compound_info'"
(v7, February 2026): with HugeTLB vmemmap optimisation and a power-of-2 `struct page`
(x86_64 distribution kernels) a tail holds `GENMASK(63, order + 6) | 1` and its head is
`tail_address & info`. That it shipped in 7.1 unchanged is assumed, not checked. Bit
numbers past 6.10 follow the enum as read for that release; readers take them from
NUMBER(PG_*), never from here.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

PAGE_SIZE = 4096
STRUCT_PAGE = 64
TAIL_MAPPING = 0xDEAD000000000400  # POISON_POINTER_DELTA + 0x400: every tail's mapping
PAGE_MAPPING_ANON = 1
PAGE_MAPPING_MOVABLE = 2  # balloon compaction's pages: not anon
HUGETLB_PAGE_DTOR = 2  # 6.1's compound destructors: COMPOUND 1, HUGETLB 2, TRANSHUGE 3
_DTOR = {"hugetlb": 2, "thp": 3}
ZONE_SHIFT = 56  # zone id above the flags (node 0, NODES_SHIFT 6)

# flags 0, lru / compound_head 8, lru.prev (6.1 first tail: dtor, order, mapcount) 16,
# mapping 24, index 32, private 40, _mapcount 48, _refcount 52, memcg_data 56
_LAYOUT = struct.Struct("<QQQQQQiiQ")


def _types_before_6_12(names: tuple[str, ...]) -> dict[str, int]:
    """`~PG_x` of the page-type bits (PG_buddy 0x80, offline 0x100, hugetlb 0x800, slab 0x1000)."""
    bits = {"buddy": 0x80, "offline": 0x100, "hugetlb": 0x800, "slab": 0x1000}
    return {name: ~bits[name] for name in names}


def _pgty(**types: int) -> dict[str, int]:
    """`PGTY_x << 24` as the signed int the kernel prints (`%ld` of an int's shift)."""
    return {name: (value << 24) - (1 << 32) for name, value in types.items()}


_PGTY = _pgty(buddy=0xF0, offline=0xF1, hugetlb=0xF4, slab=0xF5, unaccepted=0xF7)
_FLAGS_6_12 = dict(uptodate=3, dirty=4, lru=5, head=6, active=8, swapcache=10, reserved=13,
                   private=14, swapbacked=17, hwpoison=21)


@dataclass(frozen=True, slots=True)
class Variant:
    """One release: its PG_ bits, its page types (kind -> `_mapcount`), which types its
    VMCOREINFO exports, and how compound pages record their order and tails their head."""

    name: str
    flags: Mapping[str, int]
    types: Mapping[str, int]
    exported: frozenset[str]
    dtor: bool = False  # 6.1: compound_dtor / compound_order bytes in the first tail
    head_field: str = "compound_head"
    tail_mask: bool = False  # 7.1: tails hold a mask, not a pointer

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.name.split(".")
        return int(major), int(minor)

    def bit(self, name: str) -> int:
        return 1 << self.flags[name]


VARIANTS: Mapping[str, Variant] = {
    v.name: v
    for v in (
        Variant("6.1", dict(uptodate=2, dirty=3, lru=4, active=5, slab=9, swapcache=10,
                            reserved=12, private=13, head=16, swapbacked=19, hwpoison=23),
                _types_before_6_12(("buddy", "offline")), frozenset({"buddy", "offline"}),
                dtor=True),
        Variant("6.9", dict(uptodate=3, dirty=4, lru=5, head=6, active=8, slab=11,
                            swapcache=12, reserved=14, private=15, swapbacked=19, hwpoison=23),
                _types_before_6_12(("buddy", "offline", "hugetlb")),
                frozenset({"buddy", "offline", "hugetlb"})),
        Variant("6.10", dict(uptodate=3, dirty=4, lru=5, head=6, active=8, swapcache=11,
                             reserved=13, private=14, swapbacked=18, hwpoison=22),
                _types_before_6_12(("buddy", "offline", "hugetlb", "slab")),
                frozenset({"buddy", "offline", "hugetlb", "slab"})),
        Variant("6.12", _FLAGS_6_12, _PGTY, frozenset({"buddy", "offline", "hugetlb", "slab"})),
        Variant("6.16", _FLAGS_6_12, _PGTY, frozenset(_PGTY)),
        Variant("7.1", _FLAGS_6_12, _PGTY, frozenset(_PGTY), head_field="compound_info",
                tail_mask=True),
    )
}


@dataclass(slots=True)
class Page:
    """One `struct page`, field by field (x86_64, SIZE(page) 64)."""

    flags: int = 0
    lru: int = 0  # lru.next; a tail's compound_head (compound_info)
    word16: int = 0  # lru.prev; 6.1's first tail: dtor | order << 8 | mapcount << 32
    mapping: int = 0
    index: int = 0
    private: int = 0
    mapcount: int = -1
    refcount: int = 1

    def pack(self) -> bytes:
        return _LAYOUT.pack(self.flags, self.lru, self.word16, self.mapping, self.index,
                            self.private, self.mapcount, self.refcount, 0)


@dataclass(frozen=True, slots=True)
class Objects:
    """Kernel addresses the pages point at (an anon_vma, an address_space, ...)."""

    base: int
    names: tuple[str, ...] = field(default=("anon_vma", "file", "hugetlbfs", "kmem_cache",
                                             "balloon", "buffer_head", "list"))

    def __getitem__(self, name: str) -> int:
        return self.base + 0x40 * self.names.index(name)


def zone_of(pfn: int) -> int:
    """ZONE_DMA below 16 MiB, ZONE_DMA32 below 4 GiB, ZONE_NORMAL above."""
    return 0 if pfn < 0x1000 else 1 if pfn < 0x100000 else 2


def block(v: Variant, kind: str, pfn: int, order: int, vmemmap: int, obj: Objects) -> list[bytes]:
    """The struct pages of the `2**order` pages from `pfn` that make one `kind`."""
    pages = [Page(flags=zone_of(p) << ZONE_SHIFT) for p in range(pfn, pfn + (1 << order))]
    head = pages[0]
    if kind in ("free", "unaccepted"):  # one mark on the first page, the rest plain
        for p in pages:
            p.refcount = 0
        head.mapcount = v.types["buddy" if kind == "free" else "unaccepted"]
        head.private = order if kind == "free" else 0
        head.lru = head.word16 = obj["list"]
    else:
        _single(v, kind, head, obj)
    if order and kind not in ("free", "unaccepted"):
        _compound(v, kind, pages, vmemmap + pfn * STRUCT_PAGE, order)
    return [p.pack() for p in pages]


def _single(v: Variant, kind: str, p: Page, obj: Objects) -> None:
    """Mark one page (a compound's head included) as `kind` in `v`'s encoding."""
    lru = v.bit("lru") | v.bit("uptodate")
    if kind in ("ram", "reserved", "trap"):
        p.flags |= v.bit("reserved") if kind == "reserved" else 0
        if kind == "trap":  # stale bytes where no mem_map is: they look like free pages
            p.mapcount, p.refcount = v.types["buddy"], 0
    elif kind == "offline":
        p.mapcount, p.mapping = v.types["offline"], obj["balloon"] | PAGE_MAPPING_MOVABLE
    elif kind in ("hwpoison", "hwpoison_user"):
        p.flags |= v.bit("hwpoison")
        if kind == "hwpoison_user":
            p.flags |= lru | v.bit("swapbacked")
            p.mapping, p.mapcount = obj["anon_vma"] | PAGE_MAPPING_ANON, 0
    elif kind in ("cache", "cache_private", "cache_folio"):
        p.flags |= lru | (v.bit("private") if kind == "cache_private" else 0)
        p.lru = p.word16 = obj["list"]
        p.mapping, p.index, p.mapcount = obj["file"], 7, 0
        p.private = obj["buffer_head"] if kind == "cache_private" else 0
    elif kind == "swapcache":  # in swap cache only: no LRU, no mapping
        p.flags |= v.bit("swapcache") | v.bit("swapbacked") | v.bit("uptodate")
        p.private = 0x3A00
    elif kind == "fs_checked":  # PG_checked is PG_swapcache's bit, without PG_swapbacked
        p.flags |= v.bit("swapcache") | v.bit("uptodate")
        p.mapping = obj["file"]
    elif kind in ("anon", "ksm", "thp"):
        p.flags |= lru | v.bit("swapbacked") | v.bit("active")
        p.lru = p.word16 = obj["list"]
        p.mapping = obj["anon_vma"] | (3 if kind == "ksm" else PAGE_MAPPING_ANON)
        p.mapcount = -1 if kind == "thp" else 0
    elif kind == "slab":
        _slab(v, p, obj)
    elif kind == "hugetlb":
        p.flags |= v.bit("uptodate")
        p.mapping = obj["hugetlbfs"]
        p.mapcount = v.types.get("hugetlb", -1)
    else:
        raise ValueError(f"no struct page for kind {kind!r}")


def _slab(v: Variant, p: Page, obj: Objects) -> None:
    """SLUB's struct slab over struct page: 6.1 has slab_cache where page.mapping is;
    from 6.2 slab_cache sits at 8 and the int `slabs` (odd here) at page.mapping."""
    if "slab" in v.types:
        p.mapcount = v.types["slab"]
    else:
        p.flags |= v.bit("slab")
    if v.version < (6, 2):
        p.lru, p.mapping = obj["list"], obj["kmem_cache"]
    else:
        p.lru, p.word16, p.mapping = obj["kmem_cache"], obj["list"], 3


def _compound(v: Variant, kind: str, pages: list[Page], head_vaddr: int, order: int) -> None:
    """PG_head on the head; the tails point back to it; the first tail holds the order."""
    pages[0].flags |= v.bit("head")
    mask = ~((1 << (order + 6)) - 1) & 0xFFFF_FFFF_FFFF_FFFF  # GENMASK(63, order + 6)
    info = mask | 1 if v.tail_mask else head_vaddr + 1
    for tail in pages[1:]:
        tail.lru, tail.mapping, tail.refcount, tail.mapcount = info, TAIL_MAPPING, 0, -1
    first = pages[1]
    if v.dtor:
        first.word16 = _DTOR.get(kind, 1) | order << 8 | 0xFFFF_FFFF << 32
    else:
        first.flags |= order  # folio._flags_1's low byte
