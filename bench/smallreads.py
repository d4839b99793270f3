"""Scenario 3: 8-byte reads at random offsets of a 256 MiB dump, beside a bare echo server.

`dumpd serve` (a raw image, no hook, uvloop) and `bench.echo` (a bare msgpack-RPC
server on the same loop, answering each 8-byte read with 8 zero bytes: the stack's own
limit) each run in their own process; the client is `AsyncClient` on uvloop in this
process, the same for both. With 2 CPUs or more, the servers are pinned to CPU 1 and
the client to CPU 0: on a VM, where a process wakes up decides a round trip's cost more
than the code does, so it is fixed for every server alike.

Measured, each beside the echo server:
- dependent round trips (each read waits for the previous one, as a debugger chasing
  pointers does): p50 and p99;
- pipelined reads per second at depth 1, 16 and 256 (that many reads in flight on one
  connection, each sent as soon as one returns);
at three kinds of offset: page-aligned and unaligned (any byte of a page but its
first; a read starting in the last 7 bytes straddles two pages, about 1 in 585, and
then goes through the engine's slower multi-page path: the rows say how often it
happened) at random over the whole image, and page-aligned in a 1 MiB hot set, which
stays in dumpd's page cache (the engine's best case). dumpd and echo are measured in
alternating rounds, so that drift on a shared machine hits both alike; a pipelined
figure is the median of its rounds.

Page caches: the image is in the OS page cache (warm) throughout. dumpd's own page
cache (16 MiB by default: 4096 of the 65,536 pages) is filled before measuring, so
random reads find a page there about 1 time in 16; the rest are read inline from the
OS page cache (`RWF_NOWAIT`, no worker thread). Each row gives dumpd's cache hit rate
during its measurement, from `stats`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

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

TITLE = "Small reads: 8-byte reads, dependent and pipelined, beside a bare echo server"
SCENARIO = "3. small reads"
SIZE = 256 * MiB
HOT = 1 * MiB
DEPTHS = (1, 16, 256)
TARGET = 1.5  # dumpd within 1.5x of the echo server, latency and rate alike
COUNTED = ("cache_hits", "cache_misses", "source_reads_inline", "worker_hops")


@dataclass(frozen=True)
class Plan:
    """How much to measure: `rounds` of `trips` dependent reads per kind, then per depth
    `windows` rounds of `window` seconds of pipelined reads per kind."""

    trips: int
    rounds: int
    windows: int
    window: float


FULL = Plan(trips=1000, rounds=16, windows=8, window=0.5)
QUICK = Plan(trips=200, rounds=2, windows=2, window=0.1)


def straddles(offset: int) -> bool:
    """Whether the 8 bytes at `offset` lie in two pages."""
    return offset % PAGE > PAGE - 8


@dataclass
class Kind:
    """Offsets of one kind (an endless random draw), what was measured at them, and
    dumpd's counters meanwhile."""

    name: str
    draw: Callable[[random.Random], int]
    trips: list[float] = field(default_factory=list)
    straddling_trips: list[float] = field(default_factory=list)
    rates: dict[int, list[float]] = field(default_factory=dict)
    counts: dict[int, Counter[str]] = field(default_factory=dict)  # by depth; 0: dependent
    drawn: int = 0
    straddled: int = 0

    def offsets(self, seed: int) -> Iterator[int]:
        """Random offsets of this kind, counting those whose 8 bytes straddle two pages."""
        rng = random.Random(seed)
        draw = self.draw
        while True:
            offset = draw(rng)
            self.drawn += 1
            self.straddled += straddles(offset)
            yield offset

    def record(self, trips: list[tuple[int, float]]) -> None:
        """Dependent round trips, those that straddled two pages also apart."""
        self.trips += [seconds for _, seconds in trips]
        self.straddling_trips += [seconds for offset, seconds in trips if straddles(offset)]

    def hit_rate(self, depth: int) -> float:
        """dumpd's page cache hit rate while reads at `depth` (0: dependent) were measured."""
        counts = self.counts[depth]
        looked = counts["cache_hits"] + counts["cache_misses"]
        return counts["cache_hits"] / looked if looked else 0.0


PAGES = SIZE // PAGE
KINDS = (
    ("page-aligned offsets", lambda rng: rng.randrange(PAGES) * PAGE),
    ("unaligned offsets", lambda rng: rng.randrange(PAGES - 1) * PAGE + rng.randrange(1, PAGE)),
    ("page-aligned offsets in a 1 MiB hot set (dumpd-cached)",
     lambda rng: rng.randrange(HOT // PAGE) * PAGE),
)


# -- measuring ---------------------------------------------------------------------


def pct(values: Sequence[float], q: int) -> float:
    """The q-th percentile."""
    return statistics.quantiles(values, n=100)[q - 1]


async def dependent(client: AsyncClient, offsets: Iterator[int], n: int
                    ) -> list[tuple[int, float]]:
    """Offsets and seconds of `n` 8-byte reads, each sent once the previous one has
    returned."""
    out = []
    clock = time.perf_counter
    for _ in range(n):
        offset = next(offsets)
        began = clock()
        await client.read(offset, 8)
        out.append((offset, clock() - began))
    return out


async def pipelined(client: AsyncClient, offsets: Iterator[int], depth: int,
                    seconds: float) -> float:
    """8-byte reads per second with `depth` of them in flight, over `seconds`."""
    done = 0
    clock = time.perf_counter
    end = clock() + seconds

    async def reader() -> None:
        nonlocal done
        while clock() < end:
            await client.read(next(offsets), 8)
            done += 1

    began = clock()
    await asyncio.gather(*(reader() for _ in range(depth)))
    return done / (clock() - began)


@asynccontextmanager
async def counted(client: AsyncClient, kind: Kind, depth: int) -> AsyncIterator[None]:
    """Add dumpd's `stats` counters, and the reads drawn and straddling, over the block
    to `kind`'s counts at `depth`."""
    before, drawn, straddled = await client.stats(), kind.drawn, kind.straddled
    yield
    after = await client.stats()
    counts = kind.counts.setdefault(depth, Counter())
    counts.update({key: after[key] - before[key] for key in COUNTED})
    counts.update(reads=kind.drawn - drawn, straddled=kind.straddled - straddled)


async def fill_cache(client: AsyncClient, offsets: Iterator[int]) -> None:
    """Bring dumpd's page cache to its steady state: full of random pages."""
    for _ in range(40):
        await asyncio.gather(*(client.read(next(offsets), 8) for _ in range(256)))


async def measure(sock: Path, echo_sock: Path, plan: Plan, emit: Emit) -> None:
    measured = [Kind(name, draw) for name, draw in KINDS]
    bare = Kind("echo", KINDS[0][1])
    cursors = {kind.name: kind.offsets(seed) for seed, kind in enumerate((*measured, bare))}
    async with (await AsyncClient.connect(str(sock)) as client,
                await AsyncClient.connect(str(echo_sock)) as echo):
        await fill_cache(client, measured[0].offsets(len(cursors)))
        for kind in (*measured, bare):  # warm both servers and the hot set
            await dependent(client if kind is not bare else echo, cursors[kind.name], 500)
        for _ in range(plan.rounds):
            for kind in measured:
                async with counted(client, kind, 0):
                    kind.record(await dependent(client, cursors[kind.name], plan.trips))
            bare.record(await dependent(echo, cursors[bare.name], plan.trips))
        for kind in measured:
            emit_trips(emit, kind, bare)
        for depth in DEPTHS:
            await measure_rates(client, echo, measured, bare, cursors, depth, plan)
            for kind in measured:
                emit_rate(emit, kind, bare, depth)


async def measure_rates(client: AsyncClient, echo: AsyncClient, measured: list[Kind],
                        bare: Kind, cursors: dict[str, Iterator[int]], depth: int,
                        plan: Plan) -> None:
    """Pipelined rates at `depth`: each kind on dumpd, then echo, `plan.windows` times."""
    for kind in (*measured, bare):
        kind.rates[depth] = []
    for _ in range(plan.windows):
        for kind in measured:
            async with counted(client, kind, depth):
                kind.rates[depth].append(
                    await pipelined(client, cursors[kind.name], depth, plan.window))
        bare.rates[depth].append(await pipelined(echo, cursors[bare.name], depth, plan.window))


# -- rows --------------------------------------------------------------------------


def context(kind: Kind, depth: int) -> str:
    """What a reader needs to know of the page caches (and straddles) for `kind`."""
    counts = kind.counts[depth]
    text = f"dumpd cache hits {kind.hit_rate(depth):.0%}"
    if kind.name.startswith("unaligned"):
        text += f"; {counts['straddled']:,} of {counts['reads']:,} reads straddle 2 pages"
        if depth == 0 and kind.straddling_trips:
            text += f", their p50 {statistics.median(kind.straddling_trips) * 1e6:.1f} us"
    return text


def emit_trips(emit: Emit, kind: Kind, bare: Kind) -> None:
    for q in (50, 99):
        ours, theirs = pct(kind.trips, q), pct(bare.trips, q)
        emit(Row(
            SCENARIO, f"dependent 8-byte read round trip p{q}, {kind.name}",
            f"{ours * 1e6:.1f} us ({context(kind, 0)})", f"echo: {theirs * 1e6:.1f} us",
            f"{ours / theirs:.2f}x", held(ours <= TARGET * theirs, f"<= {TARGET}x echo"),
            {"offsets": kind.name, "percentile": q, "dumpd_us": ours * 1e6,
             "echo_us": theirs * 1e6, "samples": len(kind.trips),
             "straddling_us": [seconds * 1e6 for seconds in kind.straddling_trips],
             "dumpd_cache_hit_rate": kind.hit_rate(0),
             "dumpd_counters": dict(kind.counts[0]), "where": WHERE}))


def emit_rate(emit: Emit, kind: Kind, bare: Kind, depth: int) -> None:
    ours, theirs = statistics.median(kind.rates[depth]), statistics.median(bare.rates[depth])
    emit(Row(
        SCENARIO, f"pipelined 8-byte reads/s at depth {depth}, {kind.name}",
        f"{ours:,.0f} ({context(kind, depth)})", f"echo: {theirs:,.0f}", f"{ours / theirs:.2f}x",
        held(ours * TARGET >= theirs, f">= echo / {TARGET}"),
        {"offsets": kind.name, "depth": depth, "dumpd_per_s": ours, "echo_per_s": theirs,
         "dumpd_rounds": kind.rates[depth], "echo_rounds": bare.rates[depth],
         "dumpd_cache_hit_rate": kind.hit_rate(depth),
         "dumpd_counters": dict(kind.counts[depth]), "where": WHERE}))


def run(work: Path, quick: bool, emit: Emit) -> None:
    image, sock, echo_sock = work / "oldmem.img", work / "dumpd.sock", work / "echo.sock"
    make_image(image, SIZE)
    warm(image)
    with ExitStack() as stack:
        stack.enter_context(client_pinned())
        servers = [
            stack.enter_context(dumpd_server(sock, ["--source", str(image), "--kind", "raw",
                                                    "--loop", "uvloop"])),
            stack.enter_context(echo_server(echo_sock)),
        ]
        for proc in servers:
            pin_server(proc.pid)
        uvloop.run(measure(sock, echo_sock, QUICK if quick else FULL, emit))
