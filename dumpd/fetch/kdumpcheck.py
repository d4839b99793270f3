"""`fetch --format kdump --verify`: the copy's pages against the server's digest of the
view, run by run.

Design rules:
- What is compared is what the copy claims: for each run of the physical map (the
  bytes of the view that hold memory, first PT_LOAD winning), the server's sha256 of
  that range of the view (non-RAM pages as zeros) against the sha256 of the same
  physical bytes as the copy gives them back (pages not dumped as zeros); and each
  PT_NOTE of the view against the notes the copy holds.
- A file is read back from disk by dumpd's reader of the format (`dumpd.sources`, as
  `serve --source FILE.kdump` reads it: its bitmaps, its descriptors, its pages
  decompressed), not by what wrote it; a pipe's copy is hashed as it is written
  (`RunHashes` fed the pages dumped), the only time its bytes are seen.
- Memory stays bounded: a MiB of pages is read back at a time.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

from dumpd.errors import DumpdError, StartupError
from dumpd.fetch.calls import Calls
from dumpd.fetch.kdumpplan import Run, runs
from dumpd.fetch.output import Output, os_error
from dumpd.fetch.progress import size
from dumpd.fetch.report import changed
from dumpd.kdump.writer import Plan
from dumpd.sources import open_source

ZEROS = memoryview(bytes(1 << 20))
BLOCK = 1 << 20  # bytes of physical memory read back at a time


class RunHashes:
    """The sha256 of each run's bytes, fed pages in pfn order (`page`); bytes of the runs
    no page was fed for are zeros."""

    def __init__(self, runs: list[Run], page_size: int) -> None:
        self._runs = runs
        self._size = page_size
        self._hashes = [hashlib.sha256() for _ in runs]
        self._i = 0
        self._pos = 0  # every run's bytes below this physical address are hashed

    def _to(self, end: int, data: memoryview | None = None, base: int = 0) -> None:
        """Hash the runs' bytes up to `end`: `data` (from physical `base`) or zeros."""
        while self._i < len(self._runs) and self._runs[self._i].start < end:
            run, h = self._runs[self._i], self._hashes[self._i]
            lo, hi = max(self._pos, run.start), min(end, run.end)
            if lo < hi and data is not None:
                h.update(data[lo - base : hi - base])
            while data is None and lo < hi:
                step = min(hi - lo, len(ZEROS))
                h.update(ZEROS[:step])
                lo += step
            if run.end > end:
                break
            self._i += 1
        self._pos = max(self._pos, end)

    def page(self, pfn: int, pages: memoryview) -> None:
        start = pfn * self._size
        self._to(start)
        self._to(start + len(pages), pages, start)

    def finish(self) -> list[tuple[int, int, str]]:
        """`(view offset, length, sha256)` of each run."""
        self._to(self._runs[-1].end if self._runs else 0)
        return [(run.offset, run.end - run.start, h.hexdigest())
                for run, h in zip(self._runs, self._hashes, strict=True)]


def read_back(path: str, runs: list[Run]) -> list[tuple[int, int, str]]:
    """`(view offset, length, sha256)` of each run, as the kdump file at `path` gives its
    physical memory back (`dumpd.sources`, the reader `serve --source FILE.kdump` uses:
    pages decompressed, pages not dumped zeros)."""
    source = open_source(path, kind="kdump")
    try:
        out = []
        for run in runs:
            h = hashlib.sha256()
            for pos in range(run.start, run.end, BLOCK):
                h.update(source.read_phys(pos, min(BLOCK, run.end - pos)))
            out.append((run.offset, run.end - run.start, h.hexdigest()))
        return out
    finally:
        source.close()


def verify(client: Calls, info: dict[str, Any], plan: Plan, notes: list[tuple[int, int]],
           out: Output, hashes: RunHashes | None, quiet: bool) -> int:
    """0 when every run and note of the view matches the copy, else 1 (said on stderr).
    `hashes` holds the pages of a copy written to a pipe; a file is read back."""
    what = changed(info, client.info())
    if what is not None:
        print(f"dumpd: verify: the served dump changed during the copy ({what} differs): "
              f"{out.name} cannot equal it", file=sys.stderr)
        return 1
    held = plan.notes
    if hashes is not None:
        memory = hashes.finish()
    else:
        try:
            memory = read_back(out.name, runs(info))
            held = os.pread(out.fd, len(plan.notes), plan.layout.notes)
        except (StartupError, DumpdError) as exc:
            print(f"dumpd: verify: {out.name} does not read back: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            raise os_error(out.name, "read the copy back", exc) from exc
    ranges, pos = [], 0
    for offset, length in notes:
        ranges.append((offset, length, hashlib.sha256(held[pos : pos + length]).hexdigest()))
        pos += length
    total = 0
    for offset, length, local in [*memory, *ranges]:
        remote = client.digest(offset, length)["digest"]
        if local != remote:
            print(f"dumpd: verify: {out.name} differs from the server's view at "
                  f"{offset:#x}+{length:#x} (sha256 {local} != {remote})", file=sys.stderr)
            return 1
        total += length
    if not quiet:
        print(f"verify: the copy matches {size(total)} of the view ({len(runs(info))} runs "
              f"of memory, {len(ranges)} PT_NOTE)", file=sys.stderr)
    return 0
