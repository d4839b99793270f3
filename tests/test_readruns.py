"""Reads of many pages at once: the page cache's blocks (a flight's buffer kept whole),
cache hits taken a block at a time, and a short run of uncached pages read inline in
one call (`Engine.read_now`). Real files; exact bytes and exact counters."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path

from dumpd.config import EngineConfig
from dumpd.engine.pagecache import PageCache
from dumpd.engine.readbatch import INLINE_READ_MAX
from tests.dumps import build_raw, file_bytes
from tests.servers import GatedHook, until
from tests.test_engine import PAGE, FixedRuns, engine_for, irregular_with_verdicts, mib
from tests.views import pfns_read, record_reads


def test_blocks_are_whole_until_a_page_is_taken_and_go_whole() -> None:
    cache = PageCache(8, PAGE)
    data = bytes(range(256)) * (4 * PAGE // 256)
    cache.put_block(10, 4, data)
    assert cache.run(10, 20) == (data, 4)  # the block's own object
    assert cache.run(11, 13) == (data[PAGE : 3 * PAGE], 2)
    assert cache.get(13) == data[3 * PAGE :]
    cache.put_block(20, 3, bytes(3 * PAGE), skip=[21])  # a failed page is not entered
    assert (len(cache), cache.get(21), cache.run(20, 23)) == (6, None, (bytes(PAGE), 1))
    cache.put(12, b"x" * PAGE)  # a page of block 10 replaced: that block is no longer whole
    assert cache.run(10, 20) == (data[: 2 * PAGE], 2)
    assert cache.run(12, 20) == (b"x" * PAGE, 1)
    assert cache.run(13, 20) == (data[3 * PAGE :], 1)
    # 4 + 3 + 1 pages held; a block of 2 more evicts the least recently used (20, 3 pages)
    cache.put_block(30, 2, bytes(2 * PAGE))
    assert (cache.get(20), cache.get(22), len(cache)) == (None, None, 6)
    cache.put_block(40, 8, bytes(8 * PAGE))  # everything else goes
    assert (len(cache), [cache.get(i) is None for i in (10, 12, 13, 30)]) == (8, [True] * 4)
    cache.put_block(50, 9, bytes(9 * PAGE))  # larger than the cache: not cached
    assert (len(cache), cache.get(50)) == (8, None)


async def test_a_multi_page_read_is_one_inline_read_then_one_block(tmp_path: Path) -> None:
    size = 200 * PAGE + 300  # the last page is short
    dump = build_raw(tmp_path / "oldmem", size)
    want = file_bytes(dump.path)
    with engine_for(dump.path, EngineConfig(cache_mib=mib(128))) as engine:
        counters = engine.counters
        assert engine.read_now(PAGE + 5, 3 * PAGE) == want[PAGE + 5 : 4 * PAGE + 5]
        assert (counters.source_read_calls, counters.source_reads_inline,
                counters.source_pages_read, counters.cache_misses) == (1, 1, 4, 4)
        assert counters.source_bytes_read == 4 * PAGE
        block = engine.read_now(PAGE, 4 * PAGE)  # pages 1-4 again: the block itself
        assert block == want[PAGE : 5 * PAGE] and counters.cache_hits == 4
        assert engine._state.pages.get(1) == want[PAGE : 2 * PAGE]
        assert await engine.read_parts(PAGE, 4 * PAGE) == [block]
        assert counters.cache_hits == 4 + 4  # (the cache looked at directly counts none)
        # page 0 uncached beside cached page 1: not now; `read` reads page 0 alone
        assert engine.read_now(0, 2 * PAGE) is None
        assert bytes(await engine.read(0, 2 * PAGE)) == want[: 2 * PAGE]
        assert (counters.source_pages_read, counters.source_read_calls) == (5, 2)
        # above INLINE_READ_MAX a flight reads it, in one worker hop
        pages = INLINE_READ_MAX // PAGE + 1
        assert engine.read_now(10 * PAGE, pages * PAGE) is None
        assert bytes(await engine.read(10 * PAGE, pages * PAGE)) == want[10 * PAGE :][
            : pages * PAGE]
        assert (counters.source_pages_read, counters.worker_hops) == (5 + pages, 1)
        # the short end, inline; then whole from the cache
        assert engine.read_now(197 * PAGE, 10 * PAGE) == want[197 * PAGE :]
        assert engine.read_now(197 * PAGE + 1, 10 * PAGE) == want[197 * PAGE + 1 :]
        assert counters.source_pages_read == 5 + pages + 4
        assert counters.source_read_calls == 2 + 1 + 1
        assert counters.bytes_served == (3 * PAGE + 4 * PAGE + 4 * PAGE + 2 * PAGE
                                         + pages * PAGE + 2 * (size - 197 * PAGE) - 1)


async def test_a_flight_is_cached_as_one_block_and_served_from_it(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    want = file_bytes(dump.path)
    with engine_for(dump.path, EngineConfig(cache_mib=mib(64))) as engine:
        counters = engine.counters
        gate = GatedHook(1)  # verdicts wait: the read takes a flight
        engine.register_hook("gate", gate)
        first = asyncio.ensure_future(engine.read(4 * PAGE, 16 * PAGE))
        await until(lambda: len(engine._state.flights) == 16)
        second = asyncio.ensure_future(engine.read(8 * PAGE, 16 * PAGE))  # 12 in flight
        await until(lambda: counters.singleflight_waits == 12)
        gate.release.set()
        assert bytes(await first) == want[4 * PAGE : 20 * PAGE]
        assert bytes(await second) == want[8 * PAGE : 24 * PAGE]
        assert (counters.source_pages_read, counters.cache_misses, counters.pfns_asked) == (
            20, 20, 20)
        assert engine._state.flights == {}
        parts = await engine.read_parts(4 * PAGE, 20 * PAGE)  # two blocks, as views
        assert [len(part) for part in parts] == [16 * PAGE, 4 * PAGE]
        assert b"".join(parts) == want[4 * PAGE : 24 * PAGE]
        assert (counters.cache_hits, counters.source_pages_read) == (20, 20)


async def test_runs_over_segment_edges_non_ram_and_error_pages_read_each_page_once(
        tmp_path: Path) -> None:
    """Three-page reads at every page of an irregular core with non-RAM and hook-error
    pages: the bytes, one verdict per pfn, each source byte read once, twice over."""
    dump, not_ram, runs, want = irregular_with_verdicts(tmp_path)
    with engine_for(dump.path, EngineConfig(cache_mib=mib(256))) as engine:
        hook = FixedRuns(runs)
        engine.register_hook("fixed", hook)
        reads = record_reads(engine.source)
        pages = (dump.size + PAGE - 1) // PAGE
        for rounds in range(2):
            for index in range(pages):
                lo = index * PAGE
                got = engine.read_now(lo, 3 * PAGE)
                if got is None:
                    got = await engine.read(lo, 3 * PAGE)
                assert bytes(got) == want[lo : lo + 3 * PAGE], index
            if rounds == 0:
                first_pass = (engine.counters.source_pages_read, list(reads))
        asked = sum(count for _, count in hook.calls)
        in_file = {pfn for seg in dump.segments if seg.filesz
                   for pfn in range(seg.paddr // PAGE, (seg.paddr + seg.filesz - 1) // PAGE + 1)}
        assert asked == engine.counters.pfns_asked == len(in_file)  # once per pfn
        assert (engine.counters.source_pages_read, reads) == first_pass  # all hits
        assert pfns_read(reads, dump.segments).isdisjoint(not_ram)
        assert all(a[0] + a[1] <= b[0] for a, b in pairwise(sorted(reads)))
