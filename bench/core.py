"""Core figures of a served dump, each beside a baseline measured in the same run.

    python -m bench.core [--size-mib 1024] [--seconds 3]

Starts `dumpd serve` (a separate process, uvloop, no hook) on a raw image in a temp
dir, warms the page cache, then measures from a client process:
- dependent 8-byte reads (each waits for the previous): p50 / p99 round trip, on
  pages dumpd has cached and on any page, beside the same calls to `bench.echo` (a
  bare msgpack-RPC server on the same loop: the stack's own limit) and a local
  `os.pread` of 8 bytes;
- pipelined 8-byte reads per second (depth 64), beside the echo server and `os.pread`;
- `read` of 8 MiB chunks over the whole file in GB/s (depth 1 and 2),
  beside `cat FILE > /dev/null`.
Prints a Markdown table; absolute numbers drift on shared machines, ratios hold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from dumpd.client import AsyncClient

MiB = 1 << 20
CHUNK = 8 * MiB


def make_image(path: Path, size: int) -> None:
    block = random.Random(1).randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(block[i % 251 :] + block[: i % 251])


def cat_seconds(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def pread_latency(path: Path, n: int) -> list[float]:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    rng = random.Random(2)
    out = []
    try:
        for _ in range(n):
            off = rng.randrange(size - 8)
            t = time.perf_counter()
            os.pread(fd, 8, off)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return out


HOT = 1 * MiB  # a debugger's working set: pages the cache keeps
RNG = random.Random(3)


async def round_trips(client: AsyncClient, size: int, n: int) -> list[float]:
    """Dependent 8-byte reads at random offsets in the first `size` bytes."""
    rng = RNG
    out = []
    for _ in range(n):
        off = rng.randrange(size - 8)
        t = time.perf_counter()
        await client.read(off, 8)
        out.append(time.perf_counter() - t)
    return out


async def pipelined(client: AsyncClient, size: int, depth: int, seconds: float) -> float:
    rng = random.Random(4)
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await client.read(rng.randrange(size - 8), 8)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(depth)))
    return done / (time.perf_counter() - start)


async def bulk(client: AsyncClient, size: int, depth: int) -> float:
    offsets = list(range(0, size, CHUNK))
    start = time.perf_counter()
    for i in range(0, len(offsets), depth):
        parts = await asyncio.gather(*(client.read(o, CHUNK) for o in offsets[i : i + depth]))
        assert sum(map(len, parts)) == min(size - offsets[i], depth * CHUNK)
    return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


Row = tuple[str, str, str, str, str]


def us(values: list[float], q: float) -> str:
    return f"{pct(values, q) * 1e6:.1f} us"


async def client_side(sock: str, echo_sock: str, image: Path, size: int,
                      seconds: float) -> list[Row]:
    async with (await AsyncClient.connect(sock) as client,
                await AsyncClient.connect(echo_sock) as echo):
        await bulk(client, size, 1)  # warm the server's threads and the page cache
        await round_trips(client, HOT, 5000)  # bring the hot pages into dumpd's cache
        await round_trips(echo, HOT, 5000)
        hot: list[float] = []
        trips: list[float] = []
        bare: list[float] = []
        for _ in range(20):  # interleaved, so that drift on a shared machine hits all alike
            hot += await round_trips(client, HOT, 1000)
            trips += await round_trips(client, size, 1000)
            bare += await round_trips(echo, size, 1000)
        local = pread_latency(image, 20000)
        hot_rate = await pipelined(client, HOT, 64, seconds)
        rate = await pipelined(client, size, 64, seconds)
        bare_rate = await pipelined(echo, size, 64, seconds)
        local_rate = 1 / statistics.mean(local)
        bulk1 = min([await bulk(client, size, 1) for _ in range(3)])
        bulk2 = min([await bulk(client, size, 2) for _ in range(3)])
    cat = min(cat_seconds(image) for _ in range(3))

    def gbs(seconds: float) -> str:
        return f"{size / seconds / 1e9:.2f} GB/s"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x"

    return [
        ("8-byte read round trip p50, cached page", us(hot, 50), us(bare, 50), us(local, 50),
         ratio(pct(hot, 50), pct(bare, 50))),
        ("8-byte read round trip p50, any page", us(trips, 50), us(bare, 50), us(local, 50),
         ratio(pct(trips, 50), pct(bare, 50))),
        ("8-byte read round trip p99, any page", us(trips, 99), us(bare, 99), us(local, 99),
         ratio(pct(trips, 99), pct(bare, 99))),
        ("pipelined 8-byte reads/s (depth 64), cached pages", f"{hot_rate:,.0f}",
         f"{bare_rate:,.0f}", f"{local_rate:,.0f}", ratio(hot_rate, bare_rate)),
        ("pipelined 8-byte reads/s (depth 64), any page", f"{rate:,.0f}", f"{bare_rate:,.0f}",
         f"{local_rate:,.0f}", ratio(rate, bare_rate)),
        ("read 8 MiB chunks, depth 1 (baseline: cat)", gbs(bulk1), "-", gbs(cat),
         ratio(cat, bulk1) + " of cat"),
        ("read 8 MiB chunks, depth 2 (baseline: cat)", gbs(bulk2), "-", gbs(cat),
         ratio(cat, bulk2) + " of cat"),
    ]


SERVER_CPU, CLIENT_CPU = 1, 0


PINNED = len(os.sched_getaffinity(0)) >= 2
"""Servers on one CPU, the client on another: where a process wakes up decides a round
trip's cost on a VM more than the code does, so it is fixed for every server alike."""


def start(argv: list[str], sock: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv)
    if PINNED:
        os.sched_setaffinity(proc.pid, {SERVER_CPU})
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: {argv[2]} did not start")
        time.sleep(0.01)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="dumpd-bench-") as tmp:
        image = Path(tmp) / "oldmem.img"
        make_image(image, size)
        sock, echo_sock = str(Path(tmp) / "dumpd.sock"), str(Path(tmp) / "echo.sock")
        servers = [
            start([sys.executable, "-m", "dumpd", "serve", "--source", str(image), "--kind",
                   "raw", "--socket", sock, "--loop", "uvloop", "--log-level", "warning"], sock),
            start([sys.executable, "-m", "bench.echo", echo_sock], echo_sock),
        ]
        if PINNED:
            os.sched_setaffinity(0, {CLIENT_CPU})
        try:
            rows = uvloop.run(client_side(sock, echo_sock, image, size, args.seconds))
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(10)
    where = (f"servers pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}" if PINNED
             else "one CPU")
    print(f"\n{args.size_mib} MiB raw image, page cache warm, servers on uvloop, client "
          f"AsyncClient, {where}\n")
    print("| measure | dumpd | bare echo server | local os.pread / cat | dumpd vs echo |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
