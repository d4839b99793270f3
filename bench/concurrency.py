"""Scenario 4: 1, 8 and 64 clients reading the same region and different regions of a
dump: aggregate throughput, and source reads per distinct page.

Each run starts a fresh `dumpd serve` (raw image, no hook, uvloop: its page cache cold)
on a 257 MiB image the OS page cache holds (warm) and connects N clients. Each client makes
one read in the last MiB of the image, outside every region (it warms the server's
code paths and starts its worker threads without touching a page of the run); then
they all go at once, each reading its region once from start to end, one read at a
time (the next sent when the previous returns), as a debugger walking a structure or
a copier taking its share does. `stats` before and after gives source pages read,
single-flight waits and cache hits; source pages read over the distinct pages the run
touched must be exactly 1.

- same region: every client reads the same 4 MiB at the same offsets in the same order,
  so their requests for a page arrive together. The first starts a flight; the others
  wait on it (`singleflight_waits`) or, arriving once it landed, find the page in
  dumpd's page cache. Without single-flight, every client whose request arrived while
  the page was in flight would read it again: with the engine's flights hidden from
  other readers, these runs read 3 (8 clients) to 19 (64 clients) source pages per
  distinct page.
- different regions: client i reads its own 4 MiB at 4i MiB: 64 clients cover 256 MiB,
  every page asked once; nothing to share, so the ratio is 1 unless a page is read
  twice for nothing.

Sizes, from the engine's rules (dumpd/engine/engine.py): the page cache holds 16 MiB
(4096 pages) and reads longer than a quarter of it (4 MiB) do not fill it. Both read
sizes stay below that, so every page read is cached; the shared 4 MiB region (1024
pages) fits in the cache four times over, so a client that lags behind the others
finds the region's pages there instead of reading them again. The two read sizes take
the engine's two miss paths: 64 KiB (16 pages) is read inline from the OS page cache by
the flight (reads up to 128 KiB are), 1 MiB (256 pages) by a worker thread, a longer
flight with more requests arriving while it runs.

The clients are N connections (one `AsyncClient` each) on one uvloop in this process,
not N processes: with 2 CPUs, the server has one and the clients the other (see
bench.smallreads), and one event loop drives 64 connections on a CPU with less
overhead than 64 interpreters taking turns on it. Each run records when every client
finished; `values` keep the spread between the first and the last (fairness).

Then `bench.bigreads`: one client reading the whole image in 8 MiB `read`s and
`read_phys`es, beside `cat` of it.

Beside each throughput: the same clients and reads against `bench.echo` (a bare
msgpack-RPC server on the same loop that answers a read of n bytes with n zero bytes:
the stack's own limit for that many clients and that reply size). Each figure is the
median of 5 runs (`--quick`: one run, regions of 1 MiB).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench import bigreads
from bench.common import (
    PAGE,
    WHERE,
    Emit,
    MiB,
    Row,
    client_pinned,
    dumpd_server,
    held,
    make_image,
    pin_server,
    warm,
)
from bench.echo import echo_server
from dumpd.client.aio import AsyncClient

TITLE = "Concurrency: 1, 8, 64 clients on the same and different regions"
SCENARIO = "4. concurrency"
CLIENTS = (1, 8, 64)
READ_SIZES = (64 * 1024, 1 * MiB)
MODES = ("same region", "different regions")
TARGET = 0.8  # of echo's rate, for every read size and number of clients (issue 17)
COUNTED = ("source_pages_read", "singleflight_waits", "cache_hits", "cache_misses",
           "source_read_calls", "worker_hops")


@dataclass(frozen=True)
class Plan:
    """Each client reads `region` bytes; every figure is the median of `runs` runs."""

    region: int
    runs: int


FULL = Plan(region=4 * MiB, runs=5)
QUICK = Plan(region=1 * MiB, runs=1)
WARM_UP = max(READ_SIZES)  # the image's last bytes, beyond every region


def image_size(plan: Plan) -> int:
    """Room for every client's own region, then the warm-up reads."""
    return max(CLIENTS) * plan.region + WARM_UP


@dataclass(frozen=True)
class Run:
    """One run: its wall time, when each client finished, and dumpd's counters."""

    seconds: float
    finished: list[float]
    counts: dict[str, int]

    def spread(self) -> float:
        """The first client's finish over the last one's (1.0: all finished together)."""
        return min(self.finished) / max(self.finished)


def regions(mode: str, clients: int, region: int) -> list[int]:
    """Where each client's region starts."""
    return [0 if mode == "same region" else i * region for i in range(clients)]


def distinct_pages(mode: str, clients: int, region: int) -> int:
    return (1 if mode == "same region" else clients) * region // PAGE


async def read_region(client: AsyncClient, start: int, region: int, size: int,
                      began: float) -> float:
    """Read `[start, start+region)` in `size` reads, one at a time; seconds until done."""
    for offset in range(start, start + region, size):
        data = await client.read(offset, size)
        assert len(data) == size
    return time.perf_counter() - began


async def clients_run(sock: Path, starts: list[int], region: int, size: int,
                      stats: bool) -> Run:
    """Connect a client per start, warm up, then let them all read at once."""
    clients = [await AsyncClient.connect(str(sock)) for _ in starts]
    try:
        warm_at = max(CLIENTS) * region  # past every region
        await asyncio.gather(*(client.read(warm_at, size) for client in clients))
        before = await clients[0].stats() if stats else {}
        began = time.perf_counter()
        finished = await asyncio.gather(*(read_region(client, start, region, size, began)
                                          for client, start in zip(clients, starts, strict=True)))
        seconds = time.perf_counter() - began
        after = await clients[0].stats() if stats else {}
    finally:
        for client in clients:
            await client.close()
    counts = {key: after[key] - before[key] for key in COUNTED} if stats else {}
    return Run(seconds, list(finished), counts)


@contextmanager
def fresh_dumpd(sock: Path, image: Path) -> Iterator[None]:
    """A new `dumpd serve` (page cache cold) on the server CPU, for one run."""
    with dumpd_server(sock, ["--source", str(image), "--kind", "raw", "--loop", "uvloop"]
                      ) as proc:
        pin_server(proc.pid)
        yield


def throughput(runs: list[Run], bytes_per_run: int) -> float:
    """Median bytes per second."""
    return statistics.median(bytes_per_run / run.seconds for run in runs)


def label(clients: int, mode: str, size: int) -> str:
    reads = f"{size // 1024} KiB" if size < MiB else f"{size // MiB} MiB"
    return f"{clients} client{'s' if clients > 1 else ''}, {mode}, {reads} reads"


def emit_runs(emit: Emit, clients: int, mode: str, size: int, region: int,
              ours: list[Run], echo: list[Run]) -> None:
    total = clients * region
    rate, bare = throughput(ours, total), throughput(echo, total)
    name = label(clients, mode, size)
    values: dict[str, Any] = {
        "clients": clients, "mode": mode, "read_size": size, "region": region,
        "bytes_per_run": total, "where": WHERE,
        "dumpd_seconds": [run.seconds for run in ours],
        "echo_seconds": [run.seconds for run in echo],
        "dumpd_client_spread": [run.spread() for run in ours],
        "echo_client_spread": [run.spread() for run in echo]}
    emit(Row(SCENARIO, f"{name}: aggregate throughput",
             f"{rate / 1e6:,.0f} MB/s ({rate / size:,.0f} reads/s)",
             f"echo: {bare / 1e6:,.0f} MB/s", f"{rate / bare:.2f}x",
             held(rate >= TARGET * bare, f">= {TARGET}x echo"),
             {**values, "dumpd_bytes_per_s": rate, "echo_bytes_per_s": bare}))
    distinct = distinct_pages(mode, clients, region)
    ratios = [run.counts["source_pages_read"] / distinct for run in ours]
    worst = ours[ratios.index(max(ratios))].counts
    emit(Row(SCENARIO, f"{name}: source reads per distinct page",
             f"{worst['source_pages_read']:,} pages read ({worst['singleflight_waits']:,} "
             f"single-flight waits, {worst['cache_hits']:,} cache hits)",
             f"{distinct:,} distinct pages", f"{max(ratios):.3f}",
             held(all(r == 1 for r in ratios), "exactly 1.0"),
             {**values, "distinct_pages": distinct, "ratios": ratios,
              "dumpd_counters": [run.counts for run in ours]}))


def dumpd_runs(sock: Path, image: Path, starts: list[int], size: int, plan: Plan
               ) -> list[Run]:
    """`plan.runs` runs, each on a fresh server."""
    runs = []
    for _ in range(plan.runs):
        with fresh_dumpd(sock, image):
            runs.append(uvloop.run(clients_run(sock, starts, plan.region, size, True)))
    return runs


def run(work: Path, quick: bool, emit: Emit) -> None:
    plan = QUICK if quick else FULL
    image, sock, echo_sock = work / "oldmem.img", work / "dumpd.sock", work / "echo.sock"
    make_image(image, image_size(plan))
    warm(image)
    with client_pinned(), echo_server(echo_sock) as echo_proc:
        pin_server(echo_proc.pid)
        for size in READ_SIZES:
            for clients in CLIENTS:
                starts = regions("different regions", clients, plan.region)
                echo = [uvloop.run(clients_run(echo_sock, starts, plan.region, size, False))
                        for _ in range(plan.runs)]
                for mode in MODES:
                    ours = dumpd_runs(sock, image, regions(mode, clients, plan.region), size,
                                      plan)
                    emit_runs(emit, clients, mode, size, plan.region, ours, echo)
        bigreads.run(image, sock, echo_sock, plan.runs, emit, SCENARIO, fresh_dumpd)
