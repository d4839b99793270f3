"""What the asyncio fetch writes, through aiofiles, so that its event loop never waits
for the disk: the copy's bytes at their offsets, its record's runs, its resume state.

Design rules:
- The copy is written through the descriptor `start` opened and checked (never the
  served dump, never a file not named): nothing is opened by its name again.
- The copy's pieces are written a batch at a time, in one operation (`write`); each
  file operation runs on the fetch's executor (aiofiles'), one at a time; a task
  cancelled meanwhile waits for the operation under way (`settle`) before it
  checkpoints or closes, so no write lands after the state that vouches for less, and
  none on a closed descriptor.
- A checkpoint is what the blocking fetch's is: the copy synced (with fsync), then
  the record's runs appended (and synced), then the state written to a temporary
  file of its own (mode 0600) and renamed over the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import Any, TypeVar

import aiofiles
import aiofiles.os
import aiofiles.tempfile

from dumpd.fetch.output import blamed, pwrite_all
from dumpd.fetch.start import Job
from dumpd.fetch.state import FetchState

T = TypeVar("T")
fdatasync = aiofiles.os.wrap(os.fdatasync)  # aiofiles.os has no fsync of its own


def write_all(fd: int, pieces: list[tuple[int, bytes | bytearray | memoryview]]) -> None:
    """Each `(offset, data)` of `pieces` at its offset of `fd` (blocking)."""
    for offset, data in pieces:
        pwrite_all(fd, data, offset)


_write_all = aiofiles.os.wrap(write_all)
"""Pieces written at their offsets in one hop to the executor: aiofiles' file object
would take two (a seek, a write) for each piece, and a copy with holes seeks at every
piece (bench scenario 2 measures the difference)."""


class AsyncFiles:
    """The files of `job` written on `executor` (None: the loop's default); synced when
    `fsync`."""

    def __init__(self, job: Job, fsync: bool, executor: Executor | None) -> None:
        self.job = job
        self.fsync = fsync
        self.executor = executor
        self._record: Any = None  # the record's, once begun
        self._busy: asyncio.Future[Any] | None = None

    async def _io(self, work: Awaitable[T]) -> T:
        """`work` run to its end even if the caller is cancelled meanwhile."""
        task = self._busy = asyncio.ensure_future(work)
        return await asyncio.shield(task)

    async def settle(self) -> None:
        """Wait for the file operation under way, if any (its failure is not ours)."""
        if self._busy is not None and not self._busy.done():
            await asyncio.wait([self._busy])

    async def write(self, pieces: list[tuple[int, bytes | bytearray | memoryview]]) -> None:
        """Each `(offset, data)` of `pieces` into the copy, in order, in one operation;
        SinkError if the OS refuses one."""
        if pieces:
            await self._io(_write_all(self.job.output.fd, pieces, executor=self.executor))

    async def sync(self) -> None:
        """The copy synced (only with fsync)."""
        if self.fsync:
            with blamed():
                await self._io(fdatasync(self.job.output.fd, executor=self.executor))

    async def checkpoint(self) -> None:
        """The copy synced, the record's runs written, then the state saved; SinkError
        names the file that failed."""
        job = self.job
        assert job.state_path is not None
        await self.settle()
        await self.sync()
        with blamed(job.record.path):
            job.state.record_bytes = await self._record_checkpoint()
        with blamed(job.state_path):
            await self._io(save_state(job.state, job.state_path, self.executor))

    async def _record_checkpoint(self) -> int:
        record = self.job.record
        lines = record.lines()
        if lines and self._record is None:
            assert record.path is not None
            flags, mode, head = record.opening()
            self._record = await self._io(aiofiles.open(
                record.path, mode, opener=lambda path, _: os.open(path, flags, 0o600),
                executor=self.executor))
            await self._io(self._record.write(head))
        if self._record is not None:
            await self._io(self._record.write(lines))
            await self._io(self._record.flush())
            if self.fsync:
                await self._io(fdatasync(self._record.fileno(), executor=self.executor))
            record.vouched = await self._io(self._record.tell())
        return record.vouched

    async def close(self) -> None:
        """Close what was opened here (the copy's own descriptor is the job's)."""
        await self.settle()
        if self._record is not None:
            handle, self._record = self._record, None
            await self._io(handle.close())


async def save_state(state: FetchState, path: str, executor: Executor | None) -> None:
    """Replace the state file at `path` atomically, as `FetchState.save` does."""
    folder, base = os.path.split(path)
    temp = await aiofiles.tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", prefix=f"{base}.", suffix=".tmp", dir=folder or ".",
        delete=False, executor=executor)
    name = str(temp.name)
    try:
        try:
            await temp.write(state.text())
        finally:
            await temp.close()
        await aiofiles.os.replace(name, path, executor=executor)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.unlink(name, executor=executor)
        raise
