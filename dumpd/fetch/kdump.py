"""`dumpd fetch --format kdump`: the served dump as makedumpfile's kdump-compressed file,
or in its flattened form into a pipe (`makedumpfile -R` makes the same file of it).

Design rules:
- Three steps, each begun once the last is written: the headers (status
  DUMP_DH_COMPRESSED_INCOMPLETE) and both bitmaps, the 2nd from the server's
  `extents`; the pages, streamed run by run in pfn order (`kdumpplan.runs`), each
  compressed on its own (`_compressor` says where: by the server over TCP, its blobs
  stored as they come; here over a Unix socket); the header again, complete.
- Resumable as the ELF copy: the state beside the copy says where the pages stand (next
  pfn, rank, data cursor, zero page, and the view offset reached), saved once the data
  and the descriptors it vouches for are written. A resumed copy is cut back to its
  data cursor and the pages after it are fetched again into the same places, so it ends
  as the uninterrupted copy would.
- Into a pipe every byte goes out as a flattened record, in the order a file gets it
  (`kdumpout`); the 2nd bitmap, which pages are checked against, is kept in a
  temporary file meanwhile, so memory stays bounded there too.
- Pages the source could not read read as zeros, are listed, and leave the header
  INCOMPLETE; `--resume` fetches them again and points their descriptors at the new data.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from dumpd.client import Client, RemoteError
from dumpd.client.pieces import SinkError
from dumpd.fetch.kdumpcopy import CHECKPOINT, SAVE, KdumpCopy, Pass, prepare
from dumpd.fetch.kdumpout import FileSink, FlatSink
from dumpd.fetch.output import Output, blamed, no_sync
from dumpd.fetch.report import saved_note, say_stopped
from dumpd.fetch.start import Target

if TYPE_CHECKING:
    from dumpd.fetch import FetchRequest


def fetch(client: Client, request: FetchRequest, info: dict[str, Any], where: Target) -> int:
    """The kdump-compressed copy into `where`; the exit status (as `dumpd.fetch.fetch`)."""
    copy = prepare(client, request, info, where, _sink)
    try:
        return _Blocking(client, copy).run()
    finally:
        copy.close()


def _sink(out: Output) -> FileSink | FlatSink:
    return FlatSink(out) if out.kind == "stream" else FileSink(out.fd)


class _Blocking:
    """`copy` run on the blocking client, each `put` a write."""

    def __init__(self, client: Client, copy: KdumpCopy) -> None:
        self.client, self.copy = client, copy
        fsync = copy.request.fsync and copy.job.state_path
        self.sync = os.fdatasync if fsync else no_sync

    def run(self) -> int:
        copy = self.copy
        try:
            self._copy()
            self.sync(copy.job.output.fd)
        except (ConnectionError, OSError, RemoteError, KeyboardInterrupt) as exc:
            copy.progress.finish()
            space = copy.space(exc) if isinstance(exc, SinkError) else ""
            return say_stopped(exc, copy.job.output.name, f"pfn {copy.at():#x}",
                               f"{copy.plan.max_mapnr:#x}", space, self._saved())
        return copy.report(copy.progress.finish(), self.sync)

    def _copy(self) -> None:
        work = self.copy.work()
        try:
            for item in work:
                if isinstance(item, Pass):
                    self._stream(item)
                elif item == SAVE:
                    self.copy.save(self.sync)
                elif item == CHECKPOINT:
                    self._checkpoint()
        finally:
            work.close()

    def _stream(self, p: Pass) -> None:
        copy = self.copy
        stream = self.client.stream(p.offset, p.length, **copy.begin(p))
        for piece in stream:
            copy.take(p, piece)
            if copy.due(p):
                self._checkpoint()
        copy.ended(p, stream.summary)

    def _checkpoint(self) -> None:
        """Pages and descriptors written (and synced with --fsync), then the state
        saved; nothing to save for a pipe."""
        if self.copy.vouch():
            with blamed():
                self.sync(self.copy.job.output.fd)
            self.copy.save(self.sync)

    def _saved(self) -> str:
        """Save the checkpoint if it can be; what the operator can do next."""
        try:
            if self.copy.may_checkpoint():
                self._checkpoint()
        except SinkError as exc:
            return saved_note(self.copy.job.state_path, exc)
        return saved_note(self.copy.job.state_path, None)
