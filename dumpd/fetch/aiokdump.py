"""The asyncio fetch's kdump-compressed copy: `KdumpCopy`'s work run from the loop, its
steps and each piece's pages (compressed, matched with the 2nd bitmap read back from
the copy) on a worker thread, what they put written through aiofiles.

Design rules:
- The sink holds the puts (`PendingSink`: the writer hands over its buffers, never to
  touch them again) until the driver writes them, in order, after each step and each
  piece; a put that failed stays held, so a later checkpoint writes it first or fails.
- A checkpoint writes what is held, then syncs and saves as the ELF copy does.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from dumpd.client import RemoteError, SinkError
from dumpd.client.aio import AsyncClient
from dumpd.fetch.aiowrite import AsyncFiles
from dumpd.fetch.kdumpcopy import SAVE, KdumpCopy, Pass, prepare
from dumpd.fetch.kdumpout import FileSink
from dumpd.fetch.loopclient import LoopClient, off_loop
from dumpd.fetch.output import Output, no_sync
from dumpd.fetch.report import saved_note, say_stopped
from dumpd.fetch.start import Target

if TYPE_CHECKING:
    from dumpd.fetch import FetchRequest


class PendingSink(FileSink):
    """The kdump file, its puts held until the driver writes them."""

    def __init__(self, out: Output) -> None:
        super().__init__(out.fd)
        self.pending: list[tuple[int, bytes | bytearray | memoryview]] = []

    def put(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if len(data):
            self.pending.append((offset, data))


async def fetch(client: AsyncClient, calls: LoopClient, request: FetchRequest,
                info: dict[str, Any], where: Target, executor: Executor | None) -> int:
    """The kdump-compressed copy into the file `where`; the exit status."""
    copy = await off_loop(executor, prepare, calls, request, info, where, PendingSink,
                          undo=KdumpCopy.close)
    files = AsyncFiles(copy.job, request.fsync, executor)
    try:
        return await _Async(client, copy, files).run()
    finally:
        await files.close()
        copy.close()


class _Async:
    def __init__(self, client: AsyncClient, copy: KdumpCopy, files: AsyncFiles) -> None:
        assert isinstance(copy.sink, PendingSink)
        self.client, self.copy, self.files, self.sink = client, copy, files, copy.sink
        self.executor = files.executor

    async def run(self) -> int:
        copy = self.copy
        try:
            await self._copy()
            await self.files.sync()
        except (ConnectionError, OSError, RemoteError, asyncio.CancelledError) as exc:
            copy.progress.finish()
            space = await off_loop(self.executor, copy.space, exc) if isinstance(
                exc, SinkError) else ""
            status = say_stopped(exc, copy.job.output.name, f"pfn {copy.at():#x}",
                                 f"{copy.plan.max_mapnr:#x}", space, await self._saved())
            if isinstance(exc, asyncio.CancelledError):
                raise
            return status
        seconds = copy.progress.finish()
        await self.files.close()  # the record is the report's to finish now
        sync = os.fdatasync if self.files.fsync else no_sync
        return await off_loop(self.executor, copy.report, seconds, sync)

    async def _copy(self) -> None:
        work = self.copy.work()
        try:
            while (item := await off_loop(self.executor, next, work, None)) is not None:
                await self._flush()
                if isinstance(item, Pass):
                    await self._stream(item)
                elif item == SAVE:
                    await self.files.checkpoint()
                else:
                    await self._checkpoint()
            await self._flush()
        finally:
            work.close()

    async def _stream(self, p: Pass) -> None:
        copy = self.copy
        stream = self.client.stream(p.offset, p.length, **copy.begin(p))
        async for piece in stream:
            await off_loop(self.executor, copy.take, p, piece)
            await self._flush()
            if copy.due(p):
                await self._checkpoint()
        copy.ended(p, stream.summary)

    async def _flush(self) -> None:
        """Write the puts held, in order."""
        pending = self.sink.pending
        await self.files.write(list(pending))
        pending.clear()

    async def _checkpoint(self) -> None:
        if self.copy.vouch():
            await self._flush()
            await self.files.checkpoint()

    async def _saved(self) -> str:
        """Save the checkpoint if it can be; what the operator can do next."""
        try:
            if self.copy.may_checkpoint():
                await self._checkpoint()
        except SinkError as exc:
            return saved_note(self.copy.job.state_path, exc)
        return saved_note(self.copy.job.state_path, None)
