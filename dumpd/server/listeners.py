"""Binding the listening sockets: a Unix socket with mode 0600 (stale files replaced
only when nothing listens on them), and TCP on loopback only when configured."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct

from dumpd.errors import StartupError


def bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at `path`, created with mode 0600."""
    _remove_stale(path)
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{path}: cannot create directory {parent}: {exc.strerror}") from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is wider than 0600
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"{path}: cannot bind: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"{path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: left by a server that is gone
        return
    except OSError as exc:
        raise StartupError(f"{path}: cannot probe existing socket: {exc.strerror}") from exc
    finally:
        probe.close()
    raise StartupError(f"{path}: another server is listening on it")


def bind_tcp(address: str) -> socket.socket:
    """A listening TCP socket at `HOST:PORT` (the configuration allows loopback only)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise StartupError(f"tcp {address}: cannot bind: {exc.strerror}") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int | None:
    """The connected peer's uid from SO_PEERCRED (None for non-Unix sockets)."""
    if sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
