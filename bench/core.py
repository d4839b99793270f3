"""Core figures of a served dump, each beside a baseline measured in the same run.

    python -m bench.core [--size-mib 1024] [--seconds 3]

Starts `dumpd serve` (a separate process, uvloop, no hook) on a raw image in a temp
dir, warms the page cache, then measures from a client process:
- dependent 8-byte reads (each waits for the previous): p50 / p99 round trip,
  beside a local `os.pread` of 8 bytes;
- pipelined 8-byte reads per second (depth 64), beside local `os.pread` calls;
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


async def round_trips(client: AsyncClient, size: int, n: int) -> list[float]:
    """Dependent 8-byte reads at random offsets in the first `size` bytes."""
    rng = random.Random(3)
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


Row = tuple[str, str, str, str]


async def client_side(sock: str, image: Path, size: int, seconds: float) -> list[Row]:
    async with await AsyncClient.connect(sock) as client:
        await bulk(client, size, 1)  # warm the server's threads and the page cache
        await round_trips(client, HOT, 5000)  # bring the hot pages into dumpd's cache
        hot = await round_trips(client, HOT, 20000)
        trips = await round_trips(client, size, 20000)
        local = pread_latency(image, 20000)
        hot_rate = await pipelined(client, HOT, 64, seconds)
        rate = await pipelined(client, size, 64, seconds)
        local_rate = 1 / statistics.mean(local)
        bulk1 = min([await bulk(client, size, 1) for _ in range(3)])
        bulk2 = min([await bulk(client, size, 2) for _ in range(3)])
    cat = min(cat_seconds(image) for _ in range(3))
    gbs = lambda s: size / s / 1e9  # noqa: E731
    return [
        ("8-byte read round trip p50, cached page", f"{pct(hot, 50) * 1e6:.1f} us",
         f"{pct(local, 50) * 1e6:.2f} us (os.pread)", f"{pct(hot, 50) / pct(local, 50):.0f}x"),
        ("8-byte read round trip p50, any page", f"{pct(trips, 50) * 1e6:.1f} us",
         f"{pct(local, 50) * 1e6:.2f} us (os.pread)", f"{pct(trips, 50) / pct(local, 50):.0f}x"),
        ("8-byte read round trip p99, any page", f"{pct(trips, 99) * 1e6:.1f} us",
         f"{pct(local, 99) * 1e6:.2f} us (os.pread)", f"{pct(trips, 99) / pct(local, 99):.0f}x"),
        ("pipelined 8-byte reads (depth 64), cached pages", f"{hot_rate:,.0f} /s",
         f"{local_rate:,.0f} /s (os.pread)", f"{hot_rate / local_rate:.3f}x"),
        ("pipelined 8-byte reads (depth 64), any page", f"{rate:,.0f} /s",
         f"{local_rate:,.0f} /s (os.pread)", f"{rate / local_rate:.3f}x"),
        ("read 8 MiB chunks, depth 1", f"{gbs(bulk1):.2f} GB/s", f"{gbs(cat):.2f} GB/s (cat)",
         f"{cat / bulk1:.2f}x"),
        ("read 8 MiB chunks, depth 2", f"{gbs(bulk2):.2f} GB/s", f"{gbs(cat):.2f} GB/s (cat)",
         f"{cat / bulk2:.2f}x"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="dumpd-bench-") as tmp:
        image = Path(tmp) / "oldmem.img"
        make_image(image, size)
        sock = str(Path(tmp) / "dumpd.sock")
        server = subprocess.Popen(
            [sys.executable, "-m", "dumpd", "serve", "--source", str(image), "--kind", "raw",
             "--socket", sock, "--loop", "uvloop", "--log-level", "warning"])
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("bench: dumpd serve did not start")
                time.sleep(0.01)
            rows = uvloop.run(client_side(sock, image, size, args.seconds))
        finally:
            server.terminate()
            server.wait(10)
    print(f"\n{args.size_mib} MiB raw image, page cache warm, dumpd on uvloop, "
          f"{os.cpu_count()} CPUs\n")
    print("| measure | dumpd | baseline | dumpd / baseline |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
