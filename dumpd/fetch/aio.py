"""The asyncio fetch, for programs that embed dumpd's client: `await fetch_async(client,
request)`, or `await client.fetch(OUTPUT, ...)` on an `AsyncFetchClient`. The same
sparse, resumable, verifiable copy as `dumpd fetch`, ELF or kdump-compressed, with the
same resume state: a copy begun by one is resumed by the other.

Design rules:
- The request is checked, and the output chosen and opened, exactly as the CLI does it
  (`start`), on a worker thread; so are the steps that mix a few calls with file work
  (the dump's identity, the kdump plan and bitmaps, the record's reasons, verify): the
  blocking fetch's own code, its calls made on this loop (`LoopClient`).
- The copy itself runs on this loop: the pieces of `AsyncClient.stream`, what each
  means decided by the code the blocking fetch uses (`elfrange`, `kdumpcopy`), the
  bytes and checkpoints written through aiofiles (`aiowrite`). The loop never waits
  for the disk.
- It writes a regular file (or, with `force`, an ELF copy over a block device). A pipe
  is refused: the flattened form is for `dumpd fetch -o -`; a program that wants the
  bytes in its own writer has `AsyncClient.stream`.
- Cancelled, the copy is checkpointed (what was written so far) and the cancel goes on;
  `resume=True` continues it. Its messages are the CLI's (on stderr; `quiet`: only
  errors), its result the CLI's exit status; a request refused raises as there.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from dumpd.client import RemoteError, SinkError
from dumpd.client.aio import AsyncClient
from dumpd.client.pieces import StreamPages, StreamPiece
from dumpd.errors import StartupError
from dumpd.fetch import FetchRequest, aiokdump, report, start
from dumpd.fetch.aiowrite import AsyncFiles
from dumpd.fetch.elfrange import Landing, RangeCopy, ranges
from dumpd.fetch.loopclient import LoopClient, off_loop
from dumpd.fetch.progress import Progress
from dumpd.fetch.report import saved_note, say_stopped
from dumpd.fetch.space import space_note
from dumpd.fetch.start import Job

BATCH = 1 << 20  # bytes of pieces written in one operation (4 MiB measured no faster)
BATCH_PIECES = 256  # pieces written in one operation at most (holes carry no bytes)


async def fetch_async(client: AsyncClient, request: FetchRequest, *,
                      executor: Executor | None = None) -> int:
    """Copy as `request` says (`request.socket` is not used: `client` is the connection);
    0 when complete (and verified if asked), 1 when not (said on stderr). Raises
    `StartupError`/`Refused` for a request it will not carry out, `OutputError` when
    the OS refuses the output outside the copy's writes. The file work runs on
    `executor` (None: the loop's default)."""
    calls = LoopClient(client, asyncio.get_running_loop())
    info = await client.info()
    chosen = await off_loop(executor, start.choose, request, info)
    if chosen.where.kind == "stream":
        raise StartupError(f"fetch: {chosen.where.shown} is a pipe: the asyncio fetch writes "
                           "a file (dumpd fetch -o - sends the flattened kdump form)")
    if chosen.format == "kdump":
        return await aiokdump.fetch(client, calls, request, info, chosen.where, executor)
    job = await off_loop(executor, start.elf_job, calls, request, info, chosen,
                         undo=_close)
    files = AsyncFiles(job, request.fsync, executor)
    try:
        return await _run(client, calls, request, info, files)
    finally:
        await files.close()
        _close(job)


class AsyncFetchClient(AsyncClient):
    """An `AsyncClient` that also fetches: `await client.fetch("vmcore.copy",
    resume=True, verify=True)`; the options are `FetchRequest`'s."""

    async def fetch(self, output: str | None = None, *, executor: Executor | None = None,
                    **options: Any) -> int:
        """`fetch_async` of this connection into `output` (None: the source's file
        name, in the current directory)."""
        return await fetch_async(self, FetchRequest("", output, **options),
                                 executor=executor)


def _close(job: Job) -> None:
    job.output.close()
    job.record.close()


async def _run(client: AsyncClient, calls: LoopClient, request: FetchRequest,
               info: dict[str, Any], files: AsyncFiles) -> int:
    job, state = files.job, files.job.state
    progress = Progress(sum(length for _, length in state.todo()), request.quiet)
    try:
        for copy, owed in ranges(job, progress):
            with owed:
                await _fetch_range(client, copy, request, files)
        await files.sync()
    except (ConnectionError, OSError, RemoteError, asyncio.CancelledError) as exc:
        progress.finish()
        space = await off_loop(files.executor, space_note, lambda: calls, job.output, state,
                               exc) if isinstance(exc, SinkError) else ""
        status = say_stopped(exc, job.output.name, f"{state.done:#x}", f"{state.end:#x}",
                             space, await saved(files))
        if isinstance(exc, asyncio.CancelledError):
            raise
        return status
    seconds = progress.finish()
    await files.close()  # the record is the report's to finish now
    return await off_loop(files.executor, report, calls, request, info, job, progress,
                          seconds)


async def _fetch_range(client: AsyncClient, copy: RangeCopy, request: FetchRequest,
                       files: AsyncFiles) -> None:
    """Copy one range, its pieces written a batch at a time (`BATCH` bytes, or
    `BATCH_PIECES`), each counted once its batch is written."""
    codec = copy.job.codec
    stream = client.stream(copy.offset, copy.length, request.chunk,
                           zeros_as_holes=request.zeros,
                           compress=None if codec is None else codec.name)
    batch: list[tuple[StreamPiece, Landing]] = []
    held = 0
    async for piece in stream:
        landing = (await off_loop(files.executor, copy.landing, piece)
                   if isinstance(piece, StreamPages) else copy.landing(piece))  # CPU: off
        batch.append((piece, landing))
        held += len(landing.data) if landing.data is not None else landing.zeros
        if held >= BATCH or len(batch) >= BATCH_PIECES:
            await _land(copy, batch, files)
            batch, held = [], 0
    await _land(copy, batch, files)
    copy.ended(stream.summary)


async def _land(copy: RangeCopy, batch: list[tuple[StreamPiece, Landing]],
                files: AsyncFiles) -> None:
    """Write `batch`, then count its pieces (and checkpoint when one says it is due)."""
    await files.write([write for _, landing in batch for write in landing.writes()])
    due = False
    for piece, landing in batch:
        due = copy.landed(piece, landing) or due
    if due:
        await files.checkpoint()


async def saved(files: AsyncFiles) -> str:
    """Save the checkpoint if it can be; what the operator can do next."""
    try:
        if files.job.state_path is not None:
            await files.checkpoint()
    except SinkError as exc:
        return saved_note(files.job.state_path, exc)
    return saved_note(files.job.state_path, None)
