"""`fetch --format kdump --verify`: the copy's pages against the server's digest of the
view, run by run.

Design rules:
- What is compared is what the copy claims: for each run of the physical map (the
  bytes of the view that hold memory, first PT_LOAD winning), the server's sha256 of
  that range of the view (non-RAM pages as zeros) against the sha256 of the same
  physical bytes as the copy gives them back (pages not dumped as zeros); and each
  PT_NOTE of the view against the notes the copy holds.
- A file is read back from disk, through its own bitmap and descriptors, its pages
  decompressed, independently of how it was written; a pipe's copy is hashed as it is
  written (`RunHashes` fed the pages dumped), the only time its bytes are seen.
- Memory stays bounded: pages are read one at a time, descriptors a block at a time.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

from dumpd import codecs
from dumpd.client import Client
from dumpd.errors import DumpdError
from dumpd.fetch.kdumpplan import Run, runs
from dumpd.fetch.output import Output, os_error
from dumpd.fetch.progress import size
from dumpd.fetch.report import changed
from dumpd.kdump.bitmap import Bits, read_sparse
from dumpd.kdump.format import DESC, FormatError
from dumpd.kdump.writer import Plan

ZEROS = memoryview(bytes(1 << 20))
DESCS_READ = 4096  # descriptors read at a time


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


class _Reader:
    """The pages of a kdump file as the file gives them back."""

    def __init__(self, fd: int, plan: Plan) -> None:
        self._fd = fd
        self._size = plan.page_size
        self._table = plan.layout.descriptors
        self._end = os.fstat(fd).st_size
        self._first = -1  # rank of the first descriptor in `_descs`
        self._descs = b""

    def _desc(self, rank: int) -> tuple[int, int, int]:
        if not 0 <= rank - self._first < len(self._descs) // DESC.size:
            self._first = rank
            self._descs = os.pread(self._fd, DESCS_READ * DESC.size,
                                   self._table + rank * DESC.size)
        if (rank - self._first + 1) * DESC.size > len(self._descs):
            raise FormatError(f"descriptor {rank} is past the end of the file")
        offset, length, flags, _ = DESC.unpack_from(self._descs,
                                                    (rank - self._first) * DESC.size)
        return offset, length, flags

    def page(self, rank: int) -> bytes:
        offset, length, flags = self._desc(rank)
        if not (0 < length <= self._size and offset >= 0 and offset + length <= self._end):
            raise FormatError(f"descriptor {rank} says {length} bytes at {offset:#x}")
        blob = os.pread(self._fd, length, offset)
        if not flags:
            if length != self._size:
                raise FormatError(f"descriptor {rank}: {length} raw bytes, not a page")
            return blob
        try:
            return codecs.by_flag(flags).decompress(blob, self._size)
        except DumpdError as exc:
            raise FormatError(f"descriptor {rank}: {exc.message}") from exc


def read_back(fd: int, plan: Plan, bits: Bits, runs: list[Run], hashes: RunHashes) -> None:
    """Feed `hashes` the pages of the kdump file at `fd`, in pfn order."""
    reader, ps = _Reader(fd, plan), plan.page_size
    rank = next_pfn = 0
    for run in runs:
        first, end = max(run.start // ps, next_pfn), -(-run.end // ps)
        rank += bits.count(next_pfn, first)
        for pfn in range(first, end):
            if bits.test(pfn):
                hashes.page(pfn, memoryview(reader.page(rank)))
                rank += 1
        next_pfn = max(next_pfn, end)


def verify(client: Client, info: dict[str, Any], plan: Plan, notes: list[tuple[int, int]],
           out: Output, hashes: RunHashes | None, quiet: bool) -> int:
    """0 when every run and note of the view matches the copy, else 1 (said on stderr).
    `hashes` holds the pages of a copy written to a pipe; a file is read back."""
    what = changed(info, client.info())
    if what is not None:
        print(f"dumpd: verify: the served dump changed during the copy ({what} differs): "
              f"{out.name} cannot equal it", file=sys.stderr)
        return 1
    layout = plan.layout
    held = plan.notes
    if hashes is None:
        hashes = RunHashes(runs(info), plan.page_size)
        bits = Bits(lambda offset, length: read_sparse(out.fd, offset, length), layout.bitmap2,
                    layout.bitmap_size)
        try:
            read_back(out.fd, plan, bits, runs(info), hashes)
            held = os.pread(out.fd, len(plan.notes), layout.notes)
        except FormatError as exc:
            print(f"dumpd: verify: {out.name} is not a kdump file dumpd can read back: {exc}",
                  file=sys.stderr)
            return 1
        except OSError as exc:
            raise os_error(out.name, "read the copy back", exc) from exc
    ranges, pos = [], 0
    for offset, length in notes:
        ranges.append((offset, length, hashlib.sha256(held[pos : pos + length]).hexdigest()))
        pos += length
    total = 0
    for offset, length, local in [*hashes.finish(), *ranges]:
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
