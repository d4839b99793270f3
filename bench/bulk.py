"""Scenario 2, bulk throughput: `dumpd fetch` and `stream` beside `cp` and `cat`.

A 1 GiB ELF core of incompressible data, page cache warm, `dumpd serve` in its own
process; three layouts:
- dense: every page RAM, no hook;
- 50% holes, runs of 512 pages: every other 2 MiB run zeroed in the file and named by a
  `balloon` list, served with that hook (dumpd never reads or sends those pages; `cp`
  may leave them as holes too), as a balloon driver handing back huge pages does;
- 50% holes, runs of 8 pages: the same with a hole every 32 KiB, the worst case.

For each: `dumpd fetch -q` to a new file beside `cp --sparse=always` of the image and
`cat IMAGE > /dev/null`; the asyncio fetch (`AsyncFetchClient.fetch`, its writes through
aiofiles) to a new file, run as a program that embeds the client (its own process, as
`dumpd fetch` is); a bare socket copy of the RAM runs (`sendfile` -> `splice`
between two threads, no protocol: the limit of any copy through a Unix socket here);
and `stream` to a client that discards the data, beside `cat`.

Copies go to the work dir, alternating (cp, fetch, bare, cp, fetch, bare, ...) after a
`sync`, so all meet the same writeback state. On a shared VM a run now and then stalls
for seconds in the file system, whichever tool it hits, so each figure is the best of
the runs with the median beside it, and ratios are between the bests.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    DUMPD,
    PAGE,
    Emit,
    MiB,
    Row,
    dumpd_server,
    fresh,
    held,
    timed,
    warm,
)
from dumpd.client import Client, StreamData
from dumpd.testing.elfwriter import Fill, LoadSpec, vmcoreinfo_note, write_elf_core

TITLE = "Bulk throughput: `dumpd fetch` and `stream` beside `cp` and `cat`"
SIZE, QUICK_SIZE = 1024 * MiB, 64 * MiB
RUNS = 7
F_SETPIPE_SZ = 1031
ASYNC_FETCH = """
import asyncio, sys
from dumpd.fetch.aio import AsyncFetchClient

async def main():
    async with await AsyncFetchClient.connect(sys.argv[1]) as client:
        return await client.fetch(sys.argv[2], quiet=True)

sys.exit(asyncio.run(main()))
"""
"""A program that embeds the client: the asyncio fetch of the socket's view to a file."""


@dataclass(frozen=True)
class Layout:
    """Which pages are non-RAM: every other run of `run` pages from pfn 0 (none if 0)."""

    run: int
    scenario: str
    label: str


LAYOUTS = (
    Layout(0, "2. bulk dense", "dense"),
    Layout(512, "2. bulk 50% holes", "holes in runs of 512 pages (2 MiB)"),
    Layout(8, "2. bulk 50% holes", "holes in runs of 8 pages (32 KiB, the worst case)"),
)


def filler(run: int) -> Fill:
    """Incompressible bytes: slices of one random 8 MiB block, starting 3 pages further
    for each MiB of address (fast: no per-page work), zeros in the non-RAM runs."""
    block = random.Random(1).randbytes(8 * MiB)

    def fill(paddr: int, length: int) -> bytes:
        start = paddr // MiB * 3 * PAGE % (4 * MiB)
        data = block[start : start + length]
        if not run:
            return data
        buf = bytearray(data)
        span = run * PAGE
        for hole in range(paddr - paddr % (2 * span), paddr + length, 2 * span):
            lo, hi = max(hole, paddr) - paddr, min(hole + span, paddr + length) - paddr
            if lo < hi:
                buf[lo:hi] = bytes(hi - lo)
        return bytes(buf)

    return fill


def make_core(path: Path, size: int, run: int) -> tuple[list[tuple[int, int]], Path | None]:
    """An ELF core of `size` bytes of RAM at physical 0; its RAM runs in the file view
    (offset, length), and the balloon list naming its non-RAM pages (None if dense)."""
    layout = write_elf_core(path, [LoadSpec(0, size)], notes=[vmcoreinfo_note()],
                            fill=filler(run))
    base = layout.segments[0].file_offset
    if not run:
        return [(0, layout.size)], None
    span = run * PAGE
    ram = [(base + pos + span, min(span, size - pos - span))
           for pos in range(0, size - span, 2 * span)]
    listing = path.with_suffix(".balloon")
    listing.write_text("".join(f"{pfn:#x}+{run}\n" for pfn in range(0, size // PAGE, 2 * run)))
    return [(0, base), *ram], listing


def bare_copy(image: Path, out: Path, runs: list[tuple[int, int]]) -> float:
    """A copy through a Unix socket without dumpd: `sendfile` in, `splice` out, of the
    RAM runs only, each to its offset (the transport's own limit)."""
    size = image.stat().st_size
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    src = os.open(image, os.O_RDONLY)
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, MiB)

    def send() -> None:
        for offset, length in runs:
            end = offset + length
            while offset < end:
                offset += os.sendfile(a.fileno(), src, offset, min(end - offset, MiB))
        a.shutdown(socket.SHUT_WR)

    start = time.perf_counter()
    os.ftruncate(dst, size)
    sender = threading.Thread(target=send)
    sender.start()
    for offset, length in runs:
        while length:
            n = os.splice(b.fileno(), write_end, min(length, MiB))
            length -= n
            while n:
                moved = os.splice(read_end, dst, n, offset_dst=offset)
                offset, n = offset + moved, n - moved
    sender.join()
    seconds = time.perf_counter() - start
    for fd in (src, dst, read_end, write_end):
        os.close(fd)
    a.close()
    b.close()
    return seconds


def discard_stream(sock: Path, size: int) -> float:
    """Seconds to `stream` the whole view to this process, dropping the data."""
    start = time.perf_counter()
    with Client.connect(str(sock)) as client:
        got = sum(len(p.data) for p in client.stream(0, size) if isinstance(p, StreamData))
    seconds = time.perf_counter() - start
    assert got <= size
    return seconds


def rate(size: int, seconds: list[float]) -> str:
    """The best rate of the runs, and the median's in brackets."""
    return (f"{size / min(seconds) / 1e9:.2f} GB/s "
            f"({size / statistics.median(seconds) / 1e9:.2f} median)")


def figures(size: int, seconds: list[float]) -> dict[str, object]:
    return {"bytes": size, "seconds": [round(s, 4) for s in seconds],
            "best_gbps": round(size / min(seconds) / 1e9, 3),
            "median_gbps": round(size / statistics.median(seconds) / 1e9, 3)}


def measure(work: Path, layout: Layout, size: int, runs: int
            ) -> tuple[int, dict[str, list[float]]]:
    """The view size of one layout's image, and the seconds per run of each copy and
    read of it."""
    image = work / "core.elf"
    ram, balloon = make_core(image, size, layout.run)
    view = image.stat().st_size
    warm(image)
    sock = work / "dumpd.sock"
    hook = [] if balloon is None else ["--hook", "balloon", "--hook-option", f"file={balloon}"]
    copies: dict[str, Callable[[Path], float]] = {
        "cp": lambda out: timed(["cp", "--sparse=always", str(image), str(out)]),
        "fetch": lambda out: timed([*DUMPD, "fetch", "-q", "-o", str(out),
                                    "--socket", str(sock)]),
        "bare": lambda out: bare_copy(image, out, ram),
        "async": lambda out: timed([sys.executable, "-c", ASYNC_FETCH, str(sock), str(out)]),
    }
    seconds: dict[str, list[float]] = {name: [] for name in (*copies, "stream", "cat")}
    with dumpd_server(sock, ["--source", str(image), *hook]):
        for _ in range(runs):
            for name, copy in copies.items():
                out = fresh(work / f"{name}.out")
                seconds[name].append(copy(out))
                out.unlink()
        for _ in range(runs):
            seconds["stream"].append(discard_stream(sock, view))
            seconds["cat"].append(timed(["cat", str(image)]))
    fresh(image)
    if balloon is not None:
        balloon.unlink()
    return view, seconds


def target(layout: Layout, vs_cp: float, quick: bool) -> str:
    """The fetch target, judged on full-size runs only (a quick image is mostly start-up)."""
    if quick:
        return ""
    if layout.run:
        return held(vs_cp > 1.0, "fetch faster than cp")
    return held(vs_cp >= 0.8, "fetch >= 0.8x cp")


def report(layout: Layout, view: int, seconds: dict[str, list[float]], quick: bool,
           emit: Emit) -> None:
    """Rows of one layout; every ratio is baseline seconds over dumpd seconds, bests."""
    best = {name: min(runs) for name, runs in seconds.items()}
    raw = {name: figures(view, runs) for name, runs in seconds.items()}
    vs_cp = best["cp"] / best["fetch"]
    emit(Row(layout.scenario, f"`dumpd fetch` to a file, {layout.label}",
             rate(view, seconds["fetch"]), f"`cp --sparse=always`: {rate(view, seconds['cp'])}",
             f"{vs_cp:.2f}x", target(layout, vs_cp, quick),
             {"fetch": raw["fetch"], "cp": raw["cp"], "ratio": round(vs_cp, 3)}))
    vs_cat = best["cat"] / best["fetch"]
    emit(Row(layout.scenario, f"`dumpd fetch` to a file, {layout.label}",
             rate(view, seconds["fetch"]),
             f"`cat > /dev/null`: {rate(view, seconds['cat'])}", f"{vs_cat:.2f}x", "",
             {"fetch": raw["fetch"], "cat": raw["cat"], "ratio": round(vs_cat, 3)}))
    vs_fetch = best["fetch"] / best["async"]
    emit(Row(layout.scenario, f"asyncio fetch (`AsyncFetchClient.fetch`, aiofiles) to a "
             f"file, {layout.label}", rate(view, seconds["async"]),
             f"`dumpd fetch`: {rate(view, seconds['fetch'])}", f"{vs_fetch:.2f}x", "",
             {"async": raw["async"], "fetch": raw["fetch"], "ratio": round(vs_fetch, 3)}))
    vs_bare = best["cp"] / best["bare"]
    emit(Row(layout.scenario, f"bare socket copy of the RAM runs, sendfile -> splice "
             f"(no dumpd: the transport's limit), {layout.label}",
             rate(view, seconds["bare"]), f"`cp --sparse=always`: {rate(view, seconds['cp'])}",
             f"{vs_bare:.2f}x", "",
             {"bare": raw["bare"], "cp": raw["cp"], "ratio": round(vs_bare, 3)}))
    vs_stream = best["cat"] / best["stream"]
    emit(Row(layout.scenario, f"`stream`, client discards, {layout.label}",
             rate(view, seconds["stream"]), f"`cat > /dev/null`: {rate(view, seconds['cat'])}",
             f"{vs_stream:.2f}x", "",
             {"stream": raw["stream"], "cat": raw["cat"], "ratio": round(vs_stream, 3)}))


def run(work: Path, quick: bool, emit: Emit) -> None:
    size, runs = (QUICK_SIZE, 1) if quick else (SIZE, RUNS)
    for layout in LAYOUTS:
        view, seconds = measure(work, layout, size, runs)
        report(layout, view, seconds, quick, emit)
