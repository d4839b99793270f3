"""Load on a real `dumpd serve`: 256 connections at once, each making 1,000 mixed calls
checked against the expected view; and pipelined digests, whose read-ahead must stay
within the connection's reply budget."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest
import uvloop

from dumpd.client import Client
from dumpd.client.aio import AsyncClient
from dumpd.protocol import FrameDecoder, Response, encode_request
from dumpd.sources.base import Segment
from tests.daemon import ENV, served, server_pid
from tests.dumps import SegSpec, build_elf, build_raw, file_bytes
from tests.figures import Figures, memory, reset_peak
from tests.views import PAGE, balloon_file, expected_view

MiB = 1 << 20
LOADS = [SegSpec(paddr=0x1000000, memsz=0x600000), SegSpec(paddr=0x4000000, memsz=0x400000)]
BALLOONED = [(0x1010, 0x101F), (0x1300, 0x13FF), (0x1580, 0x1580), (0x4000, 0x4007),
             (0x43F0, 0x43FF)]
CONNECTIONS = 256
CALLS = 1000


class Expected:
    """What the server must answer for the dump served with the balloon hook."""

    def __init__(self, path: str, segments: tuple[Segment, ...], zero_pfns: set[int]) -> None:
        self.view = expected_view(path, segments, zero_pfns)
        self.segments = segments
        self.kinds = ["data"] * ((len(self.view) + PAGE - 1) // PAGE)
        for seg in segments:
            for page in range(seg.filesz // PAGE):
                if seg.paddr // PAGE + page in zero_pfns:
                    self.kinds[seg.file_offset // PAGE + page] = "zero"

    def extents(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        end = min(len(self.view), offset + length)
        runs: list[tuple[int, int, str]] = []
        pos = offset
        while pos < end:
            stop = min(end, (pos // PAGE + 1) * PAGE)
            kind = self.kinds[pos // PAGE]
            if runs and runs[-1][2] == kind:
                runs[-1] = (runs[-1][0], stop - runs[-1][0], kind)
            else:
                runs.append((pos, stop - pos, kind))
            pos = stop
        return runs


async def calls(client: AsyncClient, want: Expected, seed: int) -> int:
    """`CALLS` random reads, physical reads and extents, each checked; how many."""
    rng = random.Random(seed)
    size = len(want.view)
    for _ in range(CALLS):
        kind = rng.random()
        length = rng.choice([8, 64, PAGE, 3 * PAGE + 5, 65536])
        if kind < 0.45:
            offset = rng.randrange(size)
            assert await client.read(offset, length) == want.view[offset : offset + length]
        elif kind < 0.8:
            seg = rng.choice(want.segments)
            start = seg.paddr + rng.randrange(seg.memsz - length)
            at = seg.file_offset + start - seg.paddr
            assert await client.read_phys(start, length) == want.view[at : at + length]
        else:
            offset, length = rng.randrange(size), rng.choice([PAGE, 64 * PAGE, MiB])
            assert await client.extents(offset, length) == want.extents(offset, length)
    return CALLS


async def connect_all(path: str, watcher: AsyncClient) -> tuple[list[AsyncClient], int]:
    """`CONNECTIONS` clients connecting at once (the listen backlog holds them all until
    accepted); the clients, and how many connections were refused."""
    made = await asyncio.gather(*(AsyncClient.connect(path) for _ in range(CONNECTIONS)),
                                return_exceptions=True)
    clients = [c for c in made if isinstance(c, AsyncClient)]
    while (await watcher.stats())["connections"] < 1 + len(clients):
        await asyncio.sleep(0.01)
    return clients, len(made) - len(clients)


async def crowd(path: str, want: Expected) -> tuple[int, int, int, int]:
    """`CONNECTIONS` clients connected at once, then all calling; returns the calls
    verified, the connections refused, the server's count of connections while all
    were open, and its count of refused peers."""
    async with await AsyncClient.connect(path) as watcher:
        connected, refused = await connect_all(path, watcher)
        try:
            open_now = (await watcher.stats())["connections"] - 1
            done = await asyncio.gather(*(calls(c, want, seed)
                                          for seed, c in enumerate(connected)))
            refused_peers = (await watcher.stats())["refused_connections"]
        finally:
            await asyncio.gather(*(c.close() for c in connected))
    return sum(done), refused, open_now, refused_peers


@pytest.mark.slow
def test_256_connections_of_1000_mixed_calls_are_all_answered_right(
        tmp_path: Path, figures: Figures) -> None:
    dump = build_elf(tmp_path / "vmcore", LOADS, page_size_note=PAGE)
    zero_pfns = {p for a, b in BALLOONED for p in range(a, b + 1)}
    want = Expected(dump.path, dump.segments, zero_pfns)
    balloon = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    started = time.monotonic()
    with served(tmp_path, dump.path, "--hook", "balloon", "--hook-option",
                f"file={balloon}") as path:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            verified, refused, open_now, refused_peers = runner.run(crowd(path, want))
        with Client.connect(path) as client:
            stats = client.stats()
    seconds = time.monotonic() - started
    assert (refused, open_now, refused_peers) == (0, CONNECTIONS, 0)
    assert verified == CONNECTIONS * CALLS
    assert stats["connections"] == 1
    figures.add("load: 256 connections x 1,000 mixed calls", calls_verified=verified,
                errors=0, connections_refused=refused, open_at_once=open_now,
                seconds=seconds)


def digests(sock: socket.socket, count: int) -> list[Response]:
    """`count` digests of the whole view sent at once, and their replies."""
    sock.sendall(b"".join(encode_request(i, "digest", [0, 1 << 40, "md5"])
                          for i in range(count)))
    decoder = FrameDecoder("client")
    replies: list[Response] = []
    while len(replies) < count:
        replies += [e for e in decoder.feed(sock.recv(65536)) if isinstance(e, Response)]
    return replies


@pytest.mark.slow
def test_pipelined_digests_read_ahead_within_the_reply_budget(
        tmp_path: Path, figures: Figures, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 digests sent at once on one connection: each reads 5 MiB ahead (its window
    and the chunk being hashed), which the connection's reply budget (16 MiB) must
    cover, or the server holds 64 x 5 MiB."""
    dump = build_raw(tmp_path / "oldmem", 16 * MiB)
    config = tmp_path / "dumpd.toml"
    config.write_text("[engine]\nbuffer_pool_mib = 0\n")  # every buffer freed when done
    monkeypatch.setitem(ENV, "MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    started = time.monotonic()
    with served(tmp_path, dump.path, "-c", str(config)) as path:
        pid = server_pid(path)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            digests(sock, 1)  # the hashing threads started
            before, _ = memory(pid)
            reset_peak(pid)
            replies = digests(sock, 64)
            _, peak = memory(pid)
    seconds = time.monotonic() - started
    md5 = hashlib.md5(file_bytes(dump.path)).hexdigest()
    assert [r.result for r in replies] == [{"algorithm": "md5", "digest": md5, "offset": 0,
                                            "length": dump.size}] * 64
    # The budget's 16 MiB in read-ahead (3 digests at a time), and 4 MiB for the hashing
    # threads' heaps. Without it all 64 read ahead at once: 35 MiB more here, 109 MiB
    # more on a 256 MiB dump.
    assert peak - before < 20 * MiB, (before, peak)
    figures.add("pipelined digests on one connection", digests=64,
                rss_before_mib=before / MiB, rss_peak_mib=peak / MiB, seconds=seconds)


def test_a_burst_of_connections_below_the_limit_is_queued(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", MiB)
    refused = 0
    with served(tmp_path, dump.path) as path:
        pid = server_pid(path)
        os.kill(pid, signal.SIGSTOP)  # a server too busy to accept for a moment
        waiting: list[socket.socket] = []
        try:
            for _ in range(CONNECTIONS):
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                try:
                    sock.connect(path)
                except BlockingIOError:
                    refused += 1
                    sock.close()
                else:
                    waiting.append(sock)
        finally:
            os.kill(pid, signal.SIGCONT)
        with Client.connect(path) as client:
            accepted = client.stats()["connections"] - 1
        for sock in waiting:
            sock.close()
    assert (refused, accepted) == (0, CONNECTIONS)
