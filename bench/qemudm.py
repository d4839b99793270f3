"""`dumpd serve` over a source that is slow on ballooned pages, as under Xen.

    python -m bench.qemudm --image DUMP --balloon LIST --report OUT.json [--cost-ms 2]
        serve --source DUMP ...

In an HVM guest's capture kernel, a page the balloon driver gave back is MMIO: each
read that touches one traps to the hypervisor, which asks qemu-dm for it, and qemu-dm
serves one request at a time. This models that inside the server process: every
source access (the worker threads' `Source.read_into`, the inline RWF_NOWAIT reads of
`Source.read_cached_into`, and the `sendfile` calls of streams in
`Source.copy_to`) sleeps `--cost-ms` for each ballooned page its bytes touch,
under one process-wide lock, for real. Accesses that touch no ballooned page cost
nothing extra. On exit (dumpd exits cleanly on SIGTERM) the counts are written to
`--report` as JSON.

`LIST` is a balloon list (the `balloon` hook's text format) naming the ballooned pfns;
`DUMP` is the served file, opened here for its file map (which file bytes hold which
pfn).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import dumpd_balloon

from dumpd.sources import open_source
from dumpd.sources.base import MappedRun, Source

DEFAULT_COST_MS = 2.0


class BalloonedPages:
    """The file ranges that hold ballooned pages, one per page (a pfn mapped twice in
    the file is two pages), sorted and disjoint."""

    def __init__(self, file_map: Iterable[MappedRun], runs: Iterable[tuple[int, int]],
                 page_size: int) -> None:
        ballooned = sorted(runs)
        self.starts: list[int] = []  # in file order, as the file map and the runs are
        self.ends: list[int] = []
        for run in file_map:
            if run.paddr is None:
                continue
            first = run.paddr // page_size
            end = (run.paddr + run.file_end - run.file_start - 1) // page_size + 1
            for lo, hi in ballooned:
                for pfn in range(max(lo, first), min(hi, end)):
                    offset = run.file_start + pfn * page_size - run.paddr
                    self.starts.append(max(run.file_start, offset))
                    self.ends.append(min(run.file_end, offset + page_size))

    @classmethod
    def of(cls, image: str | os.PathLike[str], balloon: str | os.PathLike[str]
           ) -> BalloonedPages:
        """The ballooned pages of the dump `image`, the pfns listed in `balloon`."""
        source = open_source(str(image))
        try:
            return cls(source.file_map, dumpd_balloon.read_file(balloon), source.page_size)
        finally:
            source.close()

    def __len__(self) -> int:
        return len(self.starts)

    def file_bytes(self) -> int:
        """File bytes that belong to ballooned pages."""
        return sum(self.ends) - sum(self.starts)

    def touched(self, offset: int, length: int) -> range:
        """Indexes of the pages that file bytes `[offset, offset+length)` touch."""
        return range(bisect_right(self.ends, offset), bisect_left(self.starts, offset + length))


class QemuDm:
    """The cost model and its counters; `access` is called on every source access."""

    def __init__(self, pages: BalloonedPages, cost_s: float) -> None:
        self.pages = pages
        self.cost_s = cost_s
        self._qemu = threading.Lock()  # qemu-dm serves one request at a time
        self._count = threading.Lock()
        self._seen = bytearray(len(pages))  # 1: read at least once
        self.counts = {"accesses": 0, "bytes": 0, "ballooned_accesses": 0,
                       "ballooned_pages_touched": 0, "read_into": 0, "read_cached_into": 0,
                       "sendfile": 0}
        self.slept_s = 0.0

    def access(self, path: str, offset: int, length: int) -> None:
        """Count one access of `length` bytes at `offset` by `path`; sleep for each
        ballooned page it touches, holding the process-wide lock."""
        hit = self.pages.touched(offset, length)
        with self._count:
            counts = self.counts
            counts["accesses"] += 1
            counts[path] += 1
            counts["bytes"] += length
            if hit:
                counts["ballooned_accesses"] += 1
                counts["ballooned_pages_touched"] += len(hit)
                self._seen[hit.start : hit.stop] = b"\1" * len(hit)
        if hit:
            with self._qemu:
                began = time.perf_counter()
                time.sleep(len(hit) * self.cost_s)
                self.slept_s += time.perf_counter() - began

    def report(self) -> dict[str, Any]:
        with self._count:
            return {**self.counts, "distinct_ballooned_pages_read": self._seen.count(1),
                    "ballooned_pages": len(self.pages), "cost_ms": self.cost_s * 1000,
                    "slept_s": round(self.slept_s, 3)}


class Wrapped(NamedTuple):
    """The three ways dumpd reads its source, each charged to a `QemuDm`."""

    read_into: Callable[[Source, int, memoryview], None]
    read_cached_into: Callable[[Source, int, memoryview], int]
    copy: Callable[[Source, int, int, int], int]


def install(model: QemuDm) -> None:
    """Charge every source access of this process to `model`."""
    read_into, read_cached_into, copy = wrapped(model)
    Source.read_into = read_into  # type: ignore[method-assign, assignment]
    Source.read_cached_into = read_cached_into  # type: ignore[method-assign, assignment]
    Source.copy_to = copy  # type: ignore[method-assign, assignment]


def wrapped(model: QemuDm) -> Wrapped:
    """Source reads that pay `model` for what they touch: before a positional read
    (its length is known), after an inline read or a `sendfile` call (what they moved)."""
    read_into, read_cached_into = Source.read_into, Source.read_cached_into
    copy = Source.copy_to

    def slow_read_into(source: Source, offset: int, view: memoryview) -> None:
        model.access("read_into", offset, len(view))
        read_into(source, offset, view)

    def slow_read_cached_into(source: Source, offset: int, view: memoryview) -> int:
        n = read_cached_into(source, offset, view)
        if n:
            model.access("read_cached_into", offset, n)
        return n

    def slow_copy(source: Source, fd: int, offset: int, count: int) -> int:
        n = copy(source, fd, offset, count)
        if n:
            model.access("sendfile", offset, n)
        return n

    return Wrapped(slow_read_into, slow_read_cached_into, slow_copy)


def main(argv: list[str]) -> int:
    from dumpd.cli import main as dumpd_main

    parser = argparse.ArgumentParser(prog="python -m bench.qemudm",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--image", required=True, help="the served dump")
    parser.add_argument("--balloon", required=True, help="balloon list of the ballooned pfns")
    parser.add_argument("--report", required=True, type=Path, help="JSON counts, on exit")
    parser.add_argument("--cost-ms", type=float, default=DEFAULT_COST_MS,
                        help=f"sleep per ballooned page touched (default {DEFAULT_COST_MS})")
    parser.add_argument("dumpd", nargs=argparse.REMAINDER, help="the `dumpd` command line")
    args = parser.parse_args(argv)
    model = QemuDm(BalloonedPages.of(args.image, args.balloon), args.cost_ms / 1000)
    install(model)
    try:
        return dumpd_main(args.dumpd)
    finally:
        args.report.write_text(json.dumps(model.report()) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
