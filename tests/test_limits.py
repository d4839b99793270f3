"""Limits and timeouts through a real server on a real Unix socket: connections at once,
idle and send timeouts, the server-wide reply budget, frame size, read length, requests
in flight and streams per connection.

A client that "never reads" is a plain socket nobody calls recv on: the server's writes
fill the socket's buffers and stop, as with a stuck or hostile client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dumpd.client import Client, RemoteError, StreamData
from dumpd.client.aio import AsyncClient
from dumpd.protocol import encode_request
from dumpd.server import Server
from dumpd.server.budget import ByteBudget
from dumpd.server.deadlines import Deadlines
from dumpd.server.zerocopy import SocketWriter
from dumpd.sources.base import Source
from tests.clock import FakeClock
from tests.dumps import build_raw, file_bytes
from tests.figures import Figures
from tests.servers import GatedHook, client_of, serving, until

MiB = 1 << 20
PAGE = 4096
NOBODY = 65534


def note(code: str, message: str) -> bytes:
    """The error notification the server sends before it closes a connection."""
    return msgpack.packb([2, "error", [code, message]])


def reply(msgid: int, result: Any) -> bytes:
    return msgpack.packb([1, msgid, None, result])


def loop_name() -> str:
    """"asyncio" or "uvloop": the loop this test runs on, for its figures."""
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


def seconds(value: float) -> str:
    return f"{value:.2f} s"


@contextlib.contextmanager
def never_reading(server: Server, frames: bytes) -> Iterator[socket.socket]:
    """A client that sends `frames` and never reads a byte of what comes back."""
    sock = socket.socket(socket.AF_UNIX)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(server.config.server.socket)
        sock.sendall(frames)
        yield sock
    finally:
        sock.close()


async def responses(reader: asyncio.StreamReader, count: int) -> list[list[Any]]:
    """The next `count` responses on a raw connection, in arrival order (notifications,
    a stream's pieces, are skipped); none for 10 s fails."""
    unpacker = msgpack.Unpacker()
    got: list[list[Any]] = []
    while len(got) < count:
        data = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert data, "connection closed early"
        unpacker.feed(data)
        got += [obj for obj in unpacker if obj[0] == 1]
    return got


async def until_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything a raw connection receives until the server closes it (10 s at most)."""
    return await asyncio.wait_for(reader.read(), 10)


# -- connections at once --------------------------------------------------------------


async def test_connections_beyond_the_limit_get_ebusy_and_a_closed_slot_is_free_again(
        tmp_path: Path, figures: Figures, caplog: pytest.LogCaptureFixture) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    caplog.set_level(logging.WARNING, logger="dumpd.server")
    want = file_bytes(dump.path, PAGE, 16)
    async with serving(tmp_path, dump.path, max_connections=3) as server:
        path = server.config.server.socket
        clients = [await AsyncClient.connect(path) for _ in range(3)]
        assert [await c.read(PAGE, 16) for c in clients] == [want] * 3
        reader, writer = await asyncio.open_unix_connection(path)
        refused = await until_eof(reader)  # the notification, then EOF
        writer.close()
        over = await AsyncClient.connect(path)
        with pytest.raises(ConnectionError) as err:
            await over.read(PAGE, 16)
        await over.close()
        stats = await clients[0].stats()
        await clients[2].close()
        await until(lambda: len(server.connections) == 2)  # its slot, free at once
        async with client_of(server) as again:
            assert await again.read(PAGE, 16) == want
            after = await again.stats()
        for client in clients[:2]:
            await client.close()
    assert refused == note("EBUSY", "too many connections (limit 3)")
    cause = err.value.__cause__
    assert isinstance(cause, RemoteError)
    assert (cause.code, cause.message) == ("EBUSY", "too many connections (limit 3)")
    assert (stats["connections"], stats["busy_refused_connections"]) == (3, 2)
    assert (after["connections"], after["busy_refused_connections"]) == (3, 2)
    busy = [r.getMessage() for r in caplog.records if "too many" in r.getMessage()]
    assert busy == [f"refused connection 4 (uid {os.getuid()} pid {os.getpid()}): too many "
                    "connections (limit 3)"]  # the second refusal: rate-limited
    figures.add(f"max_connections 3 ({loop_name()})", served_at_once=stats["connections"],
                refused_ebusy=stats["busy_refused_connections"],
                served_again_after_one_closed=after["connections"])


def _as_nobody(path: str) -> bytes:
    """What a client running as nobody (a forked child) receives until the server
    closes; sends nothing."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
                while data := sock.recv(65536):
                    os.write(write_end, data)
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
async def test_peers_refused_for_access_hold_no_slot() -> None:
    eacces = note("EACCES", f"uid {NOBODY} is not allowed to read this dump")
    with tempfile.TemporaryDirectory(prefix="dumpd-limits-") as tmp:
        os.chmod(tmp, 0o755)  # so only the socket's mode and the peer's uid decide
        dump = build_raw(Path(tmp) / "oldmem", PAGE)
        async with serving(Path(tmp), dump.path, max_connections=1) as server:
            path = server.config.server.socket
            os.chmod(path, 0o666)
            first = [await asyncio.to_thread(_as_nobody, path) for _ in range(3)]
            async with client_of(server) as client:  # the only slot, still free
                assert await client.read(0, 8) == file_bytes(dump.path, 0, 8)
                while_full = await asyncio.to_thread(_as_nobody, path)
                stats = await client.stats()
    assert first == [eacces] * 3
    assert while_full == eacces  # access is decided first: not EBUSY
    assert (stats["connections"], stats["refused_connections"],
            stats["busy_refused_connections"]) == (1, 4, 0)


# -- idle timeout ---------------------------------------------------------------------


def the_connection(server: Server, *known: object) -> Any:
    """The one connection of `server` not among `known`."""
    (conn,) = [c for c in server.connections if c not in known]
    return conn


async def test_idle_connections_are_closed_with_etimedout_busy_ones_are_not(
        tmp_path: Path, figures: Figures) -> None:
    """On a fake clock: all connect at 0 s; the idle ones are closed at 0.3 s exactly
    (not at 0.299 s), the one that asks every 0.1 s never."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    want = file_bytes(dump.path)
    clock = FakeClock()
    async with serving(tmp_path, dump.path, idle_timeout=0.3, clock=clock) as server:
        path = server.config.server.socket
        silent_reader, silent_writer = await asyncio.open_unix_connection(path)
        once_reader, once_writer = await asyncio.open_unix_connection(path)
        once_writer.write(encode_request(0, "read", [PAGE, 8]))
        once_reply = await responses(once_reader, 1)
        earlier = set(server.connections)
        half_reader, half_writer = await asyncio.open_unix_connection(path)
        half_writer.write(encode_request(1, "read", [0, 8])[:5])  # stops inside a frame
        await until(lambda: len(server.connections) == 3)
        half = the_connection(server, *earlier)
        await until(lambda: half._decoder.buffered == 5)  # its 5 bytes wait in the decoder
        looks: list[tuple[float, int]] = []
        async with client_of(server) as busy:
            for i in range(12):  # a request every 0.1 s: never idle for 0.3 s
                assert await busy.read(i * 8, 8) == want[i * 8 : i * 8 + 8]
                if i == 2:
                    clock.advance_to(0.299)
                    looks.append((clock.now, server.shared.idle_timeouts))
                clock.advance_to((i + 1) / 10)
                looks.append((clock.now, server.shared.idle_timeouts))
            silent_data, once_data, half_data = await asyncio.gather(
                until_eof(silent_reader), until_eof(once_reader), until_eof(half_reader))
            stats = await busy.stats()
        for writer in (silent_writer, once_writer, half_writer):
            writer.close()
    timed_out = note("ETIMEDOUT", "idle for 0.3 s")
    assert once_reply == [[1, 0, None, want[PAGE : PAGE + 8]]]
    assert (silent_data, once_data, half_data) == (timed_out, timed_out, timed_out)
    assert looks == [(0.1, 0), (0.2, 0), (0.299, 0), (0.3, 3),
                     *[((i + 1) / 10, 3) for i in range(3, 12)]]
    assert (stats["idle_timeouts"], stats["connections"]) == (3, 1)
    figures.add(f"idle_timeout 0.3 s, fake clock ({loop_name()})",
                idle_clients_closed_at=seconds(0.3), requests_every_100_ms_kept=12,
                idle_timeouts=stats["idle_timeouts"])


async def test_an_idle_timer_that_fires_early_still_closes(tmp_path: Path) -> None:
    """uvloop's timers may fire up to a millisecond early: a timer that fires acts as
    if its time had come, instead of looking again a millisecond later."""
    dump = build_raw(tmp_path / "oldmem", PAGE)
    clock = FakeClock()
    async with serving(tmp_path, dump.path, idle_timeout=0.3, clock=clock) as server:
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        await until(lambda: len(server.connections) == 1)
        clock.advance_to(0.2995, early=0.001)  # the 0.3 s timer fires at 0.299 s
        timeouts = server.shared.idle_timeouts
        data = await until_eof(reader)
        writer.close()
    assert clock.fired == [pytest.approx(0.299)]  # one look, not one more 1 ms later
    assert timeouts == 1
    assert data == note("ETIMEDOUT", "idle for 0.3 s")


def _stream_all(path: str, size: int, chunk: int) -> tuple[bytes, dict[str, Any] | None, float]:
    """A whole stream, assembled; its summary; how long it took. Then one more call, so
    the connection must still be open."""
    start = time.monotonic()
    with Client.connect(path, timeout=30) as client:
        view = bytearray(size)
        stream = client.stream(0, size, chunk)
        for piece in stream:
            assert isinstance(piece, StreamData)
            view[piece.offset : piece.offset + len(piece.data)] = piece.data
        took = time.monotonic() - start
        client.info()
    return bytes(view), stream.summary, took


async def test_a_long_stream_is_not_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        figures: Figures) -> None:
    """On a fake clock, 0.1 s passes at each copy of a slow source (the socket stays
    quiet meanwhile): the stream outlasts the idle timeout ten times, and is not cut."""
    real_copy = Source.copy_to
    clock = FakeClock()
    copies = [0]
    turn = threading.Semaphore(0)  # one copy per move of the clock

    def slow_copy(source: Source, fd: int, offset: int, count: int) -> int:
        copies[0] += 1
        assert turn.acquire(timeout=10)
        return real_copy(source, fd, offset, min(count, 64 * 1024))

    monkeypatch.setattr(Source, "copy_to", slow_copy)
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    async with serving(tmp_path, dump.path, idle_timeout=0.3, clock=clock) as server:
        streamed = asyncio.ensure_future(asyncio.to_thread(
            _stream_all, server.config.server.socket, dump.size, 256 * 1024))
        moves = 0
        while not streamed.done():
            await until(lambda done=moves: copies[0] > done or streamed.done())
            if copies[0] > moves:
                moves += 1
                clock.advance_to(moves / 10)
                turn.release()
        view, summary, _ = await streamed
        assert server.shared.idle_timeouts == 0
    assert moves == dump.size // (64 * 1024)
    assert clock.now == moves / 10 == 3.2  # the stream outlasted the idle timeout 10 times
    assert view == file_bytes(dump.path)
    assert summary == {"bytes": dump.size, "data_bytes": dump.size, "hole_bytes": 0,
                       "error_bytes": 0, "cancelled": False}
    figures.add(f"idle_timeout 0.3 s, one stream, fake clock ({loop_name()})",
                stream_took=seconds(clock.now), bytes_exact=dump.size, idle_timeouts=0)


# -- send timeout ---------------------------------------------------------------------


class Output:
    """A connection as its deadlines see it, moved by hand."""

    def __init__(self) -> None:
        self.written, self.pending, self.busy = 0, 0, False
        self.idled: list[float] = []
        self.aborted: list[float] = []
        self.clock = FakeClock()

    def output(self) -> tuple[int, int] | None:
        return self.written, self.pending

    def idle_out(self) -> None:
        self.idled.append(self.clock.now)

    def send_timed_out(self) -> None:
        self.aborted.append(self.clock.now)


def test_the_send_deadline_counts_from_the_last_look_that_saw_output_move() -> None:
    """Looks every 0.075 s (a quarter of 0.3 s): output seen moving at 0.15 s for the
    last time is aborted at 0.45 s (0.3 s later), 1.25x of the timeout after it moved;
    a reply that goes on moving, however long, never."""
    conn = Output()
    deadlines = Deadlines(conn, conn.clock, idle_timeout=0.0, send_timeout=0.3)
    deadlines.opened()
    conn.written, conn.pending, conn.busy = 4096, 1024, True
    deadlines.received()  # bytes in at 0 s: the first look at 0.075 s
    at = 0.0
    for _ in range(40):  # 3 s of output that moves a little between looks
        at += 0.3 / 4
        conn.written += 1
        conn.clock.advance_to(at)
    assert conn.aborted == []
    conn.written += 1  # seen moving at the next look, for the last time
    for _ in range(10):
        at += 0.3 / 4
        conn.clock.advance_to(at)
    last_move = 41 * 0.075
    assert conn.clock.fired[41 - 1] == pytest.approx(last_move)
    assert conn.aborted == [pytest.approx(last_move + 0.3)]
    assert len(conn.clock.fired) == 41 + 4  # no look after the abort
    deadlines.close()


def test_the_idle_deadline_counts_from_the_last_activity() -> None:
    conn = Output()
    deadlines = Deadlines(conn, conn.clock, idle_timeout=0.3, send_timeout=0.0)
    deadlines.opened()  # at 0 s: due at 0.3 s
    conn.clock.advance_to(0.1)
    deadlines.received()  # at 0.1 s: the look at 0.3 s moves on to 0.4 s
    conn.clock.advance_to(0.3999)
    assert conn.idled == []
    conn.clock.advance_to(0.4)
    assert (conn.idled, conn.clock.fired) == ([0.4], [0.3, 0.4])
    deadlines.close()




def looks_until_aborted(server: Server, clock: FakeClock, period: float, count: int
                        ) -> list[int]:
    """`send_timeouts` after each of `count` looks of the connections' timers, one
    `period` apart from 0 s on (the times the timers themselves compute)."""
    seen, at = [], 0.0
    for _ in range(count):
        at += period
        clock.advance_to(at)
        seen.append(server.shared.send_timeouts)
    return seen


@pytest.mark.parametrize("what", ["read", "stream", "stream without sendfile"])
async def test_a_client_that_never_reads_is_aborted_after_send_timeout(
        tmp_path: Path, what: str, figures: Figures) -> None:
    """On a fake clock. Through the transport (a read, a stream without sendfile): the
    timer looks every 0.075 s from the first bytes in (0 s); output seen still at
    0.075 s and still at 0.375 s is aborted then, at the fifth look. With sendfile:
    the worker thread gives up 0.3 s after it began to wait (0 s): not at 0.299 s."""
    dump = build_raw(tmp_path / "oldmem", 32 * MiB)
    want = file_bytes(dump.path)
    if what == "read":
        frames = encode_request(0, "read", [0, 8 * MiB]) + encode_request(1, "read",
                                                                         [8 * MiB, 8 * MiB])
    else:
        frames = encode_request(0, "stream", [0, dump.size, {}])
    clock = FakeClock()
    waits = [0]
    real_wait = SocketWriter.wait

    def wait(writer: SocketWriter) -> None:
        waits[0] += 1
        real_wait(writer)

    async with serving(tmp_path, dump.path, send_timeout=0.3, clock=clock,
                       stream_sendfile=what == "stream") as server, client_of(server) as honest:
        SocketWriter.wait = wait  # type: ignore[method-assign]
        try:
            await until(lambda: len(server.connections) == 1)
            honest_conn = the_connection(server)
            with never_reading(server, frames):
                await until(lambda: len(server.connections) == 2)
                stuck = the_connection(server, honest_conn)
                if what == "stream":  # the thread waits for the socket to take more
                    await until(lambda: waits[0] > 0)
                else:  # the transport holds more than its high-water mark: nothing moves
                    await until(lambda: stuck.output()[1] > 1 << 20)
                for offset in (0, 5 * MiB + 3, 31 * MiB):  # served while the other stalls
                    assert await honest.read(offset, MiB) == want[offset : offset + MiB]
                if what == "stream":
                    clock.advance_to(0.299)
                    reads = clock.off_loop_reads
                    await until(lambda: clock.off_loop_reads > reads + 1)  # it looked again
                    looks = [server.shared.send_timeouts]
                    clock.advance_to(0.3)
                    await until(lambda: server.shared.send_timeouts == 1)
                    looks.append(server.shared.send_timeouts)
                else:
                    looks = looks_until_aborted(server, clock, 0.3 / 4, 6)
                await until(lambda: len(server.connections) == 1)
                assert await honest.read(7, 3 * MiB) == want[7 : 7 + 3 * MiB]
                stats = await honest.stats()
        finally:
            SocketWriter.wait = real_wait  # type: ignore[method-assign]
    assert looks == ([0, 1] if what == "stream" else [0, 0, 0, 0, 1, 1])
    assert (stats["send_timeouts"], stats["connections"], stats["idle_timeouts"]) == (1, 1, 0)
    assert stats["reply_bytes_held"] == 0  # the aborted connection's budget came back
    aborted_after = 0.3 if what == "stream" else 0.375
    figures.add(f"send_timeout 0.3 s, {what} never read, fake clock ({loop_name()})",
                aborted_after=seconds(aborted_after), honest_mib_exact=6,
                send_timeouts=stats["send_timeouts"])


async def test_a_slow_reader_that_keeps_reading_is_not_aborted(tmp_path: Path) -> None:
    """The deadline is for output that does not move, not for a reply that takes long:
    on a fake clock, 0.02 s passes at each 32 KiB the client reads."""
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    clock = FakeClock()
    async with serving(tmp_path, dump.path, send_timeout=0.3, clock=clock) as server:
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        writer.write(encode_request(0, "read", [0, 2 * MiB]))
        got = b""
        while len(got) < len(reply(0, file_bytes(dump.path))):
            data = await reader.read(32 * 1024)
            assert data, "the server closed the connection"
            got += data
            clock.advance_to(clock.now + 0.02)
        writer.close()
        assert server.shared.send_timeouts == 0
    assert clock.now > 2 * 0.3
    assert got == reply(0, file_bytes(dump.path))


async def test_stalled_sendfile_streams_give_their_worker_threads_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures) -> None:
    """Every worker thread busy with a client that stopped reading: after send_timeout
    they are free again and a new stream runs. On a fake clock: the two threads give
    up at 0.3 s, the third stream (queued for a thread until then) at 0.6 s."""
    running = [0]
    waiting = [0]  # threads waiting for a socket to take more
    lock = threading.Lock()
    real_batch, real_wait = SocketWriter.batch, SocketWriter.wait

    def batch(writer: SocketWriter, *args: Any) -> Any:
        with lock:
            running[0] += 1
        try:
            return real_batch(writer, *args)
        finally:
            with lock:
                running[0] -= 1

    def wait(writer: SocketWriter) -> None:
        with lock:
            waiting[0] += 1
        try:
            real_wait(writer)
        finally:
            with lock:
                waiting[0] -= 1

    monkeypatch.setattr(SocketWriter, "batch", batch)
    monkeypatch.setattr(SocketWriter, "wait", wait)
    workers = 2
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers))
    dump = build_raw(tmp_path / "oldmem", 64 * MiB)
    request = encode_request(0, "stream", [0, dump.size, {}])
    clock = FakeClock()
    async with serving(tmp_path, dump.path, send_timeout=0.3, clock=clock) as server:
        with contextlib.ExitStack() as stack:
            for _ in range(workers + 1):  # one more than there are threads
                stack.enter_context(never_reading(server, request))
            await until(lambda: waiting[0] == workers)  # both since 0 s, the third queued
            clock.advance_to(0.3)
            await until(lambda: server.shared.send_timeouts == workers)
            await until(lambda: waiting[0] == 1)  # the third stream has a thread, since 0.3 s
            clock.advance_to(0.6)
            await until(lambda: server.shared.send_timeouts == workers + 1)
            await until(lambda: running[0] == 0)
        with ThreadPoolExecutor(1) as own:  # the client's thread, not the server's
            view, summary, _ = await asyncio.get_running_loop().run_in_executor(
                own, _stream_all, server.config.server.socket, 8 * MiB, MiB)
    assert view == file_bytes(dump.path, 0, 8 * MiB)
    assert summary is not None and summary["data_bytes"] == 8 * MiB
    figures.add(f"send_timeout 0.3 s, 3 sendfile streams never read, 2 worker threads, "
                f"fake clock ({loop_name()})", aborted=workers + 1,
                threads_free_after=seconds(0.6), next_stream_mib_exact=8)


# -- the server-wide reply budget -----------------------------------------------------


async def test_the_total_reply_budget_bounds_all_connections_together(
        tmp_path: Path, figures: Figures) -> None:
    """Four connections, two 8 MiB reads each, nobody reading: 64 MiB asked, 16 MiB held
    at most (the total), then everything arrives once they read."""
    dump = build_raw(tmp_path / "oldmem", 64 * MiB)
    want = file_bytes(dump.path)
    async with serving(tmp_path, dump.path, reply_budget_total_mib=16, reply_budget_mib=8,
                       max_read_mib=8) as server, client_of(server) as observer:
        budget = server.shared.reply_budget
        conns = [await asyncio.open_unix_connection(server.config.server.socket)
                 for _ in range(4)]
        for i, (_, writer) in enumerate(conns):
            writer.write(encode_request(0, "read", [2 * i * 8 * MiB, 8 * MiB]) +
                         encode_request(1, "read", [(2 * i + 1) * 8 * MiB, 8 * MiB]))
        await until(lambda: budget.waits == 2)  # each connection's first read at the total
        during = await observer.stats()
        got = await asyncio.gather(*(responses(reader, 2) for reader, _ in conns))
        for _, writer in conns:
            writer.close()
        after = await observer.stats()
    for i, replies in enumerate(got):
        assert sorted((msgid, result) for _, msgid, error, result in replies) == [
            (k, want[(2 * i + k) * 8 * MiB : (2 * i + k + 1) * 8 * MiB]) for k in (0, 1)]
    assert (during["reply_bytes_held"], during["reply_bytes_held_peak"]) == (16 * MiB, 16 * MiB)
    assert (after["reply_bytes_held"], after["reply_bytes_held_peak"]) == (0, 16 * MiB)
    assert after["send_timeouts"] == 0
    figures.add(f"reply_budget_total_mib 16, 4 connections x 2 reads of 8 MiB ({loop_name()})",
                asked_mib=64, held_peak_mib=after["reply_bytes_held_peak"] // MiB,
                waits=after["reply_budget_waits"], replies_mib_exact=64)


async def test_send_timeout_frees_the_total_for_clients_that_read(tmp_path: Path,
                                                                  figures: Figures) -> None:
    """On a fake clock: two clients that never read hold the whole total; a read that
    waits for it is answered once they are aborted, at the fifth look (0.375 s)."""
    dump = build_raw(tmp_path / "oldmem", 32 * MiB)
    clock = FakeClock()
    async with serving(tmp_path, dump.path, reply_budget_total_mib=16, reply_budget_mib=8,
                       max_read_mib=8, send_timeout=0.3, clock=clock) as server, \
            client_of(server) as honest:
        budget = server.shared.reply_budget
        await until(lambda: len(server.connections) == 1)
        honest_conn = the_connection(server)
        with (never_reading(server, encode_request(0, "read", [0, 8 * MiB])),
              never_reading(server, encode_request(0, "read", [8 * MiB, 8 * MiB]))):
            await until(lambda: budget.held == 16 * MiB and len(server.connections) == 3)
            stuck = [c for c in server.connections if c is not honest_conn]
            await until(lambda: all(c.output()[1] > 1 << 20 for c in stuck))  # no move
            read = asyncio.ensure_future(honest.read(16 * MiB, 8 * MiB))
            await until(lambda: budget.waits == 1)  # it waits for the total, not refused
            looks = looks_until_aborted(server, clock, 0.3 / 4, 6)
            data = await read
            stats = await honest.stats()
    assert looks == [0, 0, 0, 0, 2, 2]  # one abort was enough for it: both at 0.375 s
    assert data == file_bytes(dump.path, 16 * MiB, 8 * MiB)
    assert (stats["send_timeouts"], stats["reply_budget_waits"]) == (2, 1)
    assert (stats["reply_bytes_held"], stats["reply_bytes_held_peak"]) == (0, 16 * MiB)
    figures.add(f"reply_budget_total_mib 16 held by 2 clients that never read, send_timeout "
                f"0.3 s, fake clock ({loop_name()})", honest_read_waited=seconds(0.375),
                send_timeouts=stats["send_timeouts"], held_peak_mib=16)


# -- frames, reads, requests in flight, streams ----------------------------------------


async def test_a_frame_above_the_limit_is_e2big_and_closes_only_its_connection(
        tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", PAGE)
    async with serving(tmp_path, dump.path, max_frame_kib=1) as server, \
            client_of(server) as other:
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        exactly = msgpack.packb([0, 1, "info", [b"x" * 1012]])
        writer.write(exactly)  # 1024 bytes: decoded, and answered
        first = await responses(reader, 1)
        writer.write(msgpack.packb([0, 2, "info", [b"x" * 1013]]))  # one byte more
        rest = await until_eof(reader)
        writer.close()
        assert await other.read(0, 8) == file_bytes(dump.path, 0, 8)
    assert len(exactly) == 1024
    assert first == [[1, 1, ["EINVAL", "info takes 0 parameters, got 1"], None]]
    assert rest == note("E2BIG", "frame of 1025 bytes exceeds 1024")


async def test_reads_above_max_read_are_e2big_and_the_connection_stays(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    async with serving(tmp_path, dump.path, max_read_mib=1) as server, \
            client_of(server) as client:
        errors = []
        for method in ("read", "read_phys"):
            with pytest.raises(RemoteError) as err:
                await client.call(method, 0, MiB + 1)
            errors.append((err.value.code, err.value.message))
        exact = await client.read(3, MiB)
        info = await client.info()
    assert errors == [("E2BIG", f"length {MiB + 1} is above the maximum {MiB}")] * 2
    assert exact == file_bytes(dump.path, 3, MiB)
    assert info["max_read"] == MiB


@pytest.mark.parametrize("max_inflight", [2, 3])
async def test_requests_beyond_max_inflight_wait_their_turn(tmp_path: Path,
                                                            max_inflight: int) -> None:
    """Two reads held by a hook that has not answered, then `info`: with two requests
    allowed in flight, `info` waits for a read to finish; with three, it is answered
    at once."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    gate = GatedHook(1)
    async with serving(tmp_path, dump.path, max_inflight=max_inflight) as server:
        assert server.engine is not None
        server.engine.register_hook("gate", gate)
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        writer.write(encode_request(0, "read", [PAGE, 8]) +
                     encode_request(1, "read", [2 * PAGE, 8]) + encode_request(2, "info", []))
        await until(lambda: bool(gate.asked))
        gate.release.set()
        got = await responses(reader, 3)
        writer.close()
    order = [msgid for _, msgid, _, _ in got]
    assert sorted(order) == [0, 1, 2]
    assert (order[0] == 2) == (max_inflight == 3)
    reads = {msgid: result for _, msgid, _, result in got if msgid != 2}
    assert reads == {0: file_bytes(dump.path, PAGE, 8), 1: file_bytes(dump.path, 2 * PAGE, 8)}


async def test_streams_beyond_max_streams_get_ebusy_until_one_ends(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * PAGE)
    gate = GatedHook(1)
    async with serving(tmp_path, dump.path, max_streams=1) as server:
        assert server.engine is not None
        server.engine.register_hook("gate", gate)
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        writer.write(encode_request(0, "stream", [0, 8 * PAGE, {}]))
        await until(lambda: bool(gate.asked))  # the first stream runs, held by the hook
        writer.write(encode_request(1, "stream", [0, PAGE, {}]))
        refused = await responses(reader, 1)
        gate.release.set()
        first = await responses(reader, 1)
        writer.write(encode_request(2, "stream", [0, PAGE, {}]))
        later = await responses(reader, 1)
        writer.close()
    assert refused == [[1, 1, ["EBUSY", "1 streams are running on this connection already"],
                        None]]
    summary = {"bytes": 8 * PAGE, "data_bytes": 8 * PAGE, "hole_bytes": 0, "error_bytes": 0,
               "cancelled": False}
    assert first == [[1, 0, None, summary]]
    assert later == [[1, 2, None, {**summary, "bytes": PAGE, "data_bytes": PAGE}]]


async def test_a_budget_waiter_that_gives_up_lets_the_ones_behind_it_through() -> None:
    budget = ByteBudget(10)
    await budget.acquire(6)
    big = asyncio.ensure_future(budget.acquire(8))
    small = asyncio.ensure_future(budget.acquire(3))
    await asyncio.sleep(0)
    assert not big.done() and not small.done()  # in order: the small one waits too
    big.cancel()
    await asyncio.wait_for(small, 1)
    budget.release(6)
    assert (budget.held, budget.peak, budget.waits) == (3, 9, 2)
