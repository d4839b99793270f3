"""The data of a compressed stream: `stream.pages` frames, their pages compressed one by
one on worker threads.

Design rules:
- A frame covers at most `FRAME` bytes of the view (cut at multiples of it, and where
  the reader's pieces end), cut into units at the view's page boundaries; each unit is
  compressed on its own, and a unit that does not shrink goes as it is (makedumpfile's
  rule), so a kdump writer can store the blobs as they come.
- Compression runs on worker threads, off the event loop, `AHEAD` frames at a time,
  in the reader's order, each frame written as soon as it is compressed; the frames
  of one batch are sent before the next batch is compressed. (Measured: one call per
  page holds the GIL for most of its time, so two threads compress no faster than
  one; what the threads buy is a loop that keeps serving, and the TLS encryption and
  socket writes of one frame overlapping the compression of the next.) What a
  compressed stream holds beyond a plain one is the output of those frames, at most
  `HELD` bytes, held in the server's reply budget (`server/streams.py`).
- Counts are honest on both sides: the view bytes a frame covers and the bytes of its
  payload, server-wide (`Compression`, in `stats`) and per stream (its summary).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass

from dumpd.codecs import Codec
from dumpd.engine.bulk import Data, Piece

FRAME = 128 * 1024  # view bytes per `stream.pages` frame at most (or one page, if larger)
AHEAD = 2  # frames compressed at once per stream, each on a worker thread
HELD = (AHEAD + 1) * FRAME  # output bytes a stream holds: frames compressing, one sent


@dataclass(frozen=True, slots=True)
class Pages:
    """View bytes `[offset, offset+length)` as units, one blob each (`sizes[i]` bytes):
    compressed, or the unit as it is when it did not shrink (`stored` of them).
    `seconds`: thread time spent compressing them."""

    offset: int
    length: int
    sizes: list[int]
    blobs: list[bytes | memoryview]
    stored: int
    seconds: float


class Compression:
    """The server's counts of compressed streams (`stats`)."""

    __slots__ = ("pages_stored", "seconds", "streams", "units", "view_bytes", "wire_bytes")

    def __init__(self) -> None:
        self.streams = 0
        self.view_bytes = 0
        self.wire_bytes = 0
        self.units = 0
        self.pages_stored = 0
        self.seconds = 0.0

    def count(self, pages: Pages) -> None:
        self.view_bytes += pages.length
        self.wire_bytes += sum(pages.sizes)
        self.units += len(pages.sizes)
        self.pages_stored += pages.stored
        self.seconds += pages.seconds

    def stats(self) -> dict[str, int | float]:
        return {"compressed_streams": self.streams, "compressed_view_bytes": self.view_bytes,
                "compressed_wire_bytes": self.wire_bytes, "compressed_units": self.units,
                "compressed_units_stored": self.pages_stored,
                "compress_seconds": round(self.seconds, 3)}


def units(offset: int, length: int, page_size: int) -> Iterator[tuple[int, int]]:
    """`(offset, length)` of each unit of `[offset, offset+length)`: cut at multiples of
    `page_size`."""
    end = offset + length
    while offset < end:
        stop = min(end, (offset // page_size + 1) * page_size)
        yield offset, stop - offset
        offset = stop


def compress(codec: Codec, offset: int, data: memoryview, page_size: int) -> Pages:
    """The units of `data` (view bytes at `offset`) compressed one by one (in a worker
    thread); a unit that does not shrink is kept as it is."""
    started = time.thread_time()
    sizes: list[int] = []
    blobs: list[bytes | memoryview] = []
    stored = 0
    for start, length in units(offset, len(data), page_size):
        unit = data[start - offset : start - offset + length]
        blob: bytes | memoryview = codec.compress(unit)
        if len(blob) >= length:
            blob = unit
            stored += 1
        sizes.append(len(blob))
        blobs.append(blob)
    return Pages(offset, len(data), sizes, blobs, stored, time.thread_time() - started)


def _frames(batch: list[Piece], page_size: int) -> Iterator[Piece]:
    """`batch` with each `Data` cut at multiples of the frame size."""
    frame = max(FRAME, page_size)
    for piece in batch:
        if not isinstance(piece, Data):
            yield piece
            continue
        data, pos = memoryview(piece.data), piece.offset
        end = pos + len(data)
        while pos < end:
            stop = min(end, (pos // frame + 1) * frame)
            yield Data(pos, data[pos - piece.offset : stop - piece.offset])
            pos = stop


async def compressed(batch: list[Piece], codec: Codec, page_size: int
                     ) -> AsyncGenerator[list[Piece | Pages], None]:
    """The pieces of `batch` in order, each `Data` as `Pages` of at most a frame,
    compressed `AHEAD` at a time on worker threads; handed out in runs that end with
    the frame just compressed, so holes and errors between frames go out together."""
    queue: deque[Piece | asyncio.Future[Pages]] = deque()
    running = 0
    try:
        for piece in _frames(batch, page_size):
            if isinstance(piece, Data):
                queue.append(asyncio.ensure_future(asyncio.to_thread(
                    compress, codec, piece.offset, memoryview(piece.data), page_size)))
                running += 1
            else:
                queue.append(piece)
            if running > AHEAD:
                yield await _until_frame(queue)
                running -= 1
        while queue:
            yield await _until_frame(queue)
    finally:
        for item in queue:  # a stream stopped: their threads finish, nobody waits
            if isinstance(item, asyncio.Future):
                item.cancel()


async def _until_frame(queue: deque[Piece | asyncio.Future[Pages]]) -> list[Piece | Pages]:
    """The items of `queue` up to and including its first frame (compressed by now), or
    all of them when none is a frame."""
    run: list[Piece | Pages] = []
    while queue:
        item = queue[0]
        if isinstance(item, asyncio.Future):
            run.append(await item)
            queue.popleft()
            return run
        run.append(item)
        queue.popleft()
    return run
