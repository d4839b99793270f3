"""What a served file view must hold, and what the source was asked to read.

Expected bytes are computed from the file and the list of non-RAM pfns, never by
dumpd; reads are recorded where the engine calls the source.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from dumpd.client.aio import AsyncClient
from dumpd.sources.base import Segment, Source
from dumpd.testing.elfwriter import pattern
from tests.dumps import SegSpec, build_elf, build_raw, file_bytes

PAGE = 4096
BALLOONED = [(0x21, 0x22), (0x30, 0x3F), (0x250, 0x2FF), (0x4F0, 0x4FF)]
"""Ballooned pfn runs (inclusive) across the dumps `streamed_dump` writes."""
ZERO_PFNS = {p for a, b in BALLOONED for p in range(a, b + 1)}
WORDS = ["ballooned", "offline", "ballooned", "hwpoison"]
"""Why each run of BALLOONED is not RAM, as the tests' `explaining` hook says."""
EXPLAINED = ",".join(f"{a:#x}-{b:#x}={w}" for (a, b), w in zip(BALLOONED, WORDS, strict=True))
"""The `runs` option of the `explaining` hook (tests/plugindist.py) for BALLOONED."""
ZEROED = {0x2, 0x3, 0x4, 0x22, 0x40, 0x41, 0x2FF, 0x300, 0x301, 0x361, 0x3FF, 0x400,
          0x4FE}
"""Pfns `zeroed_dump` writes as zeros: runs, ballooned ones (0x22, 0x2FF, 0x4FE), one
beside a ballooned run (0x300), two on either side of a chunk edge of the raw image
(0x3FF, 0x400: one hole), one cut by a chunk edge in the ELF core's file (0x361: data
there)."""
STREAM_LOADS = [SegSpec(paddr=0x1000, memsz=0x9E000),
                SegSpec(paddr=0x200000, memsz=0x300000, filesz=0x2FF800)]


def expected_view(path: str, segments: tuple[Segment, ...], zero_pfns: set[int]) -> bytes:
    """The file with every byte of a non-RAM pfn zeroed (first PT_LOAD wins per byte)."""
    data = bytearray(file_bytes(path))
    claimed = bytearray(len(data))
    for seg in segments:
        for pos in range(seg.file_offset, seg.file_offset + seg.filesz):
            if claimed[pos]:
                continue
            claimed[pos] = 1
            if (seg.paddr + pos - seg.file_offset) // PAGE in zero_pfns:
                data[pos] = 0
    return bytes(data)


async def read_all(client: AsyncClient, size: int, chunk: int) -> bytes:
    parts = await asyncio.gather(*(client.read(o, chunk) for o in range(0, size, chunk)))
    return b"".join(parts)


def balloon_file(path: Path, pfns: list[tuple[int, int]]) -> str:
    """A balloon list of inclusive `(first, last)` pfn ranges at `path`; its path."""
    path.write_text("".join(f"{a:#x}-{b:#x}\n" for a, b in pfns))
    return str(path)


def record_reads(source: Source) -> list[tuple[int, int]]:
    """From now on, every `(offset, length)` the engine reads from `source`, in order."""
    reads: list[tuple[int, int]] = []
    real_read, real_cached = source.read_into, source.read_cached_into

    def recording_read(offset: int, view: memoryview) -> None:
        reads.append((offset, len(view)))
        real_read(offset, view)

    def recording_cached(offset: int, view: memoryview) -> int:
        n = real_cached(offset, view)
        reads.append((offset, n))
        return n

    source.read_into = recording_read  # type: ignore[method-assign]
    source.read_cached_into = recording_cached  # type: ignore[method-assign]
    return reads


def pfns_read(reads: list[tuple[int, int]], segments: tuple[Segment, ...]) -> set[int]:
    """The pfns whose bytes `reads` touched, through the PT_LOADs that hold them."""
    pfns: set[int] = set()
    for offset, length in reads:
        for seg in segments:
            lo = max(offset, seg.file_offset)
            hi = min(offset + length, seg.file_offset + seg.filesz)
            if lo < hi:
                first = (seg.paddr + lo - seg.file_offset) // PAGE
                last = (seg.paddr + hi - 1 - seg.file_offset) // PAGE
                pfns.update(range(first, last + 1))
    return pfns


def streamed_dump(tmp_path: Path, kind: str, loads: list[SegSpec] | None = None
                  ) -> tuple[str, int, tuple[Segment, ...]]:
    """An ELF core of `loads` (STREAM_LOADS) with unaligned data, or a 6 MiB raw image:
    (path, size, segments)."""
    if kind == "elf":
        dump = build_elf(tmp_path / "vmcore", loads or STREAM_LOADS, page_size_note=PAGE,
                         data_align=0x200)
    else:
        dump = build_raw(tmp_path / "oldmem", 0x600 * PAGE)
    return dump.path, dump.size, dump.segments


def zeroed_fill(paddr: int, length: int) -> bytes:
    """The tests' pattern, with the pfns of ZEROED all zeros."""
    data = bytearray(pattern(paddr, length))
    for pfn in ZEROED:
        lo, hi = max(paddr, pfn * PAGE), min(paddr + length, (pfn + 1) * PAGE)
        if lo < hi:
            data[lo - paddr : hi - paddr] = bytes(hi - lo)
    return bytes(data)


def zeroed_dump(tmp_path: Path, kind: str) -> tuple[str, int, tuple[Segment, ...]]:
    """`streamed_dump`'s dump with the pfns of ZEROED all zeros."""
    if kind == "elf":
        dump = build_elf(tmp_path / "vmcore", STREAM_LOADS, page_size_note=PAGE,
                         data_align=0x200, fill=zeroed_fill)
    else:
        dump = build_raw(tmp_path / "oldmem", 0x600 * PAGE, fill=zeroed_fill)
    return dump.path, dump.size, dump.segments
