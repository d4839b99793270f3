"""What makedumpfile excludes at a dump level, for the synthetic kernel's pages.

Written from makedumpfile 1.7.7's `__exclude_unnecessary_pages` (and 1.7.8's rule for
unaccepted memory, kernels 6.16 and later), independently of dumpd's reader. The rules
are tried on each page in this order and the first that matches decides:

| head page | marked by | -d | pages excluded | reason |
|---|---|---|---|---|
| free block | `_mapcount` == PAGE_BUDDY_..., not slab | 16 | 2**private | free |
| unaccepted | `_mapcount` == PAGE_UNACCEPTED_... (6.16+) | 16 | 2**(max order) | free |
| page cache | PG_lru, or swapcache + swapbacked; not private, not anon | 2, 4 | 2**order | cache |
| cache, private | the same with PG_private | 4 | 2**order | cache_private |
| user data | anon (mapping bit 0, not slab), or a hugetlb head | 8 | 2**order | user |
| hwpoison | PG_hwpoison | any | 2**order | hwpoison |
| offline | `_mapcount` == PAGE_OFFLINE_..., not slab | any | 2**order | offline |
| zero | all bytes zero, and no rule above took it | 1 | 1 | zero |

(PAGE_X_... is NUMBER(PAGE_X_MAPCOUNT_VALUE); max order, LENGTH(zone.free_area) - 1;
-d 4 takes non-private cache too.)

A tail page (compound_head bit 0) is never tested itself: it goes with its head, whose
range covers it even in the next section's mem_map. Slab is PG_slab before 6.10, a page
type after. Hugetlb is the first tail's compound_dtor == HUGETLB_PAGE_DTOR before 6.9, a
page type on the head after. Pages of a section without mem_map are never excluded by
a rule (only as zero).

The table follows 1.7.7, not 1.7.6: 1.7.6 still derived slab and hugetlb from the page
type as bits (`(_mapcount & (PAGE_TYPE_BASE | ~PAGE_SLAB_MAPCOUNT_VALUE)) == BASE`).
From 6.12 a page holds one type in `_mapcount`'s top byte (`PGTY_x << 24`), so that test
called every typed page slab: no free page was excluded at -d 16 and no offline page
ever. 1.7.7 (commit 72c3414) compares `_mapcount` with each value for equality, as
this table does.

Checked: makedumpfile 1.7.2 agrees pfn for pfn on 6.1 (tests/test_synthkernel.py);
builds of 1.7.7 and 1.7.8 agree on every variant, level, paging mode, KASLR and SME
(1.7.7 keeps the unaccepted block: its rule is 1.7.8's); 1.7.6 shows the 6.12 bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MAX_LEVEL = 31
REASONS = ("free", "cache", "cache_private", "user", "hwpoison", "offline", "zero")

# (kinds of head, -d bits that exclude it (0: always), reason), in makedumpfile's order
_RULES: tuple[tuple[frozenset[str], int, str], ...] = (
    (frozenset({"free", "unaccepted"}), 16, "free"),
    (frozenset({"cache", "swapcache", "cache_folio"}), 2 | 4, "cache"),
    (frozenset({"cache_private"}), 4, "cache_private"),
    (frozenset({"anon", "ksm", "thp", "hugetlb", "hwpoison_user"}), 8, "user"),
    (frozenset({"hwpoison", "hwpoison_user"}), 0, "hwpoison"),
    (frozenset({"offline"}), 0, "offline"),
)


def check_level(level: int) -> int:
    if not isinstance(level, int) or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"a dump level is 0..{MAX_LEVEL}, not {level!r}")
    return level


def reason_of(kind: str, level: int, rules_off: Iterable[str] = ()) -> str:
    """Why a head page of `kind` is excluded at `level` ("" if it is kept); kinds in
    `rules_off` are ones the kernel's VMCOREINFO gives no way to see (kept)."""
    if kind in rules_off:
        return ""
    for kinds, bits, reason in _RULES:
        if kind in kinds and (bits == 0 or level & bits):
            return reason
    return ""


def excluded(
    blocks: Iterable[tuple[int, int, str]],
    level: int,
    in_dump: Mapping[int, str],
    zero_pfns: Iterable[int],
    rules_off: Iterable[str] = (),
) -> dict[int, str]:
    """pfn -> reason for every pfn of the dump excluded at `level`; `blocks` are
    (first pfn, pages its head's verdict covers, head's kind)."""
    check_level(level)
    off = frozenset(rules_off)
    out: dict[int, str] = {}
    for first, count, kind in blocks:
        reason = reason_of(kind, level, off)
        if reason:
            out.update((pfn, reason) for pfn in range(first, first + count) if pfn in in_dump)
    if level & 1:
        out.update((pfn, "zero") for pfn in zero_pfns if pfn not in out)
    return out
