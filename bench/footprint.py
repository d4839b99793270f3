"""Scenario 5, footprint: start-up time and memory of `dumpd serve` and `dumpd fetch`.

- exec to READY=1: `dumpd serve` started with NOTIFY_SOCKET pointing at a datagram
  socket of ours, as systemd would; the time from exec to the READY=1 datagram (source
  opened, hook registered, socket listening), best and median of the runs, beside
  `python -c pass` (the interpreter's own start).
- idle RSS: VmRSS one second after the server listens, beside `bench.echo` (a bare
  msgpack-RPC server on the same loop) one second after it listens.
- RSS while serving a dense raw image: VmHWM after 20,000 random 8-byte reads (they
  fill the page cache), after 64 reads of 8 MiB, and after a whole-image stream,
  against `engine.cache_mib` (16 MiB by default) + 30 MiB.
- peak RSS while fetching a 4 GiB dump: VmHWM of a fresh server and of the fetch
  process. The dump is a sparse file (it reads as zeros at memory speed and takes no
  space); the copy goes to the work dir and is deleted at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    DUMPD,
    Emit,
    MiB,
    Row,
    dumpd_server,
    fresh,
    held,
    make_image,
    peak_kib,
    status_kib,
    timed,
)
from bench.echo import echo_server
from dumpd.client import Client, StreamData
from dumpd.client.aio import AsyncClient

TITLE = "Footprint: exec to READY=1, idle RSS, peak RSS while serving and fetching"
SCENARIO = "5. footprint"
CACHE_MIB = 16  # engine.cache_mib, the default
READY_MS, IDLE_MIB, SERVING_MIB, FETCH_MIB = 300, 30, CACHE_MIB + 30, 64


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def start(image: Path, sock: Path, notify: socket.socket, address: str
          ) -> tuple[subprocess.Popen[bytes], float]:
    """`dumpd serve` and the seconds from exec to its READY=1."""
    env = {**os.environ, "NOTIFY_SOCKET": address}
    began = time.perf_counter()
    proc = subprocess.Popen([*DUMPD, "serve", "--source", str(image), "--socket", str(sock),
                             "--log-level", "warning"], env=env)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
    except TimeoutError:
        stop(proc)
        raise SystemExit("bench: dumpd serve sent no READY=1") from None
    return proc, time.perf_counter() - began


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait()


def ready_times(image: Path, work: Path, runs: int) -> tuple[list[float], list[float]]:
    """Seconds from exec to READY=1 per run, and those of `python -c pass`."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(work / "notify.sock")
    notify.bind(address)
    notify.settimeout(30)
    ready = []
    with notify:
        for _ in range(runs):
            proc, seconds = start(image, work / "dumpd.sock", notify, address)
            ready.append(seconds)
            stop(proc)
    python = [timed([sys.executable, "-c", "pass"]) for _ in range(runs)]
    return ready, python


def echo_idle_kib(work: Path) -> int:
    """VmRSS of `bench.echo` one second after it listens."""
    with echo_server(work / "echo.sock") as proc:
        time.sleep(1.0)
        return status_kib(proc.pid, "VmRSS")


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


def serving(image: Path, sock: Path, size: int) -> dict[str, int]:
    """VmRSS idle, then VmHWM after each load, of one server."""
    with dumpd_server(sock, ["--source", str(image)]) as proc:
        time.sleep(1.0)
        phases = {"idle": status_kib(proc.pid, "VmRSS")}
        asyncio.run(small_reads(sock, size))
        phases["small"] = status_kib(proc.pid, "VmHWM")
        asyncio.run(large_reads(sock, size))
        phases["large"] = status_kib(proc.pid, "VmHWM")
        stream_all(sock, size)
        phases["stream"] = status_kib(proc.pid, "VmHWM")
    return phases


def fetching(work: Path, size: int) -> tuple[int, int]:
    """Peak RSS (KiB) of a fresh server and of `dumpd fetch` copying a `size`-byte dump."""
    free = shutil.disk_usage(work).free
    if free < size + 512 * MiB:
        raise SystemExit(f"bench: the {size // MiB} MiB copy needs that much free space in "
                         f"{work} ({free // MiB} MiB free); pick another --work-dir")
    image = work / "big.img"
    with open(image, "wb") as f:
        f.truncate(size)
    sock = work / "fetch.sock"
    out = work / "fetch.out"
    try:
        with dumpd_server(sock, ["--source", str(image), "--kind", "raw"]) as proc:
            client_kib = peak_kib([*DUMPD, "fetch", "-q", "-o", str(out), "--socket", str(sock)])
            server_kib = status_kib(proc.pid, "VmHWM")
    finally:
        fresh(out)
        image.unlink()
    return server_kib, client_kib


def run(work: Path, quick: bool, emit: Emit) -> None:
    runs, serve_size, fetch_size = (2, 64 * MiB, 256 * MiB) if quick else (
        10, 512 * MiB, 4096 * MiB)
    image = work / "oldmem"
    make_image(image, serve_size)
    ready, python = ready_times(image, work, runs)
    best = min(ready)
    emit(Row(SCENARIO, f"exec to READY=1, best of {runs} (median)",
             f"{best * 1e3:.0f} ms ({statistics.median(ready) * 1e3:.0f} ms)",
             f"`python -c pass`: {min(python) * 1e3:.0f} ms", f"{best / min(python):.1f}x",
             held(best * 1e3 < READY_MS, f"< {READY_MS} ms"),
             {"ready_s": [round(s, 4) for s in ready],
              "python_s": [round(s, 4) for s in python]}))
    phases = serving(image, work / "dumpd.sock", serve_size)
    echo = echo_idle_kib(work)
    emit(Row(SCENARIO, "idle RSS, 1 s after it listens", mib(phases["idle"]),
             f"`bench.echo` idle: {mib(echo)}", f"{phases['idle'] / echo:.1f}x",
             held(phases["idle"] < IDLE_MIB * 1024, f"< {IDLE_MIB} MiB"),
             {"idle_kib": phases["idle"], "echo_kib": echo}))
    emit(Row(SCENARIO, "peak RSS after 20,000 random 8-byte reads (page cache full)",
             mib(phases["small"]), f"engine.cache_mib: {CACHE_MIB} MiB", "", "",
             {"vmhwm_kib": phases["small"]}))
    emit(Row(SCENARIO, "peak RSS after 64 reads of 8 MiB too", mib(phases["large"]),
             "2 in flight x 8 MiB (reply budget 16 MiB, buffer pool 16 MiB)", "", "",
             {"vmhwm_kib": phases["large"]}))
    emit(Row(SCENARIO, f"peak RSS after a {serve_size // MiB} MiB stream too",
             mib(phases["stream"]), "", "",
             held(phases["stream"] < SERVING_MIB * 1024,
                  f"< engine.cache_mib {CACHE_MIB} + 30 = {SERVING_MIB} MiB"),
             {"vmhwm_kib": phases["stream"], "image_bytes": serve_size}))
    image.unlink()
    server_kib, client_kib = fetching(work, fetch_size)
    for who, kib in (("server (VmHWM)", server_kib), ("fetch client (VmHWM)", client_kib)):
        emit(Row(SCENARIO, f"peak RSS fetching a {fetch_size // MiB} MiB dump: {who}",
                 mib(kib), "", "", held(kib < FETCH_MIB * 1024, f"< {FETCH_MIB} MiB"),
                 {"peak_kib": kib, "dump_bytes": fetch_size}))
