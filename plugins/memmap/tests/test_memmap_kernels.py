"""The memmap hook on synthetic kernels (`dumpd.testing.kernel`), every variant at every
dump level, against the verdicts the kernel's builder expects (written from
makedumpfile's rules, independently of this plugin)."""

from __future__ import annotations

from collections import Counter

import pytest
from dumpd.errors import DumpdError
from dumpd.hooks.contract import ERROR, NOT_RAM, RAM
from dumpd.sources.physical import SourceMemory
from dumpd.testing.kernel import VARIANTS
from memmap_kernels import attached, expected, kernel_dump, opened, reasons

import dumpd_memmap

SHAPES = {"6.1": (4, True), "6.9": (4, False), "6.10": (5, True), "6.12": (4, True),
          "6.16": (5, False), "7.1": (4, True)}  # page-table levels, KASLR


def test_every_variant_is_tested() -> None:
    assert set(SHAPES) == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(SHAPES))
def test_every_level_of_every_variant(tmp_path_factory: pytest.TempPathFactory,
                                      variant: str) -> None:
    levels, kaslr = SHAPES[variant]
    kernel, path = kernel_dump(tmp_path_factory, variant, levels, kaslr)
    with opened(path) as memory:
        for level in range(32):
            hook = attached(memory, level)
            want = expected(kernel, level)
            assert reasons(hook, memory) == want, f"{variant} at level {level}"
            not_ram: set[int] = set()
            for first, end in memory.pfn_ranges:
                pfn = first
                for length, verdict in hook.pfn_range_is_ram(first, end - first):
                    assert verdict in (RAM, NOT_RAM)
                    if verdict == NOT_RAM:
                        not_ram.update(range(pfn, pfn + length))
                    pfn += length
            assert not_ram == set(want), f"{variant} at level {level}"
    counts = Counter(expected(kernel, 31).values())
    assert set(counts) == set(dumpd_memmap.COUNTED)  # every reason is there to be found


@pytest.mark.parametrize("variant", sorted(SHAPES))
def test_by_default_offline_and_hwpoisoned_pages_only(
        tmp_path_factory: pytest.TempPathFactory, variant: str) -> None:
    kernel, path = kernel_dump(tmp_path_factory, variant, *SHAPES[variant])
    offline = {pfn for pfn, kind in kernel.kinds.items() if kind == "offline"}
    poisoned = {pfn for pfn, kind in kernel.kinds.items() if kind.startswith("hwpoison")}
    with opened(path) as memory:
        got = reasons(attached(memory, 0), memory)
        assert reasons(attached(memory, 1), memory) == got  # zero pages: no verdict
    assert got == {**dict.fromkeys(offline, "offline"), **dict.fromkeys(poisoned, "hwpoison")}
    assert len(offline) == 36 and len(poisoned) == 2


def test_a_gigantic_page_goes_with_its_head_whichever_chunk_is_asked_first(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The order-13 hugetlb page at pfn 16384 spans 8 chunks and two sections."""
    kernel, path = kernel_dump(tmp_path_factory, "6.1", *SHAPES["6.1"])
    assert kernel.kinds[16384] == "hugetlb" and kernel.kinds[24575] == "hugetlb_tail"
    with opened(path) as memory:
        hook = attached(memory, 8)
        assert hook.explain(24575, 1) == [(1, "user")]  # its last chunk first, cold
        assert hook.explain(20480, 3000) == [(3000, "user")]
        assert hook.explain(16383, 8194) == [(1, ""), (8192, "user"), (1, "")]
        assert hook.chunks is not None
        hook.chunks.clear()
        assert hook.pfn_range_is_ram(17408, 1024) == [(1024, NOT_RAM)]
        assert attached(memory, 7).explain(16384, 8192) == [(8192, "")]


def test_pfns_with_no_struct_page_are_ram_and_impossible_pfns_errors(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    kernel, path = kernel_dump(tmp_path_factory, "6.12", *SHAPES["6.12"])
    assert {kernel.kinds[p] for p in range(12288, 12544)} == {"nomap"}
    with opened(path) as memory:
        hook = attached(memory, 31)
        assert hook.pfn_range_is_ram(12288, 256) == [(256, RAM)]  # a section with no mem_map
        assert hook.pfn_range_is_ram(8192, 4096) == [(4096, RAM)]  # no section: a hole
        assert hook.pfn_range_is_ram(1 << 40, 5) == [(5, RAM)]  # past MAX_PHYSMEM_BITS
        assert hook.pfn_range_is_ram(-3, 4) == [(3, ERROR), (1, RAM)]
        assert hook.pfn_range_is_ram((1 << 64) - 1, 2) == [(1, RAM), (1, ERROR)]
        assert hook.pfn_is_ram(-1) == hook.pfn_is_ram(1 << 64) == ERROR
        assert hook.explain(-3, 4) == [(4, "")]


class FailingStructPages:
    """The dump, but reading the struct pages of pfns [first, end) fails (EIO)."""

    def __init__(self, memory: SourceMemory, vmemmap: tuple[int, int]) -> None:
        self._memory = memory
        self.page_size, self.vmcoreinfo = memory.page_size, memory.vmcoreinfo
        self.arch, self.pfn_ranges = memory.arch, memory.pfn_ranges
        self._bad = vmemmap

    def read_phys(self, paddr: int, length: int) -> bytes:
        low, high = self._bad
        if paddr < high and low < paddr + length:
            raise DumpdError("EIO", "unreadable")
        return self._memory.read_phys(paddr, length)


def test_unreadable_struct_pages_are_errors_and_the_rest_is_judged(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    kernel, path = kernel_dump(tmp_path_factory, "6.12", *SHAPES["6.12"])
    with opened(path) as memory:
        hook = attached(memory, 16)
        assert hook.chunks is not None
        (_, _, paddr), = hook.chunks.memmap.struct_pages(5120, 1024)
        failing = FailingStructPages(memory, (paddr, paddr + 1024 * 64))
        broken = dumpd_memmap.create({"dump_level": 16})
        broken.attach(failing)
        assert broken.pfn_range_is_ram(4096, 3072) == [(1024, RAM), (1024, ERROR),
                                                       (1024, RAM)]
        assert broken.pfn_range_is_ram(2304, 32) == [(32, NOT_RAM)]  # offline, elsewhere
        assert broken.explain(5120, 1024) == [(1024, "")]
        assert hook.pfn_range_is_ram(5120, 1024) == [(1024, NOT_RAM)]
        assert {kernel.kinds[5120], kernel.kinds[6143]} == {"free", "free_tail"}


def test_chunks_are_read_in_one_read_per_run_and_the_lru_stays_bounded(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sections 0-7 have their mem_map in one 2 MiB vmemmap page: a chunk is one read;
    section 512's is in 4 KiB pages out of order: 16 reads for 1024 struct pages."""
    _, path = kernel_dump(tmp_path_factory, "6.12", *SHAPES["6.12"])
    with opened(path) as memory:
        hook = attached(memory, 31)
        chunks = hook.chunks
        assert chunks is not None and chunks.size == dumpd_memmap.CHUNK_PAGES == 1024
        hook.explain(0, 1024)
        assert (chunks.classified, chunks.reads) == (1, 1)
        hook.explain(0x200000, 1024)
        assert (chunks.classified, chunks.reads) == (2, 17)
        hook.explain(0, 1024)
        assert (chunks.classified, chunks.reads, chunks.cached) == (2, 17, 2)
        reasons(hook, memory)
        assert (chunks.classified, chunks.cached) == (18, 18)  # 5 sections, 2 ranges < 1024
        assert dumpd_memmap.CACHED_CHUNKS == 512
        monkeypatch.setattr(dumpd_memmap.chunks, "CACHED_CHUNKS", 4)
        chunks.clear()
        reasons(hook, memory)
        assert (chunks.classified, chunks.cached) == (36, 4)
        reasons(hook, memory)  # each evicted before it is asked again
        assert (chunks.classified, chunks.cached) == (54, 4)
        hook.close()
        assert hook.chunks is None and hook.pfn_is_ram(1) == ERROR
