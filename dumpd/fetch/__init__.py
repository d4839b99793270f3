"""`dumpd fetch`: a sparse, resumable, verifiable copy of the served file view.

Design rules:
- The copy is the file view byte for byte at the same offsets: data is written with
  `pwrite` where it belongs, holes (non-RAM pages) are never written, so the copy
  stays sparse; an ELF vmcore stays a valid ELF core.
- Progress is checkpointed every `CHECKPOINT_SECONDS`: the resume state
  (`fetch.state`) is replaced atomically, after the bytes it vouches for were
  written. If the fetch process dies, the kernel still writes out what it was given,
  so at most the bytes after the last checkpoint are lost, and `--resume` fetches
  them again. With `--fsync` the copy is also synced before every checkpoint and at
  the end, so the same holds if the machine itself goes down (as `cp`, `rsync` and
  `dd`, fetch does not sync unless asked).
- Ranges the source could not read (`stream.error`) are recorded, listed at the end,
  retried by `--resume`, and make the exit status 1.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dumpd.client import Client, RemoteError
from dumpd.errors import StartupError
from dumpd.fetch.progress import Progress, size
from dumpd.fetch.state import SUFFIX, FetchState
from dumpd.receiver import StreamError, StreamHole, StreamWritten

CHECKPOINT_SECONDS = 5.0
FINGERPRINT = 1 << 20  # bytes of the view hashed to tell one dump from another
BLOCK = 1 << 20  # bytes per read (--verify) or zero-fill of the copy


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


def fetch(request: FetchRequest, connect: Callable[[], Client] | None = None) -> int:
    """Run the copy; 0 when complete (and verified if asked), 1 when not. `connect`
    opens the connection (TCP, TLS) when not to `request.socket`."""
    with connect() if connect else Client.connect(request.socket) as client:
        info = client.info()
        output = request.output or os.path.basename(info["source"]["path"]) or "vmcore"
        state_path = output + SUFFIX
        identity = _identity(client, info)
        if request.resume:
            state = FetchState.load(state_path)
            _check_same(state, identity, state_path)
            fd = _reopen(output, state, info["size"])
        else:
            state = _new_state(request, identity, info["size"])
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, info["size"])
            state.save(state_path)
        progress = Progress(sum(length for _, length in state.todo()), request.quiet)
        sync = os.fdatasync if request.fsync else _no_sync
        try:
            _copy(client, fd, state, state_path, progress, request.chunk, sync)
        except (ConnectionError, OSError, RemoteError) as exc:
            _checkpoint(fd, state, state_path, sync)
            os.close(fd)
            progress.finish()
            print(f"dumpd: fetch stopped at {state.done:#x} of {state.end:#x}: {exc}; run the "
                  "same command with --resume to continue", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            _checkpoint(fd, state, state_path, sync)
            os.close(fd)
            progress.finish()
            print(f"dumpd: fetch interrupted at {state.done:#x}; --resume continues",
                  file=sys.stderr)
            return 130
        sync(fd)
        os.close(fd)
        seconds = progress.finish()
        return _report(client, request, output, state, state_path, progress, seconds)


def _identity(client: Client, info: dict[str, Any]) -> dict[str, Any]:
    """What tells this dump from another: its shape and a digest of its first MiB (the
    ELF header and notes, which differ between two crashes of one machine)."""
    try:
        head = client.call("digest", 0, min(info["size"], FINGERPRINT), "sha256")["digest"]
    except RemoteError as exc:
        if exc.code != "EIO":
            raise
        head = "unreadable"  # the same dump fails the same way
    return {"size": info["size"], "kind": info["source"]["kind"],
            "page_size": info["page_size"], "segments": info["segments"],
            "head_sha256": head}


def _check_same(state: FetchState, identity: dict[str, Any], path: str) -> None:
    for key, value in identity.items():
        if key == "head_sha256" and "unreadable" in (value, state.identity.get(key)):
            continue  # a range that failed before may read now: the shape must do
        if state.identity.get(key) != value:
            raise StartupError(f"{path}: the server serves a different dump now ({key} "
                               "differs); fetch again without --resume")


def _new_state(request: FetchRequest, identity: dict[str, Any], view_size: int) -> FetchState:
    offset = min(request.offset, view_size)
    end = view_size if request.length is None else min(view_size, offset + request.length)
    return FetchState(identity, offset, end - offset, done=offset)


def _reopen(output: str, state: FetchState, view_size: int) -> int:
    """The partial copy, cut back to what the state vouches for (the rest is fetched
    again, so it becomes a hole first: holes of the view must stay holes)."""
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StartupError(f"{output}: cannot reopen the partial copy: {exc.strerror}") from exc
    if state.done < state.end:
        os.ftruncate(fd, state.done)
    os.ftruncate(fd, view_size)
    return fd


def _copy(client: Client, fd: int, state: FetchState, state_path: str, progress: Progress,
          chunk: int | None, sync: Callable[[int], None]) -> None:
    for entry in list(state.errors):  # ranges that failed before: try them again
        kept = list(state.errors)
        state.errors.remove(entry)
        try:
            _fetch_range(client, fd, state, entry[0], entry[1], progress, chunk, sync, None)
        except BaseException:
            state.errors = kept  # not retried to the end: still owed
            raise
    if state.done < state.end:
        _fetch_range(client, fd, state, state.done, state.end - state.done, progress, chunk,
                     sync, state_path)


def _fetch_range(client: Client, fd: int, state: FetchState, offset: int, length: int,
                 progress: Progress, chunk: int | None, sync: Callable[[int], None],
                 state_path: str | None) -> None:
    """Copy one range; with `state_path`, it is the main range and `state.done`
    advances (with checkpoints) as its pieces land."""
    checkpoint = time.monotonic() + CHECKPOINT_SECONDS
    stream = client.stream(offset, length, chunk, sink=fd)
    for piece in stream:
        if isinstance(piece, StreamWritten):
            n = piece.length
            progress.add(data=n)
        elif isinstance(piece, StreamHole):
            n = piece.length
            progress.add(holes=n)
        else:
            assert isinstance(piece, StreamError)
            n = piece.length
            _write_zeros(fd, piece.offset, n)  # data sent before the failure is void
            state.errors.append([piece.offset, n, piece.code, piece.message])
            progress.add(errors=n)
        if state_path is not None:
            state.done = piece.offset + n
            if time.monotonic() >= checkpoint:
                _checkpoint(fd, state, state_path, sync)
                checkpoint = time.monotonic() + CHECKPOINT_SECONDS
    summary = stream.summary or {}
    if summary.get("cancelled") or summary.get("bytes") != length:
        raise ConnectionError(f"the stream of {offset:#x}+{length:#x} ended after "
                              f"{summary.get('bytes', 0):#x} bytes")


def _write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = bytes(min(length, BLOCK))
    while length:
        n = os.pwrite(fd, zeros[:length], offset)
        offset, length = offset + n, length - n


def _checkpoint(fd: int, state: FetchState, state_path: str,
                sync: Callable[[int], None]) -> None:
    sync(fd)
    state.save(state_path)


def _no_sync(fd: int) -> None:
    """Without --fsync: the kernel keeps what was written if the fetch process dies."""


def _report(client: Client, request: FetchRequest, output: str, state: FetchState,
            state_path: str, progress: Progress, seconds: float) -> int:
    if not request.quiet:
        rate = progress.done / seconds / 1e9 if seconds else 0.0
        print(f"fetched {size(progress.done)} of {output} in {seconds:.1f} s ({rate:.2f} GB/s):"
              f" data {size(progress.data)}, holes {size(progress.holes)}, errors "
              f"{size(progress.errors)}", file=sys.stderr)
    if state.errors:
        state.save(state_path)
        print(f"dumpd: the copy is incomplete: {len(state.errors)} ranges could not be read "
              "(zeros in the copy):", file=sys.stderr)
        for offset, length, code, message in state.errors:
            print(f"  {offset:#x}+{length:#x} {code}: {message}", file=sys.stderr)
        print("dumpd: --resume retries them", file=sys.stderr)
        return 1
    os.unlink(state_path)
    if request.verify:
        return _verify(client, output, state, request.quiet)
    return 0


def _verify(client: Client, output: str, state: FetchState, quiet: bool) -> int:
    remote = client.call("digest", state.offset, state.length, "sha256")["digest"]
    h = hashlib.sha256()
    with open(output, "rb") as copy:
        copy.seek(state.offset)
        left = state.length
        while left:
            block = copy.read(min(BLOCK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    if h.hexdigest() != remote:
        print(f"dumpd: verify: {output} differs from the server's view (sha256 "
              f"{h.hexdigest()} != {remote})", file=sys.stderr)
        return 1
    if not quiet:
        print(f"verify: sha256 {remote} matches", file=sys.stderr)
    return 0
