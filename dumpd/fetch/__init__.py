"""`dumpd fetch`: a sparse, resumable, verifiable copy of the served file view, as the
ELF core it is (here) or in makedumpfile's kdump-compressed format (`fetch.kdump`);
`fetch.start` says which and opens the output. `fetch.aio` is the same copy for
programs on asyncio (`AsyncFetchClient.fetch`): what each piece means, the kdump work
and the report are shared with it (`elfrange`, `kdumpcopy`, `report` here).

Design rules:
- The ELF copy is the file view byte for byte at the same offsets: data is written
  with `pwrite` where it belongs, holes (non-RAM pages) are never written, so the copy
  stays sparse; an ELF vmcore stays a valid ELF core.
- Nothing is touched before the request is known to be good: the range and the chunk
  are checked against the server's `info`, then the output is checked and opened as
  `output.py` says (never the served dump, never an existing file unless asked).
- Progress is checkpointed every `CHECKPOINT_SECONDS`: the resume state
  (`fetch.state`) is replaced atomically, after the bytes it vouches for were
  written. If the fetch process dies, the kernel still writes out what it was given,
  so at most the bytes after the last checkpoint are lost, and `--resume` fetches
  them again. With `--fsync` the copy is also synced before every checkpoint and at
  the end, so the same holds if the machine itself goes down (as `cp`, `rsync` and
  `dd`, fetch does not sync unless asked).
- Ranges the source could not read (`stream.error`) are recorded, listed at the end,
  retried by `--resume`, and make the exit status 1.
- The pages left out (holes: the hook's, and with `--zeros-as-holes` all-zero pages)
  are kept, with why, in a record beside the copy (`record.py`), checkpointed with it.
- A failure of the output (ENOSPC, EIO, ...) is one line naming the file and the
  reason (for a full disk: what is still needed and what is free); the checkpoint is
  saved when it can be, so `--resume` continues. Exit status 1; refusals of the
  request (StartupError) are 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dumpd.client import Client, RemoteError
from dumpd.client.pieces import SinkError
from dumpd.fetch import start
from dumpd.fetch.calls import Calls
from dumpd.fetch.elfrange import RangeCopy, ranges
from dumpd.fetch.output import blamed, no_sync, os_error
from dumpd.fetch.progress import Progress, rate, size
from dumpd.fetch.report import saved_note, say_incomplete, say_stopped, verify
from dumpd.fetch.space import space_note
from dumpd.fetch.start import Job


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """What the operator asked for."""

    socket: str
    output: str | None  # None: the source's file name, in the current directory
    offset: int = 0
    length: int | None = None  # None: to the end of the view
    resume: bool = False
    verify: bool = False
    quiet: bool = False
    chunk: int | None = None
    fsync: bool = False
    force: bool = False  # an existing output may be replaced (a block device written)
    zeros: bool = False  # all-zero RAM pages left out as holes too (--zeros-as-holes)
    wire_compress: str = "auto"  # the stream's codec: auto, none or a name (--wire-compress)
    format: str | None = None  # "elf" or "kdump"; None: kdump into a pipe, else elf
    codec: str | None = None  # a kdump copy's page compression (None: zlib)


def fetch(request: FetchRequest, connect: Callable[[], Client] | None = None) -> int:
    """Run the copy; 0 when complete (and verified if asked), 1 when not (said on
    stderr). `Refused`/`StartupError` for a request it will not carry out, `OutputError`
    when the OS refuses the output outside the copy's writes (the CLI prints either).
    `connect` opens a connection (TCP, TLS) when not to `request.socket`."""
    opener = connect or (lambda: Client.connect(request.socket))
    with opener() as client:
        info = client.info()
        chosen = start.choose(request, info)
        if chosen.format == "kdump":
            from dumpd.fetch import kdump

            return kdump.fetch(client, request, info, chosen.where)
        job = start.elf_job(client, request, info, chosen)
        try:
            return _run(client, opener, request, info, job)
        finally:
            job.output.close()
            job.record.close()


def _run(client: Client, opener: Callable[[], Client], request: FetchRequest,
         info: dict[str, Any], job: Job) -> int:
    out, state = job.output, job.state
    progress = Progress(sum(length for _, length in state.todo()), request.quiet)
    sync = os.fdatasync if request.fsync else no_sync
    try:
        _copy(client, job, progress, request, sync)
        sync(out.fd)
    except (ConnectionError, OSError, RemoteError, KeyboardInterrupt) as exc:
        progress.finish()
        space = space_note(opener, out, state, exc) if isinstance(exc, SinkError) else ""
        return say_stopped(exc, out.name, f"{state.done:#x}", f"{state.end:#x}", space,
                           _saved(job, sync))
    seconds = progress.finish()
    return report(client, request, info, job, progress, seconds)


def _copy(client: Client, job: Job, progress: Progress, request: FetchRequest,
          sync: Callable[[int], None]) -> None:
    for copy, owed in ranges(job, progress):
        with owed:
            _fetch_range(client, job, copy, request, sync)


def _fetch_range(client: Client, job: Job, copy: RangeCopy, request: FetchRequest,
                 sync: Callable[[int], None]) -> None:
    """Copy one range, its data spliced into the copy by the receiver."""
    out, codec = job.output, job.codec
    stream = client.stream(copy.offset, copy.length, request.chunk, sink=out.fd,
                           zeros_as_holes=request.zeros,
                           compress=None if codec is None else codec.name)
    for piece in stream:
        landing = copy.landing(piece)
        if landing.data is not None:
            out.put(landing.offset, memoryview(landing.data))
        if landing.zeros:
            out.zeros(landing.offset, landing.zeros)
        if copy.landed(piece, landing):
            _checkpoint(job, sync)
    copy.ended(stream.summary)


def _checkpoint(job: Job, sync: Callable[[int], None]) -> None:
    """Sync (with --fsync) the copy and the record, then save the state; SinkError names
    the file that failed."""
    assert job.state_path is not None
    with blamed():
        sync(job.output.fd)
    job.save(sync)


def _saved(job: Job, sync: Callable[[int], None]) -> str:
    """Save the checkpoint if it can be; what the operator can do next."""
    try:
        if job.state_path is not None:
            _checkpoint(job, sync)
    except SinkError as exc:
        return saved_note(job.state_path, exc)
    return saved_note(job.state_path, None)


def report(client: Calls, request: FetchRequest, info: dict[str, Any], job: Job,
           progress: Progress, seconds: float) -> int:
    """After the copy: the record's reasons, the summary line, what is owed, --verify;
    the exit status."""
    out, state, record = job.output, job.state, job.record
    try:  # the record of a complete copy gets the hook's reasons
        left = record.counted() if state.errors else record.finish(client, info)
    except OSError as exc:
        raise os_error(str(record.path), "write the record of the pages left out", exc) from exc
    if not request.quiet:
        clipped = request.length is not None and state.offset + request.length > state.end
        ended = f" (the range ends at the end of the view, {state.end:#x})" if clipped else ""
        pages = ", ".join(f"{n:,} {reason}" for reason, n in sorted(left.items()))
        print(f"fetched {size(progress.done)} of {out.name} in {seconds:.1f} s "
              f"({rate(progress.done, seconds)}): data {size(progress.data)}, holes "
              f"{size(progress.holes)}, errors {size(progress.errors)}{ended}"
              f"{f'; pages left out: {pages}' if pages else ''}", file=sys.stderr)
        if record.note and left:
            print(f"fetch: {record.path}: {record.note}", file=sys.stderr)
    if state.errors:
        if job.state_path is not None:
            try:
                state.record_bytes = record.checkpoint(no_sync)
                state.save(job.state_path)
            except OSError as exc:
                raise os_error(job.state_path, "save the resume state", exc) from exc
        say_incomplete(state.errors, "zeros",
                       "dumpd: --resume retries them" if job.state_path is not None else
                       "dumpd: fetch them again (--range OFFSET:LENGTH) into a file")
        return 1
    if job.state_path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.state_path)
    if request.verify:
        return verify(client, info, job.output, job.state, request.quiet)
    return 0
