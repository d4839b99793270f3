"""The served dump's physical memory as a debugger reads it: many small reads, most of
them near the last ones. Each read the cache cannot answer costs a round trip to the
server, so misses fetch a whole aligned window of pages (read-ahead) and the pages are
kept (a bounded LRU, page-granular); the window doubles while misses run on where the
last fetch ended (a sequential walk) and falls back to its first size on a jump.

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
        self._step = max(1, max_read // page_size)  # pages per round trip at most
        self._capacity = max(1, cache_bytes // page_size)
        self._first_window = self._pages(window)
        self._max_window = max(self._first_window, self._pages(min(max_window, max_read)))
        self._window = self._first_window
        self._last_end: tuple[int, int] | None = None  # (run, pfn) after the last fetch
        self._kept: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._reads = self._hits = self._round_trips = self._received = 0

    def _pages(self, size: int) -> int:
        """A size in pages, rounded down to a power of two, at least one."""
        pages = max(1, size // self.page_size)
        return 1 << (pages.bit_length() - 1)

    @property
    def stats(self) -> MemoryStats:
        """The counters so far (a snapshot)."""
        with self._lock:
            return MemoryStats(self._reads, self._hits, self._round_trips, self._received)

    def read(self, run: int, address: int, count: int) -> bytes:
        """`count` bytes at physical `address`, all inside run number `run`."""
        bounds = self.runs[run]
        if address < bounds.start or address + count > bounds.end:
            raise ValueError(f"{address:#x}+{count:#x} is outside run {run}")
        if count <= 0:
            return b""
        size, kept = self.page_size, self._kept
        first, last = address // size, (address + count - 1) // size
        with self._lock:
            trips = self._round_trips
            parts = []
            pfn = first
            while pfn <= last:
                page = kept.get((run, pfn))
                if page is not None:
                    kept.move_to_end((run, pfn))
                    parts.append(page)
                    pfn += 1
                    continue
                end = pfn + 1
                while end <= last and (run, end) not in kept:
                    end += 1
                parts.extend(self._fetch(run, pfn, end))
                pfn = end
            self._reads += 1
            self._hits += trips == self._round_trips
        skip = address - max(first * size, bounds.start)
        return b"".join(parts)[skip : skip + count] if len(parts) > 1 else (
            parts[0][skip : skip + count])

    def _fetch(self, run: int, first: int, end: int) -> list[bytes]:
        """Pages `[first, end)` of `run`, none of them kept: fetched with the read-ahead
        window around them (up to the pages kept on either side, inside the run)."""
        sequential = self._last_end == (run, first)
        self._window = min(self._window * 2, self._max_window) if sequential else (
            self._first_window)
        bounds, size, window, kept = self.runs[run], self.page_size, self._window, self._kept
        low = max(first - first % window, bounds.start // size)
        high = min(-(-end // window) * window, -(-bounds.end // size))
        lo, hi = first, end
        while lo > low and (run, lo - 1) not in kept:
            lo -= 1
        while hi < high and (run, hi) not in kept:
            hi += 1
        pages: list[bytes] = []
        for start in range(lo, hi, self._step):
            pages.extend(self._get(run, start, min(hi, start + self._step)))
        self._last_end = (run, hi)
        return pages[first - lo : end - lo]

    def _get(self, run: int, first: int, end: int) -> list[bytes]:
        """Pages `[first, end)` of `run` in one round trip, kept; each cut to the run."""
        bounds, size = self.runs[run], self.page_size
        start, stop = max(first * size, bounds.start), min(end * size, bounds.end)
        data = self._read_phys(start, stop - start)
        if len(data) != stop - start:
            raise DumpdError("EIO", f"read_phys {start:#x}+{stop - start:#x} returned "
                             f"{len(data)} bytes")
        self._round_trips += 1
        self._received += len(data)
        view = memoryview(data)
        pages = []
        for pfn in range(first, end):
            lo = max(pfn * size, bounds.start) - start
            page = bytes(view[lo : (pfn + 1) * size - start])
            pages.append(page)
            self._kept[(run, pfn)] = page
        while len(self._kept) > self._capacity:
            self._kept.popitem(last=False)
        return pages
