"""Kernel variants the synthetic kernel does not build, on struct pages written here:
6.6 to 6.8 (PG_hugetlb and the order in `page[1].flags`), before 4.16 (a 16-bit
compound order), makedumpfile's `check_order` and its 512-page cache slot, and
`test_bit`'s bit 31."""

from __future__ import annotations

import struct

import pytest
from dumpd.kernel.vmcoreinfo import VmcoreInfo
from dumpd.testing.kernel import SyntheticKernel

from dumpd_memmap.classify import HWPOISON, KEEP, USER_CODE, Classifier, Jump
from dumpd_memmap.layout import PageLayout, bit_test_mask

PG_HEAD, PG_HUGETLB = 16, 21
NO_TYPE = 0xFFFF_FFFF  # _mapcount -1


def vmcoreinfo(release: str, drop: tuple[str, ...], add: dict[str, int]) -> VmcoreInfo:
    """6.1's VMCOREINFO (the synthetic kernel's) as another release: keys dropped, added."""
    lines = [line for line in SyntheticKernel("6.1").vmcoreinfo.splitlines()
             if line.split("=", 1)[0] not in drop and not line.startswith("OSRELEASE=")]
    lines += [f"OSRELEASE={release}", *(f"{key}={value}" for key, value in add.items())]
    return VmcoreInfo("\n".join(lines) + "\n")


def page(flags: int = 0, head: int = 0, mapping: int = 0, mapcount: int = NO_TYPE,
         at: dict[int, bytes] | None = None) -> bytes:
    """One 64-byte struct page (6.1's offsets), `at` bytes written over it."""
    data = bytearray(struct.pack("<QQQQQQIIQ", flags, head, 0, mapping, 0, 0, mapcount, 1, 0))
    for offset, raw in (at or {}).items():
        data[offset:offset + len(raw)] = raw
    return bytes(data)


def compound(pages: int, head_flags: int, first_tail: bytes) -> bytes:
    """A compound page of `pages`: its head, `first_tail`, then plain tails."""
    tail = page(head=0xFFFF_EA00_0000_0001)
    return page(flags=head_flags) + first_tail + tail * (pages - 2)


DROP_OLD = ("OFFSET(page.compound_dtor)", "OFFSET(page.compound_order)",
            "NUMBER(HUGETLB_PAGE_DTOR)")


@pytest.mark.parametrize(("hugetlb", "codes"), [(True, USER_CODE), (False, KEEP)])
def test_6_6_to_6_8_pg_hugetlb_in_the_first_tail(hugetlb: bool, codes: int) -> None:
    info = vmcoreinfo("6.7.0", DROP_OLD, {"NUMBER(PG_hugetlb)": PG_HUGETLB})
    layout = PageLayout.read(info, 8)
    assert (layout.hugetlb_flag, layout.order.offset, layout.order.width) == (1 << 21, 0, 1)
    first_tail = page(flags=9 | (1 << PG_HUGETLB if hugetlb else 0), head=0xFFFF_EA00_0000_0001)
    got, jumps = Classifier(layout).run(512, compound(512, 1 << PG_HEAD, first_tail))
    assert got == bytes([codes]) + bytes(511)
    assert jumps == ([Jump(0, 512, USER_CODE)] if hugetlb else [])


@pytest.mark.parametrize(("release", "order"), [("4.14.0", 0), ("4.16.0", 9)])
def test_a_16_bit_compound_order_before_4_16(release: str, order: int) -> None:
    """Bytes 9, 1 at the order's offset: 265 as a u16 (>= 64: invalid, 0), 9 as a byte."""
    info = vmcoreinfo(release, ("OFFSET(page.compound_order)", "OFFSET(page.compound_dtor)"),
                      {"OFFSET(page.compound_order)": 18, "OFFSET(page.compound_dtor)": 16})
    layout = PageLayout.read(info, 8)
    assert layout.order.width == (2 if release == "4.14.0" else 1)
    dtor = bytes([2, 0])  # HUGETLB_PAGE_DTOR, a u16 before 4.16 too
    first_tail = page(head=0xFFFF_EA00_0000_0001, at={16: dtor, 18: bytes([9, 1])})
    got, jumps = Classifier(layout).run(512, compound(512, 1 << PG_HEAD, first_tail))
    assert got[0] == USER_CODE  # hugetlb either way: check_order resets the order only
    assert jumps == ([Jump(0, 1 << order, USER_CODE)] if order else [])


def test_check_order_and_the_last_slot_of_makedumpfiles_cache() -> None:
    """A head not aligned to its order takes no tails along; a head at pfn % 512 == 511
    is no compound head at all (makedumpfile reads no page[1] there: no hugetlb)."""
    layout = PageLayout.read(vmcoreinfo("6.1.0", (), {}), 8)
    first_tail = page(head=0xFFFF_EA00_0000_0001, at={16: bytes([2]), 17: bytes([2])})
    head = page(flags=1 << PG_HEAD)
    classify = Classifier(layout).run
    assert classify(4, head + first_tail) == (bytes([USER_CODE, 0]), [Jump(0, 4, USER_CODE)])
    assert classify(6, head + first_tail) == (bytes([USER_CODE, 0]), [])  # 6 % 4 != 0
    assert classify(511, head + first_tail) == (bytes(2), [])
    assert classify(1023 + 512, head + first_tail) == (bytes(2), [])


def test_flag_bits_as_makedumpfiles_test_bit_tests_them() -> None:
    """`int mask = 1 << (nr & 0x1f)`: bit 31 is sign-extended, bits 32 and up alias."""
    assert bit_test_mask(4) == 1 << 4
    assert bit_test_mask(36) == 1 << 4
    assert bit_test_mask(31) == bit_test_mask(63) == 0xFFFF_FFFF_8000_0000
    info = vmcoreinfo("6.1.0", ("NUMBER(PG_hwpoison)",), {"NUMBER(PG_hwpoison)": 31})
    layout = PageLayout.read(info, 0)
    got, _ = Classifier(layout).run(0, page(flags=1 << 40) + page(flags=1 << 30) + page())
    assert got == bytes([HWPOISON, KEEP, KEEP])  # bit 40 is in the mask of bit 31
