"""Start-up time and memory of `dumpd serve`, as systemd would see them.

    python -m bench.footprint [--runs 10] [--size-mib 512]

- exec to READY=1: `dumpd serve` started with NOTIFY_SOCKET pointing at a datagram
  socket of ours; the time from exec to the READY=1 datagram (source opened, hook
  registered, socket listening), best and median of `--runs`, beside `python -c pass`
  (the interpreter's own start).
- idle RSS: VmRSS one second after READY=1.
- RSS while serving: VmHWM after 20,000 random 8-byte reads (they fill the page
  cache), after 64 reads of 8 MiB, and after a whole-image stream, against
  `engine.cache_mib` (16 MiB by default) + 30 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dumpd.client import AsyncClient, Client
from dumpd.receiver import StreamData

MiB = 1 << 20
DUMPD = [sys.executable, "-m", "dumpd"]


def status_kib(pid: int, key: str) -> int:
    line = next(row for row in Path(f"/proc/{pid}/status").read_text().splitlines()
                if row.startswith(f"{key}:"))
    return int(line.split()[1])


def start(image: Path, sock: Path, notify: socket.socket, address: str
          ) -> tuple[subprocess.Popen[bytes], float]:
    """`dumpd serve` and the seconds from exec to its READY=1."""
    env = {**os.environ, "NOTIFY_SOCKET": address}
    began = time.perf_counter()
    proc = subprocess.Popen([*DUMPD, "serve", "--source", str(image), "--socket", str(sock),
                             "--log-level", "warning"], env=env)
    while b"READY=1" not in notify.recv(4096):
        pass
    return proc, time.perf_counter() - began


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait()


async def small_reads(sock: Path, size: int) -> None:
    """20,000 random 8-byte reads, 100 at a time: enough to fill a 16 MiB page cache."""
    rng = random.Random(4)
    async with await AsyncClient.connect(str(sock)) as client:
        for _ in range(200):
            await asyncio.gather(*(client.read(rng.randrange(size - 8), 8) for _ in range(100)))


async def large_reads(sock: Path, size: int) -> None:
    """64 reads of 8 MiB, 4 at a time (the reply budget lets 2 of them run at once)."""
    rng = random.Random(5)
    async with await AsyncClient.connect(str(sock)) as client:
        for _ in range(16):
            await asyncio.gather(*(client.read(rng.randrange(size - 8 * MiB), 8 * MiB)
                                   for _ in range(4)))


def stream_all(sock: Path, size: int) -> int:
    with Client.connect(str(sock)) as client:
        return sum(len(p.data) for p in client.stream(0, size) if isinstance(p, StreamData))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dumpd-bench-footprint-") as tmp:
        work = Path(tmp)
        image = work / "oldmem"
        size = args.size_mib * MiB
        with open(image, "wb") as f:
            block = random.Random(1).randbytes(MiB)
            for _ in range(args.size_mib):
                f.write(block)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = str(work / "notify.sock")
        notify.bind(address)
        sock = work / "dumpd.sock"
        ready: list[float] = []
        for _ in range(args.runs):
            proc, seconds = start(image, sock, notify, address)
            ready.append(seconds)
            stop(proc)
        python: list[float] = []
        for _ in range(args.runs):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            python.append(time.perf_counter() - began)
        proc, _ = start(image, sock, notify, address)
        time.sleep(1.0)
        idle = status_kib(proc.pid, "VmRSS")
        asyncio.run(small_reads(sock, size))
        after_small = status_kib(proc.pid, "VmHWM")
        asyncio.run(large_reads(sock, size))
        after_large = status_kib(proc.pid, "VmHWM")
        stream_all(sock, size)
        peak = status_kib(proc.pid, "VmHWM")
        stop(proc)
    target = 16 + 30  # engine.cache_mib (the default) + 30 MiB
    print("| measure | dumpd | baseline / target |")
    print("|---|---|---|")
    print(f"| exec to READY=1 | {min(ready) * 1e3:.0f} ms best, "
          f"{statistics.median(ready) * 1e3:.0f} ms median | target < 300 ms; "
          f"`python -c pass`: {min(python) * 1e3:.0f} ms |")
    print(f"| idle RSS, 1 s after READY=1 | {idle / 1024:.1f} MiB | target < 30 MiB |")
    print(f"| peak RSS after 20,000 random 8-byte reads (page cache full) | "
          f"{after_small / 1024:.1f} MiB | 16 MiB page cache configured |")
    print(f"| peak RSS after 64 reads of 8 MiB | {after_large / 1024:.1f} MiB | "
          f"2 in flight x 8 MiB buffers (reply budget 16 MiB, buffer pool 16 MiB) |")
    verdict = "met" if peak / 1024 < target else "MISSED"
    print(f"| peak RSS after a {args.size_mib} MiB stream too | {peak / 1024:.1f} MiB | "
          f"target < 16 MiB cache + 30 MiB = {target} MiB: {verdict} |")


if __name__ == "__main__":
    main()
