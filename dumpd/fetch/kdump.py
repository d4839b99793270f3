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

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from dumpd import codecs
from dumpd.client import Client, RemoteError
from dumpd.client.pieces import SinkError, StreamData, StreamError, StreamHole, StreamPages
from dumpd.errors import DumpdError, StartupError
from dumpd.fetch import output as out_mod
from dumpd.fetch.kdumpcheck import RunHashes, verify
from dumpd.fetch.kdumpout import FileSink, FlatSink
from dumpd.fetch.kdumpplan import Run, dumped, make_plan, present, runs
from dumpd.fetch.output import NO_SPACE, os_error
from dumpd.fetch.progress import Progress, rate, size
from dumpd.fetch.report import say_incomplete
from dumpd.fetch.start import Job, Target, identity, open_copy
from dumpd.fetch.state import FetchState
from dumpd.kdump.bitmap import blocks
from dumpd.kdump.format import FormatError
from dumpd.kdump.pages import Dumper, Feed
from dumpd.kdump.writer import Cursor, PageWriter, Plan

if TYPE_CHECKING:
    from dumpd.fetch import FetchRequest

CHECKPOINT_SECONDS = 5.0
DEFAULT_CODEC = "zlib"  # makedumpfile -c


def _codec(request: FetchRequest) -> codecs.Codec:
    name = request.codec or DEFAULT_CODEC
    try:
        return codecs.codec(name)
    except DumpdError as exc:
        raise StartupError(f"fetch: --compress {name}: {exc}") from exc


def _compressor(request: FetchRequest, info: dict[str, Any], codec: codecs.Codec,
                over_network: bool) -> str | None:
    """Who compresses the pages: the server (its stream's `compress`: the codec's name)
    or, None, this machine. `--wire-compress auto` has the server do it over TCP, where
    fewer bytes cross the network, when it offers the codec; over a Unix socket this
    machine does (faster: the server sends and this machine compresses at once, where
    the server alone would do both); `none` has this machine compress, the codec's name
    the server (which must offer it)."""
    wire, offered = request.wire_compress, info.get("codecs") or []
    if wire not in ("auto", "none", codec.name):
        raise StartupError(f"fetch: --wire-compress {wire}: a kdump copy's pages travel "
                           f"compressed with its own codec (--compress {codec.name}); "
                           "--wire-compress none has this machine compress them")
    if wire == codec.name and wire not in offered:
        raise StartupError(f"fetch: --wire-compress {wire}: ENOSYS: the server does not "
                           f"compress with it (it offers: {', '.join(offered) or 'none'})")
    server = wire == codec.name or (wire == "auto" and over_network)
    return codec.name if server and codec.name in offered else None


def fetch(client: Client, request: FetchRequest, info: dict[str, Any], where: Target) -> int:
    """The kdump-compressed copy into `where`; the exit status (as `dumpd.fetch.fetch`)."""
    codec = _codec(request)
    wire = _compressor(request, info, codec, client.over_network)
    ident = identity(client, info)
    try:
        plan, notes = make_plan(client, info, codec.flag, request.zeros)
    except FormatError as exc:  # not a dump this format is written for
        raise StartupError(f"fetch: --format kdump: {exc}") from exc
    fresh = FetchState(ident, 0, info["size"], done=0, kdump={
        "codec": codec.name, "zeros": request.zeros, "dumped": -1, "next_pfn": 0,
        "rank": 0, "cursor": 0, "zero": None})
    job = open_copy(where, info, fresh, request.resume, request.force, request.quiet)
    sink = FlatSink(job.output) if job.output.kind == "stream" else FileSink(job.output.fd)
    try:
        return _Copy(client, request, info, job, sink, plan, codec, notes, wire).run()
    finally:
        sink.close()
        job.output.close()
        job.record.close()


class _Copy:
    """One kdump copy under way."""

    def __init__(self, client: Client, request: FetchRequest, info: dict[str, Any], job: Job,
                 sink: FileSink | FlatSink, plan: Plan, codec: codecs.Codec,
                 notes: list[tuple[int, int]], wire: str | None) -> None:
        self.client, self.request, self.info, self.job = client, request, info, job
        self.sink, self.plan, self.codec, self.notes = sink, plan, codec, notes
        self.wire = wire  # the codec the server compresses with (None: this machine does)
        self.state = job.state
        self.k: dict[str, Any] = job.state.kdump or {}
        self.sync = os.fdatasync if request.fsync and job.state_path else _no_sync
        self.hashes = RunHashes(runs(info), plan.page_size) if (
            request.verify and isinstance(sink, FlatSink)) else None
        self.feed: Feed | None = None  # the main pass's, once the pages are under way
        self.writer: PageWriter | None = None
        start = self.k["next_pfn"] * plan.page_size
        todo = sum(r.view(r.end) - r.view(max(r.start, start)) for r in runs(info)
                   if r.end > start)
        self.progress = Progress(todo + sum(e[1] for e in self.state.errors), request.quiet)

    def run(self) -> int:
        name = self.job.output.name
        try:
            self._copy()
            self.sync(self.job.output.fd)
        except SinkError as exc:
            self.progress.finish()
            print(f"dumpd: fetch: {exc.filename or name}: {exc.strerror}{self._space(exc)}; "
                  f"{self._saved()}", file=sys.stderr)
            return 1
        except (ConnectionError, OSError, RemoteError) as exc:
            self.progress.finish()
            print(f"dumpd: fetch stopped at pfn {self._at():#x} of {self.plan.max_mapnr:#x}: "
                  f"{exc}; {self._saved()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            self.progress.finish()
            print(f"dumpd: fetch interrupted at pfn {self._at():#x}; {self._saved()}",
                  file=sys.stderr)
            return 130
        return self._report(self.progress.finish())

    def _at(self) -> int:
        return self.feed.dumper.next_pfn if self.feed is not None else self.k["next_pfn"]

    def _copy(self) -> None:
        if self.k["dumped"] < 0:
            self._headers_and_bitmaps()
        layout = self.plan.layout
        self.writer = PageWriter(self.sink.put, self.plan, Cursor(
            self.k["rank"], self.k["cursor"], self.k["zero"]), self.codec.compress)
        bits = self.sink.bits(layout.bitmap2, self.plan)
        for entry in list(self.state.errors):  # pages that failed before: again
            kept = list(self.state.errors)
            self.state.errors.remove(entry)
            try:
                offset, length, _, _, paddr, rank = entry
                feed = Feed(Dumper(bits, self.writer, paddr // self.plan.page_size, rank))
                self._stream(Run(paddr, paddr + length, offset), offset, length, feed, False)
                feed.close()
                self._checkpoint()
            except BaseException:
                self.state.errors = kept
                raise
        tap = self.hashes.page if self.hashes is not None else None
        self.feed = Feed(Dumper(bits, self.writer, self.k["next_pfn"], self.k["rank"], tap))
        start = self.k["next_pfn"] * self.plan.page_size
        for run in runs(self.info):
            if run.end > start:
                lo = max(run.start, start)
                self._stream(run, run.view(lo), run.view(run.end) - run.view(lo), self.feed,
                             True)
        self.feed.close()
        dumper = self.feed.dumper
        dumper.zeros(self.plan.max_mapnr)
        if dumper.rank != self.k["dumped"]:
            raise ConnectionError(f"{dumper.rank} pages dumped, the bitmap has "
                                  f"{self.k['dumped']}")
        self.writer.flush()
        self._checkpoint()  # every page is in: a resume only fetches the errors again
        self.sink.put(0, self.plan.main(complete=not self.state.errors))
        if isinstance(self.sink, FlatSink):
            self.sink.end()

    def _headers_and_bitmaps(self) -> None:
        plan, layout, put = self.plan, self.plan.layout, self.sink.put
        size = plan.page_size
        if isinstance(self.sink, FlatSink):
            self.sink.begin()
        put(0, plan.main(complete=False))
        put(layout.sub_header, plan.sub())
        for index, bits in blocks(present(self.info), size):
            put(layout.bitmap1 + index * size, bits.to_bytes(size, "little"))
        count = 0
        for index, bits in blocks(dumped(self.client, self.info), size):
            block = bits.to_bytes(size, "little")
            put(layout.bitmap2 + index * size, block)
            self.sink.keep_bits(index * size, block)
            count += bits.bit_count()
        cursor = Cursor(0, plan.data_start(count))
        if self.k["zeros"]:
            writer = PageWriter(put, plan, cursor, self.codec.compress)
            writer.first_zero_page()
            writer.flush()
        self.k.update(dumped=count, rank=0, cursor=cursor.data, zero=cursor.zero)
        self._save()

    def _stream(self, run: Run, offset: int, length: int, feed: Feed, main: bool) -> None:
        """The view's `[offset, offset+length)` (in `run`) into `feed`; in the `main`
        pass, holes are recorded as they come and the copy is checkpointed."""
        checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        held: list[tuple[int, int, str]] = []  # holes of pages fetched again, until whole
        stream = self.client.stream(offset, length, self.request.chunk,
                                    zeros_as_holes=self.k["zeros"], compress=self.wire)
        decompress = self.codec.decompress
        for piece in stream:
            if isinstance(piece, StreamPages):  # compressed by the server, page by page
                n = piece.length
                for at, size, blob in piece.units():
                    feed.unit(run.paddr(at), size, blob, decompress)
                self.progress.add(data=n)
            elif isinstance(piece, StreamData):
                n = len(piece.data)
                feed.data(run.paddr(piece.offset), piece.data)
                self.progress.add(data=n)
            elif isinstance(piece, StreamHole):
                n = piece.length
                feed.zeros(run.paddr(piece.offset), n)
                (self.job.record.add if main else lambda *hole: held.append(hole))(
                    piece.offset, n, piece.reason)
                self.progress.add(holes=n)
            else:
                assert isinstance(piece, StreamError)
                n, paddr = piece.length, run.paddr(piece.offset)
                rank = feed.unknown(paddr, n)
                self.state.errors.append([piece.offset, n, piece.code, piece.message, paddr,
                                          rank])
                self.progress.add(errors=n)
            if main and feed.idle and time.monotonic() >= checkpoint:
                self.state.done = piece.offset + n
                self._checkpoint()
                checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        summary = stream.summary or {}
        if summary.get("cancelled") or summary.get("bytes") != length:
            raise ConnectionError(f"the stream of {offset:#x}+{length:#x} ended after "
                                  f"{summary.get('bytes', 0):#x} bytes")
        for hole in held:
            self.job.record.add(*hole)

    def _checkpoint(self) -> None:
        """Pages and descriptors written (and synced with --fsync), then the state
        saved; nothing to save for a pipe."""
        if self.job.state_path is None or self.writer is None:
            return
        self.writer.flush()
        try:
            self.sync(self.job.output.fd)
        except OSError as exc:
            raise SinkError(exc.errno, exc.strerror) from exc
        cursor = self.writer.cursor
        self.k.update(cursor=cursor.data, zero=cursor.zero)
        if self.feed is not None:
            self.k.update(next_pfn=self.feed.dumper.next_pfn, rank=self.feed.dumper.rank)
        self._save()

    def _save(self) -> None:
        if self.job.state_path is None:
            return
        try:
            self.state.record_bytes = self.job.record.checkpoint(self.sync)
        except OSError as exc:
            raise SinkError(exc.errno, exc.strerror, self.job.record.path) from exc
        try:
            self.state.save(self.job.state_path)
        except OSError as exc:
            raise SinkError(exc.errno, exc.strerror, self.job.state_path) from exc

    def _saved(self) -> str:
        """Save the checkpoint if it can be; what the operator can do next."""
        if self.job.state_path is None:
            return "fetch again for a complete copy"
        try:
            if self.feed is None or self.feed.idle:
                self._checkpoint()
        except SinkError as exc:
            return (f"{self.job.state_path} could not be updated ({exc.strerror}): --resume "
                    "continues from its last checkpoint")
        return "run the same command with --resume to continue"

    def _space(self, exc: SinkError) -> str:
        """For a full file system or quota: what is written and what is free."""
        if exc.errno not in NO_SPACE:
            return ""
        fd = self.job.output.fd
        free = out_mod.free_space(fd)
        free_text = "unknown" if free is None else size(free)
        if isinstance(self.sink, FlatSink):
            return f" ({size(self.job.output.position)} written, {free_text} free)"
        held = out_mod.allocated(fd)
        return f" ({'unknown' if held is None else size(held)} on disk, {free_text} free)"

    def _report(self, seconds: float) -> int:
        job, state, progress, record = self.job, self.state, self.progress, self.job.record
        try:  # the record of a complete copy gets the hook's reasons
            left = record.counted() if state.errors else record.finish(self.client, self.info)
        except OSError as exc:
            raise os_error(str(record.path), "write the record of the pages left out",
                           exc) from exc
        if not self.request.quiet:
            pages = ", ".join(f"{n:,} {reason}" for reason, n in sorted(left.items()))
            written = (self.writer.cursor.data - self.plan.data_start(self.k["dumped"])
                       if self.writer is not None else 0)
            print(f"fetched {size(progress.done)} of {job.output.name} in {seconds:.1f} s "
                  f"({rate(progress.done, seconds)}): data {size(progress.data)}, holes "
                  f"{size(progress.holes)}, errors {size(progress.errors)}; kdump-compressed "
                  f"({self.codec.name}): {self.k['dumped']:,} pages dumped in "
                  f"{size(written)}{f'; pages left out: {pages}' if pages else ''}",
                  file=sys.stderr)
            if record.note and left:
                print(f"fetch: {record.path}: {record.note}", file=sys.stderr)
            dropped = self.feed.dumper.dropped if self.feed is not None else 0
            if dropped:
                print(f"fetch: {dropped:,} pages the hook called not RAM when the copy began "
                      "came as RAM: left out as the bitmap says", file=sys.stderr)
        if state.errors:
            if job.state_path is not None:
                with contextlib.suppress(SinkError):
                    self._save()
            say_incomplete(state.errors, "pages of zeros",
                           "dumpd: --resume retries them" if job.state_path is not None
                           else "dumpd: fetch again for a complete copy")
            return 1
        if job.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(job.state_path)
        if self.request.verify:
            return verify(self.client, self.info, self.plan, self.notes, job.output,
                          self.hashes, self.request.quiet)
        return 0


def _no_sync(fd: int) -> None:
    """Without --fsync: the kernel keeps what was written if the fetch process dies."""
