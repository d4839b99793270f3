"""The verdict of each struct page, as makedumpfile's `__exclude_unnecessary_pages` gives it.

For each page, in makedumpfile's order, the first test that holds decides: a compound
tail is kept (its head decides for it); a free (buddy) page, or an unaccepted one; a
page-cache page that is not private (`cache`); a page-cache page (`cache_private` if
private, else `cache`); an anonymous or hugetlb page (`user`); a hwpoisoned page; an
offline page; else the page is kept. Only the tests the dump level asks for are made
(hwpoison and offline always). A page excluded this way takes the pages after it along:
2**order of them for a free page (order in `page.private`), 2**(LENGTH(zone.free_area)-1)
for an unaccepted one, the compound order for a compound head. That walk is the
sequential part; the per-page tests are made on all pages of a run at once (`lanes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .lanes import Lanes, Members
from .layout import PageLayout
from .options import CACHE, CACHE_PRIVATE, FREE, USER

KEEP, FREE_CODE, CACHE_CODE, CACHE_PRIVATE_CODE, USER_CODE, HWPOISON, OFFLINE, ERROR = range(8)
"""A page's code: why it is left out (0: it is not), or ERROR: its struct page unreadable."""

REASONS = ("", "free", "cache", "cache_private", "user", "hwpoison", "offline", "")
"""`explain`'s word for each code ("" for pages read: kept, or unreadable struct page)."""

COUNTED = ("free", "cache", "cache_private", "user", "hwpoison", "offline")
"""The reasons, in makedumpfile's `--show-stats` order of its counters."""

CACHED_PAGES = 512  # makedumpfile's PGMM_CACHED: a head at the last slot has no page[1]

BUDDY, UNACCEPTED, HEAD = 1, 2, 3  # how far an excluded page reaches (see `Jump`)

_TAKERS = re.compile(rb"[^\x00]")


@dataclass(frozen=True, slots=True)
class Jump:
    """An excluded page that takes the `pages` pfns from it (itself included) along."""

    offset: int
    pages: int
    code: int


def _slot_mask(lanes: Lanes, first_pfn: int) -> int:
    """The lanes of pfns at the last slot of makedumpfile's 512-page cache."""
    pattern = bytearray(lanes.count * 8)
    for index in range((CACHED_PAGES - 1 - first_pfn) % CACHED_PAGES, lanes.count,
                       CACHED_PAGES):
        pattern[index * 8] = 1
    return int.from_bytes(pattern, "little")


class Classifier:
    """Codes and jumps of runs of struct pages, for one layout (and its dump level)."""

    def __init__(self, layout: PageLayout) -> None:
        self.layout = layout

    def run(self, first_pfn: int, data: bytes, in_dump: int | None = None
            ) -> tuple[bytes, list[Jump]]:
        """The code of each page whose struct page is in `data` (one page each, from
        `first_pfn` on) before any jump, and the jumps, in pfn order. `in_dump` masks
        the pages the dump holds (None: all): makedumpfile skips the others."""
        lay = self.layout
        pages = Members(data, lay.page_bytes)
        lanes = pages.lanes
        flags = pages.member(lay.flags, 8)
        mapcount = pages.member(lay.mapcount, 4)
        tail = pages.member(lay.compound_head, 8) & lanes.ones
        head = lanes.bits(flags, lay.head_mask) & ~_slot_mask(lanes, first_pfn)
        left = lanes.ones ^ tail if in_dump is None else (lanes.ones ^ tail) & in_dump
        slab = lanes.bits(flags, lay.slab_flag) if lay.slab_flag else 0
        if lay.slab_type is not None:
            slab |= lanes.equal(mapcount, lay.slab_type)
        codes = took = reach = 0

        def take(test: int, code: int, far: int = 0) -> None:
            nonlocal left, codes, took, reach
            hit = left & test
            left ^= hit
            codes |= hit * code
            took |= hit
            reach |= hit * far

        if lay.level & FREE:
            assert lay.buddy is not None and lay.private is not None
            buddy = lanes.equal(mapcount, lay.buddy) & ~slab
            valid = lanes.below(pages.member(lay.private, 8), lay.max_order)
            take(buddy & valid, FREE_CODE, BUDDY)
            left &= ~buddy  # an order past the free lists: makedumpfile keeps the page
            if lay.unaccepted is not None:
                take(lanes.equal(mapcount, lay.unaccepted), FREE_CODE, UNACCEPTED)
        cache = anon = private = 0
        if lay.level & (CACHE | CACHE_PRIVATE | USER):
            assert lay.mapping is not None
            anon = pages.member(lay.mapping, 8) & lanes.ones & ~slab
        if lay.level & (CACHE | CACHE_PRIVATE):
            private = lanes.bits(flags, lay.private_flag)
            cache = lanes.bits(flags, lay.lru) | (
                lanes.bits(flags, lay.swapbacked) & lanes.bits(flags, lay.swapcache))
        if lay.level & CACHE:
            take(cache & ~private & ~anon, CACHE_CODE)
        if lay.level & CACHE_PRIVATE:
            take(cache & private & ~anon, CACHE_PRIVATE_CODE)
            take(cache & ~anon, CACHE_CODE)
        if lay.level & USER:
            take(anon | (head & self._hugetlb(pages, flags, mapcount)), USER_CODE)
        if lay.hwpoison:
            take(lanes.bits(flags, lay.hwpoison), HWPOISON)
        if lay.offline is not None:
            take(lanes.equal(mapcount, lay.offline) & ~slab, OFFLINE)
        reach |= (took & head & ~lanes.nonzero(reach)) * HEAD
        code_bytes = lanes.low_bytes(codes)
        return code_bytes, self._jumps(pages, first_pfn, code_bytes, lanes.low_bytes(reach))

    def _hugetlb(self, pages: Members, flags: int, mapcount: int) -> int:
        """The mask of pages that are hugetlb if they are compound heads."""
        lay, lanes = self.layout, pages.lanes
        if lay.hugetlb_type is not None:  # 6.9 and later: a page type of the head
            return lanes.equal(mapcount, lay.hugetlb_type)
        if lay.hugetlb_flag:  # 6.6 to 6.8: PG_hugetlb in page[1].flags
            return lanes.bits(flags >> 64, lay.hugetlb_flag)
        if lay.dtor is None or lay.hugetlb_dtor is None:
            return 0
        dtor = pages.member(lay.dtor.offset, lay.dtor.width, next_page=True)
        return lanes.equal(dtor, lay.hugetlb_dtor, lay.dtor.width * 8)

    def _jumps(self, pages: Members, first_pfn: int, codes: bytes, reach: bytes
               ) -> list[Jump]:
        """The excluded pages that take more than themselves along."""
        lay = self.layout
        jumps = []
        for match in _TAKERS.finditer(reach):
            index = match.start()
            kind = reach[index]
            if kind == BUDDY:
                assert lay.private is not None
                order = pages.word(index, lay.private)
            elif kind == UNACCEPTED:
                order = lay.max_order - 1
            else:
                order = self._compound_order(pages, index, first_pfn + index)
            if order:
                jumps.append(Jump(index, 1 << order, codes[index]))
        return jumps

    def _compound_order(self, pages: Members, index: int, pfn: int) -> int:
        """A head's order from page[1], 0 when invalid (64 or more, or the head is not
        aligned to it), as makedumpfile's check_order."""
        order_field = self.layout.order
        order = pages.byte_member(index + 1, order_field.offset, order_field.width)
        if order >= 64 or pfn & ((1 << order) - 1):
            return 0
        return order
