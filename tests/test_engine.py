"""The engine without sockets: verdict cache, layout, buffers, hook calls, page cache.

Sources are real files built by `tests.dumps`; hooks are small classes that record
what they were asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dumpd.config import EngineConfig
from dumpd.engine import Engine
from dumpd.engine.buffers import POOLED_MIN, BufferPool, zero
from dumpd.engine.layout import Layout
from dumpd.engine.verdicts import CHUNK_PFNS, Stored, VerdictCache
from dumpd.errors import DumpdError
from dumpd.hooks.contract import HookConfigError
from dumpd.sources import open_source
from dumpd.sources.base import MappedRun
from tests.dumps import IRREGULAR, Dump, build_elf, build_raw, file_bytes, pattern
from tests.servers import GatedHook, until
from tests.views import expected_view, pfns_read, record_reads

PAGE = 4096
MiB = 1 << 20

@contextlib.contextmanager
def engine_for(path: str | Path, config: EngineConfig | None = None,
               **source_args: Any) -> Iterator[Engine]:
    source = open_source(str(path), **source_args)
    engine = Engine(source, config)
    try:
        yield engine
    finally:
        engine.close()
        source.close()


def mib(pages: int) -> float:
    """`cache_mib` for a page cache of exactly `pages` 4 KiB pages."""
    return pages * PAGE / MiB


class RangedHook:
    """Batched hook: NOT_RAM for `zeros`, RAM elsewhere; records every call."""

    def __init__(self, zeros: Iterable[int] = ()) -> None:
        self.zeros = set(zeros)
        self.ranged: list[tuple[int, int]] = []
        self.single: list[int] = []

    def pfn_is_ram(self, pfn: int) -> int:
        self.single.append(pfn)
        return 0 if pfn in self.zeros else 1

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> list[tuple[int, int]]:
        self.ranged.append((first_pfn, count))
        runs: list[tuple[int, int]] = []
        for pfn in range(first_pfn, first_pfn + count):
            verdict = 0 if pfn in self.zeros else 1
            if runs and runs[-1][1] == verdict:
                runs[-1] = (runs[-1][0] + 1, verdict)
            else:
                runs.append((1, verdict))
        return runs


class SingleHook:
    """Only the required per-pfn form."""

    def __init__(self, answer: Callable[[int], object] = lambda pfn: 1) -> None:
        self.answer = answer
        self.asked: list[int] = []

    def pfn_is_ram(self, pfn: int) -> Any:
        self.asked.append(pfn)
        return self.answer(pfn)


class FixedRuns:
    """A batched hook that gives the same (possibly malformed) answer to every call."""

    def __init__(self, runs: Callable[[int, int], Any]) -> None:
        self.runs = runs
        self.calls: list[tuple[int, int]] = []

    def pfn_is_ram(self, pfn: int) -> int:
        raise AssertionError("the batched form must be preferred")

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> Any:
        self.calls.append((first_pfn, count))
        return self.runs(first_pfn, count)


NOT_RAM, HOOK_ERRORS = {0x2, 0x41, 0x20}, {0x3, 0x42}


def irregular_with_verdicts(tmp_path: Path
                            ) -> tuple[Dump, set[int], Callable[[int, int], Any], bytes]:
    """The irregular core with pfns `NOT_RAM` not RAM and `HOOK_ERRORS` the hook's
    errors: the dump, the pfns served as zeros, the hook's runs (for `FixedRuns`) and
    the view a reader must get."""
    dump = build_elf(tmp_path / "vmcore", IRREGULAR, page_size_note=PAGE, data_align=8)

    def runs(first: int, count: int) -> list[tuple[int, int]]:
        return [(1, 0 if pfn in NOT_RAM else -1 if pfn in HOOK_ERRORS else 1)
                for pfn in range(first, first + count)]

    return dump, NOT_RAM, runs, expected_view(dump.path, dump.segments, NOT_RAM)


def hook_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"dumpd-hook-{name}")]


# -- VerdictCache ----------------------------------------------------------------------


def test_verdict_cache_lookup_and_store_runs() -> None:
    cache = VerdictCache(4)
    assert cache.lookup(10, 20) == [(10, 20, Stored.UNKNOWN)]
    assert len(cache) == 0  # looking up does not allocate
    cache.store(10, 15, Stored.RAM)
    cache.store(15, 20, Stored.RAM)
    cache.store(20, 22, Stored.NOT_RAM)
    cache.store(25, 26, Stored.ERROR)
    assert cache.lookup(0, 30) == [
        (0, 10, Stored.UNKNOWN), (10, 20, Stored.RAM), (20, 22, Stored.NOT_RAM),
        (22, 25, Stored.UNKNOWN), (25, 26, Stored.ERROR), (26, 30, Stored.UNKNOWN)]
    assert cache.lookup(12, 13) == [(12, 13, Stored.RAM)]
    assert cache.lookup(30, 30) == []
    cache.store(11, 12, Stored.NOT_RAM)  # overwrite inside a run
    assert cache.lookup(10, 14) == [(10, 11, Stored.RAM), (11, 12, Stored.NOT_RAM),
                                    (12, 14, Stored.RAM)]
    assert len(cache) == 1


def test_verdict_cache_runs_merge_across_chunks() -> None:
    cache = VerdictCache(4)
    cache.store(CHUNK_PFNS - 5, 2 * CHUNK_PFNS + 5, Stored.NOT_RAM)
    assert len(cache) == 3
    assert cache.lookup(CHUNK_PFNS - 10, 2 * CHUNK_PFNS + 10) == [
        (CHUNK_PFNS - 10, CHUNK_PFNS - 5, Stored.UNKNOWN),
        (CHUNK_PFNS - 5, 2 * CHUNK_PFNS + 5, Stored.NOT_RAM),
        (2 * CHUNK_PFNS + 5, 2 * CHUNK_PFNS + 10, Stored.UNKNOWN),
    ]
    # a stored chunk's untouched pfns are unknown, not RAM
    assert cache.lookup(CHUNK_PFNS, CHUNK_PFNS + 1) == [
        (CHUNK_PFNS, CHUNK_PFNS + 1, Stored.NOT_RAM)]
    assert cache.lookup(3 * CHUNK_PFNS - 1, 3 * CHUNK_PFNS) == [
        (3 * CHUNK_PFNS - 1, 3 * CHUNK_PFNS, Stored.UNKNOWN)]


def test_verdict_cache_lru_eviction_at_the_budget() -> None:
    cache = VerdictCache(2)
    c0, c1, c2 = 0, CHUNK_PFNS, 2 * CHUNK_PFNS
    cache.store(c0, c0 + 3, Stored.RAM)
    cache.store(c1, c1 + 3, Stored.NOT_RAM)
    assert cache.lookup(c0, c0 + 1) == [(c0, c0 + 1, Stored.RAM)]  # chunk 0 is now the newest
    cache.store(c2, c2 + 3, Stored.ERROR)  # evicts chunk 1, the least recently used
    assert len(cache) == 2
    assert cache.lookup(c1, c1 + 3) == [(c1, c1 + 3, Stored.UNKNOWN)]
    assert cache.lookup(c0, c0 + 3) == [(c0, c0 + 3, Stored.RAM)]
    assert cache.lookup(c2, c2 + 3) == [(c2, c2 + 3, Stored.ERROR)]
    cache.store(c1, c1 + 1, Stored.RAM)  # asked again: evicts chunk 0 (c2 was looked at last)
    assert cache.lookup(c0, c0 + 3) == [(c0, c0 + 3, Stored.UNKNOWN)]
    assert cache.lookup(c1, c1 + 2) == [(c1, c1 + 1, Stored.RAM), (c1 + 1, c1 + 2, Stored.UNKNOWN)]
    assert len(cache) == 2


def test_verdict_cache_keeps_at_least_one_chunk() -> None:
    cache = VerdictCache(0)
    cache.store(0, 2 * CHUNK_PFNS, Stored.RAM)  # the second chunk pushes out the first
    assert len(cache) == 1
    assert cache.lookup(0, 2 * CHUNK_PFNS) == [(0, CHUNK_PFNS, Stored.UNKNOWN),
                                               (CHUNK_PFNS, 2 * CHUNK_PFNS, Stored.RAM)]


# -- Layout ----------------------------------------------------------------------------

# metadata, pfns 1-3 from an unaligned paddr, metadata, pfn 3 again, pfn 16
SYNTHETIC = [
    MappedRun(0, 0x100, None),
    MappedRun(0x100, 0x2100, 0x1800),
    MappedRun(0x2100, 0x2200, None),
    MappedRun(0x2200, 0x3200, 0x3000),
    MappedRun(0x3200, 0x3300, 0x10000),
]


def test_layout_pfn_ranges_synthetic() -> None:
    layout = Layout(SYNTHETIC, PAGE)
    assert layout.pfn_ranges(0, 0x3300) == [(1, 4), (16, 17)]
    assert layout.pfn_ranges(0, 0x100) == []  # metadata only
    assert layout.pfn_ranges(0x50, 0x150) == [(1, 2)]
    assert layout.pfn_ranges(0x900, 0x901) == [(2, 3)]  # paddr 0x2000
    assert layout.pfn_ranges(0x8ff, 0x901) == [(1, 3)]
    assert layout.pfn_ranges(0x2150, 0x2201) == [(3, 4)]
    assert layout.pfn_ranges(0x3250, 0x4000) == [(16, 17)]  # past the map: nothing more
    assert layout.pfn_ranges(0x3300, 0x4000) == []


def test_layout_classify_synthetic() -> None:
    layout = Layout(SYNTHETIC, PAGE)
    verdicts = [(1, 2, Stored.RAM), (2, 3, Stored.NOT_RAM), (3, 4, Stored.ERROR),
                (16, 17, Stored.NOT_RAM)]
    assert layout.classify(0, 0x3300, verdicts) == [
        (0, 0x900, False), (0x900, 0x1900, True), (0x1900, 0x3200, False),
        (0x3200, 0x3300, True)]
    assert layout.classify(0x1000, 0x1080, verdicts) == [(0x1000, 0x1080, True)]
    assert layout.classify(0x80, 0x120, verdicts) == [(0x80, 0x120, False)]
    # one NOT_RAM run over everything: metadata between the runs stays data
    assert layout.classify(0, 0x3300, [(1, 17, Stored.NOT_RAM)]) == [
        (0, 0x100, False), (0x100, 0x2100, True), (0x2100, 0x2200, False),
        (0x2200, 0x3300, True)]
    with pytest.raises(AssertionError, match="no verdict for pfn 0x10"):
        layout.classify(0, 0x3300, [(1, 4, Stored.RAM)])


def test_layout_on_an_elf_with_unaligned_segments(tmp_path: Path) -> None:
    dump = build_elf(tmp_path / "vmcore", IRREGULAR, page_size_note=PAGE, data_align=8)
    source = open_source(dump.path)
    try:
        layout = Layout(source.file_map, source.page_size)
    finally:
        source.close()
    assert layout.file_map == (
        MappedRun(0, 440, None), MappedRun(440, 20920, 0x1000),
        MappedRun(20920, 27064, 0x10000), MappedRun(27064, 36093, 0x20123),
        MappedRun(36093, 36096, None), MappedRun(36096, 68864, 0x40000))
    assert layout.pfn_ranges(0, dump.size) == [(1, 6), (16, 18), (32, 35), (64, 72)]
    assert layout.pfn_ranges(0, 440) == []
    assert layout.pfn_ranges(439, 441) == [(1, 2)]
    assert layout.pfn_ranges(36093, 36097) == [(64, 65)]
    verdicts = [(32, 33, Stored.RAM), (33, 34, Stored.NOT_RAM), (34, 35, Stored.RAM),
                (64, 65, Stored.NOT_RAM)]
    assert layout.classify(27064, 36100, verdicts) == [
        (27064, 30869, False), (30869, 34965, True), (34965, 36096, False),
        (36096, 36100, True)]


# -- BufferPool --------------------------------------------------------------------------


def test_buffer_pool_reuses_only_unreferenced_buffers() -> None:
    pool = BufferPool(4 * MiB)
    a, zeroed = pool.take(2 * MiB)
    assert (len(a), zeroed, pool.held) == (2 * MiB, True, 2 * MiB)
    a[:] = b"\xff" * (2 * MiB)
    first = id(a.obj)
    b, zeroed = pool.take(2 * MiB)
    assert (zeroed, pool.held) == (True, 4 * MiB)
    assert id(b.obj) != first
    c, zeroed = pool.take(2 * MiB)  # both pooled buffers in use; the pool is full
    assert (zeroed, pool.held) == (True, 4 * MiB)
    del c
    keep = a[10:20]  # a view of a view still refers to the buffer
    del a
    d, zeroed = pool.take(POOLED_MIN)
    assert (zeroed, pool.held) == (True, 4 * MiB)
    assert id(d.obj) != first
    del d, keep
    e, zeroed = pool.take(MiB + 5)  # now the first buffer is free: reused, not zeroed
    assert (len(e), zeroed, pool.held) == (MiB + 5, False, 4 * MiB)
    assert id(e.obj) == first
    assert bytes(e[:4]) == b"\xff" * 4
    f, zeroed = pool.take(MiB)  # the second one is still held by `b`
    assert (zeroed, pool.held) == (True, 4 * MiB)
    assert id(f.obj) not in (first, id(b.obj))


def test_buffer_pool_small_and_oversized_buffers_are_not_kept() -> None:
    pool = BufferPool(4 * MiB)
    small, zeroed = pool.take(POOLED_MIN - 1)
    assert (len(small), zeroed, pool.held) == (POOLED_MIN - 1, True, 0)
    big, zeroed = pool.take(4 * MiB + 1)
    assert (len(big), zeroed, pool.held) == (4 * MiB + 1, True, 0)
    views = [pool.take(3 * MiB)[0] for _ in range(3)]
    assert pool.held == 3 * MiB
    assert len({id(v.obj) for v in views}) == 3
    assert BufferPool(0).take(2 * MiB)[1] is True
    assert BufferPool(0).held == 0


def test_zero_writes_exactly_the_range() -> None:
    view = memoryview(bytearray(b"\xff" * (3 * MiB)))
    zero(view, 7, 2 * MiB + 9)
    data = bytes(view)
    assert data[:7] == b"\xff" * 7
    assert data[7 : 2 * MiB + 9] == bytes(2 * MiB + 2)
    assert data[2 * MiB + 9 :] == b"\xff" * (MiB - 9)
    zero(view, 20, 20)  # empty range: nothing
    zero(view, 0, 1)
    assert bytes(view[:8]) == b"\x00" + b"\xff" * 6 + b"\x00"
    assert view[2 * MiB + 9] == 0xFF


# -- hook calls through the engine -------------------------------------------------------


async def test_batched_hook_is_preferred_once_per_unknown_run(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 32 * PAGE)
    want = file_bytes(dump.path)
    hook = RangedHook(zeros={3, 4, 20})
    with engine_for(dump.path, EngineConfig(cache_mib=0)) as engine:
        engine.register_hook("ranged", hook)
        assert bytes(await engine.read(10 * PAGE, 2 * PAGE)) == want[10 * PAGE : 12 * PAGE]
        assert hook.ranged == [(10, 2)]
        data = bytes(await engine.read(0, 32 * PAGE))
        assert hook.ranged == [(10, 2), (0, 10), (12, 20)]
        # known verdicts: no call; pfn 3 is not RAM
        assert bytes(await engine.read(5, 3 * PAGE)) == want[5 : 3 * PAGE] + bytes(5)
        assert len(hook.ranged) == 3
        counters = engine.counters
    expect = bytearray(want)
    for pfn in (3, 4, 20):
        expect[pfn * PAGE : (pfn + 1) * PAGE] = bytes(PAGE)
    assert data == bytes(expect)
    assert hook.single == []
    assert (counters.hook_calls, counters.pfns_asked) == (3, 32)
    assert counters.zero_pages_served == 3 + 1
    assert counters.source_pages_read == 2 + 29 + 3
    assert counters.source_bytes_read == (2 + 29 + 3) * PAGE
    assert (counters.hook_errors, counters.hook_exceptions, counters.hook_bad_results,
            counters.hook_timeouts) == (0, 0, 0, 0)


async def test_single_pfn_hook_is_called_per_pfn(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * PAGE)
    want = file_bytes(dump.path)
    hook = SingleHook(lambda pfn: {2: 0, 5: -3}.get(pfn, 7))
    with engine_for(dump.path, EngineConfig(cache_mib=0)) as engine:
        engine.register_hook("single", hook)
        data = bytes(await engine.read(PAGE, 6 * PAGE))
        assert hook.asked == [1, 2, 3, 4, 5, 6]
        assert bytes(await engine.read(0, 8 * PAGE))[2 * PAGE : 3 * PAGE] == bytes(PAGE)
        assert hook.asked == [1, 2, 3, 4, 5, 6, 0, 7]
        extents = await engine.extents(0, 8 * PAGE)
        counters = engine.counters
    assert data == want[PAGE : 2 * PAGE] + bytes(PAGE) + want[3 * PAGE : 7 * PAGE]
    assert extents == [(0, 2 * PAGE, "data"), (2 * PAGE, PAGE, "zero"),
                       (3 * PAGE, 5 * PAGE, "data")]
    assert (counters.hook_calls, counters.pfns_asked, counters.hook_errors) == (8, 8, 1)


MALFORMED: dict[str, tuple[Callable[[int, int], Any], str]] = {
    # runs that stop short: pfns 3.. are uncovered
    "short": (lambda first, count: [(3, 0)], "hook_exceptions"),
    # runs that go past the end
    "too-long": (lambda first, count: [(3, 0), (count, 1)], "hook_exceptions"),
    # a run of length zero; a float length
    "zero-length": (lambda first, count: [(3, 0), (0, 1), (count - 3, 1)], "hook_exceptions"),
    "float-length": (lambda first, count: [(3, 0), (float(count - 3), 1)], "hook_exceptions"),
    # non-int verdicts: a string, None, a bool
    "str-verdict": (lambda first, count: [(3, 0), (count - 3, "1")], "hook_bad_results"),
    "none-verdict": (lambda first, count: [(3, 0), (count - 3, None)], "hook_bad_results"),
    "bool-verdict": (lambda first, count: [(3, 0), (2, True), (count - 5, 1)],
                     "hook_bad_results"),
    # not runs at all
    "not-pairs": (lambda first, count: [(3, 0), 5], "hook_exceptions"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_runs_give_error_verdicts(tmp_path: Path, case: str) -> None:
    runs, counter = MALFORMED[case]
    dump = build_raw(tmp_path / "oldmem", 8 * PAGE)
    want = file_bytes(dump.path)
    hook = FixedRuns(runs)
    with engine_for(dump.path, EngineConfig(cache_mib=0)) as engine:
        engine.register_hook("bad", hook)
        data = bytes(await engine.read(0, 8 * PAGE))
        extents = await engine.extents(0, 8 * PAGE)
        again = bytes(await engine.read(0, 8 * PAGE))
        counters = engine.counters.as_dict()
    # pfns 0-2 were answered (not RAM: zeros); the rest are errors, read from the source
    assert data == again == bytes(3 * PAGE) + want[3 * PAGE :]
    assert extents == [(0, 3 * PAGE, "zero"), (3 * PAGE, 5 * PAGE, "data")]
    assert hook.calls == [(0, 8)]  # error verdicts are remembered, not asked again
    hook_counters = {k: counters[k] for k in ("hook_exceptions", "hook_bad_results",
                                              "hook_timeouts", "hook_errors")}
    assert hook_counters == {"hook_exceptions": 0, "hook_bad_results": 0, "hook_timeouts": 0,
                             "hook_errors": 0, counter: 1}
    assert (counters["hook_calls"], counters["pfns_asked"]) == (1, 8)
    assert counters["source_pages_read"] == 2 * 5
    assert counters["zero_pages_served"] == 2 * 3


async def test_hook_that_raises_reads_every_page(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)

    def boom(first: int, count: int) -> Any:
        raise OSError("balloon list vanished")

    with engine_for(dump.path, EngineConfig(cache_mib=0)) as engine:
        engine.register_hook("boom", FixedRuns(boom))
        assert bytes(await engine.read(0, 4 * PAGE)) == file_bytes(dump.path)
        counters = engine.counters
    assert (counters.hook_exceptions, counters.hook_calls, counters.pfns_asked) == (1, 1, 4)
    assert counters.source_pages_read == 4


async def test_hanging_hook_times_out_and_pages_are_read(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * PAGE)
    want = file_bytes(dump.path)
    hook = GatedHook(1)
    try:
        with engine_for(dump.path, EngineConfig(hook_timeout=0.2, cache_mib=0)) as engine:
            engine.register_hook("hang", hook)
            first = await asyncio.wait_for(engine.read(0, PAGE), 5)
            assert bytes(first) == want[:PAGE]
            assert engine.counters.hook_timeouts == 1
            # the hook thread is still stuck: the next ask gets errors at once
            second = await asyncio.wait_for(engine.read(2 * PAGE, 2 * PAGE), 5)
            assert bytes(second) == want[2 * PAGE : 4 * PAGE]
            # error verdicts are remembered: no new ask, no new timeout
            third = await asyncio.wait_for(engine.read(2 * PAGE, 2 * PAGE), 1)
            assert bytes(third) == want[2 * PAGE : 4 * PAGE]
            counters = engine.counters.as_dict()
            assert hook.asked == [0]
    finally:
        hook.release.set()
    assert (counters["hook_timeouts"], counters["hook_stuck_asks"]) == (1, 1)
    assert (counters["hook_calls"], counters["pfns_asked"]) == (0, 0)
    assert counters["source_pages_read"] == 5  # no page cache: pages 2 and 3 twice
    for thread in hook_threads("hang"):
        thread.join(5)
        assert not thread.is_alive()


async def test_one_hung_call_is_one_timeout(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * PAGE)
    hook = GatedHook(1)
    try:
        with engine_for(dump.path, EngineConfig(hook_timeout=0.1)) as engine:
            engine.register_hook("hang1", hook)
            await asyncio.wait_for(engine.read(0, PAGE), 5)
            hook.release.set()
            engine.unregister_hook()
            for thread in hook_threads("hang1"):
                thread.join(5)
            counters = engine.counters
    finally:
        hook.release.set()
    assert counters.hook_timeouts == 1


# -- verdict and page cache bounds -----------------------------------------------------


@pytest.mark.parametrize("pfns_per_read", [512, 3000, 5000])
async def test_bounded_verdict_cache_asks_each_pfn_once_per_pass(
        tmp_path: Path, pfns_per_read: int) -> None:
    ps = 512  # 3 chunks of 4096 pfns in 6 MiB
    dump = build_raw(tmp_path / "oldmem", 3 * CHUNK_PFNS * ps)
    hook = RangedHook()
    config = EngineConfig(verdict_cache_kib=8, cache_mib=0)  # 2 chunks, no page cache
    step = pfns_per_read * ps
    with engine_for(dump.path, config, page_size=ps) as engine:
        engine.register_hook("count", hook)
        for offset in range(0, dump.size, step):
            assert len(await engine.read(offset, step)) == min(step, dump.size - offset)
        total = 3 * CHUNK_PFNS
        assert hook.ranged == [(pfn, min(pfns_per_read, total - pfn))
                               for pfn in range(0, total, pfns_per_read)]
        assert engine.counters.pfns_asked == 3 * CHUNK_PFNS
        hook.ranged.clear()
        await engine.read(2 * CHUNK_PFNS * ps, CHUNK_PFNS * ps)  # the last chunk is kept
        assert hook.ranged == []
        assert bytes(await engine.read(0, CHUNK_PFNS * ps)) == file_bytes(
            dump.path, 0, CHUNK_PFNS * ps)  # the first chunk was evicted: asked again
        assert hook.ranged == [(0, CHUNK_PFNS)]
        await engine.read(CHUNK_PFNS * ps + 7, 10)  # chunk 1 went when chunk 0 came back
        assert hook.ranged == [(0, CHUNK_PFNS), (CHUNK_PFNS, 1)]
        assert engine.counters.pfns_asked == 4 * CHUNK_PFNS + 1


async def test_page_cache_lru_eviction_costs_a_new_source_read(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    want = file_bytes(dump.path)
    with engine_for(dump.path, EngineConfig(cache_mib=mib(4))) as engine:  # 4 pages
        counters = engine.counters

        async def page(index: int) -> None:
            assert bytes(await engine.read(index * PAGE, PAGE)) == \
                want[index * PAGE : (index + 1) * PAGE]

        for index in range(4):
            await page(index)
        assert (counters.source_pages_read, counters.cache_misses, counters.cache_hits) == \
            (4, 4, 0)
        await page(0)  # cached; now the most recent
        assert (counters.source_pages_read, counters.cache_hits) == (4, 1)
        await page(4)  # evicts page 1
        await page(1)  # a new source read, evicts page 2
        assert (counters.source_pages_read, counters.cache_misses) == (6, 6)
        await page(0)
        await page(3)
        assert (counters.source_pages_read, counters.cache_hits) == (6, 3)
        await page(2)
        assert (counters.source_pages_read, counters.source_read_calls) == (7, 7)
        assert counters.source_bytes_read == 7 * PAGE
        assert counters.bytes_served == 10 * PAGE


async def test_reads_above_a_quarter_of_the_cache_do_not_fill_it(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 32 * PAGE)
    want = file_bytes(dump.path)
    with engine_for(dump.path, EngineConfig(cache_mib=mib(16))) as engine:  # 16 pages
        counters = engine.counters
        for _ in range(2):
            assert bytes(await engine.read(0, 5 * PAGE)) == want[: 5 * PAGE]
        assert (counters.source_pages_read, counters.cache_hits) == (10, 0)
        misses = counters.cache_misses
        assert engine.read_now(0, 8) == want[:8]  # page 0 was not cached: read again
        assert (counters.cache_misses, counters.source_pages_read) == (misses + 1, 11)
        for _ in range(2):
            assert bytes(await engine.read(8 * PAGE, 4 * PAGE)) == want[8 * PAGE : 12 * PAGE]
        assert (counters.source_pages_read, counters.cache_hits) == (15, 4)
        assert engine.read_now(11 * PAGE + 1, 3) == want[11 * PAGE + 1 : 11 * PAGE + 4]
        # a large read over cached pages uses them and reads only the rest
        assert bytes(await engine.read(6 * PAGE, 8 * PAGE)) == want[6 * PAGE : 14 * PAGE]
        assert (counters.source_pages_read, counters.cache_hits) == (19, 8 + 1)
        assert counters.source_read_calls == 2 + 1 + 1 + 2


async def test_a_read_over_cached_pages_is_handed_out_unjoined(tmp_path: Path) -> None:
    size = 40 * PAGE + 300  # the last page is short
    dump = build_raw(tmp_path / "oldmem", size)
    want = file_bytes(dump.path)
    with engine_for(dump.path, EngineConfig(cache_mib=mib(64))) as engine:
        for index in (3, 4, 9, 40):
            assert engine.read_now(index * PAGE, 1) == want[index * PAGE : index * PAGE + 1]
        cached = {index: engine._state.pages.get(index) for index in (3, 4, 9, 40)}
        offset = 2 * PAGE + 77
        parts = await engine.read_parts(offset, size)
        assert b"".join(parts) == want[offset:]
        # [2], 3, 4, [5-8], 9, [10-39], 40: cached pages are the cache's own objects
        assert [len(part) for part in parts] == [PAGE - 77, PAGE, PAGE, 4 * PAGE, PAGE,
                                                 30 * PAGE, 300]
        assert all(parts[k] is cached[index] for k, index in ((1, 3), (2, 4), (4, 9), (6, 40)))
        # trimmed at both ends inside one cached page
        assert await engine.read_parts(9 * PAGE + 5, 10) == [want[9 * PAGE + 5 : 9 * PAGE + 15]]
        assert bytes(await engine.read(3 * PAGE + 1, 2 * PAGE)) == want[3 * PAGE + 1 : 5 * PAGE + 1]
        assert engine.counters.bytes_served == 4 + (size - offset) + 10 + 2 * PAGE


async def test_read_now_answers_only_what_needs_no_waiting(tmp_path: Path) -> None:
    size = 4 * PAGE + 100
    dump = build_raw(tmp_path / "oldmem", size)
    want = file_bytes(dump.path)
    with engine_for(dump.path) as engine:
        counters = engine.counters
        # No hook: verdicts are known, the OS page cache holds the file: read inline.
        assert engine.read_now(10, 20) == want[10:30]
        assert (counters.cache_misses, counters.source_reads_inline) == (1, 1)
        assert engine.read_now(0, PAGE) == want[:PAGE]  # now from dumpd's cache
        assert counters.cache_hits == 1
        assert engine.read_now(PAGE - 8, 16) is None  # page 0 cached, page 1 not: `read`
        assert engine.read_now(4 * PAGE + 90, 50) == want[4 * PAGE + 90 :]  # short at the end
        assert engine.read_now(size, 10) == b""
        assert engine.read_now(size + PAGE, 10) == b""
        assert engine.read_now(5, 0) == b""
        assert counters.bytes_served == 20 + PAGE + 10
        # With a hook, a pfn nobody asked about needs the hook thread: not now.
        gate = GatedHook(0)
        gate.release.set()
        engine.register_hook("gate", gate)
        assert engine.read_now(2 * PAGE, 8) is None
        assert await engine.read(2 * PAGE, 8) == bytes(8)  # asked once, then known
        assert engine.read_now(3 * PAGE, 8) is None
        assert engine.read_now(2 * PAGE + 8, 8) == bytes(8)
        assert counters.pfns_asked == 1


async def test_read_now_over_every_page_of_an_irregular_core_with_verdicts(
        tmp_path: Path) -> None:
    """Pages inside one PT_LOAD take the short path, pages across segment edges, ELF
    metadata and gaps the general one: the bytes, the zero pages and the source
    reads come out the same either way."""
    dump, not_ram, runs, want = irregular_with_verdicts(tmp_path)
    with engine_for(dump.path) as engine:
        engine.register_hook("fixed", FixedRuns(runs))
        await engine.ask_verdicts(0, dump.size)
        reads = record_reads(engine.source)
        pages = (dump.size + PAGE - 1) // PAGE
        for index in range(pages):
            lo = index * PAGE
            assert engine.read_now(lo, PAGE) == want[lo : lo + PAGE], index
        assert pfns_read(reads, dump.segments).isdisjoint(not_ram)
        assert engine.counters.cache_misses == pages
        assert engine.counters.source_reads_inline == len(reads)
        assert engine.counters.source_bytes_read == sum(length for _, length in reads)


async def test_read_phys_past_filesz_is_zeros_without_a_source_read(tmp_path: Path) -> None:
    dump = build_elf(tmp_path / "vmcore", IRREGULAR, page_size_note=PAGE)
    with engine_for(dump.path) as engine:
        assert await engine.read_phys(0x11800, 0x1800) == bytes(0x1800)
        assert await engine.read_phys(0x30000, 0x2000) == bytes(0x2000)
        assert engine.counters.source_read_calls == 0
        assert engine.counters.source_pages_read == 0
        assert engine.counters.bytes_served == 0x3800
        assert await engine.read_phys(0x11000, 0x1000) == pattern(0x11000, 0x800) + bytes(0x800)
        assert engine.counters.source_pages_read == 1
        assert engine.counters.source_read_calls == 1


async def test_a_read_that_had_not_asked_before_unregister_sees_ram(tmp_path: Path) -> None:
    """The slot empties while a read waits for its turn to ask the hook: it must not
    fail on the closed hook; every pfn is RAM from then on."""
    dump = build_raw(tmp_path / "oldmem", 8 * PAGE)
    want = file_bytes(dump.path)
    with engine_for(dump.path) as engine:
        gate = GatedHook(0)
        engine.register_hook("gate", gate)
        first = asyncio.ensure_future(engine.read(0, 8))  # holds the ask lock, in the hook
        await until(lambda: engine.counters.cache_misses >= 1)
        second = asyncio.ensure_future(engine.read(5 * PAGE, 8))  # waits for its turn
        await until(lambda: engine.counters.cache_misses >= 2)
        engine.unregister_hook()
        gate.release.set()
        assert await first == bytes(8)  # the verdict it started with
        assert await second == want[5 * PAGE : 5 * PAGE + 8]
        assert engine.counters.pfns_asked == 1


async def test_asks_do_not_queue_behind_a_hung_hook(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    want = file_bytes(dump.path)
    gate = GatedHook(0)
    try:
        with engine_for(dump.path, EngineConfig(hook_timeout=0.1)) as engine:
            engine.register_hook("hung", gate)
            reads = [engine.read(page * PAGE, 8) for page in range(10)]
            got = await asyncio.gather(*reads)
            assert [bytes(g) for g in got] == [want[p * PAGE : p * PAGE + 8] for p in range(10)]
            assert engine.counters.hook_timeouts == 1  # one wait...
            assert engine.counters.hook_stuck_asks == 9  # ...then nine answered at once
            assert len(gate.asked) == 1
            gate.release.set()  # the hung call returns; after it the hook is asked again
            await asyncio.to_thread(gate.returned.wait, 5)
            for page in range(10, 16):  # a page read before the thread is free is an error
                if bytes(await engine.read(page * PAGE, 8)) == bytes(8):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the hook was never asked again")
            assert len(gate.asked) == 2  # nothing queued behind the hung call ran later
    finally:
        gate.release.set()


# -- reloading the hook's data ------------------------------------------------------------


class ReloadingHook(RangedHook):
    """Reload swaps in `next_zeros` once `gate` opens; `bad` makes the reload raise."""

    def __init__(self, zeros: Iterable[int]) -> None:
        super().__init__(zeros)
        self.next_zeros: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.reloading = threading.Event()
        self.bad = False

    def reload(self) -> None:
        self.reloading.set()
        self.gate.wait(5)
        if self.bad:
            raise HookConfigError("reloading: line 3: nonsense")
        self.zeros = set(self.next_zeros)


async def test_reload_drops_verdicts_and_pages_and_readers_wait_for_it(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * PAGE)
    hook = ReloadingHook(zeros={1})
    with engine_for(dump.path) as engine:
        engine.register_hook("reloading", hook)
        before = await engine.read(0, 3 * PAGE)
        hook.next_zeros, hook.gate = {2}, threading.Event()
        reload = asyncio.ensure_future(engine.reload_hook())
        await until(hook.reloading.is_set)
        cached = await engine.read(PAGE, 8)  # verdict at hand: answered during the reload
        waiting = asyncio.ensure_future(engine.read(5 * PAGE, 8))  # needs the hook: waits
        await asyncio.sleep(0.05)
        assert not waiting.done() and engine.counters.hook_stuck_asks == 0
        hook.gate.set()
        generation = await reload
        after = await engine.read(0, 3 * PAGE)
        assert await waiting == file_bytes(dump.path, 5 * PAGE, 8)
        counters = engine.counters
    data = file_bytes(dump.path)
    assert before == data[:PAGE] + bytes(PAGE) + data[2 * PAGE : 3 * PAGE]
    assert cached == bytes(8)
    assert generation == 2 == engine.slot.generation
    assert after == data[: 2 * PAGE] + bytes(PAGE)
    assert (counters.hook_reloads, counters.hook_reload_failures) == (1, 0)
    assert (counters.hook_errors, counters.hook_timeouts) == (0, 0)


async def test_a_failed_reload_keeps_the_verdicts(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    hook = ReloadingHook(zeros={1})
    with engine_for(dump.path) as engine:
        engine.register_hook("reloading", hook)
        await engine.read(0, 4 * PAGE)
        hook.bad = True
        with pytest.raises(DumpdError) as failed:
            await engine.reload_hook()
        asked = len(hook.ranged)
        again = await engine.read(0, 4 * PAGE)
    data = file_bytes(dump.path)
    assert (failed.value.code, failed.value.message) == (
        "EINVAL", "reload failed, old data kept: reloading: line 3: nonsense")
    assert again == data[:PAGE] + bytes(PAGE) + data[2 * PAGE :]
    assert len(hook.ranged) == asked  # cached verdicts were kept: the hook was not asked
    assert engine.slot.generation == 1
    assert (engine.counters.hook_reloads, engine.counters.hook_reload_failures) == (0, 1)


async def test_a_hung_reload_times_out_and_reads_go_on(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    hook = ReloadingHook(zeros={1})
    config = EngineConfig(hook_reload_timeout=0.1, hook_timeout=1.0)
    with engine_for(dump.path, config) as engine:
        engine.register_hook("reloading", hook)
        hook.gate = threading.Event()
        with pytest.raises(DumpdError) as hung:
            await engine.reload_hook()
        during = await engine.read(PAGE, 8)  # never asked, hook stuck: an error, so read
        with pytest.raises(DumpdError) as again:
            await engine.reload_hook()
        hook.gate.set()
        await until(lambda: not engine._state.caller._stuck)  # type: ignore[union-attr]
        await engine.reload_hook()
    assert (hung.value.code, hung.value.message) == (
        "EIO", "hook 'reloading' reload gave no answer within 0.1s; it keeps running")
    assert (again.value.code, again.value.message) == (
        "EIO", "hook 'reloading' is stuck in an earlier call")
    assert during == file_bytes(dump.path, PAGE, 8)
    assert engine.counters.hook_stuck_asks == 1
    assert (engine.counters.hook_reloads, engine.counters.hook_reload_failures) == (1, 2)


async def test_reload_errors_without_a_hook_or_reload(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", PAGE)
    with engine_for(dump.path) as engine:
        with pytest.raises(DumpdError) as empty:
            await engine.reload_hook()
        engine.register_hook("ranged", RangedHook())
        with pytest.raises(DumpdError) as nodata:
            await engine.reload_hook()
    assert (empty.value.code, nodata.value.code) == ("EINVAL", "ENOSYS")
    assert nodata.value.message == "hook 'ranged' has no data to reload"
    # a hook with no data has nothing to fail: SIGHUP is an info line, and no failure
    assert (engine.counters.hook_reloads, engine.counters.hook_reload_failures) == (0, 0)
