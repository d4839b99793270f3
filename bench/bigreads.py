"""Scenario 4's large reads: one client reading the whole image in 8 MiB `read`s (and
`read_phys`es: a raw image's physical addresses are its offsets), beside `cat IMAGE >
/dev/null` timed in the same run, alternating with it; and `bench.echo` answering the
same reads (the stack's own limit for them: a reply written from a buffer of zeros).

The image is the scenario's own (the OS page cache holds it: warm), each run on a fresh
`dumpd serve` (its page cache cold; reads of 8 MiB do not fill it anyway), the reads
one at a time (the next sent when the previous returns), as a copier that takes its
pieces in order does. Median of the plan's runs; target: at least 0.5x `cat`'s rate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import uvloop

from bench.common import WHERE, Emit, MiB, Row, held, timed
from dumpd.client.aio import AsyncClient

READ = 8 * MiB
METHODS = ("read", "read_phys")
TARGET = 0.5


async def read_whole(sock: Path, size: int, method: str) -> float:
    """Seconds to read `[0, size)` in `READ`-byte calls of `method`, one at a time."""
    async with await AsyncClient.connect(str(sock)) as client:
        call = client.read if method == "read" else client.read_phys
        await call(size - 8, 8)  # warms the code paths and the worker threads
        began = time.perf_counter()
        for offset in range(0, size, READ):
            want = min(READ, size - offset)
            data = await call(offset, want)
            assert len(data) == want
        return time.perf_counter() - began


Server = Callable[[Path, Path], AbstractContextManager[None]]
"""A fresh `dumpd serve` on socket and image for the block (scenario 4's)."""


def run(image: Path, sock: Path, echo_sock: Path, runs: int, emit: Emit, scenario: str,
        fresh_dumpd: Server) -> None:
    """Emit one row per method: its median rate beside `cat`'s, measured alternately,
    and `bench.echo`'s for the same reads (the stack's own limit, for the record)."""
    size = image.stat().st_size
    echo = [uvloop.run(read_whole(echo_sock, size, "read")) for _ in range(runs)]
    cat: list[float] = []
    ours: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(runs):
        cat.append(timed(["cat", str(image)]))
        for method in METHODS:
            with fresh_dumpd(sock, image):
                ours[method].append(uvloop.run(read_whole(sock, size, method)))
    bare = size / statistics.median(cat)
    stack = size / statistics.median(echo)
    for method in METHODS:
        rate = size / statistics.median(ours[method])
        values: dict[str, Any] = {"read_size": READ, "bytes": size, "where": WHERE,
                                  "dumpd_seconds": ours[method], "cat_seconds": cat,
                                  "echo_seconds": echo, "dumpd_bytes_per_s": rate,
                                  "cat_bytes_per_s": bare, "echo_bytes_per_s": stack}
        emit(Row(scenario, f"1 client, the whole image in 8 MiB `{method}`s: throughput",
                 f"{rate / 1e6:,.0f} MB/s ({rate / stack:.2f}x echo: {stack / 1e6:,.0f} MB/s)",
                 f"`cat IMAGE > /dev/null`: {bare / 1e6:,.0f} MB/s",
                 f"{rate / bare:.2f}x", held(rate >= TARGET * bare, f">= {TARGET}x `cat`"),
                 values))
