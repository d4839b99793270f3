"""The clients against a tiny fake dumpd: a real asyncio Unix socket server in tmp_path.

The fake speaks raw msgpack (not `dumpd.protocol`), so the client is checked against
the wire format itself. Its methods:
- `echo [x]` -> x at once;
- `held [x, n]` -> x, but held until n `held` requests have come, then all are answered
  in reverse order of arrival, byte by byte in one stream (out of order, fragmented);
- `fail [code, message]` -> error `[code, message]`;
- `bytes [n]` -> bin of n bytes;
- `notify [x]` -> a notification `tick [x]` first, then x;
- `hang []` -> never answered; `drop []` -> the server closes the connection;
- `info`, `read`, `read_phys`, `extents`, `stats` -> canned results.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from dumpd.client import Client, RemoteError, ServerUnreachable
from dumpd.client.aio import AsyncClient
from dumpd.errors import DumpdError
from dumpd.protocol import Notification, ProtocolViolation

DUMP = bytes(range(256)) * 64  # the fake's 16 KiB "file view"
INFO = {
    "version": "0.1.0",
    "protocol": 1,
    "source": {"kind": "elf", "path": "/tmp/vmcore"},
    "size": len(DUMP),
    "page_size": 4096,
    "segments": [[0x1000, 0x1000, 0x3000, 0x4000]],
    "hook": None,
}


def packb(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


class FakeServer:
    """Answers msgpack-RPC on a Unix socket; records what it received."""

    def __init__(self) -> None:
        self.requests: list[list[Any]] = []
        self.connections = 0
        self._held: list[tuple[int, Any]] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while data := await reader.read(65536):
                unpacker.feed(data)
                for message in unpacker:
                    self.requests.append(message)
                    if not await self._answer(message, writer):
                        return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, message: list[Any], writer: asyncio.StreamWriter) -> bool:
        kind, msgid, method, params = message
        assert kind == 0
        if method == "drop":
            return False
        if method == "hang":
            return True
        if method == "held":
            self._held.append((msgid, params[0]))
            if len(self._held) == params[1]:
                stream = b"".join(packb([1, i, None, x]) for i, x in reversed(self._held))
                self._held.clear()
                for pos in range(len(stream)):
                    writer.write(stream[pos : pos + 1])
                    await writer.drain()
            return True
        if method == "notify":
            writer.write(packb([2, "tick", params]))
        writer.write(packb(self._result(msgid, method, params)))
        await writer.drain()
        return True

    @staticmethod
    def _result(msgid: int, method: str, params: list[Any]) -> list[Any]:
        if method == "fail":
            return [1, msgid, [params[0], params[1]], None]
        results: dict[str, Any] = {
            "echo": lambda: params[0] if params else None,
            "notify": lambda: params[0],
            "bytes": lambda: bytes(params[0]),
            "info": lambda: INFO,
            "read": lambda: DUMP[params[0] : params[0] + params[1]],
            "read_phys": lambda: DUMP[params[0] - 0x1000 : params[0] - 0x1000 + params[1]],
            "extents": lambda: [[0, 4096, "data"], [4096, 8192, "zero"]],
            "stats": lambda: {"hook_calls": 3, "uptime": 1.5, "connections": 1},
            "hook.register": lambda: {"hook": params[0]},
        }
        if method not in results:
            return [1, msgid, ["ENOSYS", f"no method {method!r}"], None]
        return [1, msgid, None, results[method]()]

    def close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeServer, str]]:
    server = FakeServer()
    path = str(tmp_path / "dumpd.sock")
    listener = await asyncio.start_unix_server(server.handle, path)
    try:
        yield server, path
    finally:
        server.close_all()
        listener.close()
        await listener.wait_closed()


# -- AsyncClient -----------------------------------------------------------------------


async def test_typed_methods(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    async with await AsyncClient.connect(path) as client:
        assert await client.info() == INFO
        assert await client.read(10, 20) == DUMP[10:30]
        assert await client.read_phys(0x1100, 16) == DUMP[0x100:0x110]
        assert await client.extents(0, 12288) == [(0, 4096, "data"), (4096, 8192, "zero")]
        assert (await client.stats())["hook_calls"] == 3
        assert await client.hook_register("balloon", {"x": 1}) == {"hook": "balloon"}


async def test_requests_are_msgpack_rpc_with_distinct_msgids(
    fake: tuple[FakeServer, str],
) -> None:
    server, path = fake
    async with await AsyncClient.connect(path) as client:
        await asyncio.gather(client.call("echo", 1), client.call("read", 0, 1))
    by_method = {request[2]: request for request in server.requests}
    assert by_method["echo"][3] == [1]
    assert by_method["read"][3] == [0, 1]
    assert all(request[0] == 0 and type(request[1]) is int for request in server.requests)
    assert len({request[1] for request in server.requests}) == 2


async def test_out_of_order_fragmented_responses_match_their_calls(
    fake: tuple[FakeServer, str],
) -> None:
    _, path = fake
    async with await AsyncClient.connect(path) as client:
        n = 50
        results = await asyncio.gather(*(client.call("held", f"v{i}", n) for i in range(n)))
        assert results == [f"v{i}" for i in range(n)]


async def test_pipelining_many_calls_on_one_connection(fake: tuple[FakeServer, str]) -> None:
    server, path = fake
    async with await AsyncClient.connect(path) as client:
        results = await asyncio.gather(*(client.call("echo", i) for i in range(2000)))
    assert results == list(range(2000))
    assert server.connections == 1


async def test_large_bin_result(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    async with await AsyncClient.connect(path) as client:
        data = await client.call("bytes", 8 << 20)
    assert data == bytes(8 << 20)


async def test_remote_error_keeps_the_code_even_unknown(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    async with await AsyncClient.connect(path) as client:
        with pytest.raises(RemoteError) as info:
            await client.call("fail", "ERANGE", "not covered")
        assert (info.value.code, info.value.message) == ("ERANGE", "not covered")
        with pytest.raises(DumpdError) as caught:
            await client.call("fail", "EFUTURE", "a code from a newer server")
        assert caught.value.code == "EFUTURE"
        with pytest.raises(RemoteError) as info:
            await client.call("nope")
        assert info.value.code == "ENOSYS"
        assert await client.call("echo", "still usable") == "still usable"


async def test_wrong_result_type_is_a_protocol_violation(
    fake: tuple[FakeServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = fake
    # Every method answered with a list: the typed methods refuse it.
    monkeypatch.setattr(
        FakeServer, "_result", staticmethod(lambda msgid, method, params: [1, msgid, None, [1]])
    )
    async with await AsyncClient.connect(path) as client:
        for method in (client.stats, client.info):
            with pytest.raises(ProtocolViolation):
                await method()
        with pytest.raises(ProtocolViolation):
            await client.read(0, 1)
        with pytest.raises(ProtocolViolation):
            await client.extents(0, 1)


async def test_notifications_go_to_the_callback(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    seen: list[Notification] = []
    async with await AsyncClient.connect(path, on_notification=seen.append) as client:
        assert await client.call("notify", 42) == 42
    assert seen == [Notification("tick", [42])]


async def test_connection_loss_fails_every_pending_call(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    async with await AsyncClient.connect(path) as client:
        pending = [asyncio.ensure_future(client.call("hang")) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in pending)
        with pytest.raises(ConnectionError):
            await client.call("drop")
        for task in pending:
            with pytest.raises(ConnectionError):
                await task
        with pytest.raises(ConnectionError):
            await client.call("echo", 1)


async def test_server_error_notification_is_the_cause_of_the_loss(tmp_path: Path) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(packb([2, "error", ["EACCES", "uid 1000 is not allowed"]]))
        writer.close()
        await writer.wait_closed()

    path = str(tmp_path / "refuse.sock")
    listener = await asyncio.start_unix_server(refuse, path)
    try:
        async with await AsyncClient.connect(path) as client:
            with pytest.raises(ConnectionError) as info:
                await client.info()
        assert isinstance(info.value.__cause__, RemoteError)
        assert info.value.__cause__.code == "EACCES"
    finally:
        listener.close()
        await listener.wait_closed()


async def test_close_fails_pending_calls(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    client = await AsyncClient.connect(path)
    pending = asyncio.ensure_future(client.call("hang"))
    await asyncio.sleep(0.01)
    await client.close()
    with pytest.raises(ConnectionError):
        await pending


async def test_cancelled_call_leaves_the_connection_usable(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    async with await AsyncClient.connect(path) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.call("hang")
        assert not client._pending
        assert await client.call("echo", "after") == "after"


async def test_garbage_from_the_server_fails_pending_calls(tmp_path: Path) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\xc1")
        await writer.drain()
        await reader.read(100)
        writer.close()

    path = str(tmp_path / "garbage.sock")
    listener = await asyncio.start_unix_server(garbage, path)
    try:
        client = await AsyncClient.connect(path)
        with pytest.raises(ConnectionError) as info:
            await client.call("echo", 1)
        assert isinstance(info.value.__cause__, ProtocolViolation)
        await client.close()
    finally:
        listener.close()
        await listener.wait_closed()


# -- Client (blocking) -----------------------------------------------------------------


def _sync_session(path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: list[Notification] = []
    with Client.connect(path, timeout=10, on_notification=seen.append) as client:
        out["info"] = client.info()
        out["read"] = client.read(100, 50)
        out["read_phys"] = client.read_phys(0x1000, 8)
        out["extents"] = client.extents(0, 12288)
        out["stats"] = client.stats()
        out["big"] = client.call("bytes", 3 << 20)
        out["notify"] = client.call("notify", "n")
        with pytest.raises(RemoteError) as info:
            client.call("fail", "EWEIRD", "unknown code")
        out["error"] = (info.value.code, info.value.message)
        out["echo"] = client.call("echo", [1, "two", b"three"])
    out["seen"] = seen
    return out


async def test_sync_client(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    out = await asyncio.to_thread(_sync_session, path)
    assert out["info"] == INFO
    assert out["read"] == DUMP[100:150]
    assert out["read_phys"] == DUMP[0:8]
    assert out["extents"] == [(0, 4096, "data"), (4096, 8192, "zero")]
    assert out["stats"]["uptime"] == 1.5
    assert out["big"] == bytes(3 << 20)
    assert out["notify"] == "n"
    assert out["error"] == ("EWEIRD", "unknown code")
    assert out["echo"] == [1, "two", b"three"]
    assert out["seen"] == [Notification("tick", ["n"])]


def _sync_timeout_then_retry(path: str) -> tuple[str, Any]:
    with Client.connect(path, timeout=0.2) as client:
        # The first `held` is answered only after the second arrives: it times out,
        # and its late response must be skipped by the next call.
        with pytest.raises(socket.timeout):
            client.call("held", "late", 2)
        client._sock.settimeout(10)
        first = client.call("held", "now", 2)
        return first, client.call("echo", "next")


async def test_sync_client_skips_the_late_response_of_an_abandoned_call(
    fake: tuple[FakeServer, str],
) -> None:
    _, path = fake
    assert await asyncio.to_thread(_sync_timeout_then_retry, path) == ("now", "next")


def _sync_drop(path: str) -> None:
    with Client.connect(path, timeout=10) as client, pytest.raises(ServerUnreachable) as err:
        client.call("drop")
    assert (str(err.value), err.value.lost) == (
        f"lost the connection to {path}: the server closed it", True)


async def test_sync_client_connection_loss(fake: tuple[FakeServer, str]) -> None:
    _, path = fake
    await asyncio.to_thread(_sync_drop, path)


async def test_both_clients_say_why_they_cannot_connect(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    long = tmp_path / ("x" * (108 - len(str(tmp_path)) - 1))
    cases = [
        (tmp_path / "none.sock", errno.ENOENT, "No such file or directory"),
        (stale, errno.ECONNREFUSED, "Connection refused"),
        (tmp_path, errno.ENOTSOCK, "not a socket"),
        (long, None, "socket path is 108 bytes, the limit is 107"),
    ]
    for path, code, reason in cases:
        for connect in (Client.connect, AsyncClient.connect):
            with pytest.raises(ServerUnreachable) as err:
                client = connect(str(path))
                if asyncio.iscoroutine(client):
                    await client
            assert (str(err.value), err.value.errno, err.value.lost) == (
                f"cannot connect to {path}: {reason}", code, False)
            assert isinstance(err.value, ConnectionError)  # what callers caught before
