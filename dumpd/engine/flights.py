"""Flights: the batched reads of the pages a read finds neither cached nor in flight.

Design rules:
- One flight per run of missing pages, all of a read's flights in one task: verdicts
  asked in one batch, every non-zero piece read in one hop to a worker thread.
- Concurrent readers of a page wait on the one flight that reads it (single-flight);
  a flight leaves its state's table when it lands, whatever happened.
- A page the source cannot read fails only the readers that want it: a failed read
  over many pages is tried again page by page, the failing pages are marked in their
  flight (and never cached), and the error names exactly those pages.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from dumpd.engine.buffers import BufferPool, zero
from dumpd.engine.counters import Counters
from dumpd.engine.layout import Layout
from dumpd.engine.readbatch import (
    INLINE_READ_MAX,
    WAITED_READ_MAX,
    ReadBatcher,
    Reads,
    count_reads,
    read_cached,
)
from dumpd.engine.state import Flight, State
from dumpd.errors import DumpdError
from dumpd.hooks.slot import HookSlot
from dumpd.sources.base import ReadError, Source


class Flights:
    """Starts and lands the flights of one engine; non-RAM pages are all `zero_page`."""

    def __init__(self, source: Source, layout: Layout, slot: HookSlot, counters: Counters,
                 reader: ReadBatcher, buffers: BufferPool, zero_page: bytes) -> None:
        self._source = source
        self._layout = layout
        self._slot = slot
        self._counters = counters
        self._reader = reader
        self._buffers = buffers
        self._zero_page = zero_page
        self._page_size = source.page_size

    def zeros(self, length: int) -> bytes:
        """`length` zero bytes; a whole page is the one shared zero page."""
        return self._zero_page if length == self._page_size else bytes(length)

    def start(self, state: State, gaps: list[tuple[int, int]], cache: bool) -> list[Flight]:
        """One flight per `(first, count)` gap, entered in `state`'s table and started
        as one task; `cache`: whether their pages go into the page cache."""
        flights = [Flight(first, count) for first, count in gaps]
        for flight in flights:
            state.flights.update(dict.fromkeys(range(flight.first, flight.first + flight.count),
                                               flight))
        task = asyncio.ensure_future(self._fly(state, flights, cache))
        task.add_done_callback(_consume_exception)
        for flight in flights:
            flight.task = task
        return flights

    async def land(self, flight: Flight, first: int, stop: int) -> bytes | memoryview:
        """The part of `flight` inside pages `[first, stop)`, once it has landed."""
        assert flight.task is not None
        await asyncio.shield(flight.task)
        ps = self._page_size
        lo = max(first, flight.first) - flight.first
        hi = min(stop, flight.first + flight.count) - flight.first
        self._counters.zero_pages_served += flight.zero[lo:hi].count(True)
        stop_byte = min(self._source.size - flight.first * ps, hi * ps)
        if flight.failed:
            self._raise_failed(flight, flight.first + lo, flight.first + hi)
        if flight.buffer is not None:
            return flight.buffer[lo * ps : stop_byte]
        return bytes(stop_byte - lo * ps)

    def _raise_failed(self, flight: Flight, first: int, stop: int) -> None:
        """EIO for the first run of failed pages among pages `[first, stop)`, if any,
        naming those whole pages."""
        bad = [index for index in range(first, stop) if index in flight.failed]
        if not bad:
            return
        end = bad[0] + 1
        while end < stop and end in flight.failed:
            end += 1
        error = flight.failed[bad[0]]
        if not isinstance(error, ReadError):
            raise DumpdError(error.code, error.message)
        ps = self._page_size
        lo, hi = bad[0] * ps, min(self._source.size, end * ps)
        raise ReadError(lo, hi - lo, error.reason)

    async def _fly(self, state: State, flights: list[Flight], cache: bool) -> None:
        """Ask verdicts, then read every non-zero piece of `flights` in one worker hop."""
        ps = self._page_size
        size = self._source.size
        layout = self._layout
        try:
            ranges: list[tuple[int, int]] = []
            for flight in flights:
                ranges.extend(layout.pfn_ranges(flight.first * ps,
                                                min(size, (flight.first + flight.count) * ps)))
            verdicts = await state.verdicts_of(_merge(ranges))
            reads: Reads = []
            for flight in flights:
                lo = flight.first * ps
                hi = min(size, lo + flight.count * ps)
                pieces = layout.classify(lo, hi, verdicts)
                flight.zero = _zero_pages(pieces, flight.first, flight.count, ps)
                if all(flight.zero):
                    continue
                view, zeroed = self._buffers.take(hi - lo)
                flight.buffer = view
                for start, end, is_zero in pieces:
                    if not is_zero:
                        reads.append((start, view[start - lo : end - lo]))
                    elif not zeroed:
                        zero(view, start - lo, end - lo)
            if reads:
                await self._read_flights(flights, reads,
                                         WAITED_READ_MAX if cache else INLINE_READ_MAX)
            for flight in flights:
                self._counters.source_pages_read += flight.zero.count(False) - len(flight.failed)
                if cache and state.generation == self._slot.generation:
                    self._cache_flight(state, flight)
        finally:
            for flight in flights:
                # Its pages are its own in the table from `start` on (a page in flight
                # joins it, never starts another): deleted at C speed.
                deque(map(state.flights.__delitem__,
                          range(flight.first, flight.first + flight.count)), maxlen=0)

    async def _read_flights(self, flights: list[Flight], reads: Reads, inline: int) -> None:
        """Do the flights' reads. Where the source fails (EIO), only the pages that fail
        are marked in their flight: a reader that shares the flight but not those pages
        gets its bytes, and an error names exactly the pages it could not have. Reads
        of at most `inline` bytes in all are done inline when the OS page cache holds them."""
        try:
            rest = read_cached(self._source, reads, inline)
            if rest:
                await self._reader.read(rest)
            count_reads(self._counters, reads, len(reads) - len(rest))
            return
        except DumpdError as exc:
            if exc.code != "EIO":
                raise
            failure = exc
        pages = _by_page(reads, self._page_size)
        outcomes: list[BaseException | None] = [failure]
        if len(pages) > 1:  # which pages failed: each read again on its own, in one hop
            outcomes = await asyncio.gather(*(self._reader.read([page]) for page in pages),
                                            return_exceptions=True)
            count_reads(self._counters, [page for page, out in zip(pages, outcomes, strict=True)
                                          if out is None], 0)
        for (offset, _), outcome in zip(pages, outcomes, strict=True):
            if isinstance(outcome, DumpdError):
                index = offset // self._page_size
                flight = next(f for f in flights if f.first <= index < f.first + f.count)
                flight.failed.setdefault(index, outcome)
            elif outcome is not None:
                raise outcome

    def _cache_flight(self, state: State, flight: Flight) -> None:
        """Cache the flight's pages: all RAM, its buffer as one block (no copy); else
        each run of RAM pages copied into a block of its own (the buffer is not kept for
        a part of it) and non-RAM pages as the one shared zero page (no memory)."""
        ps = self._page_size
        view = flight.buffer
        end = min(flight.count * ps, self._source.size - flight.first * ps)
        if view is not None and not any(flight.zero):
            state.pages.put_block(flight.first, flight.count, view[:end], flight.failed)
            return
        k = 0
        while k < flight.count:
            index = flight.first + k
            if flight.zero[k] or view is None:  # no buffer: every page is non-RAM
                state.pages.put(index, self.zeros(min(ps, end - k * ps)))
                k += 1
                continue
            run = k + 1
            while run < flight.count and not flight.zero[run]:
                run += 1
            state.pages.put_block(index, run - k, bytes(view[k * ps : min(end, run * ps)]),
                                  [i for i in flight.failed if index <= i < flight.first + run])
            k = run


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, end in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((first, end))
    return merged


def _zero_pages(pieces: Sequence[tuple[int, int, bool]], first: int, count: int,
                ps: int) -> list[bool]:
    """Per page of the flight: True when no byte of it is read from the source."""
    zero = [True] * count
    base = first * ps
    for start, end, is_zero in pieces:
        if not is_zero:
            lo, hi = (start - base) // ps, (end - 1 - base) // ps + 1
            zero[lo:hi] = [False] * (hi - lo)
    return zero


def _by_page(reads: Reads, ps: int) -> Reads:
    """`reads` cut at page boundaries: one read per page (or part of one)."""
    pieces: Reads = []
    for offset, view in reads:
        pos = 0
        while pos < len(view):
            stop = min(len(view), (offset + pos) // ps * ps + ps - offset)
            pieces.append((offset + pos, view[pos:stop]))
            pos = stop
    return pieces


def _consume_exception(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
