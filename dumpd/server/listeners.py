"""Binding the listening sockets: a Unix socket with mode 0600 (stale files replaced
only when nothing listens on them), and TCP when configured (a non-loopback address
only with TLS); who a Unix socket peer is (SO_PEERCRED, supplementary groups)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from dataclasses import dataclass

from dumpd import DEFAULT_SOCKET
from dumpd.errors import StartupError
from dumpd.hostport import split_host_port
from dumpd.unixpath import unusable

# The default socket's directory, the one directory dumpd creates (mode 0700, as the
# unit's RuntimeDirectory= would); any other socket's directory must exist.
DEFAULT_DIR = os.path.dirname(DEFAULT_SOCKET)


def bind_unix(path: str, backlog: int) -> socket.socket:
    """A listening Unix socket at `path`, created with mode 0600; `backlog` connections
    may wait to be accepted (beyond it a client's connect fails with EAGAIN)."""
    problem = unusable(path)
    if problem:
        raise StartupError(f"{path}: {problem}")
    _remove_stale(path)
    _check_directory(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is wider than 0600
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"{path}: cannot bind: {_why(exc)}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _check_directory(path: str) -> None:
    """The socket's directory exists (the default's is created: nothing else is)."""
    parent = os.path.dirname(path) or "."
    if os.path.normpath(os.path.abspath(parent)) == DEFAULT_DIR:
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StartupError(f"{path}: cannot create directory {parent}: {_why(exc)}"
                               ) from exc
        return
    try:
        os.stat(parent)
    except FileNotFoundError:
        raise StartupError(f"{path}: directory {parent} does not exist (dumpd creates only "
                           f"{DEFAULT_DIR}, for its default socket)") from None
    except OSError:
        pass  # binding says what is wrong


def _why(exc: OSError) -> str:
    """An OSError's reason; some (a path too long, a bad address) have no strerror."""
    return exc.strerror or str(exc)


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"{path}: {_why(exc)}") from exc
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
        raise StartupError(f"{path}: cannot probe existing socket: {_why(exc)}") from exc
    finally:
        probe.close()
    raise StartupError(f"{path}: another server is listening on it")


def bind_tcp(address: str, backlog: int) -> socket.socket:
    """A listening TCP socket at `HOST:PORT` (the configuration allows a non-loopback
    address only with TLS)."""
    host, port = split_host_port(address)  # checked by the configuration
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"tcp {address}: cannot bind: {_why(exc)}") from exc
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True, slots=True)
class Credentials:
    """A Unix socket peer's process, user and primary group when it connected."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Credentials | None:
    """The connected peer's SO_PEERCRED (None for non-Unix sockets)."""
    if sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Credentials(*struct.unpack("3i", creds))


def supplementary_groups(creds: Credentials) -> frozenset[int]:
    """The peer's supplementary groups, from the `Groups:` line of /proc/PID/status.

    Empty when that file cannot be read (the process is gone, or hidden: `hidepid`,
    systemd's `ProtectProc=invisible`) or when the process there no longer has the
    peer's effective uid (it exited and the pid was reused): then only the primary
    group from SO_PEERCRED counts.
    """
    try:
        with open(f"/proc/{creds.pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return frozenset()
    fields: dict[bytes, list[bytes]] = {}
    for line in status.splitlines():
        key, _, values = line.partition(b":")
        fields[key] = values.split()
    uids = fields.get(b"Uid", [])  # real, effective, saved, file system
    if len(uids) < 2 or int(uids[1]) != creds.uid:
        return frozenset()
    return frozenset(map(int, fields.get(b"Groups", [])))
