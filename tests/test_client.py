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
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import mypy.api
import pytest

from dumpd.client import (
    Client,
    RemoteError,
    ServerUnreachable,
    StreamData,
    StreamError,
    StreamHole,
    StreamWritten,
)
from dumpd.client.aio import AsyncClient
from dumpd.errors import DumpdError
from dumpd.protocol import Notification, ProtocolViolation, encode_bin_notification_head
from tests.daemon import ENV, ROOT, served
from tests.dumps import build_raw

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


# -- one validation path: the stream receiver, both clients ------------------------------
#
# Each malformed frame is fed, as the server's answer to a `stream` (msgid 0), to the
# blocking client's stream receiver over a real socket pair, and to both clients outside
# a stream: all raise the same `ProtocolViolation`, the decoder's or the stream pieces'.

def stream_frames(frames: bytes, max_frame_size: int = 1 << 20, sink: int | None = None
                  ) -> tuple[list[Any], dict[str, Any] | None]:
    """The pieces (data copied out) and summary of stream 0 answered with `frames`."""
    mine, theirs = socket.socketpair()
    with mine, theirs, Client(mine, max_frame_size=max_frame_size) as client:
        theirs.sendall(frames)  # before the request: the socket pair buffers it
        stream = client.stream(0, 1 << 20, sink=sink)
        pieces = [StreamData(p.offset, memoryview(bytes(p.data)))
                  if isinstance(p, StreamData) else p for p in stream]
        request = msgpack.unpackb(theirs.recv(1 << 16))
        assert request == [0, 0, "stream", [0, 1 << 20, {}]]
        return pieces, stream.summary


def violation_in_stream(frames: bytes, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ProtocolViolation) as err:
        stream_frames(frames, **kwargs)
    return err.value.code, err.value.message


def violation_in_blocking_call(frames: bytes) -> tuple[str, str]:
    mine, theirs = socket.socketpair()
    with mine, theirs, Client(mine) as client, pytest.raises(ServerUnreachable) as err:
        theirs.sendall(frames + packb([1, 0, None, INFO]))
        client.info()
    assert err.value.lost
    cause = err.value.__cause__
    assert isinstance(cause, ProtocolViolation)
    assert str(err.value) == ("lost the connection to dumpd: what answers there does not "
                              f"speak dumpd's protocol ({cause})")
    return cause.code, cause.message


async def violation_in_async_call(tmp_path: Path, frames: bytes) -> tuple[str, str]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(frames + packb([1, 0, None, INFO]))
        await writer.drain()
        await reader.read(100)  # until the client gives up on the connection
        writer.close()

    path = str(tmp_path / "frames.sock")
    listener = await asyncio.start_unix_server(answer, path)
    try:
        async with await AsyncClient.connect(path) as client:
            with pytest.raises(ConnectionError) as err:
                await client.info()
    finally:
        listener.close()
        await listener.wait_closed()
    cause = err.value.__cause__
    assert isinstance(cause, ProtocolViolation)
    return cause.code, cause.message


def bad_utf8(method: str) -> bytes:
    """`[2, method, [0, 0, <a str of the byte 0xff>]]`, which msgpack cannot build."""
    return packb([2, method, [0, 0, "?"]])[:-1] + b"\xff"


HOLE = "stream.hole params must be [msgid, offset, length, reason?], got "
DATA = "stream.data params must be [msgid, offset, bin], got "
ERROR = "stream.error params must be [msgid, offset, length, code, message], got "
MALFORMED = [
    (packb([2, "stream.hole", []]), HOLE + "[]"),
    (packb([2, "stream.hole", [0, 0]]), HOLE + "[0, 0]"),
    (packb([2, "stream.hole", [0, 0, 4096, 1]]), HOLE + "[0, 0, 4096, 1]"),
    (packb([2, "stream.hole", [0, 0, 4096, b"zero"]]), HOLE + "[0, 0, 4096, b'zero']"),
    (packb([2, "stream.hole", [0, 0, 4096, "zero", 1]]), HOLE + "[0, 0, 4096, 'zero', 1]"),
    (packb([2, "stream.hole", [0, 0, "4096"]]), HOLE + "[0, 0, '4096']"),
    (packb([2, "stream.hole", [0, -1, 4096]]), HOLE + "[0, -1, 4096]"),
    (packb([2, "stream.hole", [0, 0, True]]), HOLE + "[0, 0, True]"),
    (packb([2, "stream.hole", [0, 0, 1.5]]), HOLE + "[0, 0, 1.5]"),
    (packb([2, "stream.hole", [2**32, 0, 1]]), HOLE + "[4294967296, 0, 1]"),
    (packb([2, "stream.data", [0, 0, "not bin"]]), DATA + "[0, 0, 'not bin']"),
    (packb([2, "stream.data", [0, "x", b"ab"]]), DATA + "[0, 'x', b'ab']"),
    (packb([2, "stream.data", [None, 0, b"ab"]]), DATA + "[None, 0, b'ab']"),
    (packb([2, "stream.data", [0, 0]]), DATA + "[0, 0]"),
    (packb([2, "stream.error", [0, 0, 4096, "EIO"]]), ERROR + "[0, 0, 4096, 'EIO']"),
    (packb([2, "stream.error", [0, 0, 4096, 5, "bad"]]), ERROR + "[0, 0, 4096, 5, 'bad']"),
    (packb([2, "stream.error", [0, 0, 4096, "EIO", b"bad"]]),
     ERROR + "[0, 0, 4096, 'EIO', b'bad']"),
    (packb([2, "stream.error", [0, 0, -5, "EIO", "bad"]]), ERROR + "[0, 0, -5, 'EIO', 'bad']"),
    (bad_utf8("stream.hole"), "invalid UTF-8 in a str: invalid start byte"),
    (packb([2, "stream.hole", [0, 0, 1]])[:2] + b"\xab\xff" + b"tream.hole"
     + packb([0, 0, 1]), "invalid UTF-8 in a str: invalid start byte"),
    (packb([2, "stream.hole", {"a": 1}]),
     "malformed notification [2, 'stream.hole', {'a': 1}]"),
    (packb([2, "stream.hole", [0, 0, {b"k": 1}]]), "a map key must be a str, got bytes"),
    (packb([3, "stream.hole", [0, 0, 1]]),
     "expected a response or notification, got [3, 'stream.hole', [0, 0, 1]]"),
    (b"\xc1", "bytes are not msgpack"),
]


@pytest.mark.parametrize(("frame", "message"), MALFORMED)
async def test_a_malformed_frame_is_the_same_violation_for_every_reader(
        tmp_path: Path, frame: bytes, message: str) -> None:
    assert violation_in_stream(frame) == ("EINVAL", message)
    assert violation_in_blocking_call(frame) == ("EINVAL", message)
    assert await violation_in_async_call(tmp_path, frame) == ("EINVAL", message)


@pytest.mark.parametrize(("result", "shown"), [
    ([1], "[1]"),
    ({"bytes": 0, "data_bytes": 0, "hole_bytes": 0, "error_bytes": 0}, None),
    ({"bytes": 0, "data_bytes": 0, "hole_bytes": "0", "error_bytes": 0, "cancelled": False},
     None),
    ({"bytes": 0, "data_bytes": 0, "hole_bytes": 0, "error_bytes": 0, "cancelled": 0}, None),
    (None, "None"),
])
def test_a_malformed_stream_summary_is_a_violation(result: Any, shown: str | None) -> None:
    from dumpd.protocol import brief

    want = ("EINVAL", f"stream returned {shown or brief(result)}, expected {{bytes, "
            "data_bytes, hole_bytes, error_bytes: uint, cancelled: bool}")
    assert violation_in_stream(packb([1, 0, None, result])) == want


SUMMARY = {"bytes": 8, "data_bytes": 8, "hole_bytes": 0, "error_bytes": 0,
           "cancelled": False}


def test_a_data_head_for_another_msgid_or_beyond_a_uint32_is_a_violation() -> None:
    other = encode_bin_notification_head("stream.data", [7, 0], 2) + b"ab"
    assert violation_in_stream(other) == ("EINVAL", "stream.data for msgid 7, not 0")
    huge = encode_bin_notification_head("stream.data", [2**32, 0], 2) + b"ab"
    assert violation_in_stream(huge) == (
        "EINVAL", DATA + "[4294967296, 0, '<2 bytes>']")


def test_a_data_frame_over_the_limit_is_refused_before_its_payload() -> None:
    head = encode_bin_notification_head("stream.data", [0, 0], 1 << 20)
    assert violation_in_stream(head, max_frame_size=1 << 16) == (
        "E2BIG", f"frame of {len(head) + (1 << 20)} bytes exceeds 65536")
    hole = packb([2, "stream.hole", [0, 0, 1, "x" * 70000]])  # a complete frame too big
    assert violation_in_stream(hole + packb([1, 0, None, SUMMARY]), max_frame_size=1 << 16
                               ) == ("E2BIG", f"frame of {len(hole)} bytes exceeds 65536")


def test_a_data_frame_the_fast_path_does_not_recognise_is_decoded_whole(
        tmp_path: Path) -> None:
    # "stream.data" as str8 instead of fixstr: valid msgpack-RPC, not the fast path's head.
    frame = (b"\x93\x02\xd9\x0bstream.data" + packb([0, 3, b"abcdefgh"])
             + packb([2, "stream.hole", [0, 11, 5]]) + packb([1, 0, None, SUMMARY]))
    assert stream_frames(frame) == ([StreamData(3, memoryview(b"abcdefgh")),
                                     StreamHole(11, 5)], SUMMARY)
    with open(tmp_path / "sink", "w+b") as sink:
        assert stream_frames(frame, sink=sink.fileno()) == (
            [StreamWritten(3, 8), StreamHole(11, 5)], SUMMARY)
        assert sink.read() == b"\0\0\0abcdefgh"


def test_pieces_of_every_kind_through_the_fast_path_and_the_decoder() -> None:
    frames = (encode_bin_notification_head("stream.data", [0, 0], 4) + b"abcd"
              + packb([2, "stream.hole", [0, 4, 4096]])
              + packb([2, "stream.error", [0, 4100, 4096, "EIO", "bad page"]])
              + packb([1, 0, None, {**SUMMARY, "extra": "ignored"}]))
    assert stream_frames(frames) == ([StreamData(0, memoryview(b"abcd")),
                                      StreamHole(4, 4096),
                                      StreamError(4100, 4096, "EIO", "bad page")],
                                     {**SUMMARY, "extra": "ignored"})


# -- the client package's shape ------------------------------------------------------------

NO_ASYNCIO = """
import sys
from dumpd.cli import main
from dumpd.client import Client
status = main(sys.argv[2:])
with Client.connect(sys.argv[1], timeout=30) as client:
    pieces = sum(1 for _ in client.stream(0, 1 << 20))
    client.info()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("asyncio", "uvloop"))
print(status, pieces > 0, loaded)
"""


def test_the_blocking_client_and_fetch_load_no_asyncio(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 1 << 20)
    with served(tmp_path, dump.path) as sock:
        result = subprocess.run(
            [sys.executable, "-c", NO_ASYNCIO, sock, "fetch", "-q", "-o",
             str(tmp_path / "copy"), "--verify", "--socket", sock],
            capture_output=True, env=ENV, timeout=60, check=False)
    assert (result.stdout.decode(), result.stderr) == ("0 True []\n", b"")
    assert (tmp_path / "copy").read_bytes() == Path(dump.path).read_bytes()


MISTYPED = """
import asyncio
from dumpd.client import Client
from dumpd.client.aio import AsyncClient

async def main() -> None:
    client = await AsyncClient.connect("/nonexistent")
    await client.no_such_method()
    data: str = await client.read(0, 1)

Client.connect("/nonexistent").no_such_method()
"""


def test_mypy_knows_both_clients_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    (tmp_path / "snippet.py").write_text(MISTYPED)
    monkeypatch.setenv("MYPYPATH", ROOT)  # this checkout's dumpd, whatever is installed
    out, _, status = mypy.api.run([
        "--strict", "--no-incremental", "--cache-dir", os.devnull, "--config-file",
        os.path.join(ROOT, "pyproject.toml"), str(tmp_path / "snippet.py")])
    found = [line.split(": ", 1)[1] for line in out.splitlines() if ": error: " in line]
    assert (status, found) == (1, [
        'error: "AsyncClient" has no attribute "no_such_method"  [attr-defined]',
        'error: Incompatible types in assignment (expression has type "bytes", variable '
        'has type "str")  [assignment]',
        'error: "Client" has no attribute "no_such_method"  [attr-defined]',
    ])
