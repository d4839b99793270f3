"""What both clients raise: the server's error replies, and a server out of reach."""

from __future__ import annotations

import errno
import os
import stat
from typing import cast

from dumpd.errors import DumpdError


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


def reason(exc: OSError) -> str:
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
    return ServerUnreachable(address, reason(exc), errno=code)
