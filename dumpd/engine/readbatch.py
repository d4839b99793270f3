"""Source reads that may block, handed to worker threads in batches.

A hop to a worker costs tens of microseconds; under load many flights want one at
the same moment. Flights that ask within one turn of the event loop share a single
hop, and each still gets its own result (one failing read fails only its flight).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from dumpd.engine.counters import Counters
from dumpd.errors import DumpdError
from dumpd.sources.base import Source

Reads = list[tuple[int, memoryview]]
"""`(file_offset, buffer)` pairs: fill each buffer from that offset."""


class ReadBatcher:
    """Collects reads for one loop turn, then runs them all in one worker job."""

    def __init__(self, source: Source, threads: int, counters: Counters) -> None:
        self._source = source
        self._counters = counters
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="dumpd-read")
        self._pending: list[tuple[Reads, asyncio.Future[None]]] = []

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
        try:
            self._executor.submit(self._run, loop, batch)
        except RuntimeError:  # closed: the server is stopping
            stopping = DumpdError("EIO", "the server is shutting down")
            _settle(batch, [stopping] * len(batch))
            return
        self._counters.worker_hops += 1

    def _run(self, loop: asyncio.AbstractEventLoop,
             batch: list[tuple[Reads, asyncio.Future[None]]]) -> None:
        outcomes: list[BaseException | None] = []
        for reads, _ in batch:
            try:
                for offset, view in reads:
                    self._source.read_into(offset, view)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)
        loop.call_soon_threadsafe(_settle, batch, outcomes)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(batch: list[tuple[Reads, asyncio.Future[None]]],
            outcomes: list[BaseException | None]) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():  # its flight was cancelled meanwhile
            continue
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)
