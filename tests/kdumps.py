"""kdump-compressed files for the tests of the kdump source.

Made by the real makedumpfile from ELF cores written here (`makedumpfile`), and, for
what makedumpfile 1.7.2 cannot make here (snappy and zstd pages, a claimed memory of
TiBs, a page stored as it is), by `write_kdump`: the format as makedumpfile's
IMPLEMENTATION describes it, packed with dumpd.kdump.format (whose layout the files of
the real makedumpfile check) and compressed with dumpd.codecs. The pfn sets a file
holds are read by bench.kdumpbitmap, a reader of the format written apart from dumpd's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.kdumpbitmap import read_kdump
from bench.pfnranges import Ranges
from dumpd import codecs
from dumpd.kdump.format import DESC, Layout, MainHeader, SubHeader

PAGE = 4096
needs_makedumpfile = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                        reason="makedumpfile is not installed")


def makedumpfile(core: str | Path, out: Path, *options: str) -> Path:
    """`makedumpfile OPTIONS core out` (with `-F`, its standard output into `out`)."""
    command = ["makedumpfile", *options, "--message-level", "4", str(core)]
    if "-F" in options:
        with open(out, "wb") as f:
            subprocess.run(command, check=True, stdout=f, stderr=subprocess.PIPE)
    else:
        subprocess.run([*command, str(out)], check=True, capture_output=True)
    return out


def drgn_of(path: str | Path) -> Any:
    """drgn's Program on the dump at `path` (libkdumpfile reads kdump-compressed files,
    flattened ones too); skips the test without drgn or its libkdumpfile."""
    drgn = pytest.importorskip("drgn")
    if not getattr(pytest.importorskip("_drgn"), "_with_libkdumpfile", False):
        pytest.skip("this drgn has no libkdumpfile: it cannot read kdump-compressed files")
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    return prog


def pfns(ranges: Iterable[tuple[int, int]]) -> list[int]:
    return [pfn for first, end in ranges for pfn in range(first, end)]


def dumped(path: str | Path) -> Ranges:
    """The pfns a (not flattened) kdump-compressed file holds, as bench's reader says."""
    return read_kdump(path).dumped


def present(path: str | Path) -> Ranges:
    """The pfns of its 1st bitmap."""
    return read_kdump(path).present


@dataclass(frozen=True)
class Written:
    """A file `write_kdump` wrote: where each dumped pfn's page descriptor is."""

    path: Path
    layout: Layout
    descriptor: dict[int, int]  # pfn -> file offset of its page_desc


def _bits(runs: Sequence[tuple[int, int]]) -> dict[int, int]:
    """The non-zero bytes of a bitmap with `runs` set, by byte index."""
    out: dict[int, int] = {}
    for first, end in runs:
        for pfn in range(first, end):
            out[pfn // 8] = out.get(pfn // 8, 0) | 1 << pfn % 8
    return out


def write_kdump(path: Path, memory: Sequence[tuple[int, int]], page: Callable[[int], bytes],
                *, dumped: Sequence[tuple[int, int]] | None = None, codec: str = "zlib",
                max_mapnr: int | None = None, vmcoreinfo: bytes = b"",
                machine: bytes = b"x86_64", version: int = 6) -> Written:
    """A kdump-compressed file of the pfn runs `memory` (its 1st bitmap), of which
    `dumped` (all by default) are dumped, page `pfn` being `page(pfn)`, compressed with
    `codec` where that shrinks it (else stored as it is, as makedumpfile does). The
    bitmaps are written sparsely: a file that claims a huge `max_mapnr` costs its set
    bits only."""
    dumped = memory if dumped is None else dumped
    mapnr = max_mapnr if max_mapnr is not None else max(end for _, end in memory)
    notes = b""
    if vmcoreinfo:
        named = b"VMCOREINFO\0".ljust(12, b"\0")
        notes = (len(b"VMCOREINFO\0").to_bytes(4, "little") + len(vmcoreinfo).to_bytes(4, "little")
                 + bytes(4) + named + vmcoreinfo.ljust(-(-len(vmcoreinfo) // 4) * 4, b"\0"))
    layout = Layout.for_notes(PAGE, mapnr, len(notes))
    pack = codecs.codec(codec)
    main = MainHeader(version, (b"Linux", b"test", b"6.1.0", b"#1", machine, b""), (0, 0),
                      pack.flag, PAGE, layout.sub_hdr_size, layout.bitmap_blocks, mapnr)
    at_info = layout.notes + 24
    sub = SubHeader(offset_vmcoreinfo=at_info if vmcoreinfo else 0,
                    size_vmcoreinfo=len(vmcoreinfo), offset_note=layout.notes,
                    size_note=len(notes), max_mapnr_64=mapnr)
    numbered = pfns(dumped)
    data_at = layout.descriptors + len(numbered) * DESC.size
    descriptors, data, where = [], [], {}
    for index, pfn in enumerate(numbered):
        raw = page(pfn)
        packed = pack.compress(raw)
        stored, flags = (packed, pack.flag) if len(packed) < PAGE else (raw, 0)
        descriptors.append(DESC.pack(data_at, len(stored), flags, 0))
        where[pfn] = layout.descriptors + index * DESC.size
        data.append(stored)
        data_at += len(stored)
    with open(path, "wb") as f:
        f.truncate(data_at)
        f.write(main.pack())
        f.seek(layout.sub_header)
        f.write(sub.pack() + notes)
        for base, runs in ((layout.bitmap1, memory), (layout.bitmap2, dumped)):
            for index, value in sorted(_bits(runs).items()):
                f.seek(base + index)
                f.write(bytes([value]))
        f.seek(layout.descriptors)
        f.write(b"".join(descriptors) + b"".join(data))
    return Written(path, layout, where)


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def descriptor_at(path: Path, pfn: int) -> int:
    """The file offset of `pfn`'s page descriptor in a kdump-compressed file, counted
    from the 2nd bitmap bit by bit (slow: small files only)."""
    kdump = read_kdump(path)
    rank = sum(min(end, pfn) - first for first, end in kdump.dumped if first < pfn)
    return (1 + kdump.sub_hdr_size + kdump.bitmap_blocks) * kdump.block_size + rank * DESC.size


def allocated(path: Path) -> int:
    """Bytes the file takes on disk (a sparse file's are few)."""
    return os.stat(path).st_blocks * 512
