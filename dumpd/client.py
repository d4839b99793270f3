"""Clients for dumpd, built on `dumpd.protocol` alone.

`AsyncClient` pipelines: many concurrent `call`s share one connection, each matched to
its response by msgid, in whatever order the server answers. A call is a future in a
dict, no task per call. `Client` is the blocking form for scripts: a plain socket, one
call at a time, no event loop. `AsyncClient` lives in `dumpd.asyncclient` and is
imported from here on first use, so blocking users (`dumpd fetch`) never load asyncio.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

from dumpd.errors import DumpdError
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
from dumpd.receiver import StreamPiece, StreamReceiver
from dumpd.unixpath import unusable

if TYPE_CHECKING:
    import ssl

RECV_SIZE = 256 << 10

NotificationCallback = Callable[[Notification], None]


class RemoteError(DumpdError):
    """The server answered a call with `[code, message]`.

    `code` is kept exactly as sent, even one this version of dumpd does not know, so
    it bypasses `DumpdError`'s check of known codes; `except DumpdError` still catches it.
    """

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, f"{code}: {message}")
        self.code = code
        self.message = message


class ServerUnreachable(ConnectionError):
    """The client cannot reach the server at `address`, or (`lost`) lost its connection.

    `errno` is the failed socket call's (ENOENT, ECONNREFUSED, EACCES, ...), ENOTSOCK when
    the path is not a socket, or None (the server closed the connection, TLS, a path too
    long). Timeouts of calls are not this: they stay `TimeoutError`, the connection usable.
    """

    def __init__(self, address: str, reason: str, *, errno: int | None = None,
                 lost: bool = False) -> None:
        super().__init__(f"{'lost the connection to' if lost else 'cannot connect to'} "
                         f"{address}: {reason}")
        self.address = address
        self.reason = reason
        self.errno = errno
        self.lost = lost


def _reason(exc: OSError) -> str:
    """One line for a socket error, TLS ones included."""
    if type(exc).__module__ == "ssl":  # ssl.SSLError: ssl is loaded when TLS is in use
        import ssl

        from dumpd.tls import describe

        return f"TLS: {describe(cast(ssl.SSLError, exc))}"
    return exc.strerror or str(exc)


def unreachable(address: str, exc: OSError, path: str | None = None) -> ServerUnreachable:
    """`exc`, raised while connecting to `address` (the Unix socket `path`), as
    `ServerUnreachable`; a refused connection to a file that is no socket says so."""
    code = exc.errno
    if path is not None and code == errno.ECONNREFUSED:
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return ServerUnreachable(address, "not a socket", errno=errno.ENOTSOCK)
        except OSError:
            pass
    return ServerUnreachable(address, _reason(exc), errno=code)


def _result(response: Response) -> Any:
    if response.error is not None:
        raise RemoteError(*response.error)
    return response.result


def _closing_error(event: Notification) -> RemoteError | None:
    """The server's `error` notification, sent just before it closes the connection."""
    params = event.params
    if event.method == "error" and len(params) == 2 and all(type(p) is str for p in params):
        return RemoteError(params[0], params[1])
    return None


def _expect(value: Any, kind: type, method: str) -> Any:
    if not isinstance(value, kind):
        raise ProtocolViolation(
            "EINVAL", f"{method} returned {type(value).__name__}, expected {kind.__name__}"
        )
    return value


def _extents(value: Any) -> list[tuple[int, int, str]]:
    runs = _expect(value, list, "extents")
    try:
        return [(int(offset), int(length), str(kind)) for offset, length, kind in runs]
    except (TypeError, ValueError) as exc:
        raise ProtocolViolation("EINVAL", f"extents returned a malformed run: {exc}") from exc


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
        self._max_frame = max_frame_size
        self._decoder = FrameDecoder("client", Limits(max_frame_size))
        self._abandoned: set[int] = set()  # msgids of calls given up (timeout, interrupt)
        self._server_error: RemoteError | None = None
        self._next_msgid = 0
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
        return _result(response)

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
                        self._server_error = _closing_error(event) or self._server_error

    def _lost(self, exc: OSError | None) -> ServerUnreachable:
        """The connection is gone: reset, broken, or (`exc` None) closed by the server;
        the reason the server sent before closing it, if it sent one, is the message."""
        if exc is not None and self._server_error is None:
            return ServerUnreachable(self.address, _reason(exc), errno=exc.errno, lost=True)
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
            try:
                events = self._decoder.feed(data)
            except ProtocolViolation as exc:  # not the server's error: not the caller's
                raise ServerUnreachable(self.address, "what answers there does not speak "
                                        f"dumpd's protocol ({exc})", lost=True) from exc
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
                elif isinstance(event, Notification):
                    self._server_error = _closing_error(event) or self._server_error
                    if self.on_notification is not None:
                        self.on_notification(event)
        return response

    def info(self) -> dict[str, Any]:
        """The dump and server description."""
        info: dict[str, Any] = _expect(self.call("info"), dict, "info")
        return info

    def read(self, offset: int, length: int) -> bytes:
        """File-view bytes `[offset, offset+length)`; short at the end, like pread."""
        data: bytes = _expect(self.call("read", offset, length), bytes, "read")
        return data

    def read_phys(self, paddr: int, length: int) -> bytes:
        """Bytes by physical address; ERANGE when PT_LOADs do not cover the range."""
        data: bytes = _expect(self.call("read_phys", paddr, length), bytes, "read_phys")
        return data

    def extents(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """`(offset, length, "data" | "zero")` runs of the file view."""
        return _extents(self.call("extents", offset, length))

    def stats(self) -> dict[str, Any]:
        """The server's counters."""
        stats: dict[str, Any] = _expect(self.call("stats"), dict, "stats")
        return stats

    def hook_register(self, name: str, options: dict[str, Any] | None = None,
                      distribution: str = "") -> Any:
        """Install the is-RAM hook `name` with `options`, from `distribution` when several
        declare `name`; EBUSY when one is installed."""
        extra = (distribution,) if distribution else ()
        return self.call("hook.register", name, options or {}, *extra)

    def hook_unregister(self) -> Any:
        """Remove the installed is-RAM hook."""
        return self.call("hook.unregister")

    def hook_reload(self) -> Any:
        """Have the installed hook reload its data; ENOSYS when it has none."""
        return self.call("hook.reload")

    def stream(self, offset: int, length: int, chunk: int | None = None,
               sink: int | None = None) -> Stream:
        """Stream `[offset, offset+length)` of the file view: iterate the returned `Stream`
        for `StreamData` / `StreamHole` / `StreamError` pieces in offset order; its
        `summary` holds the server's counts once iteration ends. With `sink` (a file
        descriptor), data goes straight into that file at its offsets (`splice`) and
        arrives as `StreamWritten` pieces."""
        msgid = self._next_msgid
        self._next_msgid = (msgid + 1) & MAX_MSGID
        options = {} if chunk is None else {"chunk": chunk}
        self._send(encode_request(msgid, "stream", [offset, length, options]))
        return Stream(self, msgid, sink)

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

    def __init__(self, client: Client, msgid: int, sink: int | None = None) -> None:
        self._client = client
        self.msgid = msgid
        # Calls complete one at a time, so the decoder holds no partial frame here.
        self._receiver = StreamReceiver(client._sock, msgid, client._max_frame,
                                        self._on_reply, self._on_notification, sink)
        self.summary: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[StreamPiece]:
        client = self._client
        try:
            yield from self._receiver
        finally:
            self._receiver.close()
        client._decoder.feed(self._receiver.leftover)  # frames of later replies, if any
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

    def _on_reply(self, msgid: int, error: Any, result: Any) -> None:
        if msgid not in self._client._abandoned:
            raise ProtocolViolation("EINVAL", f"response to msgid {msgid}, which is not pending")
        self._client._abandoned.discard(msgid)

    def _on_notification(self, method: str, params: Any) -> None:
        event = Notification(method, params)
        self._client._server_error = _closing_error(event) or self._client._server_error
        if self._client.on_notification is not None:
            self._client.on_notification(event)


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":  # loads asyncio only for those who use it
        from dumpd.asyncclient import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
