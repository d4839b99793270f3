"""The blocking client, for scripts and `dumpd fetch`: a plain socket, one call at a
time, no event loop (importing it loads no asyncio). A stream's pieces arrive through
`dumpd.client.receiver`, payloads straight into a buffer or the sink file.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from dumpd.client import _calls
from dumpd.client._calls import Call, NotificationCallback, check_notification
from dumpd.client.errors import RemoteError, ServerUnreachable, reason, unreachable
from dumpd.client.pieces import StreamPiece
from dumpd.client.receiver import StreamReceiver
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

if TYPE_CHECKING:
    import ssl

RECV_SIZE = 256 << 10
T = TypeVar("T")


class Client:
    """A blocking client for scripts: one call at a time over a plain socket.

    A call abandoned by a timeout or an interrupt leaves its msgid behind; its late
    response is recognized and skipped by the next call.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        on_notification: NotificationCallback | None = None,
        max_frame_size: int = DEFAULT_CLIENT_MAX_FRAME_SIZE,
        address: str = "dumpd",
    ) -> None:
        self._sock = sock
        self.address = address  # in errors: the socket path or HOST:PORT
        self._limits = Limits(max_frame_size)
        self._decoder = FrameDecoder("client", self._limits)
        self._abandoned: set[int] = set()  # msgids of calls given up (timeout, interrupt)
        self._server_error: RemoteError | None = None
        self._next_msgid = 0
        self._page_size = 0  # the server's, once `info` said it (for compressed streams)
        self.on_notification = on_notification

    @classmethod
    def connect(
        cls,
        path: str,
        *,
        timeout: float | None = None,
        on_notification: NotificationCallback | None = None,
        max_frame_size: int = DEFAULT_CLIENT_MAX_FRAME_SIZE,
    ) -> Self:
        """Connect to a dumpd Unix socket; `timeout` applies to every later call too.
        Raises `ServerUnreachable` when nothing listens there (or may not be reached)."""
        problem = unusable(path)
        if problem:
            raise ServerUnreachable(path, problem)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise unreachable(path, exc, path) from exc
        except BaseException:
            sock.close()
            raise
        return cls(sock, on_notification=on_notification, max_frame_size=max_frame_size,
                   address=path)

    @classmethod
    def connect_tcp(
        cls,
        host: str,
        port: int,
        *,
        timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
        on_notification: NotificationCallback | None = None,
        max_frame_size: int = DEFAULT_CLIENT_MAX_FRAME_SIZE,
    ) -> Self:
        """Connect to a dumpd TCP listener; over TLS with `tls` (see
        `dumpd.tls.client_context`), whose server certificate must name `host`.
        Raises `ServerUnreachable` when it cannot be reached (or the handshake fails)."""
        address = join_host_port(host, port)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise unreachable(address, exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            sock.close()
            raise unreachable(address, exc) from exc
        except BaseException:
            sock.close()
            raise
        return cls(sock, on_notification=on_notification, max_frame_size=max_frame_size,
                   address=address)

    def call(self, method: str, *params: Any) -> Any:
        """Send one request and block for its result; raises `RemoteError` on an error reply."""
        msgid = self._next_msgid
        self._next_msgid = (msgid + 1) & MAX_MSGID
        self._abandoned.discard(msgid)
        self._send(encode_request(msgid, method, params))
        try:
            response = self._wait(msgid)
        except BaseException:
            self._abandoned.add(msgid)
            raise
        return _calls.result(response)

    def _run(self, call: Call[T]) -> T:
        """Make `call` and check its result."""
        return call.check(self.call(call.method, *call.params))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise
        except OSError as exc:
            self._drain()
            raise self._lost(exc) from exc

    def _drain(self) -> None:
        """After a failed send: read what the server sent before it closed the connection
        (a refused peer's EACCES notification), so the error can give its reason."""
        with contextlib.suppress(OSError, ProtocolViolation):
            self._sock.settimeout(0)
            while data := self._sock.recv(RECV_SIZE):
                for event in self._decoder.feed(data):
                    if isinstance(event, Notification):
                        self._server_error = check_notification(event) or self._server_error

    def _lost(self, exc: OSError | None) -> ServerUnreachable:
        """The connection is gone: reset, broken, or (`exc` None) closed by the server;
        the reason the server sent before closing it, if it sent one, is the message."""
        if exc is not None and self._server_error is None:
            return ServerUnreachable(self.address, reason(exc), errno=exc.errno, lost=True)
        why = self._server_error
        return ServerUnreachable(self.address, f"the server closed it{f': {why}' if why else ''}",
                                 lost=True)

    def _wait(self, msgid: int) -> Response:
        response: Response | None = None
        while response is None:
            try:
                data = self._sock.recv(RECV_SIZE)
            except TimeoutError:
                raise
            except OSError as exc:
                raise self._lost(exc) from exc
            if not data:
                raise self._lost(None) from self._server_error
            response = self._take(data, msgid)
        return response

    def _take(self, data: bytes, msgid: int | None) -> Response | None:
        """Decode and check `data`: the response to `msgid` if it is there; late ones to
        abandoned calls are skipped, notifications go to `on_notification`."""
        try:
            events = self._decoder.feed(data)
            for event in events:
                if isinstance(event, Notification):
                    self._server_error = check_notification(event) or self._server_error
        except ProtocolViolation as exc:  # not the server's error: not the caller's
            raise ServerUnreachable(self.address, "what answers there does not speak "
                                    f"dumpd's protocol ({exc})", lost=True) from exc
        response = None
        for event in events:
            if isinstance(event, Response):
                if event.msgid == msgid:
                    response = event
                elif event.msgid in self._abandoned:
                    self._abandoned.discard(event.msgid)
                else:
                    raise ProtocolViolation(
                        "EINVAL", f"response to msgid {event.msgid}, which is not pending"
                    )
            elif isinstance(event, Notification) and self.on_notification is not None:
                self.on_notification(event)
        return response

    def info(self) -> dict[str, Any]:
        """The dump and server description (see docs/protocol.md, `info`)."""
        described = self._run(_calls.info())
        page_size = described.get("page_size")
        if type(page_size) is int and page_size > 0:
            self._page_size = page_size
        return described

    @property
    def over_network(self) -> bool:
        """Whether the connection is TCP (with TLS or not), not a Unix socket."""
        return self._sock.family != socket.AF_UNIX

    def read(self, offset: int, length: int) -> bytes:
        """File-view bytes `[offset, offset+length)`; short at the end, like pread."""
        return self._run(_calls.read(offset, length))

    def read_phys(self, paddr: int, length: int) -> bytes:
        """Bytes by physical address; ERANGE when PT_LOADs do not cover the range."""
        return self._run(_calls.read_phys(paddr, length))

    def read_virt(self, vaddr: int, length: int) -> bytes:
        """Bytes by kernel virtual address (the dead kernel's page tables); ERANGE
        where they map nothing, ENOSYS without VMCOREINFO or off x86_64."""
        return self._run(_calls.read_virt(vaddr, length))

    def vmcoreinfo(self) -> str:
        """The dead kernel's VMCOREINFO text; ENOSYS when the dump has none."""
        return self._run(_calls.vmcoreinfo())

    def extents(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """`(offset, length, "data" | "zero")` runs of the file view."""
        return self._run(_calls.extents(offset, length))

    def digest(self, offset: int, length: int, algorithm: str = "sha256") -> dict[str, Any]:
        """`{"algorithm", "digest": hex str, "offset", "length"}` of the file view."""
        return self._run(_calls.digest(offset, length, algorithm))

    def stats(self) -> dict[str, Any]:
        """The server's counters."""
        return self._run(_calls.stats())

    def hook_register(self, name: str, options: dict[str, Any] | None = None,
                      distribution: str = "") -> dict[str, Any]:
        """Install the is-RAM hook `name` with `options`, from `distribution` when several
        declare `name`; EBUSY when one is installed."""
        return self._run(_calls.hook_register(name, options, distribution))

    def hook_unregister(self) -> dict[str, Any]:
        """Remove the installed is-RAM hook."""
        return self._run(_calls.hook_unregister())

    def hook_reload(self) -> dict[str, Any]:
        """Have the installed hook reload its data; ENOSYS when it has none."""
        return self._run(_calls.hook_reload())

    def hook_explain(self, first_pfn: int, count: int) -> dict[str, Any]:
        """Why the installed hook calls pages not RAM: `{"hook", "hook_generation",
        "runs": [[length, reason], ...]}` for `count` pfns from `first_pfn` (reason ""
        for RAM); ENOSYS when no hook is installed or it cannot explain."""
        return self._run(_calls.hook_explain(first_pfn, count))

    def done(self, now: bool = False) -> dict[str, Any]:
        """End the server's job: once the open connections close, or `now` (running
        requests get its shutdown_timeout); administrators only."""
        return self._run(_calls.done(now))

    def fetch_verified(self, fetch_id: str, sha256: str) -> dict[str, Any]:
        """Report a complete copy of the whole view whose sha256 matched the server's
        digest of it (for `finish.fetches`); `{"counted", "fetches", "needed"}`."""
        return self._run(_calls.fetch_verified(fetch_id, sha256))

    def stream(self, offset: int, length: int, chunk: int | None = None,
               sink: int | None = None, zeros_as_holes: bool = False,
               compress: str | None = None) -> Stream:
        """Stream `[offset, offset+length)` of the file view: iterate the returned `Stream`
        for `StreamData` / `StreamHole` / `StreamError` pieces in offset order; its
        `summary` holds the server's counts once iteration ends. With `sink` (a file
        descriptor), data goes straight into that file at its offsets (`splice`) and
        arrives as `StreamWritten` pieces. `zeros_as_holes`: RAM pages that are all
        zero come as holes too, each hole with its `reason`. `compress` (a codec of
        `info`'s `codecs`): data comes as `StreamPages`, its pages compressed one by
        one (`StreamPages.data(codec)` decompresses them), never into the sink."""
        if compress is not None and not self._page_size:
            self.info()  # the page size the units of `stream.pages` are cut at
        msgid = self._next_msgid
        self._next_msgid = (msgid + 1) & MAX_MSGID
        options = _calls.stream_options(chunk, zeros_as_holes, compress)
        self._send(encode_request(msgid, "stream", [offset, length, options]))
        return Stream(self, msgid, sink, self._page_size if compress is not None else 0)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Stream:
    """One `stream` request in progress on a blocking `Client` (which it has to itself
    until iteration ends)."""

    def __init__(self, client: Client, msgid: int, sink: int | None = None,
                 page_size: int = 0) -> None:
        self._client = client
        self.msgid = msgid
        # Calls complete one at a time, so the decoder holds no partial frame here.
        self._receiver = StreamReceiver(client._sock, msgid, client._limits,
                                        self._on_reply, self._on_notification, sink,
                                        page_size)
        self.summary: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[StreamPiece]:
        client = self._client
        try:
            yield from self._receiver
        finally:
            self._receiver.close()
        client._take(self._receiver.leftover, None)  # frames after the reply, if any
        if self._receiver.error is not None:
            raise RemoteError(*self._receiver.error)
        self.summary = self._receiver.summary

    def cancel(self) -> None:
        """Ask the server to stop the stream; iteration ends soon after, with a summary
        whose `cancelled` is true."""
        client = self._client
        msgid = client._next_msgid
        client._next_msgid = (msgid + 1) & MAX_MSGID
        client._abandoned.add(msgid)  # its reply arrives among the pieces
        client._send(encode_request(msgid, "stream.cancel", [self.msgid]))

    def _on_reply(self, response: Response) -> None:
        if response.msgid not in self._client._abandoned:
            raise ProtocolViolation("EINVAL", f"response to msgid {response.msgid}, which is "
                                    "not pending")
        self._client._abandoned.discard(response.msgid)

    def _on_notification(self, event: Notification) -> None:
        self._client._server_error = check_notification(event) or self._client._server_error
        if self._client.on_notification is not None:
            self._client.on_notification(event)
