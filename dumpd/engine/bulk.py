"""A range of the file view as data, holes and failed pieces, in order: what a stream
sends and a digest hashes.

Design rules:
- Chunks are read ahead while earlier ones are consumed, never more than `window`
  bytes of the range at once, so a slow consumer bounds memory instead of growing it.
- Non-RAM pages become holes (never read, never sent); adjacent holes are merged.
  So do pages the dump left out (the source's `excluded`: a kdump-compressed file's),
  holes of their own reason (`EXCLUDED`) in every stream.
- A chunk is read in one engine read whatever its mix of RAM and non-RAM pages (the
  engine reads only the RAM ones) and cut into pieces as views of that buffer.
  Verdicts are asked `VERDICTS_AHEAD` bytes at a time, one hook call for many chunks.
- Bulk reads do not fill the page cache (they would only evict what a debugger
  keeps coming back to) and land in pooled buffers, handed out as views.
- A chunk the source cannot read is retried page by page, so only the pages that
  fail become `Failed` pieces and the rest still arrives.
- With `zeros` the RAM pages that hold only zeros become holes too, each hole saying
  why it is one (`NOT_RAM`, `ZERO`, `FILE_HOLE`); holes merge only with holes of
  their reason. Finding them means looking at the bytes (engine/zeros.py): a source
  read through mmap windows is looked at in its mappings and its RAM runs still go
  out as `Span`s; any other source is read (no sendfile), as the bytes must reach
  this process to be looked at.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from dumpd.engine.engine import Engine
from dumpd.engine.zeros import ZeroFinder, judged_pages, split_holes
from dumpd.errors import DumpdError
from dumpd.sources.base import ReadError

MiB = 1 << 20
ZEROS = bytes(MiB)
VERDICTS_AHEAD = 16 * MiB  # file bytes whose verdicts are asked in one batch
DIGESTS = ("sha256", "sha512", "sha1", "md5", "blake2b", "blake2s", "sha3_256")
HASH_INLINE = 64 * 1024  # smaller pieces are hashed on the loop (a thread hop costs more)
NOT_RAM, ZERO, FILE_HOLE, EXCLUDED = "not_ram", "zero", "file_hole", "excluded"  # why a hole is one


@dataclass(frozen=True, slots=True)
class Data:
    offset: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Span:
    """RAM bytes at `offset` left for the caller to send from the source itself."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Hole:
    """Zeros in the view, not sent: pages the hook calls not RAM, or the dump left out,
    or (asked for) RAM pages that are all zero, or that the source file holds no data
    for."""

    offset: int
    length: int
    reason: str = NOT_RAM


@dataclass(frozen=True, slots=True)
class Failed:
    offset: int
    length: int
    code: str
    message: str


Piece = Data | Span | Hole | Failed


class BulkReader:
    """The pieces of `[offset, offset+length)` (clipped to the view), read `chunk` bytes
    at a time with up to `window` bytes in flight, as one batch of pieces per chunk
    (a hole that runs on into the next chunk is held back and joined). Iterate once."""

    def __init__(self, engine: Engine, offset: int, length: int, chunk: int,
                 window: int, spans: bool = False, zeros: bool = False) -> None:
        self._engine = engine
        self.zeros = zeros  # all-zero RAM pages as holes
        self.spans = spans and self.can_span  # RAM runs as `Span`s, sent by the caller
        self._end = min(engine.source.size, offset + length)
        self._offset = min(offset, self._end)
        self._chunk = chunk
        self._ahead = max(1, window // chunk)
        self._tasks: deque[asyncio.Task[list[Piece]]] = deque()

    @property
    def can_span(self) -> bool:
        """Whether RAM runs may come as `Span`s, not read here: only where the view's
        bytes are the source file's, and not when zero pages are looked for unless the
        bytes are looked at in the source's mappings."""
        source = self._engine.source
        return source.spliced and (not self.zeros or source.never_blocks)

    @property
    def excludes(self) -> bool:
        """Whether holes of pages the dump left out may come (`EXCLUDED`)."""
        return self._engine.layout.excludes

    def _holes(self, start: int, length: int) -> list[Piece]:
        """The hole of a "zero" extent: pages the dump left out, and the hook's."""
        end = start + length
        pieces: list[Piece] = []
        pos = start
        for lo, hi in self._engine.layout.excluded(start, end):
            if pos < lo:
                pieces.append(Hole(pos, lo - pos))
            pieces.append(Hole(lo, hi - lo, EXCLUDED))
            pos = hi
        if pos < end:
            pieces.append(Hole(pos, end - pos))
        return pieces

    def _chunks(self) -> list[tuple[int, int]]:
        """Chunk bounds, aligned to the chunk size so pages are never split across two."""
        bounds, pos = [], self._offset
        while pos < self._end:
            stop = min(self._end, (pos // self._chunk + 1) * self._chunk)
            bounds.append((pos, stop))
            pos = stop
        return bounds

    async def __aiter__(self) -> AsyncIterator[list[Piece]]:
        hole: Hole | None = None  # the last hole seen, not yet handed out
        async for pieces in self._chunk_pieces():
            batch: list[Piece] = []
            for piece in pieces:
                if isinstance(piece, Hole) and hole is not None and (
                        hole.offset + hole.length == piece.offset
                        and hole.reason == piece.reason):
                    hole = Hole(hole.offset, hole.length + piece.length, hole.reason)
                    continue
                if hole is not None:
                    batch.append(hole)
                    hole = None
                if isinstance(piece, Hole):
                    hole = piece
                else:
                    batch.append(piece)
            if batch:
                yield batch
        if hole is not None:
            yield [hole]

    async def _chunk_pieces(self) -> AsyncIterator[list[Piece]]:
        asked = self._offset  # verdicts are at hand below this offset
        try:
            for lo, hi in self._chunks():
                if hi > asked:  # one hook hop for many chunks instead of one each
                    await self._engine.ask_verdicts(lo, max(hi - lo, VERDICTS_AHEAD))
                    asked = lo + max(hi - lo, VERDICTS_AHEAD)
                self._tasks.append(_start(self._read(lo, hi)))
                if len(self._tasks) >= self._ahead:
                    yield await self._tasks.popleft()
            while self._tasks:
                yield await self._tasks.popleft()
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading ahead (a cancelled or abandoned stream)."""
        while self._tasks:
            self._tasks.popleft().cancel()

    async def _read(self, lo: int, hi: int) -> list[Piece]:
        """The pieces of the chunk `[lo, hi)`, its all-zero pages cut out as holes when
        asked."""
        pieces = await self._pieces(lo, hi)
        return self._without_zeros(lo, hi, pieces) if self.zeros else pieces

    async def _pieces(self, lo: int, hi: int) -> list[Piece]:
        """The chunk `[lo, hi)`: one read for all its data runs (the engine leaves the
        non-RAM pages between them unread), sliced into pieces without copying."""
        extents = await self._engine.extents(lo, hi - lo)
        if self.spans:
            return [piece for start, length, kind in extents
                    for piece in (self._holes(start, length) if kind == "zero"
                                  else [Span(start, length)])]
        buffer: bytes | memoryview = b""
        if any(kind == "data" for _, _, kind in extents):
            try:
                buffer = await self._engine.read(lo, hi - lo, bulk=True)
            except DumpdError as exc:
                if exc.code != "EIO":
                    raise
                return await self._failing_chunk(extents)
        view = memoryview(buffer)
        return [piece for start, length, kind in extents
                for piece in (self._holes(start, length) if kind == "zero"
                              else [Data(start, view[start - lo : start - lo + length])])]

    def _without_zeros(self, lo: int, hi: int, pieces: list[Piece]) -> list[Piece]:
        """The pieces of chunk `[lo, hi)` with their all-zero pages cut out as holes."""
        engine = self._engine
        unallocated = engine.source.holes(lo, hi)  # of the file: zeros, never looked at
        out: list[Piece] = []
        for piece in pieces:
            if not isinstance(piece, Data | Span):
                out.append(piece)
                continue
            end = piece.offset + _length(piece)
            runs, in_holes = split_holes(judged_pages(engine.layout, piece.offset, end),
                                         unallocated, engine.page_size)
            finder = ZeroFinder(runs, engine.zero_page)
            try:
                if isinstance(piece, Data):
                    finder.look(piece.offset, memoryview(piece.data))
                elif runs:  # looked at in the source's mappings, then sent from them
                    engine.source.feed(piece.offset, piece.length,
                                       _looking(finder, piece.offset))
                    for start, stop in finder.straddling:
                        page = memoryview(bytearray(stop - start))
                        engine.source.read_into(start, page)
                        finder.look_copy(start, bytes(page))
            except (DumpdError, OSError):  # sent as it is: the send says what failed
                out.append(piece)
                continue
            zeros = finder.zeros()
            if isinstance(piece, Span):
                engine.counters.count_looked(zeros, engine.page_size)
            out += _cut(piece, sorted([(s, e, ZERO) for s, e in zeros]
                                      + [(s, e, FILE_HOLE) for s, e in in_holes]))
        return out

    async def _failing_chunk(self, extents: list[tuple[int, int, str]]) -> list[Piece]:
        pieces: list[Piece] = []
        for start, length, kind in extents:
            if kind == "zero":
                pieces += self._holes(start, length)
            else:
                pieces += await self._page_by_page(start, start + length)
        return pieces

    async def _page_by_page(self, lo: int, hi: int) -> list[Piece]:
        ps = self._engine.page_size
        pieces: list[Piece] = []
        failing: tuple[int, DumpdError] | None = None  # where the run of failures began
        pos = lo
        while pos < hi:
            stop = min(hi, (pos // ps + 1) * ps)
            try:
                data = await self._engine.read(pos, stop - pos, bulk=True)
            except DumpdError as exc:
                if failing is None:
                    failing = (pos, exc)
                else:
                    pieces.pop()  # the run so far: it grows by this page
                pieces.append(_failed(failing[0], stop - failing[0], failing[1]))
            else:
                failing = None
                pieces.append(Data(pos, data))
            pos = stop
        return pieces


def _looking(finder: ZeroFinder, offset: int) -> Callable[[memoryview], None]:
    """A `Source.feed` consumer handing each view to `finder` at its file offset."""
    position = [offset]

    def look(view: memoryview) -> None:
        finder.look(position[0], view)
        position[0] += len(view)

    return look


def _cut(piece: Data | Span, holes: list[tuple[int, int, str]]) -> list[Piece]:
    """`piece` with the sorted, disjoint `holes` (inside it) cut out as `Hole`s."""
    out: list[Piece] = []
    pos = piece.offset
    for start, end, reason in [*holes, (piece.offset + _length(piece), 0, "")]:
        if pos < start:
            if isinstance(piece, Span):
                out.append(Span(pos, start - pos))
            else:
                rel = pos - piece.offset
                out.append(Data(pos, piece.data[rel : rel + start - pos]))
        if reason:
            out.append(Hole(start, end - start, reason))
        pos = end
    return out


def _length(piece: Data | Span) -> int:
    return piece.length if isinstance(piece, Span) else len(piece.data)


def _failed(offset: int, length: int, error: DumpdError) -> Failed:
    """The piece the source could not read; a source read error names all of it."""
    if isinstance(error, ReadError):
        error = ReadError(offset, length, error.reason)
    return Failed(offset, length, error.code, error.message)


async def digest(engine: Engine, offset: int, length: int, algorithm: str, chunk: int,
                 window: int) -> str:
    """Hex digest of the file view `[offset, offset+length)` as served (non-RAM pages as
    zeros); EIO names the first range the source cannot read."""
    if algorithm not in DIGESTS:
        raise DumpdError("EINVAL", f"algorithm must be one of {', '.join(DIGESTS)}, "
                         f"not {algorithm!r}")
    h = hashlib.new(algorithm)
    mapped = engine.source.never_blocks  # hash RAM runs straight out of the mappings
    reader = BulkReader(engine, offset, length, chunk, window, spans=mapped)
    pieces = (piece async for batch in reader for piece in batch)
    async for piece in pieces:
        if isinstance(piece, Failed):
            raise DumpdError(piece.code, f"cannot digest {piece.offset:#x}+{piece.length:#x}: "
                             f"{piece.message}")
        if isinstance(piece, Data):
            await _update(h, piece.data)
            continue
        if isinstance(piece, Span):
            await _update_from_source(engine, h, piece)
            continue
        for pos in range(0, piece.length, len(ZEROS)):
            await _update(h, memoryview(ZEROS)[: min(len(ZEROS), piece.length - pos)])
    return h.hexdigest()


async def _update(h: Any, data: bytes | memoryview) -> None:
    # hashlib lets go of the GIL for large inputs: hash those on a thread.
    if len(data) <= HASH_INLINE:
        h.update(data)
    else:
        await asyncio.to_thread(h.update, data)


async def _update_from_source(engine: Engine, h: Any, span: Span) -> None:
    """Hash a RAM run out of the source's mmap windows, without a copy."""
    feed = engine.source.feed
    if span.length <= HASH_INLINE:
        feed(span.offset, span.length, h.update)
    else:  # hashlib lets go of the GIL: the loop goes on meanwhile
        await asyncio.to_thread(feed, span.offset, span.length, h.update)
    engine.counters.count_span(span.offset, span.length, engine.page_size)


def _start(coro: Coroutine[Any, Any, list[Piece]]) -> asyncio.Task[list[Piece]]:
    task = asyncio.ensure_future(coro)
    task.add_done_callback(_consume)
    return task


def _consume(task: asyncio.Task[list[Piece]]) -> None:
    if not task.cancelled():
        task.exception()
