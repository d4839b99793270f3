"""Serving TLS on TCP listeners: accept, handshake (client certificate required), serve.

Each listening socket gets an accept loop; each accepted connection its handshake
(`loop.connect_accepted_socket` with the server's context), at most `max_pending` at
once and each for at most `HANDSHAKE_TIMEOUT` seconds. A handshake TLS refuses (no
client certificate, one from another CA, no common protocol) is reported with the
peer's address and why; `create_server(ssl=...)` would hide it. Only a finished
handshake reaches the connection's protocol (`connection_made`).

The connections' transports carry the extra info "sslcontext", "ssl_object" and
"peercert"; the connection never hands their socket to `sendfile` (which would send
plaintext past TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from dumpd.hostport import join_host_port
from dumpd.ratelog import RateLimitedLog
from dumpd.tls import describe

log = logging.getLogger("dumpd.server")

HANDSHAKE_TIMEOUT = 10.0  # seconds a client may take to complete the TLS handshake
ACCEPT_RETRY = 1.0  # seconds to wait when accept fails for want of resources (fds)
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
               "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L"}


def subject(peercert: dict[str, Any]) -> str:
    """A certificate's subject as one string, e.g. `CN=backup,O=Example`."""
    return ",".join(f"{SHORT_NAMES.get(key, key)}={value}"
                    for rdn in peercert.get("subject", ()) for key, value in rdn)


def address(name: Any) -> str:
    """`HOST:PORT` of a socket address (`[HOST]:PORT` for IPv6)."""
    if isinstance(name, tuple) and len(name) >= 2:
        return join_host_port(str(name[0]), name[1])
    return str(name)


class TlsListeners:
    """The TLS listeners of one server, and their handshakes in progress.

    `on_refused(peer, why)` is called for each handshake TLS refused.
    """

    def __init__(self, context: ssl.SSLContext, make_protocol: Callable[[], asyncio.Protocol],
                 on_refused: Callable[[str, str], None], max_pending: int) -> None:
        self._context = context
        self._make_protocol = make_protocol
        self._on_refused = on_refused
        self._max_pending = max_pending
        self._sockets: list[socket.socket] = []
        self._accepting: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._log = RateLimitedLog(log)

    @property
    def pending(self) -> int:
        """Handshakes in progress."""
        return len(self._pending)

    def serve(self, sock: socket.socket) -> None:
        """Accept TLS connections on the listening socket `sock` (now ours to close)."""
        sock.setblocking(False)
        self._sockets.append(sock)
        _spawn(self._accepting, self._accept(sock))

    async def close(self) -> None:
        """Stop accepting and drop the handshakes in progress (served connections stay)."""
        tasks = [*self._accepting, *self._pending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the loop lets go of the fds
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        where = address(sock.getsockname())
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except ConnectionAbortedError:  # the client gave up while queued
                continue
            except OSError as exc:
                self._log.warning(f"accept {exc.errno}", f"cannot accept on {where}: "
                                  f"{exc.strerror}")
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            if len(self._pending) >= self._max_pending:
                self._log.warning("tls busy", f"{len(self._pending)} TLS handshakes are in "
                                  f"progress already: closed a connection from {address(peer)}")
                conn.close()
                continue
            _spawn(self._pending, self._handshake(conn, address(peer)))

    async def _handshake(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self._make_protocol, conn, ssl=self._context,
                                               ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except ssl.SSLError as exc:
            self._on_refused(peer, describe(exc))
        except OSError as exc:  # gone or silent before the handshake ended: nothing refused
            log.debug("TLS handshake with %s did not finish: %s", peer, exc)


def _spawn(tasks: set[asyncio.Task[None]], coro: Any) -> None:
    """Run `coro` as a task kept in `tasks` until it ends."""
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.error("TLS listener failed", exc_info=task.exception())
