"""Source reads that may block, handed to worker threads in batches.

A hop to a worker costs tens of microseconds; under load many flights want one at
the same moment. Flights that ask within one turn of the event loop share a single
hop, and each still gets its own result (one failing read fails only its flight)
as soon as its own reads are done. A batch of more than `SPLIT_BYTES` (a stream's
read-ahead) is spread over the worker threads, so a slow source is read in parallel.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from dumpd.engine.counters import Counters
from dumpd.errors import DumpdError
from dumpd.sources.base import Source

Reads = list[tuple[int, memoryview]]
"""`(file_offset, buffer)` pairs: fill each buffer from that offset."""

SPLIT_BYTES = 1 << 20
INLINE_READ_MAX = 128 * 1024  # inline page-cache reads above this would stall the loop
# ... unless the reader waits for them anyway (a read that fills the page cache, not a
# stream's read-ahead): a copy out of the OS page cache costs about 170 us per MiB, what
# writing the bytes to the socket costs the loop, and a hop to a worker thread 100-300 us
# more on a small VM (measured), where a crash kernel has one CPU for both anyway.
WAITED_READ_MAX = 1 << 20
Batch = list[tuple[Reads, "asyncio.Future[None]"]]


def read_cached(source: Source, reads: Reads, limit: int = INLINE_READ_MAX) -> Reads:
    """Do reads of at most `limit` bytes in all inline when the OS page cache holds them
    (microseconds, where a hop to a worker costs tens), and every read of a source that
    never blocks (a copy out of an mmap window, which would hold the GIL in a worker
    just the same); returns what is left for the workers."""
    if not source.never_blocks and sum(len(view) for _, view in reads) > limit:
        return reads
    rest = []
    for offset, view in reads:
        n = source.read_cached_into(offset, view)
        if n < len(view):
            rest.append((offset + n, view[n:]))
    return rest


def count_reads(counters: Counters, reads: Reads, inline: int) -> None:
    """Count `reads` done, `inline` of them without a worker."""
    counters.source_read_calls += len(reads)
    counters.source_bytes_read += sum(len(view) for _, view in reads)
    counters.source_reads_inline += inline


class ReadBatcher:
    """Collects reads for one loop turn, then runs them all in one worker job."""

    def __init__(self, source: Source, threads: int, counters: Counters) -> None:
        self._source = source
        self._counters = counters
        self._threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="dumpd-read")
        self._pending: Batch = []

    async def read(self, reads: Reads) -> None:
        """Fill every buffer of `reads`; raises what the source raised (EIO)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._dispatch, loop)
        self._pending.append((reads, future))
        await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        size = sum(len(view) for reads, _ in batch for _, view in reads)
        jobs = min(self._threads, len(batch)) if size > SPLIT_BYTES else 1
        for job in range(jobs):
            part = batch[job::jobs]
            try:
                self._executor.submit(self._run, loop, part)
            except RuntimeError:  # closed: the server is stopping
                for _, future in part:
                    _settle(future, DumpdError("EIO", "the server is shutting down"))
                continue
            self._counters.worker_hops += 1

    def _run(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        for reads, future in batch:
            outcome: BaseException | None = None
            try:
                for offset, view in reads:
                    self._source.read_into(offset, view)
            except Exception as exc:
                outcome = exc
            loop.call_soon_threadsafe(_settle, future, outcome)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future[None], outcome: BaseException | None) -> None:
    if future.done():  # its flight was cancelled meanwhile
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
