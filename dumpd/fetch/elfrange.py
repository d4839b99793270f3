"""What the pieces of one range's stream mean for an ELF copy, for `dumpd fetch` and the
asyncio fetch alike (`RangeCopy`): the bytes a driver writes and where (`Landing`), then,
once they are written, the copy's state, record and progress, and whether a checkpoint
is due.

Design rules:
- Bookkeeping follows the write: `landed` is called only after the driver wrote what
  `landing` asked, so a checkpoint saved after it (or on a failure) never vouches for
  bytes that are not in the copy.
- A checkpoint is due every `CHECKPOINT_SECONDS` of the main range, or sooner when the
  record holds a MiB of runs not written yet (memory stays bounded).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dumpd.client.pieces import StreamData, StreamError, StreamHole, StreamPages, StreamPiece
from dumpd.fetch.output import ZEROS
from dumpd.fetch.progress import Progress
from dumpd.fetch.start import Job

CHECKPOINT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Landing:
    """What a piece of `length` view bytes at `offset` asks of the output: `data` written
    there (None: nothing, the receiver spliced it or it is a hole), then `zeros` bytes of
    zeros there."""

    offset: int
    length: int
    data: bytes | bytearray | memoryview | None = None
    zeros: int = 0

    def writes(self) -> Iterator[tuple[int, bytes | bytearray | memoryview]]:
        """`(offset, bytes)` to write, in order: the data, then the zeros a MiB at a time."""
        if self.data is not None:
            yield self.offset, self.data
        for at in range(self.offset, self.offset + self.zeros, len(ZEROS)):
            yield at, memoryview(ZEROS)[: min(len(ZEROS), self.offset + self.zeros - at)]


class RangeCopy:
    """One range `[offset, offset+length)` of an ELF copy; the `main` one advances
    `state.done` as its pieces land, another (a range retried) has its holes recorded
    once it is whole."""

    def __init__(self, job: Job, progress: Progress, offset: int, length: int,
                 main: bool) -> None:
        self.job, self.progress = job, progress
        self.offset, self.length, self.main = offset, length, main
        self._held: list[tuple[int, int, str]] = []  # holes of a range retried
        self._checkpoint_at = time.monotonic() + CHECKPOINT_SECONDS

    def landing(self, piece: StreamPiece) -> Landing:
        """What `piece` asks the driver to write (a StreamPages decompressed)."""
        if isinstance(piece, StreamData):
            return Landing(piece.offset, len(piece.data), piece.data)
        if isinstance(piece, StreamPages):  # only from a stream asked to compress
            assert self.job.codec is not None
            return Landing(piece.offset, piece.length, memoryview(piece.data(self.job.codec)))
        if isinstance(piece, StreamHole):  # only a file has holes that read as zeros
            return Landing(piece.offset, piece.length,
                           zeros=0 if self.job.output.kind == "file" else piece.length)
        if isinstance(piece, StreamError):  # data sent before the failure is void
            return Landing(piece.offset, piece.length, zeros=piece.length)
        return Landing(piece.offset, piece.length)  # StreamWritten: in the copy already

    def landed(self, piece: StreamPiece, landing: Landing) -> bool:
        """Count `piece`, written as `landing` said; whether a checkpoint is due now."""
        n, state = landing.length, self.job.state
        if isinstance(piece, StreamHole):
            if self.main:
                self.job.record.add(piece.offset, n, piece.reason)
            else:
                self._held.append((piece.offset, n, piece.reason))
            self.progress.add(holes=n)
        elif isinstance(piece, StreamError):
            state.errors.append([piece.offset, n, piece.code, piece.message])
            self.progress.add(errors=n)
        else:
            self.progress.add(data=n)
        if not self.main:
            return False
        state.done = piece.offset + n
        now = time.monotonic()
        if self.job.state_path is None or (now < self._checkpoint_at
                                           and not self.job.record.full):
            return False
        self._checkpoint_at = now + CHECKPOINT_SECONDS
        return True

    def ended(self, summary: dict[str, Any] | None) -> None:
        """The stream is over: ConnectionError unless it sent the whole range; the holes
        of a range retried recorded."""
        stream_ended(self.offset, self.length, summary)
        for hole in self._held:
            self.job.record.add(*hole)


def ranges(job: Job, progress: Progress
           ) -> Iterator[tuple[RangeCopy, AbstractContextManager[None]]]:
    """The ranges still to fetch, each with what it is fetched under: those that failed
    before (owed again unless fetched to their end), then the rest."""
    state = job.state
    for entry in list(state.errors):
        yield RangeCopy(job, progress, entry[0], entry[1], False), state.retrying(entry)
    if state.done < state.end:
        yield (RangeCopy(job, progress, state.done, state.end - state.done, True),
               contextlib.nullcontext())


def stream_ended(offset: int, length: int, summary: dict[str, Any] | None) -> None:
    """ConnectionError unless the stream of `[offset, offset+length)` sent all of it."""
    summary = summary or {}
    if summary.get("cancelled") or summary.get("bytes") != length:
        raise ConnectionError(f"the stream of {offset:#x}+{length:#x} ended after "
                              f"{summary.get('bytes', 0):#x} bytes")
