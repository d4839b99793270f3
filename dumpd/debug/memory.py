"""The served dump's physical memory as a debugger reads it: many small reads, most of
them near the last ones. Each read the cache cannot answer costs a round trip to the
server, so misses fetch a whole aligned window of pages (read-ahead) and the pages are
kept (a bounded LRU, page-granular); the window doubles while misses run on where the
last fetch ended (a sequential walk: it reads on from there) and falls back to its
first size on a jump.

Memory is in runs: the union of the segments' `[paddr, paddr + memsz)`, overlapping and
adjacent ones merged (the server's `read_phys` decides which segment's bytes a physical
address has). A read never crosses a run (drgn's segments are the runs), and a fetch
is clipped to its run: no read of an address outside one.

Thread-safe: one lock around each read, as the blocking client takes one call at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dumpd.errors import DumpdError

PAGE_CACHE = 8 << 20  # bytes of pages kept
WINDOW = 64 << 10  # read-ahead of a miss
MAX_WINDOW = 1 << 20  # grown to on sequential misses

ReadPhys = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class Run:
    """Physical memory `[start, end)` covered by segments without a gap."""

    start: int
    end: int


def physical_runs(segments: Iterable[Sequence[int]]) -> list[Run]:
    """The runs of `info`'s `segments` (`[paddr, file_offset, filesz, memsz]`), in
    address order; empty segments left out."""
    spans = sorted((paddr, paddr + memsz) for paddr, _offset, _filesz, memsz in segments
                   if memsz > 0)
    runs: list[Run] = []
    for start, end in spans:
        if runs and start <= runs[-1].end:
            runs[-1] = Run(runs[-1].start, max(runs[-1].end, end))
        else:
            runs.append(Run(start, end))
    return runs


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """What the reads cost: `reads` asked, `hits` of them answered from the cache alone,
    `round_trips` to the server (`read_phys` calls) and the bytes they `received`."""

    reads: int = 0
    hits: int = 0
    round_trips: int = 0
    received: int = 0

    def line(self) -> str:
        """The counters in one line, for the end of a session."""
        share = f" ({100 * self.hits / self.reads:.0f}%)" if self.reads else ""
        return (f"{self.reads:,} reads, {self.hits:,} from the cache{share}, "
                f"{self.round_trips:,} round trips, {self.received:,} bytes received")


class DebugMemory:
    """Reads of the runs through `read_phys`, cached and read ahead (see the module)."""

    def __init__(self, read_phys: ReadPhys, runs: Sequence[Run], page_size: int, *,
                 max_read: int, cache_bytes: int = PAGE_CACHE, window: int = WINDOW,
                 max_window: int = MAX_WINDOW) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size} is not a power of two")
        self._read_phys = read_phys
        self.runs = tuple(runs)
        self.page_size = page_size
        self._shift, self._mask = page_size.bit_length() - 1, page_size - 1
        self._step = max(1, max_read // page_size)  # pages per round trip at most
        self._capacity = max(1, cache_bytes // page_size)
        self._first_window = self._pages(window)
        self._max_window = max(self._first_window, self._pages(min(max_window, max_read)))
        self._window = self._first_window
        self._last_end: tuple[int, int] | None = None  # (run, pfn) after the last fetch
        self._keys = len(self.runs)  # a page's key: pfn * _keys + run
        self._kept: OrderedDict[int, bytes] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._reads = self._hits = self._round_trips = self._received = 0
        self.fault: Callable[[str, int], Exception] | None = None
        """What a read the server refuses (EIO) raises instead, given the message and
        the address: drgn's `FaultError` once a program reads through this memory."""

    def _pages(self, size: int) -> int:
        """A size in pages, rounded down to a power of two, at least one."""
        pages = max(1, size // self.page_size)
        return 1 << (pages.bit_length() - 1)

    @property
    def stats(self) -> MemoryStats:
        """The counters so far (a snapshot)."""
        with self._lock:
            return MemoryStats(self._reads, self._hits, self._round_trips, self._received)

    def read(self, run: int, address: int, count: int, _offset: int = 0,
             _physical: bool = True) -> bytes:
        """`count` bytes at physical `address`, all inside run number `run` (drgn's
        read callback once `run` is bound: `functools.partial(memory.read, run)`)."""
        bounds = self.runs[run]
        if address < bounds.start or address + count > bounds.end or count <= 0:
            if count == 0 and bounds.start <= address <= bounds.end:
                return b""
            raise ValueError(f"{address:#x}+{count:#x} is not inside run {run}")
        key, offset = (address >> self._shift) * self._keys + run, address & self._mask
        self._lock.acquire()  # not `with`: this is the path every read takes
        try:
            self._reads += 1
            page = self._kept.get(key)
            if page is not None and offset + count <= self.page_size:  # the common case
                self._kept.move_to_end(key)
                self._hits += 1
                return page[offset : offset + count]
            trips = self._round_trips
            try:
                data = self._read(run, address >> self._shift,
                                  (address + count - 1) >> self._shift)
            except DumpdError as exc:  # RemoteError among them
                if self.fault is None:
                    raise
                raise self.fault(f"dumpd: {exc}", address) from exc
            self._hits += trips == self._round_trips
        finally:
            self._lock.release()
        return data[offset : offset + count]

    def _read(self, run: int, first: int, last: int) -> bytes:
        """Pages `first` to `last` of `run`, from the cache where kept."""
        kept, keys = self._kept, self._keys
        parts = []
        pfn = first
        while pfn <= last:
            page = kept.get(pfn * keys + run)
            if page is not None:
                kept.move_to_end(pfn * keys + run)
                parts.append(page)
                pfn += 1
                continue
            end = pfn + 1
            while end <= last and end * keys + run not in kept:
                end += 1
            parts.extend(self._fetch(run, pfn, end))
            pfn = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _fetch(self, run: int, first: int, end: int) -> list[bytes]:
        """Pages `[first, end)` of `run`, none of them kept, fetched with read-ahead: on
        a miss where the last fetch ended, the next `window` pages (the window doubled);
        on another, the aligned window around them (the window back to its first size);
        inside the run, never over a page kept."""
        bounds, size, kept, keys = self.runs[run], self.page_size, self._kept, self._keys
        if self._last_end == (run, first):
            self._window = min(self._window * 2, self._max_window)
            low, high = first, first + self._window
        else:
            self._window = window = self._first_window
            low, high = first - first % window, -(-end // window) * window
        low, high = max(low, bounds.start // size), min(high, -(-bounds.end // size))
        lo, hi = first, end
        while lo > low and (lo - 1) * keys + run not in kept:
            lo -= 1
        while hi < high and hi * keys + run not in kept:
            hi += 1
        pages: list[bytes] = []
        for start in range(lo, hi, self._step):
            pages.extend(self._get(run, start, min(hi, start + self._step)))
        self._last_end = (run, hi)
        return pages[first - lo : end - lo]

    def _get(self, run: int, first: int, end: int) -> list[bytes]:
        """Pages `[first, end)` of `run` in one round trip, kept. A page the run covers
        only in part is kept whole, zeros where the run is not (never read from it)."""
        bounds, size = self.runs[run], self.page_size
        start, stop = max(first * size, bounds.start), min(end * size, bounds.end)
        data = self._read_phys(start, stop - start)
        if len(data) != stop - start:
            raise DumpdError("EIO", f"read_phys {start:#x}+{stop - start:#x} returned "
                             f"{len(data)} bytes")
        self._round_trips += 1
        self._received += len(data)
        head, tail = start - first * size, end * size - stop
        if head or tail:
            data = bytes(head) + data + bytes(tail)
        view = memoryview(data)
        pages = [bytes(view[at : at + size]) for at in range(0, len(data), size)]
        keys = self._keys
        self._kept.update(zip((pfn * keys + run for pfn in range(first, end)), pages,
                              strict=True))
        while len(self._kept) > self._capacity:
            self._kept.popitem(last=False)
        return pages
