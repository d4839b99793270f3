"""`stream`, `stream.cancel` and `digest` through a real server on a real socket.

The blocking client runs on a thread beside the server's loop, as a copier would run
in its own process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dumpd.client import Client, RemoteError, StreamData, StreamError, StreamHole
from dumpd.engine.bulk import Span
from dumpd.server.zerocopy import SocketWriter
from tests.dumps import build_raw, file_bytes
from tests.servers import failing, serving, until
from tests.views import BALLOONED, PAGE, ZERO_PFNS, balloon_file, expected_view, streamed_dump

MiB = 1 << 20


def collect(path: str, offset: int, length: int, chunk: int | None = None
            ) -> tuple[list[Any], dict[str, Any] | None]:
    """Every piece of a stream (data copied out), and the summary."""
    with Client.connect(path, timeout=30) as client:
        stream = client.stream(offset, length, chunk)
        pieces = [StreamData(p.offset, memoryview(bytes(p.data))) if isinstance(p, StreamData)
                  else p for p in stream]
        assert client.info()["size"] > 0  # the connection is usable after the stream
        return pieces, stream.summary


def assemble(size: int, pieces: list[Any]) -> bytes:
    """The view as a client must rebuild it: data, then zeros where an error says so
    (an error may follow data that covered the same bytes: the error wins)."""
    out = bytearray(size)
    for piece in pieces:
        if isinstance(piece, StreamData):
            out[piece.offset : piece.offset + len(piece.data)] = piece.data
        elif isinstance(piece, StreamError):
            out[piece.offset : piece.offset + piece.length] = bytes(piece.length)
    return bytes(out)


@pytest.mark.parametrize("kind", ["elf", "raw"])
@pytest.mark.parametrize(("sendfile", "chunk"), [(True, MiB), (True, 64 * 1024),
                                                 (False, MiB)])
async def test_a_stream_is_the_view_with_holes_for_non_ram(
        tmp_path: Path, kind: str, sendfile: bool, chunk: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent_frames: list[int] = []
    real_batch = SocketWriter.batch

    def batch(writer: SocketWriter, items: list[Any], *args: Any) -> Any:
        sent_frames.extend(item.length for item in items if isinstance(item, Span))
        return real_batch(writer, items, *args)

    monkeypatch.setattr(SocketWriter, "batch", batch)
    path, size, segments = streamed_dump(tmp_path, kind)
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": hook},
                       stream_sendfile=sendfile) as server:
        sock = server.config.server.socket
        pieces, summary = await asyncio.to_thread(collect, sock, 0, size, chunk)
        stats_pfns = server.engine.counters.pfns_asked if server.engine else -1
        read = server.engine.counters.source_bytes_read if server.engine else -1
    want = expected_view(path, segments, ZERO_PFNS)
    assert assemble(size, pieces) == want
    # With sendfile on, every RAM run goes from the source file to the socket.
    data_frames = [len(p.data) for p in pieces if isinstance(p, StreamData)]
    assert sum(sent_frames) == (sum(data_frames) if sendfile else 0)
    offsets = [p.offset for p in pieces]
    assert offsets == sorted(offsets)
    holes = [p for p in pieces if isinstance(p, StreamHole)]
    data = sum(len(p.data) for p in pieces if isinstance(p, StreamData))
    hole_bytes = sum(h.length for h in holes)
    assert all(a.offset + a.length < b.offset for a, b in pairwise(holes))
    assert summary == {"bytes": size, "data_bytes": data, "hole_bytes": hole_bytes,
                       "error_bytes": 0, "cancelled": False}
    assert read == data  # every RAM byte read once, no non-RAM byte read
    assert data + hole_bytes == size
    held = {p for s in segments
            for p in range(s.paddr // PAGE, (s.paddr + s.filesz - 1) // PAGE + 1)}
    assert stats_pfns == len(held)


async def test_ranges_and_chunks(tmp_path: Path) -> None:
    path, size, _ = streamed_dump(tmp_path, "raw")
    async with serving(tmp_path, path) as server:
        sock = server.config.server.socket
        middle, summary = await asyncio.to_thread(collect, sock, 12345, 3 * MiB, 8 * PAGE)
        past, past_summary = await asyncio.to_thread(collect, sock, size + 5, 100)
        tail, _ = await asyncio.to_thread(collect, sock, size - 10, 100)
    assert b"".join(bytes(p.data) for p in middle) == file_bytes(path, 12345, 3 * MiB)
    assert [p.offset for p in middle][:3] == [12345, 8 * PAGE, 16 * PAGE]  # chunk-aligned
    assert summary is not None and summary["data_bytes"] == 3 * MiB
    assert past == [] and past_summary == {"bytes": 0, "data_bytes": 0, "hole_bytes": 0,
                                           "error_bytes": 0, "cancelled": False}
    assert [(p.offset, bytes(p.data)) for p in tail] == [(size - 10,
                                                          file_bytes(path, size - 10, 10))]


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "read"])
async def test_unreadable_pages_become_stream_errors_and_the_stream_goes_on(
        tmp_path: Path, sendfile: bool) -> None:
    path, size, _ = streamed_dump(tmp_path, "raw")
    bad = range(0x100 * PAGE + 100, 0x102 * PAGE + 5)  # touches pages 0x100, 0x101, 0x102
    async with serving(tmp_path, path, stream_sendfile=sendfile) as server:
        assert server.source is not None and server.engine is not None
        with failing(server.source, bad):
            pieces, summary = await asyncio.to_thread(collect, server.config.server.socket,
                                                      0, size)
            with pytest.raises(RemoteError) as digest_error:
                await asyncio.to_thread(_digest, server.config.server.socket, 0, size)
        read = server.engine.counters.source_bytes_read
    errors = [p for p in pieces if isinstance(p, StreamError)]
    failed_at = bad.start if sendfile else 0x100 * PAGE  # where the source said so
    assert errors == [StreamError(0x100 * PAGE, 3 * PAGE, "EIO", "source read failed at "
                                  f"{failed_at:#x}: Input/output error")]
    assert read >= size - 3 * PAGE
    got = assemble(size, pieces)
    want = bytearray(file_bytes(path))
    want[0x100 * PAGE : 0x103 * PAGE] = bytes(3 * PAGE)
    assert got == bytes(want)
    assert summary is not None and summary["error_bytes"] == 3 * PAGE
    assert summary["data_bytes"] == size - 3 * PAGE
    assert digest_error.value.code == "EIO"
    assert digest_error.value.message.startswith(f"cannot digest {0x100 * PAGE:#x}+0x3000: ")


def _digest(sock: str, offset: int, length: int, algorithm: str = "sha256") -> Any:
    with Client.connect(sock, timeout=30) as client:
        return client.call("digest", offset, length, algorithm)


async def test_digest_of_the_view(tmp_path: Path) -> None:
    path, size, segments = streamed_dump(tmp_path, "elf")
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": hook}) as server:
        sock = server.config.server.socket
        whole = await asyncio.to_thread(_digest, sock, 0, size + 999)
        part = await asyncio.to_thread(_digest, sock, 7, 5000, "md5")
        with pytest.raises(RemoteError) as bad:
            await asyncio.to_thread(_digest, sock, 0, 1, "crc32")
    view = expected_view(path, segments, ZERO_PFNS)
    assert whole == {"algorithm": "sha256", "digest": hashlib.sha256(view).hexdigest(),
                     "offset": 0, "length": size}
    assert part["digest"] == hashlib.md5(view[7:5007]).hexdigest()
    assert bad.value.code == "EINVAL"
    assert bad.value.message.startswith("algorithm must be one of sha256, ")


@pytest.mark.parametrize(("params", "message"), [
    ([0, 10, {"chunk": 1000}], "chunk must be a multiple of 4096 in [4096, 8388608], got 1000"),
    ([0, 10, {"chunk": 16 * MiB}], "chunk must be a multiple of 4096 in [4096, 8388608], "
                                   "got 16777216"),
    ([0, 10, {"speed": 1}], "unknown stream option 'speed' (known: chunk, compress, "
                            "zeros_as_holes)"),
    ([0, 10, {"zeros_as_holes": 1}], "zeros_as_holes must be true or false, got 1"),
    ([0, -1, {}], "length must be in [0, 2**64-1], got -1"),
    ([0, 10], "stream takes 3 parameters, got 2"),
])
async def test_bad_stream_requests(tmp_path: Path, params: list[Any], message: str) -> None:
    path, _, _ = streamed_dump(tmp_path, "raw")
    async with serving(tmp_path, path) as server:
        reply = await asyncio.to_thread(_raw_call, server.config.server.socket, "stream", params)
    assert reply == [1, 0, ["EINVAL", message], None]


def _raw_call(sock: str, method: str, params: list[Any]) -> Any:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(msgpack.packb([0, 0, method, params]))
        unpacker = msgpack.Unpacker()
        while True:
            unpacker.feed(s.recv(65536))
            for obj in unpacker:
                return obj


async def test_too_many_streams_on_one_connection(tmp_path: Path) -> None:
    path, size, _ = streamed_dump(tmp_path, "raw")
    async with serving(tmp_path, path, max_streams=1) as server:
        reply = await asyncio.to_thread(_two_streams, server.config.server.socket, size)
    assert reply == [1, 1, ["EBUSY", "1 streams are running on this connection already"], None]


def _two_streams(sock: str, size: int) -> Any:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(msgpack.packb([0, 0, "stream", [0, size, {}]]) +
                  msgpack.packb([0, 1, "stream", [0, size, {}]]))
        unpacker = msgpack.Unpacker()
        while True:
            unpacker.feed(s.recv(1 << 20))
            for obj in unpacker:
                if obj[0] == 1 and obj[1] == 1:
                    return obj


def _cancel_after_first(sock: str) -> tuple[int, dict[str, Any] | None, dict[str, Any]]:
    with Client.connect(sock, timeout=30) as client:
        stream = client.stream(0, 1 << 40, 4 * PAGE)
        seen = 0
        for _ in stream:
            if seen == 0:
                stream.cancel()
            seen += 1
        return seen, stream.summary, client.stats()


async def test_cancel_stops_a_stream_and_frees_its_work(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * MiB)
    async with serving(tmp_path, dump.path) as server:
        fds = open_fds()
        seen, summary, stats = await asyncio.to_thread(_cancel_after_first,
                                                       server.config.server.socket)
        await until(lambda: not server.connections)
        leftover = _stream_tasks()
        await until(lambda: open_fds() == fds)
    assert summary is not None and summary["cancelled"] is True
    assert summary["data_bytes"] == summary["bytes"] < 64 * MiB
    assert seen * 4 * PAGE >= summary["data_bytes"]
    assert stats["source_bytes_read"] < 16 * MiB  # it stopped within its read-ahead
    assert leftover == []


def open_fds() -> set[str]:
    """The file descriptors open in this process (the server's among them)."""
    return set(os.listdir("/proc/self/fd"))


def _stream_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "_serve" in repr(t.get_coro())
            or "_read" in repr(t.get_coro())]


def _read_some_then_close(sock: str, size: int) -> int:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(msgpack.packb([0, 0, "stream", [0, size, {}]]))
        got = 0
        while got < 3 * MiB:
            got += len(s.recv(1 << 20))
        return got


async def test_a_client_that_disconnects_mid_stream_leaves_nothing_behind(
        tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * MiB)
    async with serving(tmp_path, dump.path) as server:
        fds = open_fds()
        for _ in range(5):
            await asyncio.to_thread(_read_some_then_close, server.config.server.socket,
                                    dump.size)
        await until(lambda: not server.connections)
        await until(lambda: _stream_tasks() == [])
        await until(lambda: open_fds() == fds)
        assert server.engine is not None
        read = server.engine.counters.source_bytes_read
    assert read < 5 * 12 * MiB  # each stopped within a few MiB of what was received


def _stall(sock: str, size: int, ready: asyncio.Event, loop: asyncio.AbstractEventLoop,
           release: Any) -> int:
    with socket.socket(socket.AF_UNIX) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.connect(sock)
        s.sendall(msgpack.packb([0, 0, "stream", [0, size, {}]]))
        loop.call_soon_threadsafe(ready.set)
        release.wait(10)
        return len(s.recv(1 << 16))


async def test_a_client_that_does_not_read_holds_the_stream_back(tmp_path: Path) -> None:
    import threading

    dump = build_raw(tmp_path / "oldmem", 256 * MiB)
    async with serving(tmp_path, dump.path) as server:
        ready, release = asyncio.Event(), threading.Event()
        task = asyncio.ensure_future(asyncio.to_thread(
            _stall, server.config.server.socket, dump.size, ready, asyncio.get_running_loop(),
            release))
        await ready.wait()
        await asyncio.sleep(0.5)
        assert server.engine is not None
        read = server.engine.counters.source_bytes_read
        await asyncio.sleep(0.3)
        still = server.engine.counters.source_bytes_read
        buffered = [c._transport.get_write_buffer_size() for c in server.connections
                    if c._transport is not None]
        release.set()
        await task
    assert read == still  # stopped: nothing more read while the client reads nothing
    assert read <= 8 * MiB  # the window (4 MiB) plus what the socket and transport hold
    assert max(buffered) <= 2 * MiB
