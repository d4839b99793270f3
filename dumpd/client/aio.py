"""The pipelined asyncio client: many concurrent `call`s share one connection, each
matched to its response by msgid, in whatever order the server answers. A call is a
future in a dict, no task per call.

Import it as `from dumpd.client.aio import AsyncClient`: `dumpd.client` itself exports
only what loads no asyncio (the blocking client, errors, stream pieces).
"""

from __future__ import annotations

import asyncio
import ssl
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from dumpd.client import _calls
from dumpd.client._calls import Call, NotificationCallback, check_notification
from dumpd.client.aiostream import AsyncStream, Inbox
from dumpd.client.errors import RemoteError, ServerUnreachable, unreachable
from dumpd.client.pieces import StreamPiece, stream_piece
from dumpd.hostport import join_host_port
from dumpd.protocol import (
    DEFAULT_CLIENT_MAX_FRAME_SIZE,
    MAX_MSGID,
    FrameDecoder,
    Limits,
    Notification,
    ProtocolViolation,
    Response,
    encode_request,
)
from dumpd.unixpath import unusable

T = TypeVar("T")


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._client._data_received(data)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost fails what is pending

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._connection_lost(exc)

    def pause_writing(self) -> None:
        self._client._pause_writing()

    def resume_writing(self) -> None:
        self._client._resume_writing()


class AsyncClient:
    """A pipelined msgpack-RPC client; use on the event loop that connected it.

    Connection loss fails every pending call with `ConnectionError` (its `__cause__` is the
    server's closing `error` notification as a `RemoteError` when one came, else the
    socket error); error replies raise `RemoteError`. `on_notification` is called on the
    loop for each notification; an exception it raises goes to the loop's handler.
    """

    def __init__(
        self,
        *,
        on_notification: NotificationCallback | None = None,
        max_frame_size: int = DEFAULT_CLIENT_MAX_FRAME_SIZE,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder("client", Limits(max_frame_size))
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._next_msgid = 0
        self._transport: asyncio.Transport | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._lost: BaseException | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self._server_error: RemoteError | None = None
        self._streams: dict[int, Inbox] = {}  # streams running, by msgid
        self._crowded: set[Inbox] = set()  # those holding too much: reading paused
        self._page_size = 0  # the server's, once `info` said it (for compressed streams)
        self._network = False  # connected over TCP (`connect_tcp`)
        self.on_notification = on_notification

    @classmethod
    async def connect(
        cls,
        path: str,
        *,
        on_notification: NotificationCallback | None = None,
        max_frame_size: int = DEFAULT_CLIENT_MAX_FRAME_SIZE,
    ) -> Self:
        """Connect to a dumpd Unix socket at `path`; `ServerUnreachable` when nothing
        listens there (or may not be reached)."""
        problem = unusable(path)
        if problem:
            raise ServerUnreachable(path, problem)
        client = cls(on_notification=on_notification, max_frame_size=max_frame_size)
        try:
            await client._loop.create_unix_connection(lambda: _ClientProtocol(client), path)
        except OSError as exc:
            raise unreachable(path, exc, path) from exc
        return client

    @classmethod
    async def connect_tcp(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        on_notification: NotificationCallback | None = None,
        max_frame_size: int = DEFAULT_CLIENT_MAX_FRAME_SIZE,
    ) -> Self:
        """Connect to a dumpd TCP listener; over TLS with `tls` (see
        `dumpd.tls.client_context`), whose server certificate must name `host`;
        `ServerUnreachable` when it cannot be reached (or the handshake fails)."""
        client = cls(on_notification=on_notification, max_frame_size=max_frame_size)
        try:
            await client._loop.create_connection(lambda: _ClientProtocol(client), host, port,
                                                 ssl=tls)
        except OSError as exc:
            raise unreachable(join_host_port(host, port), exc) from exc
        client._network = True
        return client

    @property
    def over_network(self) -> bool:
        """Whether the connection is TCP (with TLS or not), not a Unix socket."""
        return self._network

    # -- calls -----------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        """Send one request and wait for its result; raises `RemoteError` on an error reply."""
        transport = self._transport
        if transport is None or self._lost is not None or transport.is_closing():
            raise ConnectionError("not connected to dumpd") from self._lost
        msgid = self._allocate_msgid()
        frame = encode_request(msgid, method, params)
        future: asyncio.Future[Response] = self._loop.create_future()
        self._pending[msgid] = future
        try:
            transport.write(frame)
            if self._write_ready is not None:
                await asyncio.shield(self._write_ready)
            response = await future
        finally:
            # On cancellation a late response finds no entry and is dropped.
            if self._pending.get(msgid) is future:
                del self._pending[msgid]
        return _calls.result(response)

    async def _run(self, call: Call[T]) -> T:
        """Make `call` and check its result."""
        return call.check(await self.call(call.method, *call.params))

    def _allocate_msgid(self) -> int:
        if len(self._pending) > MAX_MSGID:
            raise ConnectionError("every msgid is in flight")
        msgid = self._next_msgid
        while msgid in self._pending or msgid in self._streams:  # after wrapping 2**32
            msgid = (msgid + 1) & MAX_MSGID
        self._next_msgid = (msgid + 1) & MAX_MSGID
        return msgid

    async def info(self) -> dict[str, Any]:
        """The dump and server description (see docs/protocol.md, `info`)."""
        described = await self._run(_calls.info())
        page_size = described.get("page_size")
        if type(page_size) is int and page_size > 0:
            self._page_size = page_size
        return described

    def stream(self, offset: int, length: int, chunk: int | None = None,
               zeros_as_holes: bool = False, compress: str | None = None) -> AsyncStream:
        """Stream `[offset, offset+length)` of the file view: `async for` the returned
        `AsyncStream` for its pieces in offset order, as the blocking client's `stream`
        gives them (`compress`: data as `StreamPages`); reading pauses while more than
        a few MiB of them wait to be taken."""
        options = _calls.stream_options(chunk, zeros_as_holes, compress)
        return AsyncStream(self, [offset, length, options], compress is not None)

    async def _open_stream(self, params: list[Any], compress: bool) -> tuple[int, Inbox]:
        """Send a `stream` request; its msgid and the inbox its pieces arrive in."""
        page_size = 0
        if compress:  # the page size the units of `stream.pages` are cut at
            page_size = self._page_size or (await self.info())["page_size"]
        transport = self._transport
        if transport is None or self._lost is not None or transport.is_closing():
            raise ConnectionError("not connected to dumpd") from self._lost
        msgid = self._allocate_msgid()
        inbox = self._streams[msgid] = Inbox(page_size, self._crowd)
        transport.write(encode_request(msgid, "stream", params))
        return msgid, inbox

    def _close_stream(self, msgid: int, inbox: Inbox) -> None:
        """The consumer of stream `msgid` is done with it: if it has not ended, stop
        it and drop what still comes."""
        self._crowd(inbox, False)
        if inbox.end is not None:
            self._streams.pop(msgid, None)
            return
        inbox.dropping = True
        transport = self._transport
        if transport is not None and not transport.is_closing():  # its reply is dropped
            transport.write(encode_request(self._allocate_msgid(), "stream.cancel", [msgid]))

    def _crowd(self, inbox: Inbox, over: bool) -> None:
        """Pause reading while any stream holds too many pieces, resume once none does."""
        before = bool(self._crowded)
        if over:
            self._crowded.add(inbox)
        else:
            self._crowded.discard(inbox)
        transport = self._transport
        if before != bool(self._crowded) and transport is not None and not transport.is_closing():
            if self._crowded:
                transport.pause_reading()
            else:
                transport.resume_reading()

    async def read(self, offset: int, length: int) -> bytes:
        """File-view bytes `[offset, offset+length)`; short at the end, like pread."""
        return await self._run(_calls.read(offset, length))

    async def read_phys(self, paddr: int, length: int) -> bytes:
        """Bytes by physical address; ERANGE when PT_LOADs do not cover the range."""
        return await self._run(_calls.read_phys(paddr, length))

    async def read_virt(self, vaddr: int, length: int) -> bytes:
        """Bytes by kernel virtual address (the dead kernel's page tables); ERANGE
        where they map nothing, ENOSYS without VMCOREINFO or off x86_64."""
        return await self._run(_calls.read_virt(vaddr, length))

    async def vmcoreinfo(self) -> str:
        """The dead kernel's VMCOREINFO text; ENOSYS when the dump has none."""
        return await self._run(_calls.vmcoreinfo())

    async def extents(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """`(offset, length, "data" | "zero")` runs of the file view."""
        return await self._run(_calls.extents(offset, length))

    async def digest(self, offset: int, length: int, algorithm: str = "sha256"
                     ) -> dict[str, Any]:
        """`{"algorithm", "digest": hex str, "offset", "length"}` of the file view."""
        return await self._run(_calls.digest(offset, length, algorithm))

    async def stats(self) -> dict[str, Any]:
        """The server's counters."""
        return await self._run(_calls.stats())

    async def hook_register(self, name: str, options: dict[str, Any] | None = None,
                            distribution: str = "") -> dict[str, Any]:
        """Install the is-RAM hook `name` with `options`, from `distribution` when several
        declare `name`; EBUSY when one is installed."""
        return await self._run(_calls.hook_register(name, options, distribution))

    async def hook_unregister(self) -> dict[str, Any]:
        """Remove the installed is-RAM hook."""
        return await self._run(_calls.hook_unregister())

    async def hook_reload(self) -> dict[str, Any]:
        """Have the installed hook reload its data; ENOSYS when it has none."""
        return await self._run(_calls.hook_reload())

    async def hook_explain(self, first_pfn: int, count: int) -> dict[str, Any]:
        """Why the installed hook calls pages not RAM: `{"hook", "hook_generation",
        "runs": [[length, reason], ...]}` for `count` pfns from `first_pfn` (reason ""
        for RAM); ENOSYS when no hook is installed or it cannot explain."""
        return await self._run(_calls.hook_explain(first_pfn, count))

    async def done(self, now: bool = False) -> dict[str, Any]:
        """End the server's job: once the open connections close, or `now` (running
        requests get its shutdown_timeout); administrators only."""
        return await self._run(_calls.done(now))

    async def fetch_verified(self, fetch_id: str, sha256: str) -> dict[str, Any]:
        """Report a complete copy of the whole view whose sha256 matched the server's
        digest of it (for `finish.fetches`); `{"counted", "fetches", "needed"}`."""
        return await self._run(_calls.fetch_verified(fetch_id, sha256))

    # -- life cycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; calls still pending fail with `ConnectionError`."""
        if self._transport is not None:
            if self._lost is None:
                self._lost = ConnectionAbortedError("client closed the connection")
            self._transport.close()
            await asyncio.shield(self._closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- protocol callbacks ----------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        try:
            events = self._decoder.feed(data)
            routed: list[tuple[Inbox, StreamPiece] | None] = []
            for event in events:
                if isinstance(event, Notification):
                    self._server_error = check_notification(event) or self._server_error
                routed.append(self._routed(event))
        except ProtocolViolation as exc:
            self._lost = exc
            assert self._transport is not None
            self._transport.abort()
            return
        for event, route in zip(events, routed, strict=True):
            if route is not None:
                route[0].put(route[1])
            elif isinstance(event, Response) and event.msgid in self._streams:
                inbox = self._streams[event.msgid]
                inbox.finish(event)
                if inbox.dropping:  # nobody takes it: the stream is over
                    del self._streams[event.msgid]
            elif isinstance(event, Response):
                future = self._pending.pop(event.msgid, None)
                if future is not None and not future.done():
                    future.set_result(event)
            elif isinstance(event, Notification) and self.on_notification is not None:
                try:
                    self.on_notification(event)
                except Exception as exc:
                    self._loop.call_exception_handler(
                        {"message": "dumpd notification callback failed", "exception": exc}
                    )

    def _routed(self, event: object) -> tuple[Inbox, StreamPiece] | None:
        """The inbox of a running stream a notification belongs to, and its piece
        (checked: a `ProtocolViolation` when malformed); None for any other event."""
        if not isinstance(event, Notification) or not event.method.startswith("stream."):
            return None
        msgid = event.params[0] if event.params else None
        inbox = self._streams.get(msgid) if type(msgid) is int else None
        found = None if inbox is None else stream_piece(event, inbox.page_size)
        return None if inbox is None or found is None else (inbox, found[1])

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            self._lost = (
                self._server_error or exc or ConnectionResetError("connection to dumpd closed")
            )
        streams, self._streams = self._streams, {}
        for inbox in streams.values():
            inbox.finish(self._lost)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                error = ConnectionError(f"connection to dumpd lost: {self._lost}")
                error.__cause__ = self._lost
                future.set_exception(error)
        self._resume_writing()
        if not self._closed.done():
            self._closed.set_result(None)

    def _pause_writing(self) -> None:
        if self._write_ready is None:
            self._write_ready = self._loop.create_future()

    def _resume_writing(self) -> None:
        waiter, self._write_ready = self._write_ready, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
