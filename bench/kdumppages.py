"""The pages of a kdump-compressed file, read by the format's definition alone: what the
tests hold dumpd's kdump copies (and makedumpfile's files) against.

`python -m bench.kdumppages FILE [--pfn N]` prints each descriptor's kind counts (raw,
compressed by method, the shared zero page) or one page's hex; `rearrange` is
`makedumpfile -R` (for machines without it).

Like `bench.kdumpbitmap` (whose header and bitmap reader this builds on), it has its
own struct definitions and does not import dumpd's writer or reader of the format:

- the 2nd bitmap's pfns, in order, each have one 24-byte `page_desc` (offset, size,
  flags, page_flags) in the table after the bitmaps;
- `flags` 0: `size` bytes stored as they are, a whole page; else the method that
  compressed the page on its own (DUMP_DH_COMPRESSED_ZLIB 0x1, _LZO 0x2, _SNAPPY 0x4,
  _ZSTD 0x20): zlib is decompressed here with the standard library, the others through
  `dumpd.codecs` (the C libraries makedumpfile itself links).
"""

from __future__ import annotations

import argparse
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from bench.kdumpbitmap import FLAT_SIGNATURE, KdumpError, read_kdump

_DESC = struct.Struct("<qIIQ")
_FLAT_HEAD = struct.Struct(">qq")  # the flattened header's type and version; a record's head
METHODS = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}


def descriptors(path: str | Path) -> Iterator[tuple[int, int, int, int, int]]:
    """`(pfn, offset, size, flags, page_flags)` of each dumped pfn, in pfn order."""
    kd = read_kdump(path)
    table = (1 + kd.sub_hdr_size + kd.bitmap_blocks) * kd.block_size
    with open(path, "rb") as f:
        f.seek(table)
        for first, end in kd.dumped:
            for pfn in range(first, end):
                raw = f.read(_DESC.size)
                if len(raw) < _DESC.size:
                    raise KdumpError(f"{path}: cut short in its page descriptors (pfn {pfn})")
                yield (pfn, *_DESC.unpack(raw))


def decompress(flags: int, blob: bytes, size: int) -> bytes:
    if flags == 0x1:
        return zlib.decompress(blob)
    from dumpd import codecs  # the same C libraries makedumpfile links, nothing of dumpd.kdump

    return codecs.codec(METHODS[flags]).decompress(blob, size)


def pages(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """`(pfn, page)` of each dumped pfn, in pfn order, decompressed."""
    size = read_kdump(path).block_size
    with open(path, "rb") as f:
        for pfn, offset, length, flags, _ in descriptors(path):
            f.seek(offset)
            blob = f.read(length)
            if len(blob) != length:
                raise KdumpError(f"{path}: pfn {pfn:#x}: {length} bytes at {offset:#x} pass "
                                 "the end of the file")
            if flags and flags not in METHODS:
                raise KdumpError(f"{path}: pfn {pfn:#x}: flags {flags:#x}")
            page = decompress(flags, blob, size) if flags else blob
            if len(page) != size:
                raise KdumpError(f"{path}: pfn {pfn:#x}: {len(page)} bytes, not a page")
            yield pfn, page


def rearrange(flat: bytes, path: str | Path) -> None:
    """What `makedumpfile -R PATH < FLAT` does: the flattened form's 4096-byte header
    ("makedumpfile", type 1, version 1), then big-endian `(offset, size)` records, each
    followed by `size` bytes for `offset` of the file, until `(-1, -1)`."""
    if flat[:16] != FLAT_SIGNATURE or _FLAT_HEAD.unpack_from(flat, 16) != (1, 1):
        raise KdumpError("not makedumpfile's flattened format")
    pos = 4096
    with open(path, "xb") as out:
        while True:
            offset, size = _FLAT_HEAD.unpack_from(flat, pos)
            pos += _FLAT_HEAD.size
            if (offset, size) == (-1, -1):
                return
            if offset < 0 or size <= 0 or pos + size > len(flat):
                raise KdumpError(f"a record ({offset}, {size}) at {pos - 16} of the stream")
            out.seek(offset)
            out.write(flat[pos : pos + size])
            pos += size


def kinds(path: str | Path) -> dict[str, int]:
    """Descriptors by kind: "raw", a method's name, "zero page" (the raw page written
    first after the table, which every zero page shares)."""
    kd = read_kdump(path)
    table = (1 + kd.sub_hdr_size + kd.bitmap_blocks) * kd.block_size
    total = sum(end - first for first, end in kd.dumped)
    first_data = table + total * _DESC.size
    out: dict[str, int] = {}
    for _, offset, length, flags, _ in descriptors(path):
        kind = ("zero page" if (offset, length, flags) == (first_data, kd.block_size, 0) and
                kd.dump_level & 1 else METHODS.get(flags, f"flags {flags:#x}") if flags
                else "raw")
        out[kind] = out.get(kind, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kdumppages",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--pfn", type=lambda text: int(text, 0), help="print this page")
    args = parser.parse_args(argv)
    try:
        if args.pfn is None:
            for kind, n in sorted(kinds(args.file).items()):
                print(f"{kind}: {n:,}")
            return 0
        for pfn, page in pages(args.file):
            if pfn == args.pfn:
                print(page.hex(" ", 16))
                return 0
    except KdumpError as exc:
        print(f"kdumppages: {exc}", file=sys.stderr)
        return 1
    print(f"kdumppages: pfn {args.pfn:#x} is not dumped in {args.file}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
