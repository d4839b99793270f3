"""Page-granular reads of the file view, with hook verdicts, a page cache and single-flight.

Design rules:
- Every read becomes whole-page work: the hook is asked at most once per pfn
  while a registration stands (kept in a bounded `VerdictCache`), a RAM page is
  read from the source once while cached, and concurrent requests for the same
  page wait on the one `Flight` that reads it.
- Non-RAM bytes are never read; a miss over many pages goes to the source as
  few large contiguous reads, split only where non-RAM runs interrupt it, all in
  one hop to a worker thread. Cached work is done inline on the loop.
- All per-registration state (verdicts, pages, flights) lives in one `State`
  (engine/state.py); a change of the hook slot starts a new one, and a read in
  progress finishes with the state (and verdicts) it started with.
- Pages neither cached nor in flight are read by new flights (engine/flights.py);
  a page the source cannot read fails only the reads that want it, and is never cached.
- Reads longer than a quarter of the page cache do not fill it (a bulk copy
  would only evict the pages a debugger keeps coming back to). Non-RAM pages
  are cached as references to one shared zero page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, cast

from dumpd.config import EngineConfig
from dumpd.engine.buffers import BufferPool
from dumpd.engine.counters import Counters
from dumpd.engine.flights import Flights
from dumpd.engine.hookcall import HookCaller
from dumpd.engine.kernelview import KernelView
from dumpd.engine.layout import Layout
from dumpd.engine.readbatch import INLINE_READ_MAX, ReadBatcher, count_reads, read_cached
from dumpd.engine.state import Flight, State
from dumpd.engine.verdicts import Stored
from dumpd.errors import DumpdError
from dumpd.hooks.contract import PfnIsRam
from dumpd.hooks.slot import HookSlot
from dumpd.ratelog import RateLimitedLog
from dumpd.sources.base import Source
from dumpd.sources.physical import SourceMemory

MiB = 1 << 20


class Engine:
    """Serves the file view and physical reads of one source."""

    def __init__(self, source: Source, config: EngineConfig | None = None) -> None:
        self.source = source
        self.config = config or EngineConfig()
        self.page_size = source.page_size
        self.layout = Layout(source.file_map, source.page_size,
                             source.excluded if source.excludes else None)
        self.slot = HookSlot()
        self.counters = Counters()
        self._ratelog = RateLimitedLog(logging.getLogger("dumpd.hook"))
        self._reader = ReadBatcher(source, self.config.read_threads, self.counters)
        self._state = State(0, None, self.config, self.page_size)
        self.zero_page = bytes(self.page_size)  # the one shared zero page
        self.dump_memory = SourceMemory(source)  # what a hook's attach() reads
        self.kernel = KernelView(source)
        self._flights = Flights(source, self.layout, self.slot, self.counters, self._reader,
                                BufferPool(self.config.buffer_pool_mib * MiB), self.zero_page)

    # -- hook slot -------------------------------------------------------------

    @property
    def hook_name(self) -> str | None:
        current = self.slot.current
        return current.name if current else None

    def register_hook(self, name: str, hook: PfnIsRam,
                      options: Mapping[str, Any] | None = None) -> None:
        """Register `hook` (made with `options`); EBUSY if the slot is taken. Cached
        verdicts and pages are dropped. The engine logs no changes of the slot: whoever
        asked for one does, naming who."""
        registration = self.slot.register(name, hook, options)
        caller = HookCaller(name, hook, self.config.hook_timeout, self.counters, self._ratelog)
        self._state = State(registration.generation, caller, self.config, self.page_size)

    async def reload_hook(self) -> int:
        """Have the hook reload its data, then drop cached verdicts and pages.

        Readers that need a verdict wait until the reload is over (instead of
        timing out into reads of pages that may be ballooned); reads in progress
        finish with the verdicts they hold. Returns the new generation. EINVAL: no
        hook; ENOSYS: it has no data to reload; EINVAL/EIO: the reload failed and
        the hook keeps its old data.
        """
        state = self._state
        if state.caller is None:
            raise DumpdError("EINVAL", "no hook is registered")
        async with state.asking:
            try:
                await state.caller.reload(self.config.hook_reload_timeout)
            except DumpdError as exc:
                if exc.code != "ENOSYS":  # no data to reload: nothing was tried, or failed
                    self.counters.hook_reload_failures += 1
                raise
        self.counters.hook_reloads += 1
        if self._state is not state:  # unregistered meanwhile: its caches are gone already
            return self.slot.generation
        registration = self.slot.reloaded()
        self._state = State(registration.generation, state.caller, self.config, self.page_size)
        return registration.generation

    def unregister_hook(self) -> str | None:
        """Empty the slot (every pfn is RAM again); returns the name that was registered."""
        previous = self.slot.unregister()
        if previous is None:
            return None
        old = self._state
        self._state = State(self.slot.generation, None, self.config, self.page_size)
        if old.caller is not None:
            old.caller.close()
        return previous.name

    async def explain(self, first_pfn: int, count: int) -> tuple[int, list[tuple[int, str]]]:
        """The registered hook's `(length, reason)` runs for `count` pfns from
        `first_pfn`, with the generation they hold for; ENOSYS without a hook or when
        it cannot explain, EIO when it failed."""
        state = self._state
        if state.caller is None:
            raise DumpdError("ENOSYS", "no hook is registered")
        return state.generation, await state.caller.explain(first_pfn, count)

    # -- reads -----------------------------------------------------------------

    async def read(self, offset: int, length: int, bulk: bool = False) -> bytes | memoryview:
        """Bytes of the file view at `offset`, like pread: short at the end, empty past it.

        Large reads come back as a view of the buffer they were read into (no copy).
        A `bulk` read (a stream, a digest) never fills the page cache.
        """
        parts = await self.read_parts(offset, length, bulk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_parts(self, offset: int, length: int, bulk: bool = False
                         ) -> list[bytes | memoryview]:
        """The bytes `read` returns, as the buffers that hold them, in order: cached
        pages and slices of the flights that read the rest. A reply is written from
        them as they are; joining them would copy a large read once more."""
        now = None if bulk else self.read_now(offset, length)
        if now is not None:
            return [now]
        parts = await self._read_parts(offset, length, cache=not bulk)
        self.counters.bytes_served += sum(map(len, parts))
        return parts

    def read_now(self, offset: int, length: int) -> bytes | memoryview | None:
        """The bytes of a read if they can be had without waiting, else None: then `read`
        does the work. Within one page: the page is cached, or its verdicts are known and
        the OS page cache holds it. Over several: one cached block holds them all, or
        (`_run_now`) a short run none of whose pages is cached is read inline."""
        data = self._now(offset, length)
        if data is not None:
            self.counters.bytes_served += len(data)
        return data

    def _now(self, offset: int, length: int) -> bytes | memoryview | None:
        """`read_now` without counting the bytes served."""
        ps = self.page_size
        end = min(self.source.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // ps, (end - 1) // ps
        state = self._state
        if last != first:
            data = self._run_now(state, first, last + 1)
            return None if data is None else data[offset - first * ps : end - first * ps]
        page = state.pages.get(first)
        if page is not None:
            self.counters.cache_hits += 1
        else:
            page = self._load_now(state, first)
            if page is None:
                return None
        if page is self.zero_page:
            self.counters.zero_pages_served += 1
        return page[offset - first * ps : end - first * ps]

    def _run_now(self, state: State, first: int, stop: int) -> bytes | memoryview | None:
        """Pages `[first, stop)` as one buffer without waiting: the one cached block that
        holds them all; or, when none of them is cached or in flight, the run is at most
        `INLINE_READ_MAX` bytes in one run of the file map, read whole from the source by
        the verdicts at hand (`_read_whole`) and in the OS page cache, one inline read
        into one buffer, cached as one block. Else None (then a flight reads them: it
        also names the pages a failing read could not have)."""
        count = stop - first
        pages, counters = state.pages, self.counters
        found = pages.run(first, stop)
        if found is not None:
            if found[1] < count:
                return None
            counters.cache_hits += count
            return found[0]
        lo, hi = first * self.page_size, min(self.source.size, stop * self.page_size)
        indices = range(first, stop)
        if (hi - lo > INLINE_READ_MAX or pages.holds_any(indices)
                or any(map(state.flights.__contains__, indices))
                or not self._read_whole(state, lo, hi)):
            return None
        view = memoryview(bytearray(hi - lo))
        try:
            if self.source.read_cached_into(lo, view) < hi - lo:
                return None
        except DumpdError:
            return None
        counters.source_read_calls += 1
        counters.source_reads_inline += 1
        counters.source_bytes_read += hi - lo
        counters.source_pages_read += count
        counters.cache_misses += count
        if count <= pages.capacity // 4:
            pages.put_block(first, count, view)
        return view

    def _load_now(self, state: State, index: int) -> bytes | memoryview | None:
        """Page `index` into the cache without waiting, or None if that would need the
        hook, a worker thread or another request's flight."""
        if index in state.flights:
            return None
        lo = index * self.page_size
        hi = min(self.source.size, lo + self.page_size)
        if self._read_whole(state, lo, hi):  # the common case, without classifying
            view = memoryview(bytearray(hi - lo))
            if self.source.read_cached_into(lo, view) < hi - lo:
                return None
            counters = self.counters
            counters.source_read_calls += 1
            counters.source_reads_inline += 1
            counters.source_bytes_read += hi - lo
            counters.source_pages_read += 1
            counters.cache_misses += 1
            page = bytes(view)
            state.pages.put(index, page)
            return page
        verdicts = state.known(self.layout.pfn_ranges(lo, hi))
        if any(code is Stored.UNKNOWN for _, _, code in verdicts):
            return None
        buffer = bytearray(hi - lo)
        view = memoryview(buffer)
        reads = [(start, view[start - lo : end - lo])
                 for start, end, is_zero in self.layout.classify(lo, hi, verdicts) if not is_zero]
        if read_cached(self.source, reads):
            return None  # some of it is not in the OS page cache: `read` will do it
        count_reads(self.counters, reads, inline=len(reads))
        if reads:
            page = bytes(buffer)
            self.counters.source_pages_read += 1
        else:
            page = self._flights.zeros(hi - lo)
        self.counters.cache_misses += 1
        state.pages.put(index, page)
        return page

    def _read_whole(self, state: State, lo: int, hi: int) -> bool:
        """Whether file bytes `[lo, hi)` lie in one run of the file map and are all read
        from the source by the verdicts at hand (RAM or error; not NOT_RAM, not unknown)
        and the dump did not leave them out."""
        run = self.layout.run_holding(lo, hi)
        if run is None or (self.layout.excludes and self.layout.excluded(lo, hi)):
            return False
        if run.paddr is None or state.caller is None:
            return True
        ps = self.page_size
        paddr = run.paddr + (lo - run.file_start)
        verdicts = state.verdicts.lookup(paddr // ps, (paddr + hi - lo - 1) // ps + 1)
        return all(code is Stored.RAM or code is Stored.ERROR for _, _, code in verdicts)

    async def read_phys(self, paddr: int, length: int) -> bytes:
        """Bytes at physical `paddr`; ERANGE unless PT_LOADs cover the whole range."""
        return b"".join(await self.read_phys_parts(paddr, length))

    async def read_phys_parts(self, paddr: int, length: int) -> list[bytes | memoryview]:
        """The bytes `read_phys` returns, as the buffers that hold them, in order (as
        `read_parts`: a reply is written from them without joining them)."""
        parts: list[bytes | memoryview] = []
        for piece in self.source.phys_to_file(paddr, length):
            if piece.file_offset is None:
                parts.append(bytes(piece.length))
                continue
            now = self._now(piece.file_offset, piece.length)
            found = ([now] if now is not None else
                     await self._read_parts(piece.file_offset, piece.length, cache=True))
            if sum(map(len, found)) != piece.length:
                raise DumpdError("EIO", f"segment data at {piece.file_offset:#x} is cut short")
            parts.extend(found)
        self.counters.bytes_served += sum(map(len, parts))
        return parts

    async def read_virt(self, vaddr: int, length: int) -> bytes:
        """Bytes at kernel virtual `vaddr`, through the dead kernel's page tables, then as
        `read_phys`; ERANGE where nothing maps them (see `KernelView.read_virt`)."""
        return await self.kernel.read_virt(vaddr, length, self.read_phys)

    async def ask_verdicts(self, offset: int, length: int) -> None:
        """Have the verdicts of the file range at hand, asking the hook for the unknown
        ones in one batch (a stream does this well ahead of its reads)."""
        lo, hi = offset, min(self.source.size, offset + length)
        if lo < hi:
            await self._state.verdicts_of(self.layout.pfn_ranges(lo, hi))

    async def extents(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """`(offset, length, "data" | "zero")` runs of the file view; zero = non-RAM pages."""
        lo, hi = offset, min(self.source.size, offset + length)
        if lo >= hi:
            return []
        state = self._state
        verdicts = await state.verdicts_of(self.layout.pfn_ranges(lo, hi))
        return [
            (start, end - start, "zero" if is_zero else "data")
            for start, end, is_zero in self.layout.classify(lo, hi, verdicts)
        ]

    async def _read_parts(self, offset: int, length: int, cache: bool
                          ) -> list[bytes | memoryview]:
        size = self.source.size
        end = min(size, offset + length)
        if offset >= end:
            return [b""]
        ps = self.page_size
        first, last = offset // ps, (end - 1) // ps
        spans = await self._spans(self._state, first, last + 1, cache)
        beyond = min(size, (last + 1) * ps) - end  # the spans hold whole pages
        if beyond:
            spans[-1] = spans[-1][: len(spans[-1]) - beyond]
        if offset > first * ps:
            spans[0] = spans[0][offset - first * ps :]
        return [_unpinned(span) for span in spans]

    async def _spans(self, state: State, first: int, stop: int, cache: bool
                     ) -> list[bytes | memoryview]:
        """Pages `[first, stop)` as a few buffers: cached pages, and one slice per flight."""
        # Runs of the range: cached pages (bytes, or a view of their block), a flight in
        # progress, or a gap `(start, count)` that a new flight will read.
        runs: list[bytes | memoryview | Flight | tuple[int, int]] = []
        counters = self.counters
        pages, flights = state.pages, state.flights
        indices = range(first, stop)
        if not (pages.holds_any(indices) or any(map(flights.__contains__, indices))):
            runs.append((first, stop - first))  # nothing to look up page by page
        else:
            index = first
            while index < stop:
                found = pages.run(index, stop) if pages else None
                if found is not None:
                    data, count = found
                    counters.cache_hits += count
                    runs.append(data)
                    index += count
                    continue
                flight = flights.get(index) if flights else None
                if flight is not None:
                    count = min(stop, flight.first + flight.count) - index
                    counters.singleflight_waits += count
                    if not runs or runs[-1] is not flight:
                        runs.append(flight)
                    index += count
                    continue
                last = runs[-1] if runs else None
                if isinstance(last, tuple) and last[0] + last[1] == index:
                    runs[-1] = (last[0], last[1] + 1)
                else:
                    runs.append((index, 1))
                index += 1
        gaps = [run for run in runs if isinstance(run, tuple)]
        new: Iterator[Flight] = iter(())
        if gaps:
            counters.cache_misses += sum(count for _, count in gaps)
            cache = cache and stop - first <= pages.capacity // 4
            new = iter(self._flights.start(state, gaps, cache))
        spans: list[bytes | memoryview] = []
        for run in runs:
            if isinstance(run, bytes | memoryview):
                spans.append(run)
            else:
                spans.append(await self._flights.land(next(new) if isinstance(run, tuple) else run,
                                                      first, stop))
        return spans

    def close(self) -> None:
        """Release threads and the hook; the source is closed by whoever opened it."""
        if self._state.caller is not None:
            self._state.caller.close()
        self._reader.close()


def _unpinned(span: bytes | memoryview) -> bytes | memoryview:
    """`span`, or a copy of it when it is a small part of a large buffer: a reply
    keeps a view only when it is most of its buffer (a large read's own flight)."""
    if isinstance(span, memoryview) and 2 * len(span) < len(cast(bytearray, span.obj)):
        return bytes(span)
    return span

