"""Faults: a source with unreadable pages, hooks that fail or lose their backend, and
clients that vanish in the middle of a reply or a stream (a real `dumpd serve`).

The unreadable pages are made where the server meets the OS: `os.preadv`, `os.pread`
and `os.sendfile` of the source's descriptor behave as on a disk with bad sectors
(they stop short before the bad bytes and fail on them), so the messages and counts
checked here are the ones dumpd's own code produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dumpd.client import Client, RemoteError, StreamData, StreamError
from dumpd.config import EngineConfig
from dumpd.protocol import encode_request
from tests.daemon import ENV, log_lines, served, server_pid
from tests.dumps import build_raw, file_bytes
from tests.figures import Figures, memory, reset_peak
from tests.servers import client_of, serving, until
from tests.views import PAGE

MiB = 1 << 20


class BadSectors:
    """The source file as a disk whose bytes in `bad` cannot be read: for the source's
    descriptor, `os.preadv`, `os.pread` and `os.sendfile` return short before the bad
    bytes and fail with `err` on them; RWF_NOWAIT reads find them uncached. With a
    `gate`, reads that may block wait for it (a flight held open)."""

    def __init__(self, fd: int, bad: range, err: int = errno.EIO,
                 gate: threading.Event | None = None) -> None:
        self.fd = fd
        self.bad = bad
        self.err = err
        self.gate = gate
        self.blocked = threading.Event()  # a read is waiting at the gate
        self._preadv, self._pread, self._sendfile = os.preadv, os.pread, os.sendfile

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "preadv", self.preadv)
        monkeypatch.setattr(os, "pread", self.pread)
        monkeypatch.setattr(os, "sendfile", self.sendfile)

    def heal(self) -> None:
        self.bad = range(0)

    def _allowed(self, offset: int, count: int, nowait: bool = False) -> int:
        """How many bytes from `offset` the disk gives before the bad ones."""
        if not nowait and self.gate is not None:
            self.blocked.set()
            self.gate.wait(10)
        if count and offset in self.bad:
            if nowait:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            raise OSError(self.err, os.strerror(self.err))
        if offset < self.bad.start < offset + count:
            return self.bad.start - offset
        return count

    def preadv(self, fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if fd != self.fd:
            return self._preadv(fd, buffers, offset, flags)
        (view,) = buffers
        allowed = self._allowed(offset, len(view), bool(flags & os.RWF_NOWAIT))
        return self._preadv(fd, [memoryview(view)[:allowed]], offset, flags)

    def pread(self, fd: int, count: int, offset: int) -> bytes:
        if fd != self.fd:
            return self._pread(fd, count, offset)
        return self._pread(fd, self._allowed(offset, count), offset)

    def sendfile(self, out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if in_fd != self.fd:
            return self._sendfile(out_fd, in_fd, offset, count)
        return self._sendfile(out_fd, in_fd, offset, self._allowed(offset, count))


def reason(err: int) -> str:
    return os.strerror(err)


# -- the source fails on some pages ----------------------------------------------------


@pytest.mark.parametrize("err", [errno.EIO, errno.ENXIO], ids=["EIO", "ENXIO"])
async def test_a_read_over_bad_pages_names_them_and_other_pages_read_byte_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    want = file_bytes(dump.path)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        assert server.source is not None
        disk = BadSectors(server.source.fileno(), range(5 * PAGE + 100, 6 * PAGE + 8), err)
        disk.install(monkeypatch)
        failures = []
        for call in (("read", 0, 16 * PAGE), ("read", 5 * PAGE + 200, 10),
                     ("read_phys", 6 * PAGE, PAGE), ("read", 6 * PAGE - 1, 2)):
            with pytest.raises(RemoteError) as info:
                await client.call(*call)
            failures.append((info.value.code, info.value.message))
        good = [await client.read(0, 5 * PAGE), await client.read(7 * PAGE, 9 * PAGE),
                await client.read_phys(4 * PAGE + 7, PAGE - 7), await client.read(60 * PAGE, MiB)]
        extents = await client.extents(0, 64 * PAGE)  # asks no bytes of the source
        disk.heal()
        healed = await client.read(0, 16 * PAGE)  # failed pages were not cached as zeros
    why = reason(err)
    assert failures == [("EIO", f"source read failed at 0x5000+0x2000: {why}"),
                        ("EIO", f"source read failed at 0x5000+0x1000: {why}"),
                        ("EIO", f"source read failed at 0x6000+0x1000: {why}"),
                        ("EIO", f"source read failed at 0x5000+0x2000: {why}")]
    assert good == [want[: 5 * PAGE], want[7 * PAGE : 16 * PAGE],
                    want[4 * PAGE + 7 : 5 * PAGE], want[60 * PAGE :]]
    assert extents == [(0, 64 * PAGE, "data")]
    assert healed == want[: 16 * PAGE]


async def test_a_reader_sharing_a_flight_with_bad_pages_gets_its_own_good_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B asks for page 9 while A's read of pages 0-15 (5 and 6 bad) is in flight: B
    joins that flight, and gets its page; only A, who asked for the bad ones, fails."""
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    want = file_bytes(dump.path)
    gate = threading.Event()
    async with serving(tmp_path, dump.path) as server:
        assert server.source is not None and server.engine is not None
        counters = server.engine.counters
        disk = BadSectors(server.source.fileno(), range(5 * PAGE, 7 * PAGE), gate=gate)
        disk.install(monkeypatch)
        async with client_of(server) as a, client_of(server) as b:
            first = asyncio.ensure_future(a.read(0, 16 * PAGE))
            await until(disk.blocked.is_set)
            second = asyncio.ensure_future(b.read(9 * PAGE, 64))
            await until(lambda: counters.singleflight_waits == 1)
            gate.set()
            with pytest.raises(RemoteError) as info:
                await first
            page_nine = await second
            again = await b.read(9 * PAGE, 64)  # now from the page cache
        pages_read = counters.source_pages_read
    assert (info.value.code, info.value.message) == (
        "EIO", "source read failed at 0x5000+0x2000: Input/output error")
    assert page_nine == again == want[9 * PAGE : 9 * PAGE + 64]
    assert pages_read == 14  # the flight's 16 pages but the 2 bad ones


def stream_pieces(sock: str, size: int) -> tuple[list[Any], dict[str, Any] | None]:
    with Client.connect(sock, timeout=30) as client:
        stream = client.stream(0, size, 64 * 1024)
        pieces = [StreamData(p.offset, memoryview(bytes(p.data))) if isinstance(p, StreamData)
                  else p for p in stream]
        return pieces, stream.summary


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "read"])
async def test_a_stream_reports_bad_pages_as_stream_errors_and_goes_past_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sendfile: bool) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    want = bytearray(file_bytes(dump.path))
    async with serving(tmp_path, dump.path, stream_sendfile=sendfile) as server:
        assert server.source is not None
        disk = BadSectors(server.source.fileno(), range(0x41 * PAGE + 100, 0x43 * PAGE + 8))
        disk.install(monkeypatch)
        pieces, summary = await asyncio.to_thread(stream_pieces, server.config.server.socket,
                                                  dump.size)
    errors = [p for p in pieces if isinstance(p, StreamError)]
    # With sendfile the frame's bytes were on their way when the source failed, at the
    # bad byte itself; without it, the pages that failed are named whole.
    where = "0x41064" if sendfile else "0x41000+0x3000"
    assert errors == [StreamError(0x41 * PAGE, 3 * PAGE, "EIO",
                                  f"source read failed at {where}: Input/output error")]
    got = bytearray(dump.size)
    for piece in pieces:
        if isinstance(piece, StreamData):
            got[piece.offset : piece.offset + len(piece.data)] = piece.data
    for piece in errors:  # the error wins over zeros a sendfile frame carried
        got[piece.offset : piece.offset + piece.length] = bytes(piece.length)
    want[0x41 * PAGE : 0x44 * PAGE] = bytes(3 * PAGE)
    assert got == want
    assert summary == {"bytes": dump.size, "data_bytes": dump.size - 3 * PAGE,
                       "hole_bytes": 0, "error_bytes": 3 * PAGE, "cancelled": False}


# -- the hook fails ----------------------------------------------------------------------

BACKEND = """
import sys
for line in sys.stdin:
    pfn = int(line)
    sys.stdout.write("0\\n" if pfn % 32 >= 24 else "1\\n")
    sys.stdout.flush()
"""


class BackendHook:
    """An is-RAM hook that asks a helper process for each pfn, as a hook asking a
    hypervisor tool would: it raises once the helper is gone."""

    def __init__(self) -> None:
        self.backend = subprocess.Popen([sys.executable, "-c", BACKEND], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)

    def pfn_is_ram(self, pfn: int) -> int:
        assert self.backend.stdin is not None and self.backend.stdout is not None
        self.backend.stdin.write(b"%d\n" % pfn)
        self.backend.stdin.flush()
        answer = self.backend.stdout.readline()
        if not answer:
            raise ConnectionError("the backend closed its pipe")
        return int(answer)

    def close(self) -> None:
        self.backend.kill()
        self.backend.wait()
        for pipe in (self.backend.stdin, self.backend.stdout):
            with contextlib.suppress(OSError):
                assert pipe is not None
                pipe.close()


def loop_name() -> str:
    """"asyncio" or "uvloop": the loop this test runs on, for its figures."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def hook_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dumpd.hook"]


async def test_a_hook_whose_backend_dies_mid_run_reads_the_pages_and_logs_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, figures: Figures) -> None:
    dump = build_raw(tmp_path / "oldmem", 256 * PAGE)
    want = file_bytes(dump.path)
    hook = BackendHook()
    caplog.set_level(logging.WARNING, "dumpd.hook")
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        assert server.engine is not None
        server.engine.register_hook("backend", hook)
        before = await client.read(0, 64 * PAGE)  # pfns 24-31 and 56-63: not RAM
        hook.backend.send_signal(signal.SIGKILL)
        hook.backend.wait()
        after = await client.read(64 * PAGE, 192 * PAGE)  # every ask fails now
        again = await client.read(0, 64 * PAGE)  # verdicts from before the crash stand
        stats = await client.stats()
    not_ram = bytearray(want[: 64 * PAGE])
    for first in (24, 56):
        not_ram[first * PAGE : (first + 8) * PAGE] = bytes(8 * PAGE)
    assert before == again == bytes(not_ram)
    assert after == want[64 * PAGE :]  # error verdicts: the pages are read
    assert (stats["hook_calls"], stats["pfns_asked"], stats["hook_exceptions"]) == (
        256, 256, 192)
    lines = hook_lines(caplog)
    assert lines == ["hook 'backend' raised BrokenPipeError: [Errno 32] Broken pipe (pfn 0x40)"]
    figures.add(f"hook backend killed mid-run ({loop_name()})", failed_calls=192,
                pages_read_exact=192, log_lines=len(lines))


class Mixed:
    """Per pfn, by pfn % 4: raises, returns a str, returns -5 (an error verdict), or RAM."""

    def pfn_is_ram(self, pfn: int) -> object:
        kind = pfn % 4
        if kind == 0:
            raise RuntimeError("backend gone")
        if kind == 1:
            return "yes"
        return -5 if kind == 2 else 1


async def test_thousands_of_hook_failures_are_counted_exactly_and_logged_once_per_kind(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, figures: Figures) -> None:
    dump = build_raw(tmp_path / "oldmem", 4096 * PAGE)
    caplog.set_level(logging.WARNING, "dumpd.hook")
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        assert server.engine is not None
        server.engine.register_hook("mixed", Mixed())  # type: ignore[arg-type]
        got = b"".join([await client.read(o, MiB) for o in range(0, dump.size, MiB)])
        stats = await client.stats()
    assert got == file_bytes(dump.path)  # every failure reads the page
    assert (stats["hook_calls"], stats["hook_exceptions"], stats["hook_bad_results"],
            stats["hook_errors"], stats["source_pages_read"]) == (4096, 1024, 1024, 1024, 4096)
    lines = hook_lines(caplog)
    assert lines == ["hook 'mixed' raised RuntimeError: backend gone (pfn 0x0)",
                     "hook 'mixed' returned str for pfn 0x1"]
    figures.add(f"hook failures: raise, non-int, < 0 ({loop_name()})", failed_verdicts=3072,
                pages_read_exact=4096, log_lines=len(lines))


class Hanging:
    """Hangs on pfn 0 until released; answers RAM at once for every other pfn."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def pfn_is_ram(self, pfn: int) -> int:
        if pfn == 0:
            self.release.wait(10)
        return 1


async def test_a_hung_hook_costs_one_timeout_then_errors_at_once_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dump = build_raw(tmp_path / "oldmem", 128 * PAGE)
    want = file_bytes(dump.path)
    hook = Hanging()
    caplog.set_level(logging.WARNING, "dumpd.hook")
    async with serving(tmp_path, dump.path, engine=EngineConfig(hook_timeout=0.2)) as server:
        assert server.engine is not None
        server.engine.register_hook("hanging", hook)
        async with client_of(server) as client:
            while_stuck = [await client.read(p * PAGE, 8) for p in range(100)]
            stuck = await client.stats()
            hook.release.set()
            await until(lambda: not server.engine._state.caller._stuck)  # type: ignore[union-attr]
            after = await client.read(100 * PAGE, 28 * PAGE)
            stats = await client.stats()
    assert while_stuck == [want[p * PAGE : p * PAGE + 8] for p in range(100)]
    assert after == want[100 * PAGE :]
    assert (stuck["hook_timeouts"], stuck["hook_stuck_asks"], stuck["hook_calls"]) == (1, 99, 0)
    assert (stats["hook_calls"], stats["pfns_asked"]) == (28, 28)  # asked again once back
    assert hook_lines(caplog) == [
        "hook 'hanging' gave no answer within 0.2s; 1 pfns count as errors and are read"]


# -- clients vanish ----------------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, int]:
    """Open fds, threads and resident memory (bytes) of process `pid`."""
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task")), "rss": memory(pid)[0]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def vanish(connect: Callable[[], socket.socket], how: str, reset: bool, size: int,
           turn: int) -> None:
    """One client that disappears: in the middle of a read's reply, of a stream, with
    requests running and nothing read, or in the middle of a request frame; `reset`
    closes with SO_LINGER 0 (an RST over TCP) instead of a plain close."""
    sock = connect()
    try:
        offset = turn * 4 * MiB % size
        if how == "mid-reply":
            sock.sendall(encode_request(1, "read", [offset, 8 * MiB]))
            _receive(sock, 256 * 1024)
        elif how == "mid-stream":
            sock.sendall(encode_request(1, "stream", [0, size, {}]))
            _receive(sock, MiB)
        elif how == "running":
            sock.sendall(encode_request(1, "read", [offset, 8 * MiB])
                         + encode_request(2, "stream", [offset, size, {}])
                         + encode_request(3, "digest", [0, size, "sha256"]))
        else:
            frame = encode_request(1, "read", [offset, 8 * MiB])
            sock.sendall(frame[: len(frame) // 2])
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def _receive(sock: socket.socket, count: int) -> None:
    got = 0
    while got < count:
        chunk = sock.recv(65536)
        assert chunk, "the server closed first"
        got += len(chunk)


def settled(watcher: Client, pid: int, fds: int | None = None, seconds: float = 30
            ) -> dict[str, int]:
    """The server's figures once it has one connection (the watcher's) and `fds` open
    fds (or, without `fds`, a count that holds still for half a second)."""
    deadline = time.monotonic() + seconds
    seen: list[int] = []
    while True:
        now = proc_figures(pid)
        seen = [*seen[-4:], now["fds"]]
        steady = now["fds"] == fds if fds is not None else len(seen) == 5 == seen.count(seen[0])
        stats = watcher.stats()
        if steady and stats["connections"] == 1:
            return {**now, "tasks": stats["tasks"]}
        assert time.monotonic() < deadline, (watcher.stats()["connections"], now, fds)
        time.sleep(0.1)


HOWS = ("mid-reply", "mid-stream", "running", "mid-frame")


@pytest.mark.slow
def test_a_thousand_clients_vanishing_mid_reply_and_mid_stream_leave_nothing_behind(
        tmp_path: Path, figures: Figures, monkeypatch: pytest.MonkeyPatch) -> None:
    dump = build_raw(tmp_path / "oldmem", 32 * MiB)
    # A fixed mmap threshold: glibc then gives freed 8 MiB buffers back at once instead
    # of keeping them in its heap, so RSS says what dumpd holds, not what malloc keeps.
    monkeypatch.setitem(ENV, "MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    port = free_port()
    started = time.monotonic()
    with served(tmp_path, dump.path, "--tcp", f"127.0.0.1:{port}") as path:
        pid = server_pid(path)

        def unix() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            return sock

        def tcp() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port))

        with Client.connect(path) as watcher:
            combos = [(connect, how, reset) for connect in (unix, tcp) for how in HOWS
                      for reset in (False, True)]
            for turn, combo in enumerate(combos * 12):  # warm: pools and threads in place
                vanish(*combo, dump.size, turn)
            before = settled(watcher, pid)
            reset_peak(pid)
            for turn in range(1000):
                vanish(*combos[turn % len(combos)], dump.size, turn)
            after = settled(watcher, pid, before["fds"])
            peak = memory(pid)[1]
            alive = watcher.read(12345, 4096) == file_bytes(dump.path, 12345, 4096)
            stats = watcher.stats()
    seconds = time.monotonic() - started
    assert alive
    logged = log_lines(tmp_path / "serve.log", pid)
    assert [line for line in logged if line.startswith("ERROR: ")] == []
    assert after["fds"] == before["fds"]
    assert after["tasks"] == before["tasks"]
    # Worker pools keep their threads once started: 4 readers, the default executor's
    # min(32, cpus + 4), the main thread; no thread per connection.
    assert after["threads"] <= 1 + 4 + min(32, (os.cpu_count() or 1) + 4)
    # What a client holds (its reads' buffers, a stream's read-ahead) goes with it: a
    # leak of 3 KiB per vanished client would show here.
    assert after["rss"] - before["rss"] < 3 * MiB, (before, after)
    assert stats["connections"] == 1
    figures.add("clients vanishing (unix/tcp, close/RST, mid-reply/stream/frame)",
                disconnects=1000, fds_before=before["fds"], fds_after=after["fds"],
                tasks_before=before["tasks"], tasks_after=after["tasks"],
                threads_before=before["threads"], threads_after=after["threads"],
                rss_before_mib=before["rss"] / MiB, rss_after_mib=after["rss"] / MiB,
                peak_mib=peak / MiB, seconds=seconds)

