"""The streams of one connection: each running stream, its frames and counts, and the
sendfile path its RAM runs take.

Design rules:
- A stream sends its pieces as notifications, each a frame of its own, so streams
  and replies share the connection frame by frame; it reads ahead at most its
  window and waits for the transport to drain like any reply. At most
  `max_streams` run at once per connection.
- On a plain socket (never TLS), when the option is on, RAM runs go from the source
  file to the socket on a worker thread (`SocketWriter`, the engine's `SpanSender`),
  once the transport has nothing left to write before them; the loop keeps reading
  meanwhile, so a `stream.cancel` gets through. A stream that looks for zero pages
  in a source not read through mmap windows reads its chunks instead (the bytes
  must be seen), and writes through the transport.
- A stream asked for `zeros_as_holes` says why each hole is one (a trailing param
  of `stream.hole`); other streams send holes as before, for older clients, but for
  holes of pages the dump left out (`excluded`, no older client's source had them).
- A stream asked to `compress` reads its chunks (never sendfile) and sends its data as
  `stream.pages`, compressed on worker threads (`server/pages.py`). What it holds
  beyond what `server/memory.py` counts for every stream (its frames' output; its
  read-ahead too, on a socket where other streams read nothing) it holds in the
  server's reply budget while it runs: E2BIG when that cannot hold it at all.
- A stream stops after the frame being written when cancelled (a frame is never cut
  short), and ends with a summary of its counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dumpd.codecs import Codec
from dumpd.engine.bulk import NOT_RAM, Data, Hole, Piece, Span
from dumpd.engine.spans import SpanSender
from dumpd.errors import DumpdError
from dumpd.protocol import (
    encode_bin_notification_head,
    encode_notification,
    encode_response,
)
from dumpd.server.budget import ByteBudget
from dumpd.server.dispatch import Streamed
from dumpd.server.pages import HELD, Compression, Pages, compressed
from dumpd.server.zerocopy import Item, SendTimeout, SocketWriter

STREAM_SNDBUF = 2 * 1024 * 1024
SO_SNDBUFFORCE = 32  # Linux's (asm-generic/socket.h); Python's socket module lacks it
TRANSPORT_POLL = 0.0005  # seconds between looks at a draining transport before sendfile


class Stream:
    """A running stream: its counts so far, and whether it was asked to stop. With
    `reasons` (asked for `zeros_as_holes`) each hole says why it is one; `excludes`:
    the source has pages it left out (their holes are counted apart); with
    `compression` (asked to `compress`) its data frames are counted there too."""

    __slots__ = ("cancelled", "compression", "counts", "reasons")

    def __init__(self, reasons: bool = False, excludes: bool = False,
                 compression: Compression | None = None) -> None:
        self.cancelled = False
        self.reasons = reasons
        self.compression = compression
        self.counts = {"bytes": 0, "data_bytes": 0, "hole_bytes": 0, "error_bytes": 0}
        if reasons:  # of the hole bytes, those of all-zero RAM pages and of file holes
            self.counts.update(zero_bytes=0, file_hole_bytes=0)
        if excludes:  # of the hole bytes, those of pages the dump left out
            self.counts.update(excluded_bytes=0)
        if compression is not None:  # the payload bytes of its data frames
            self.counts["compressed_bytes"] = 0

    def cancel(self) -> None:
        """Stop after the frame being written (a frame is never cut short)."""
        self.cancelled = True

    def frames(self, msgid: int, piece: Piece | Pages) -> list[Any]:
        """The notification for `piece`, counted; data goes as a head plus its buffer
        (compressed: its blobs)."""
        counts = self.counts
        if isinstance(piece, Pages):
            assert self.compression is not None
            length, payload = piece.length, sum(piece.sizes)
            counts["data_bytes"] += length
            counts["compressed_bytes"] += payload
            self.compression.count(piece)
            frames: list[Any] = [encode_bin_notification_head(
                "stream.pages", [msgid, piece.offset, length, piece.sizes], payload),
                *piece.blobs]
        elif isinstance(piece, Data):
            length = len(piece.data)
            counts["data_bytes"] += length
            frames = [encode_bin_notification_head(
                "stream.data", [msgid, piece.offset], length), piece.data]
        elif isinstance(piece, Span):  # the head, then the span: sent from the source
            length = piece.length
            counts["data_bytes"] += length
            frames = [encode_bin_notification_head("stream.data", [msgid, piece.offset],
                                                   length), piece]
        elif isinstance(piece, Hole):
            length = piece.length
            counts["hole_bytes"] += length
            if piece.reason != NOT_RAM:
                counts[f"{piece.reason}_bytes"] += length
            params = [msgid, piece.offset, length]
            frames = [encode_notification("stream.hole", [*params, piece.reason]
                                          if self.reasons or piece.reason != NOT_RAM
                                          else params)]
        else:
            length = piece.length
            counts["error_bytes"] += length
            frames = [encode_notification("stream.error", [msgid, piece.offset, length,
                                                           piece.code, piece.message])]
        counts["bytes"] += length
        return frames


class Link(Protocol):
    """What a stream needs of its connection."""

    writing: asyncio.Lock  # held by whoever writes: replies and streams never interleave

    def output(self) -> tuple[int, int] | None:
        """(bytes handed to the transport, bytes it still holds); None once closing."""

    def socket(self) -> tuple[socket.socket, bool] | None:
        """The connection's socket, and whether it is a plain one (not TLS)."""

    async def send(self, frames: list[Any]) -> None: ...

    def send_timed_out(self) -> None: ...


class Streams:
    """The streams running on one connection, by the msgid of their request."""

    def __init__(self, max_streams: int, sendfile: bool, send_timeout: float,
                 clock: Callable[[], float], compression: Compression,
                 budget: ByteBudget) -> None:
        self._running: dict[int, Stream] = {}
        self._compression = compression
        self._budget = budget  # the server's reply budget, for compressed streams
        self._max = max_streams
        self._sendfile = sendfile
        self._send_timeout = send_timeout
        self._clock = clock

    def __bool__(self) -> bool:
        return bool(self._running)

    def cancel(self, msgid: int) -> bool:
        """Stop the stream of request `msgid`; False when none runs."""
        stream = self._running.get(msgid)
        if stream is not None:
            stream.cancel()
        return stream is not None

    async def serve(self, link: Link, msgid: int, open_reader: Callable[[], Awaitable[Any]],
                    spans: SpanSender) -> list[Any] | None:
        """Run the stream of request `msgid` on `link`: EBUSY when `max_streams` run
        already, else the `Streamed` that `open_reader` gives (a DumpdError when the
        request's arguments are wrong) is run; returns what `_run` returns."""
        if len(self._running) >= self._max:
            raise DumpdError("EBUSY", f"{self._max} streams are running on this connection "
                             "already")
        sock = self._sendfile_socket(link)
        opened: Streamed = await open_reader()
        reader = opened.reader
        held = 0
        if opened.codec is not None:  # what the worst case does not count for it
            held = HELD + (0 if sock is None else opened.footprint)
            if held > self._budget.capacity:
                raise DumpdError("E2BIG", f"a compressed stream here holds {held} bytes at "
                                 "once, more than the server's whole reply budget "
                                 f"({self._budget.capacity}, server.reply_budget_total_mib)")
        if not reader.can_span or opened.codec is not None:  # the bytes are read here
            sock = None
        reader.spans = sock is not None
        return await self._run(link, msgid, opened, sock, spans, held)

    def _sendfile_socket(self, link: Link) -> socket.socket | None:
        """The socket a stream may `sendfile` to: a plain one (never TLS), when the
        option is on; widens its send buffer too (a bulk stream moves in larger steps)."""
        found = link.socket()
        if found is None:
            return None
        sock, plain = found
        _widen_send_buffer(sock)
        return sock if self._sendfile and plain else None

    async def _run(self, link: Link, msgid: int, opened: Streamed,
                   sock: socket.socket | None, spans: SpanSender, held: int
                   ) -> list[Any] | None:
        """Send the pieces of `opened` on `link` as notifications, `held` bytes of the
        server's reply budget held meanwhile; the summary frames to send last, or None
        when the connection went away meanwhile. A DumpdError of the reader is raised
        once the stream is closed."""
        reader, codec = opened.reader, opened.codec
        if codec is not None:
            self._compression.streams += 1
        stream = self._running[msgid] = Stream(reader.zeros, reader.excludes,
                                               self._compression if codec is not None
                                               else None)
        writer = None
        reserved = 0
        try:
            await self._budget.acquire(held)
            reserved = held
            if sock is not None:  # a dup of the socket: made once the stream is sure to run
                writer = SocketWriter(sock.fileno(), self._send_timeout, self._clock)
            async for batch in reader:
                if stream.cancelled:
                    break
                if codec is not None:
                    await _send_compressed(link, msgid, stream, batch, codec,
                                           opened.page_size)
                elif writer is None:
                    await link.send([f for p in batch for f in stream.frames(msgid, p)])
                else:
                    await _send_with_sendfile(link, msgid, stream, batch, writer, spans)
                if link.output() is None:
                    return None
                await asyncio.sleep(0)  # let the loop read requests (a cancel) between chunks
            summary = {**stream.counts, "cancelled": stream.cancelled}
            return [encode_response(msgid, summary)]
        except SendTimeout:  # the sendfile thread gave up on a client that does not read
            link.send_timed_out()
            return None
        except ConnectionError:  # the client went away while data was being sent
            return None
        finally:
            self._budget.release(reserved)
            reader.close()
            if writer is not None:
                writer.close()
            del self._running[msgid]


def _widen_send_buffer(sock: socket.socket) -> None:
    """`STREAM_SNDBUF` of send buffer: fewer wake-ups of the sending thread and the
    client per MiB, which is what a one-CPU crash kernel spends its time on. Past
    net.core.wmem_max (208 KiB by default) only with CAP_NET_ADMIN (SO_SNDBUFFORCE);
    without it, as much as wmem_max allows."""
    for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, STREAM_SNDBUF)
            return
        except OSError:
            continue


async def _send_compressed(link: Link, msgid: int, stream: Stream, batch: list[Piece],
                           codec: Codec, page_size: int) -> None:
    """Write a batch with its data compressed, frame by frame as each is ready."""
    runs = compressed(batch, codec, page_size)
    async with contextlib.aclosing(runs):
        async for run in runs:
            await link.send([f for p in run for f in stream.frames(msgid, p)])
            if link.output() is None:
                return


async def _send_with_sendfile(link: Link, msgid: int, stream: Stream, batch: list[Piece],
                              writer: SocketWriter, spans: SpanSender) -> None:
    """Write a batch on a worker thread, its RAM runs from the source file, once the
    transport has nothing left to write before it."""
    items: list[Item] = [f for p in batch for f in stream.frames(msgid, p)]

    def error_frame(offset: int, length: int, why: str) -> bytes:
        return encode_notification("stream.error", [msgid, offset, length, "EIO", why])

    async with link.writing:
        pause = TRANSPORT_POLL
        while (output := link.output()) is not None and output[1]:  # the thread writes after
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.05)
        if output is None:
            return
        sent = await asyncio.to_thread(writer.batch, items, spans, error_frame)
    for outcome in sent:  # one per span of the batch
        for _, length, _ in outcome.failed:  # sent as zeros, then as an error
            stream.counts["data_bytes"] -= length
            stream.counts["error_bytes"] += length

