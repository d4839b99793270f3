"""What VMCOREINFO says about the dead kernel's `struct page`, read as makedumpfile reads it.

`PageLayout.read(info, level)` takes every key the asked exclusions need and refuses,
in one line naming the first missing key (ENOSYS), an exclusion it cannot do: no
default is guessed. Where makedumpfile decides by which keys are present (the kernel's
variants: hugetlb and the compound order in `page[1].flags` since 6.6, page types in
`_mapcount`, slab as a page type since 6.10, one type in the top byte since 6.12,
unaccepted pages since 6.16, `compound_info` since 7.1), so does this. Absent keys
that mean the kernel cannot have such pages (`PG_hwpoison` without
CONFIG_MEMORY_FAILURE, `PAGE_UNACCEPTED_MAPCOUNT_VALUE` without unaccepted memory,
`PAGE_OFFLINE_MAPCOUNT_VALUE` before 5.0, `HUGETLB_PAGE_DTOR` without hugetlbfs) turn
that test off, as in makedumpfile.
"""

from __future__ import annotations

from dataclasses import dataclass

from dumpd.errors import DumpdError
from dumpd.kernel.vmcoreinfo import MissingInfo, VmcoreInfo

from .options import CACHE, CACHE_PRIVATE, FREE, USER

U32 = (1 << 32) - 1


def bit_test_mask(nr: int) -> int:
    """The bits makedumpfile's `test_bit(nr, flags)` tests: `1 << (nr & 31)` as a C int,
    so bit 31 is sign-extended over bits 31..63 (and bits 32..63 alias 0..31)."""
    bit = nr & 31
    return 0xFFFF_FFFF_8000_0000 if bit == 31 else 1 << bit


@dataclass(frozen=True, slots=True)
class Field:
    """A member of `struct page`: its byte offset and width (1, 2, 4 or 8 bytes)."""

    offset: int
    width: int


@dataclass(frozen=True, slots=True)
class PageLayout:
    """The struct page members, flag masks and page-type values the classifier uses.

    Masks are 0 and values None for the tests a kernel (or the dump level) does not
    have; `order` and `dtor` lie in the page after a compound head (`page[1]`)."""

    level: int
    page_bytes: int
    flags: int
    compound_head: int
    mapcount: int
    mapping: int | None
    private: int | None
    head_mask: int
    lru: int
    private_flag: int
    swapcache: int
    swapbacked: int
    hwpoison: int
    slab_flag: int
    slab_type: int | None
    buddy: int | None
    offline: int | None
    unaccepted: int | None
    hugetlb_type: int | None
    hugetlb_flag: int
    hugetlb_dtor: int | None
    order: Field
    dtor: Field | None
    max_order: int

    @classmethod
    def read(cls, info: VmcoreInfo, level: int) -> PageLayout:
        """The layout for `level`; MissingInfo names what the dump's VMCOREINFO lacks."""
        return _Reader(info, level).layout()


class _Reader:
    """Reads one VMCOREINFO's keys, saying for whom each required one is."""

    def __init__(self, info: VmcoreInfo, level: int) -> None:
        self.info = info
        self.level = level

    def _need(self, value: int | None, key: str, why: str) -> int:
        if value is None:
            raise MissingInfo(f"memmap: {why} needs {key}, which the dump's VMCOREINFO "
                              "lacks")
        return value

    def offset(self, name: str, why: str, width: int) -> int:
        return _aligned(name, self._need(self.info.offset(name), f"OFFSET({name})", why),
                        width)

    def number(self, name: str, why: str) -> int:
        return self._need(self.info.number(name), f"NUMBER({name})", why)

    def version(self, why: str) -> tuple[int, int, int]:
        version = self.info.kernel_version
        if version is None:
            raise MissingInfo(f"memmap: {why} needs the kernel's version, and the dump's "
                              "VMCOREINFO has no OSRELEASE")
        return version

    def _u32(self, name: str) -> int | None:
        value = self.info.number(name)
        return None if value is None else value & U32

    def layout(self) -> PageLayout:
        info, level = self.info, self.level
        base = "telling compound and offline pages"
        size = self._need(info.size("page"), "SIZE(page)", base)
        if size % 8:
            raise DumpdError("ENOSYS", f"memmap: SIZE(page)={size} is not a multiple of 8")
        head_name = "page.compound_info" if info.offset("page.compound_info") is not None \
            else "page.compound_head"  # renamed in 7.1
        order, hugetlb_type, hugetlb_flag, dtor, hugetlb_dtor = self._compound(base)
        slab_flag, slab_type = self._slab(base)
        cache = level & (CACHE | CACHE_PRIVATE)
        free = level & FREE
        hwpoison = info.number("PG_hwpoison")  # none without CONFIG_MEMORY_FAILURE
        return PageLayout(
            level=level,
            page_bytes=size,
            flags=self.offset("page.flags", base, 8),
            compound_head=self.offset(head_name, base, 8),
            mapcount=self.offset("page._mapcount", base, 4),
            mapping=self.offset("page.mapping", "excluding cache or user pages", 8)
            if cache or level & USER else None,
            private=self.offset("page.private", "excluding free pages", 8) if free else None,
            head_mask=self.number("PG_head_mask", base),
            lru=bit_test_mask(self.number("PG_lru", "excluding cache pages")) if cache else 0,
            private_flag=bit_test_mask(self.number("PG_private", "excluding cache pages"))
            if cache else 0,
            swapcache=bit_test_mask(self.number("PG_swapcache", "excluding cache pages"))
            if cache else 0,
            swapbacked=bit_test_mask(self.number("PG_swapbacked", "excluding cache pages"))
            if cache else 0,
            hwpoison=0 if hwpoison is None else bit_test_mask(hwpoison),
            slab_flag=slab_flag,
            slab_type=slab_type,
            buddy=self.number("PAGE_BUDDY_MAPCOUNT_VALUE", "excluding free pages") & U32
            if free else None,
            offline=self._offline(base),
            unaccepted=self._u32("PAGE_UNACCEPTED_MAPCOUNT_VALUE") if free else None,
            hugetlb_type=hugetlb_type,
            hugetlb_flag=hugetlb_flag,
            hugetlb_dtor=hugetlb_dtor if level & USER else None,
            order=order,
            dtor=dtor if level & USER else None,
            max_order=self._need(info.length("zone.free_area"), "LENGTH(zone.free_area)",
                                 "excluding free pages") if free else 0,
        )

    def _offline(self, why: str) -> int | None:
        """PageOffline's `_mapcount` value; None before 5.0, when no page can be offline."""
        value = self._u32("PAGE_OFFLINE_MAPCOUNT_VALUE")
        if value is None and self.version(why) >= (5, 0, 0):
            self.number("PAGE_OFFLINE_MAPCOUNT_VALUE", why)
        return value

    def _slab(self, why: str) -> tuple[int, int | None]:
        """(1 << PG_slab or 0, the slab page type or None): slab is a page type since 6.10.

        makedumpfile assumes PG_slab = 7 when the key is absent, which since 6.10 is
        PG_waiters; here the page type alone says slab (see the README)."""
        slab_type = self._u32("PAGE_SLAB_MAPCOUNT_VALUE")
        pg_slab = self.info.number("PG_slab")
        if slab_type is None and pg_slab is None:
            raise MissingInfo(f"memmap: {why} needs NUMBER(PAGE_SLAB_MAPCOUNT_VALUE) (6.10 on) "
                              "or NUMBER(PG_slab), which the dump's VMCOREINFO lacks")
        return (0 if pg_slab is None else 1 << pg_slab), slab_type

    def _compound(self, why: str) -> tuple[Field, int | None, int, Field | None, int | None]:
        """Where a compound page's order is and how hugetlb is told: (order, hugetlb
        page type, PG_hugetlb mask in page[1].flags, compound_dtor, its hugetlb value)."""
        info = self.info
        hugetlb_type = self._u32("PAGE_HUGETLB_MAPCOUNT_VALUE")  # 6.9 and later
        pg_hugetlb = info.number("PG_hugetlb")  # 6.6 to 6.8
        if hugetlb_type is not None or pg_hugetlb is not None:
            flags = self.offset("page.flags", why, 8)
            flag = 0 if hugetlb_type is not None or pg_hugetlb is None else 1 << pg_hugetlb
            return Field(flags, 1), hugetlb_type, flag, None, None
        size = info.size("page") or 0
        order = _in_next(info, "folio._folio_order", size) or info.offset("page.compound_order")
        if not order:  # makedumpfile takes an offset of 0 for none too
            raise MissingInfo(f"memmap: {why} needs NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE), "
                              "NUMBER(PG_hugetlb), OFFSET(folio._folio_order) or "
                              "OFFSET(page.compound_order), which the dump's VMCOREINFO lacks")
        width = 1 if self.version(why) >= (4, 16, 0) else 2
        dtor_value = info.number("HUGETLB_PAGE_DTOR")
        dtor = _in_next(info, "folio._folio_dtor", size) or info.offset("page.compound_dtor")
        if self.level & USER and dtor_value is not None and not dtor:
            raise MissingInfo("memmap: excluding user pages (hugetlb) needs "
                              "OFFSET(page.compound_dtor), which the dump's VMCOREINFO lacks")
        if not dtor or dtor_value is None:
            return Field(order, width), None, 0, None, dtor_value
        return Field(order, width), None, 0, Field(_aligned("page.compound_dtor", dtor, width),
                                                   width), dtor_value


def _aligned(name: str, offset: int, width: int) -> int:
    """`offset` of a `width`-byte member, refused unless it lies within one aligned word."""
    if offset % width or offset % 8 + width > 8:
        raise DumpdError("ENOSYS", f"memmap: OFFSET({name})={offset} is not aligned to its "
                         f"{width} bytes: not a struct page this hook can read")
    return offset


def _in_next(info: VmcoreInfo, name: str, page_bytes: int) -> int | None:
    """A folio member's offset within the page after the head (folio = page[0], page[1])."""
    offset = info.offset(name)
    return None if offset is None else offset - page_bytes
