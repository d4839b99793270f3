"""A stream on the asyncio client: its pieces queued as they arrive, checked as every
reader checks them (`pieces`), handed out in order.

Design rules:
- Memory stays bounded whatever the consumer does: while more than `QUEUED_MAX` bytes
  of a stream's pieces wait to be taken, the client stops reading its connection, so
  a slow consumer holds the server back (its send window fills) as the blocking
  receiver does.
- A consumer that leaves before the end (a `break`) cancels the stream; its late
  pieces are dropped, not handed to `on_notification`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from dumpd.client.errors import RemoteError
from dumpd.client.pieces import StreamData, StreamPages, StreamPiece, stream_summary
from dumpd.protocol import Response

if TYPE_CHECKING:
    from dumpd.client.aio import AsyncClient

QUEUED_MAX = 4 << 20  # bytes of pieces waiting to be taken before reading pauses


class Inbox:
    """The pieces of one stream not taken yet, then how it ended (its response, or the
    connection's loss). `crowded(inbox, over)` says when it holds more than
    `QUEUED_MAX` bytes and when no longer."""

    def __init__(self, page_size: int, crowded: Callable[[Inbox, bool], None]) -> None:
        self.page_size = page_size
        self.end: Response | BaseException | None = None
        self.dropping = False  # its consumer left: pieces are dropped until the end
        self._crowded = crowded
        self._pieces: deque[StreamPiece] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None

    def put(self, piece: StreamPiece) -> None:
        if self.dropping:
            return
        self._pieces.append(piece)
        self._bytes += _size(piece)
        if self._bytes > QUEUED_MAX:
            self._crowded(self, True)
        self._wake()

    def finish(self, end: Response | BaseException) -> None:
        if self.end is None:
            self.end = end
        self._crowded(self, False)
        self._wake()

    async def take(self) -> StreamPiece | None:
        """The next piece; None once the stream has ended and every piece was taken."""
        while not self._pieces:
            if self.end is not None:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        piece = self._pieces.popleft()
        self._bytes -= _size(piece)
        if self._bytes <= QUEUED_MAX:
            self._crowded(self, False)
        return piece

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _size(piece: StreamPiece) -> int:
    if isinstance(piece, StreamData):
        return len(piece.data)
    return len(piece.payload) if isinstance(piece, StreamPages) else 0


class AsyncStream:
    """One `stream` request on an `AsyncClient`: iterate it once (`async for`) for its
    pieces in offset order (`StreamData`, or `StreamPages` when asked to compress,
    `StreamHole`, `StreamError`); `summary` holds the server's counts once it ends.
    An error reply raises `RemoteError`; the connection's loss, `ConnectionError`."""

    def __init__(self, client: AsyncClient, params: list[Any], compress: bool) -> None:
        self._client = client
        self._params = params
        self._compress = compress
        self.msgid: int | None = None
        self.summary: dict[str, Any] | None = None

    def __aiter__(self) -> AsyncGenerator[StreamPiece, None]:
        return self._pieces()

    async def _pieces(self) -> AsyncGenerator[StreamPiece, None]:
        self.msgid, inbox = await self._client._open_stream(self._params, self._compress)
        try:
            while (piece := await inbox.take()) is not None:
                yield piece
        finally:
            self._client._close_stream(self.msgid, inbox)
        end = inbox.end
        if isinstance(end, BaseException):
            raise ConnectionError(f"connection to dumpd lost: {end}") from end
        assert end is not None
        if end.error is not None:
            raise RemoteError(*end.error)
        self.summary = stream_summary(end.result)

    async def cancel(self) -> bool:
        """Ask the server to stop the stream; it ends soon after, its summary's
        `cancelled` true. False when it was not running (any more)."""
        if self.msgid is None:
            return False
        answer = await self._client.call("stream.cancel", self.msgid)
        return bool(answer.get("cancelled")) if isinstance(answer, dict) else False
