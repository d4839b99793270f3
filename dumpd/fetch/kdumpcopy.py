"""A kdump-compressed copy under way, for `dumpd fetch --format kdump` and the asyncio
fetch alike (`KdumpCopy`): the work in order (`work`: the headers and bitmaps, the
streams to run, when to checkpoint), what each piece of a stream does to the pages,
what a checkpoint saves, the report. The drivers (`kdump`, `aiokdump`) run the streams
and write the state; every byte of the copy goes through the sink's `put`.

Design rules:
- `work` yields `SAVE` after the headers and bitmaps and `CHECKPOINT` after each pass
  and at the end: the driver writes what was put (the asyncio one holds the puts until
  then), syncs, and only then saves the state that vouches for it.
- A pass that fails leaves the ranges it retried owed again (the generator closed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dumpd import codecs
from dumpd.client import SinkError, StreamData, StreamError, StreamHole, StreamPages, StreamPiece
from dumpd.errors import DumpdError, StartupError
from dumpd.fetch import output as out_mod
from dumpd.fetch.calls import Calls
from dumpd.fetch.elfrange import CHECKPOINT_SECONDS, stream_ended
from dumpd.fetch.kdumpcheck import RunHashes, verify
from dumpd.fetch.kdumpout import FileSink, FlatSink
from dumpd.fetch.kdumpplan import Run, dumped, make_plan, present, runs
from dumpd.fetch.output import NO_SPACE, Output, os_error
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

DEFAULT_CODEC = "zlib"  # makedumpfile -c
SAVE, CHECKPOINT = "save", "checkpoint"
"""What `work` yields between passes: save the state (the headers and bitmaps are
written), or checkpoint (the pages put are written, then the state saved)."""
Sink = FileSink | FlatSink


@dataclass(frozen=True, slots=True)
class Pass:
    """One stream to run: the view's `[offset, offset+length)` of `run` into `feed`; the
    `main` pass records holes as they come and is checkpointed."""

    run: Run
    offset: int
    length: int
    feed: Feed
    main: bool


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


def prepare(client: Calls, request: FetchRequest, info: dict[str, Any], where: Target,
            sink_of: Callable[[Output], Sink]) -> KdumpCopy:
    """The copy into `where` planned and opened (resumed or new), its bytes for the sink
    `sink_of` makes of the output; StartupError for what cannot be done."""
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
    try:
        sink = sink_of(job.output)
    except BaseException:
        job.output.close()
        raise
    return KdumpCopy(client, request, info, job, sink, plan, codec, notes, wire)


class KdumpCopy:
    """One kdump copy under way."""

    def __init__(self, client: Calls, request: FetchRequest, info: dict[str, Any], job: Job,
                 sink: Sink, plan: Plan, codec: codecs.Codec,
                 notes: list[tuple[int, int]], wire: str | None) -> None:
        self.client, self.request, self.info, self.job = client, request, info, job
        self.sink, self.plan, self.codec, self.notes = sink, plan, codec, notes
        self.wire = wire  # the codec the server compresses with (None: this machine does)
        self.state = job.state
        self.k: dict[str, Any] = job.state.kdump or {}
        self.hashes = RunHashes(runs(info), plan.page_size) if (
            request.verify and isinstance(sink, FlatSink)) else None
        self.feed: Feed | None = None  # the main pass's, once the pages are under way
        self.writer: PageWriter | None = None
        start = self.k["next_pfn"] * plan.page_size
        todo = sum(r.view(r.end) - r.view(max(r.start, start)) for r in runs(info)
                   if r.end > start)
        self.progress = Progress(todo + sum(e[1] for e in self.state.errors), request.quiet)
        self._checkpoint_at = 0.0
        self._reached = 0  # the view offset the main pass's pieces reached
        self._held: list[tuple[int, int, str]] = []  # holes of pages fetched again

    def close(self) -> None:
        self.sink.close()
        self.job.output.close()
        self.job.record.close()

    def at(self) -> int:
        """The pfn the copy stands at."""
        return self.feed.dumper.next_pfn if self.feed is not None else self.k["next_pfn"]

    def work(self) -> Generator[Pass | str, None, None]:
        """The copy in order: each `Pass` to stream, `SAVE` and `CHECKPOINT` when due."""
        if self.k["dumped"] < 0:
            self._headers_and_bitmaps()
            yield SAVE
        layout, ps = self.plan.layout, self.plan.page_size
        self.writer = PageWriter(self.sink.put, self.plan, Cursor(
            self.k["rank"], self.k["cursor"], self.k["zero"]), self.codec.compress)
        bits = self.sink.bits(layout.bitmap2, self.plan)
        for entry in list(self.state.errors):  # pages that failed before: again
            with self.state.retrying(entry):
                offset, length, _, _, paddr, rank = entry
                feed = Feed(Dumper(bits, self.writer, paddr // ps, rank))
                yield Pass(Run(paddr, paddr + length, offset), offset, length, feed, False)
                feed.close()
                yield CHECKPOINT
        tap = self.hashes.page if self.hashes is not None else None
        self.feed = Feed(Dumper(bits, self.writer, self.k["next_pfn"], self.k["rank"], tap))
        start = self.k["next_pfn"] * ps
        for run in runs(self.info):
            if run.end > start:
                lo = max(run.start, start)
                yield Pass(run, run.view(lo), run.view(run.end) - run.view(lo), self.feed, True)
        self.feed.close()
        dumper = self.feed.dumper
        dumper.zeros(self.plan.max_mapnr)
        if dumper.rank != self.k["dumped"]:
            raise ConnectionError(f"{dumper.rank} pages dumped, the bitmap has "
                                  f"{self.k['dumped']}")
        self.writer.flush()
        yield CHECKPOINT  # every page is in: a resume only fetches the errors again
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

    def begin(self, p: Pass) -> dict[str, Any]:
        """The `stream` options of pass `p`, its checkpoint clock started."""
        self._checkpoint_at = time.monotonic() + CHECKPOINT_SECONDS
        self._held = []
        return {"chunk": self.request.chunk, "zeros_as_holes": self.k["zeros"],
                "compress": self.wire}

    def take(self, p: Pass, piece: StreamPiece) -> None:
        """`piece` of pass `p` into its feed (pages compressed and put as they fill)."""
        feed, run = p.feed, p.run
        if isinstance(piece, StreamPages):  # compressed by the server, page by page
            n = piece.length
            for at, size_, blob in piece.units():
                feed.unit(run.paddr(at), size_, blob, self.codec.decompress)
            self.progress.add(data=n)
        elif isinstance(piece, StreamData):
            n = len(piece.data)
            feed.data(run.paddr(piece.offset), piece.data)
            self.progress.add(data=n)
        elif isinstance(piece, StreamHole):
            n = piece.length
            feed.zeros(run.paddr(piece.offset), n)
            (self.job.record.add if p.main else lambda *hole: self._held.append(hole))(
                piece.offset, n, piece.reason)
            self.progress.add(holes=n)
        else:
            assert isinstance(piece, StreamError)
            n, paddr = piece.length, run.paddr(piece.offset)
            rank = feed.unknown(paddr, n)
            self.state.errors.append([piece.offset, n, piece.code, piece.message, paddr,
                                      rank])
            self.progress.add(errors=n)
        self._reached = piece.offset + n

    def due(self, p: Pass) -> bool:
        """Whether the main pass is to be checkpointed now (its feed between pages)."""
        now = time.monotonic()
        if not (p.main and p.feed.idle) or (now < self._checkpoint_at
                                            and not self.job.record.full):
            return False
        self._checkpoint_at = now + CHECKPOINT_SECONDS
        self.state.done = self._reached
        return True

    def ended(self, p: Pass, summary: dict[str, Any] | None) -> None:
        """The pass's stream is over: it sent all of its range, its holes recorded."""
        stream_ended(p.offset, p.length, summary)
        for hole in self._held:
            self.job.record.add(*hole)

    def vouch(self) -> bool:
        """Put what the writer holds and note where the pages stand, for a checkpoint;
        False when there is nothing to save (a pipe, or before the pages)."""
        if self.job.state_path is None or self.writer is None:
            return False
        self.writer.flush()
        cursor = self.writer.cursor
        self.k.update(cursor=cursor.data, zero=cursor.zero)
        if self.feed is not None:
            self.k.update(next_pfn=self.feed.dumper.next_pfn, rank=self.feed.dumper.rank)
        return True

    def save(self, sync: Callable[[int], None]) -> None:
        """The state saved, blocking (the record's runs first, synced by `sync`)."""
        self.job.save(sync)

    def may_checkpoint(self) -> bool:
        """Whether a failure's checkpoint may be saved (the feed between pages)."""
        return self.job.state_path is not None and (self.feed is None or self.feed.idle)

    def space(self, exc: SinkError) -> str:
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

    def report(self, seconds: float, sync: Callable[[int], None]) -> int:
        """After the copy: the record's reasons, the summary line, what is owed (the
        state saved, synced by `sync`), --verify; the exit status."""
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
                    self.save(sync)
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


