"""`dumpd fetch`: a sparse, resumable, verifiable copy of the served file view, as the
ELF core it is (here) or in makedumpfile's kdump-compressed format (`fetch.kdump`);
`fetch.start` says which and opens the output.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dumpd.client import Client, RemoteError
from dumpd.client.pieces import SinkError, StreamError, StreamHole, StreamPages, StreamWritten
from dumpd.errors import StartupError
from dumpd.fetch import start
from dumpd.fetch.output import os_error
from dumpd.fetch.progress import Progress, rate, size
from dumpd.fetch.report import say_incomplete, verify
from dumpd.fetch.space import space_note
from dumpd.fetch.start import Job
from dumpd.fetch.state import FetchState
from dumpd.fetch.wire import wire_codec

CHECKPOINT_SECONDS = 5.0


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
        offset, end = _plan(request, info)
        where = start.target(request.output, info)
        ranged = (request.offset, request.length) != (0, None)
        if start.format_of(where, request.format, request.codec, ranged) == "kdump":
            from dumpd.fetch import kdump

            return kdump.fetch(client, request, info, where)
        wire = wire_codec(request.wire_compress, info, client.over_network)
        fresh = FetchState(start.identity(client, info), offset, end - offset, done=offset)
        job = start.open_copy(where, info, fresh, request.resume, request.force,
                              request.quiet)
        job.codec = wire
        try:
            return _run(client, opener, request, info, job)
        finally:
            job.output.close()
            job.record.close()


def _plan(request: FetchRequest, info: dict[str, Any]) -> tuple[int, int]:
    """`(offset, end)` of the range to copy; StartupError for a range or a chunk the
    server would refuse (before any file is touched)."""
    chunk, page, most = request.chunk, info["page_size"], info["max_read"]
    if chunk is not None and not (page <= chunk <= most and chunk % page == 0):
        raise StartupError(f"fetch: --chunk {chunk}: EINVAL: the server takes a multiple of "
                           f"its page size {page} in [{page}, {most}]")
    offset, length, view = request.offset, request.length, info["size"]
    if length == 0:
        raise StartupError(f"fetch: --range {offset:#x}:0: EINVAL: the range is empty")
    if offset >= view:
        raise StartupError(f"fetch: --range {offset:#x}:...: ERANGE: it starts at or past "
                           f"the end of the view ({view:#x} bytes)")
    return offset, view if length is None else min(view, offset + length)


def _run(client: Client, opener: Callable[[], Client], request: FetchRequest,
         info: dict[str, Any], job: Job) -> int:
    out, state = job.output, job.state
    progress = Progress(sum(length for _, length in state.todo()), request.quiet)
    sync = os.fdatasync if request.fsync else _no_sync
    try:
        _copy(client, job, progress, request, sync)
        sync(out.fd)
    except SinkError as exc:
        progress.finish()
        print(f"dumpd: fetch: {exc.filename or out.name}: {exc.strerror}"
              f"{space_note(opener, out, state, exc)}; {_saved(job, sync)}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError, RemoteError) as exc:
        progress.finish()
        print(f"dumpd: fetch stopped at {state.done:#x} of {state.end:#x}: {exc}; "
              f"{_saved(job, sync)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.finish()
        print(f"dumpd: fetch interrupted at {state.done:#x}; {_saved(job, sync)}",
              file=sys.stderr)
        return 130
    seconds = progress.finish()
    return _report(client, request, info, job, progress, seconds)


def _copy(client: Client, job: Job, progress: Progress, request: FetchRequest,
          sync: Callable[[int], None]) -> None:
    state = job.state
    for entry in list(state.errors):  # ranges that failed before: try them again
        kept = list(state.errors)
        state.errors.remove(entry)
        try:
            _fetch_range(client, job, entry[0], entry[1], progress, request, sync, False)
        except BaseException:
            state.errors = kept  # not retried to the end: still owed
            raise
    if state.done < state.end:
        _fetch_range(client, job, state.done, state.end - state.done, progress, request,
                     sync, True)


def _fetch_range(client: Client, job: Job, offset: int, length: int, progress: Progress,
                 request: FetchRequest, sync: Callable[[int], None], main: bool) -> None:
    """Copy one range; when it is the `main` range, `state.done` advances (with
    checkpoints) as its pieces land, else its holes are recorded once it is whole."""
    out, state = job.output, job.state
    checkpoint = time.monotonic() + CHECKPOINT_SECONDS
    held: list[tuple[int, int, str]] = []  # holes of a range retried, until it is whole
    codec = job.codec
    stream = client.stream(offset, length, request.chunk, sink=out.fd,
                           zeros_as_holes=request.zeros,
                           compress=None if codec is None else codec.name)
    for piece in stream:
        if isinstance(piece, StreamWritten):
            n = piece.length
            progress.add(data=n)
        elif isinstance(piece, StreamPages):  # only from a stream asked to compress
            assert codec is not None
            n = piece.length
            out.put(piece.offset, memoryview(piece.data(codec)))
            progress.add(data=n)
        elif isinstance(piece, StreamHole):
            n = piece.length
            if out.kind != "file":  # only a file has holes that read as zeros
                out.zeros(piece.offset, n)
            if main:
                job.record.add(piece.offset, n, piece.reason)
            else:
                held.append((piece.offset, n, piece.reason))
            progress.add(holes=n)
        else:
            assert isinstance(piece, StreamError)
            n = piece.length
            out.zeros(piece.offset, n)  # data sent before the failure is void
            state.errors.append([piece.offset, n, piece.code, piece.message])
            progress.add(errors=n)
        if main:
            state.done = piece.offset + n
            if job.state_path is not None and time.monotonic() >= checkpoint:
                _checkpoint(job, sync)
                checkpoint = time.monotonic() + CHECKPOINT_SECONDS
    summary = stream.summary or {}
    if summary.get("cancelled") or summary.get("bytes") != length:
        raise ConnectionError(f"the stream of {offset:#x}+{length:#x} ended after "
                              f"{summary.get('bytes', 0):#x} bytes")
    for hole in held:
        job.record.add(*hole)


def _checkpoint(job: Job, sync: Callable[[int], None]) -> None:
    """Sync (with --fsync) the copy and the record, then save the state; SinkError names
    the file that failed."""
    assert job.state_path is not None
    try:
        sync(job.output.fd)
    except OSError as exc:
        raise SinkError(exc.errno, exc.strerror) from exc
    try:
        job.state.record_bytes = job.record.checkpoint(sync)
    except OSError as exc:
        raise SinkError(exc.errno, exc.strerror, job.record.path) from exc
    try:
        job.state.save(job.state_path)
    except OSError as exc:
        raise SinkError(exc.errno, exc.strerror, job.state_path) from exc


def _no_sync(fd: int) -> None:
    """Without --fsync: the kernel keeps what was written if the fetch process dies."""


def _saved(job: Job, sync: Callable[[int], None]) -> str:
    """Save the checkpoint if it can be; what the operator can do next."""
    if job.state_path is None:
        return "fetch again for a complete copy"
    try:
        _checkpoint(job, sync)
    except SinkError as exc:
        return (f"{job.state_path} could not be updated ({exc.strerror}): --resume "
                "continues from its last checkpoint")
    return "run the same command with --resume to continue"


def _report(client: Client, request: FetchRequest, info: dict[str, Any], job: Job,
            progress: Progress, seconds: float) -> int:
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
                state.record_bytes = record.checkpoint(_no_sync)
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
