"""Who may read the dump: the socket's mode and the peer's credentials, tried as a real
other user (nobody) from a forked child."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dumpd.protocol import FrameDecoder, Limits, Notification, Response, encode_request
from tests.conftest import serving
from tests.dumps import build_raw, file_bytes

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse, so only the socket's own mode decides."""
    with tempfile.TemporaryDirectory(prefix="dumpd-access-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def _child(path: str, frames: bytes, out: int) -> None:
    """In the forked child: become nobody, send `frames`, report what came back."""
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            try:
                sock.connect(path)
            except PermissionError:
                os.write(out, b"connect: EACCES")
                return
            sock.sendall(frames)
            sock.shutdown(socket.SHUT_WR)
            while data := sock.recv(65536):
                os.write(out, data)
    finally:
        os._exit(0)


async def as_nobody(path: str, *requests: tuple[str, list[object]]) -> bytes:
    """What a client running as nobody receives for `requests` (until the server closes)."""
    frames = b"".join(encode_request(i, m, p) for i, (m, p) in enumerate(requests))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(path, frames, write_end)
    os.close(write_end)
    loop = asyncio.get_running_loop()

    def collect() -> bytes:
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        os.waitpid(pid, 0)
        return b"".join(chunks)

    return await loop.run_in_executor(None, collect)


def events(data: bytes) -> list[Response | Notification]:
    return [e for e in FrameDecoder("client", Limits(1 << 20)).feed(data)
            if isinstance(e, Response | Notification)]


async def test_socket_mode_0600_keeps_other_users_out(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    async with serving(shared_dir, dump.path) as server:
        got = await as_nobody(server.config.server.socket, ("info", []))
        assert server.refused == 0
    assert got == b"connect: EACCES"


async def test_peer_credentials_refuse_other_uids(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    async with serving(shared_dir, dump.path) as server:
        os.chmod(server.config.server.socket, 0o666)  # as if an operator widened the mode
        got = await as_nobody(server.config.server.socket, ("read", [0, 8]))
        assert server.refused == 1
    refusal = f"uid {NOBODY} is not allowed to read this dump"
    assert events(got) == [Notification("error", ["EACCES", refusal])]


async def test_allowed_uid_reads_but_may_not_change_the_hook(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    async with serving(shared_dir, dump.path, allow_uids=(NOBODY,)) as server:
        os.chmod(server.config.server.socket, 0o666)
        got = await as_nobody(server.config.server.socket, ("read", [0, 8]),
                              ("hook.register", ["none", {}]), ("hook.unregister", []),
                              ("hook.reload", []))
        assert server.refused == 0
        assert server.engine is not None and server.engine.hook_name is None
    replies = {e.msgid: e for e in events(got) if isinstance(e, Response)}
    assert replies[0].error is None and replies[0].result == file_bytes(dump.path, 0, 8)
    assert replies[1].error == ("EACCES", "hook.register is for administrators only")
    assert replies[2].error == ("EACCES", "hook.unregister is for administrators only")
    assert replies[3].error == ("EACCES", "hook.reload is for administrators only")


async def test_admin_uids_may_change_the_hook(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    replies = []
    async with serving(shared_dir, dump.path, admin_uids=(NOBODY,)) as server:
        os.chmod(server.config.server.socket, 0o666)
        for request in (("hook.register", ["none", {}]), ("hook.reload", []),
                        ("hook.unregister", [])):  # one at a time: requests run concurrently
            got = events(await as_nobody(server.config.server.socket, request))
            assert len(got) == 1 and isinstance(got[0], Response)
            replies.append((got[0].error, got[0].result))
        assert server.refused == 0
        assert server.engine is not None and server.engine.slot.generation == 2
    assert replies == [(None, {"hook": "none"}),
                       (("ENOSYS", "hook 'none' has no data to reload"), None),
                       (None, {"hook": "none"})]
