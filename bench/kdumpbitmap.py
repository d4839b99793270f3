"""makedumpfile's verdicts on a dump, read from its own output.

`python -m bench.kdumpbitmap DUMP|DIR... [--levels 1,2,4,8,16,31]` runs makedumpfile at each
level and prints, per level, the pages its bitmaps exclude beside the counts its report
gives per reason (and the lab run's balloon when `DUMP.json` from `bench.lab --keep`
is there). `--kdump FILE` describes a kdump-compressed file makedumpfile wrote.

The reader follows the format's definition (makedumpfile's IMPLEMENTATION and
diskdump_mod.h), for the LP64 little-endian files an x86_64 makedumpfile writes:

- block 0: `disk_dump_header` ("KDUMP   ", header_version, utsname, timestamp, status,
  block_size, sub_hdr_size, bitmap_blocks, a 32-bit max_mapnr, ...);
- block 1: `kdump_sub_header` (phys_base, dump_level, split, ..., from version 6 on the
  64-bit max_mapnr_64, which wins over the 32-bit field), then the ELF notes;
- block 1 + sub_hdr_size: the 1st bitmap (a bit per pfn below max_mapnr, least
  significant first: the pfn is in a PT_LOAD), then the 2nd (the pfn was dumped), each
  half of bitmap_blocks;
- then a 24-byte `page_desc` per dumped pfn in pfn order. A zero page (dump level bit 1)
  stays in the 2nd bitmap: its descriptor points at the one zero page written right
  after the descriptors.

So makedumpfile's exclusions at level L are the 1st bitmap minus the 2nd (every reason
but zero) plus the dumped pfns whose descriptor is the zero page's.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench.pfnranges import (
    Ranges,
    bitmap_runs,
    contains,
    count,
    intersect,
    normal,
    nth_pfns,
    subtract,
    union,
)
from dumpd.errors import StartupError
from dumpd.sources import open_source

SIGNATURE = b"KDUMP   "
FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
_MAIN = struct.Struct("<8si65s65s65s65s65s65s6xqqIiiIIIIIIi")
_SUB = struct.Struct("<QiiQQqQqQqQQQQ")
_DESC = struct.Struct("<qIIQ")
INCOMPLETE = 0x8  # DUMP_DH_COMPRESSED_INCOMPLETE in status

REPORT = {"Pages filled with zero": "zero", "Non-private cache pages": "cache",
          "Private cache pages": "cache_private", "User process data pages": "user",
          "Free pages": "free", "Hwpoison pages": "hwpoison", "Offline pages": "offline",
          "Extension filter pages": "extension", "Original pages": "original",
          "Excluded pages": "excluded", "Memory Hole": "hole", "Total pages": "total"}
"""The lines of makedumpfile's report (print_report) and the names used here."""
EXCLUSIONS = ("zero", "cache", "cache_private", "user", "free", "hwpoison", "offline")
_REPORT_LINE = re.compile(r"^\s*(" + "|".join(REPORT) + r")\s*:\s*0x([0-9a-fA-F]+)\s*$", re.M)


class KdumpError(Exception):
    """Not a file this reader reads, or makedumpfile failed: one line says which."""


@dataclass(frozen=True)
class Kdump:
    """One kdump-compressed file: its header fields and its pfn sets."""

    header_version: int
    release: str
    machine: str
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int  # max_mapnr_64 from header version 6 on, else the 32-bit field
    max_mapnr_32: int
    phys_base: int
    dump_level: int
    present: Ranges  # the 1st bitmap
    dumped: Ranges  # the 2nd bitmap
    zero: Ranges  # dumped pfns stored as makedumpfile's one zero page

    @property
    def excluded(self) -> Ranges:
        """Present but not dumped: every exclusion but zero pages."""
        return subtract(self.present, self.dumped)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def read_kdump(path: str | Path) -> Kdump:
    """The header and bitmaps of a kdump-compressed file (KdumpError when it is not one)."""
    with open(path, "rb") as f:
        head = f.read(_MAIN.size)
        if head.startswith(FLAT_SIGNATURE):
            raise KdumpError(f"{path}: makedumpfile's flattened format (-F): rearrange it "
                             "first with `makedumpfile -R FILE < FLAT`")
        if len(head) < _MAIN.size or not head.startswith(SIGNATURE):
            raise KdumpError(f"{path}: not a kdump-compressed file (no {SIGNATURE!r} at 0)")
        (_, version, _, _, release, _, machine, _, _, _, status, block_size, sub_hdr_size,
         bitmap_blocks, max_mapnr_32, *_rest) = _MAIN.unpack(head)
        if not 1 <= version <= 64 or block_size < 512 or block_size & (block_size - 1) \
                or sub_hdr_size < 1 or bitmap_blocks < 2 or bitmap_blocks % 2:
            raise KdumpError(f"{path}: header version {version}, block size {block_size}, "
                             f"bitmap blocks {bitmap_blocks}: not an LP64 little-endian "
                             "kdump-compressed header")
        f.seek(block_size)
        sub = _SUB.unpack(f.read(_SUB.size).ljust(_SUB.size, b"\0"))
        phys_base, dump_level, split = sub[0], sub[1], sub[2]
        if split:
            raise KdumpError(f"{path}: one part of a --split dump (its bitmaps cover "
                             "the whole dump, its pages one part): reassemble it first")
        max_mapnr = sub[13] if version >= 6 else max_mapnr_32
        half = bitmap_blocks // 2 * block_size
        if max_mapnr > half * 8:
            raise KdumpError(f"{path}: max_mapnr {max_mapnr} does not fit bitmaps of "
                             f"{half} bytes")
        f.seek((1 + sub_hdr_size) * block_size)
        first, second = f.read(half), f.read(half)
        if len(second) < half:
            raise KdumpError(f"{path}: cut short in its bitmaps")
        present, dumped = bitmap_runs(first, max_mapnr), bitmap_runs(second, max_mapnr)
        zero: Ranges = ()
        if dump_level & 1:
            table = (1 + sub_hdr_size + bitmap_blocks) * block_size
            zero = _zero_pages(f, table, dumped, block_size)
    return Kdump(version, _text(release), _text(machine), status, block_size, sub_hdr_size,
                 bitmap_blocks, max_mapnr, max_mapnr_32, phys_base, dump_level, present,
                 dumped, zero)


def _zero_pages(f: BinaryIO, table: int, dumped: Ranges, block_size: int) -> Ranges:
    """The dumped pfns whose `page_desc` is the zero page's: the one page of data
    written first after the table (offset, size block_size, flags 0, page_flags 0)."""
    total = count(dumped)
    f.seek(table)
    descs = f.read(total * _DESC.size)
    if len(descs) < total * _DESC.size:
        raise KdumpError(f"cut short in its page descriptors ({total} expected)")
    needle = _DESC.pack(table + total * _DESC.size, block_size, 0, 0)
    hits, at = [], descs.find(needle)
    while at >= 0:
        if at % _DESC.size == 0:
            hits.append(at // _DESC.size)
            at = descs.find(needle, at + _DESC.size)
        else:
            at = descs.find(needle, at + 1)
    return nth_pfns(dumped, hits)


def parse_report(text: str) -> dict[str, int]:
    """makedumpfile's report (--message-level with bit 16): pages per reason."""
    return {REPORT[name]: int(value, 16) for name, value in _REPORT_LINE.findall(text)}


@functools.cache
def _version_text() -> str:
    done = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True,
                          check=False)
    return done.stdout + done.stderr


def makedumpfile_version() -> str:
    return next(iter(_version_text().splitlines()), "makedumpfile: no version")


def built_with(codec: str) -> bool:
    """Whether this makedumpfile has `codec` (zlib always; lzo, snappy, zstd as built)."""
    return codec == "zlib" or bool(re.search(rf"^{codec}\s+enabled", _version_text(), re.M))


def compression() -> str:
    """The cheapest page compression this makedumpfile has: lzo, else zlib."""
    return "-l" if built_with("lzo") else "-c"


@dataclass(frozen=True)
class Run:
    """makedumpfile at one dump level: its output read back, its report, its time."""

    level: int
    kdump: Kdump
    counts: dict[str, int]
    seconds: float

    @property
    def excluded(self) -> Ranges:
        return union(self.kdump.excluded, self.kdump.zero)


def run_makedumpfile(dump: str | Path, level: int, work: Path | None = None) -> Run:
    """`makedumpfile -l -d LEVEL DUMP` into a temporary file, read back and removed."""
    with tempfile.TemporaryDirectory(prefix="kdumpbitmap-", dir=work) as tmp:
        out = Path(tmp) / "dump.kdump"
        command = ["makedumpfile", compression(), "-d", str(level), "--message-level", "22",
                   str(dump), str(out)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        said = done.stdout + done.stderr
        if done.returncode:
            lines = [ln for ln in said.splitlines() if ln.strip()] or ["no output"]
            raise KdumpError(f"makedumpfile -d {level} {dump}: exit {done.returncode}: "
                             f"{lines[0]}")
        return Run(level, read_kdump(out), parse_report(said), seconds)


def makedumpfile_excluded(dump: str | Path, level: int) -> Ranges:
    """The pfns makedumpfile excludes from `dump` at dump level `level`."""
    return run_makedumpfile(dump, level).excluded


@dataclass(frozen=True)
class Loads:
    """The pfns of an ELF dump's PT_LOADs, as makedumpfile's bitmaps see them."""

    pfns: Ranges  # whole pages: all in the 1st bitmap
    partial: Ranges  # a PT_LOAD's partial last page: makedumpfile 1.7.2 puts it in the 1st
    # bitmap in one of its two ways of building it (create_1st_bitmap_file), never in the 2nd
    nodata: Ranges  # past p_filesz: dropped at every level (exclude_nodata_pages)

    @property
    def unreasoned(self) -> Ranges:
        """What makedumpfile may leave out at any level, counted under no reason."""
        return union(self.nodata, self.partial)

    def holds(self, present: Ranges) -> bool:
        """Whether `present` (a 1st bitmap) is these pfns, as makedumpfile makes it."""
        return not subtract(self.pfns, present) and \
            not subtract(present, union(self.pfns, self.partial))


def elf_loads(dump: str | Path) -> Loads:
    source = open_source(str(dump), kind="elf")
    try:
        ps = source.page_size
        whole = normal((s.paddr // ps, (s.paddr + s.memsz) // ps) for s in source.segments)
        tails = normal(((s.paddr + s.memsz) // ps, -(-(s.paddr + s.memsz) // ps))
                       for s in source.segments)
        nodata = normal((-(-(s.paddr + s.filesz) // ps), -(-(s.paddr + s.memsz) // ps))
                        for s in source.segments)
    finally:
        source.close()
    return Loads(whole, subtract(tails, whole), nodata)


class Makedumpfile:
    """makedumpfile's runs on one dump, each level run once, and the reason each
    excluded pfn has (from runs at single levels, in makedumpfile's order of tests)."""

    def __init__(self, dump: str | Path, work: Path | None = None) -> None:
        self.dump, self.work = Path(dump), work
        self._runs: dict[int, Run] = {}

    def run(self, level: int) -> Run:
        if level not in self._runs:
            self._runs[level] = run_makedumpfile(self.dump, level, self.work)
        return self._runs[level]

    def reasons(self, level: int) -> dict[str, Ranges]:
        """The pfns excluded at `level`, by reason: nodata, offline/hwpoison (always),
        then free, cache, cache_private, user as __exclude_unnecessary_pages tests
        them, and zero (what the level's own run stored as the zero page)."""
        base = self.run(0).kdump.excluded
        nodata = intersect(base, elf_loads(self.dump).unreasoned)
        counts = self.run(0).counts
        always = "offline" if not counts.get("hwpoison") else \
            "hwpoison" if not counts.get("offline") else "offline|hwpoison"
        out = {"nodata": nodata, always: subtract(base, nodata)}
        taken = base
        steps = (("free", 16, 16), ("cache", 2, 6), ("cache_private", 4, 4), ("user", 8, 8))
        for name, bit, within in steps:
            if level & within:
                out[name] = subtract(self.run(bit).kdump.excluded, taken)
                taken = union(taken, out[name])
        if level & 1:
            out["zero"] = self.run(level).kdump.zero
        return {name: ranges for name, ranges in out.items() if ranges}

    def reason_of(self, level: int, pfn: int) -> str:
        return next((name for name, ranges in self.reasons(level).items()
                     if contains(ranges, pfn)), "kept")


def kept_dumps(where: Path) -> list[Path]:
    """The dumps `bench.lab --keep WHERE` kept (each has its NAME.json)."""
    return sorted(Path(str(j)[: -len(".json")]) for j in where.glob("vmcore-*.json")
                  if Path(str(j)[: -len(".json")]).exists())


def expand(paths: list[Path]) -> list[Path]:
    """Each path a dump, or a directory of kept ones."""
    return [d for p in paths for d in (kept_dumps(p) if p.is_dir() else [p])]


def lab_run(dump: Path) -> str:
    """What `bench.lab --keep` recorded beside the dump (`DUMP.json`), in a line."""
    beside = Path(f"{dump}.json")
    if not beside.exists():
        return ""
    run = json.loads(beside.read_text())
    balloon = run.get("balloon_qmp") or {}
    qmp = (f", QMP: target {balloon['target']} actual {balloon['actual']} bytes "
           f"({(run['guest_mem_mib'] << 20) - balloon['actual']} out = "
           f"{((run['guest_mem_mib'] << 20) - balloon['actual']) // 4096} pages)"
           if balloon else "")
    return (f"lab run: KASLR {'on' if run['kaslr'] else 'off'}, guest "
            f"{run['guest_mem_mib']} MiB, crashkernel={run['crashkernel']}, balloon "
            f"{run['balloon_mib']} MiB asked{qmp}")


def table(dump: Path, levels: list[int], work: Path | None = None) -> list[str]:
    """Markdown lines: per level, the bitmaps' exclusions beside the report's counts."""
    mdf = Makedumpfile(dump, work)
    loads = elf_loads(dump)
    head = ["level", "excluded (bitmaps)", *EXCLUSIONS, "bitmaps == report",
            f"seconds (`{compression()}`)"]
    lines = [f"{dump}: {lab_run(dump) or 'no lab record beside it'}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels:
        run = mdf.run(level)
        kd, counts = run.kdump, run.counts
        others = sum(counts.get(name, 0) for name in EXCLUSIONS if name != "zero") \
            + counts.get("extension", 0)
        nodata = count(intersect(kd.excluded, loads.unreasoned))
        same = count(kd.excluded) - nodata == others and count(kd.zero) == counts["zero"] \
            and loads.holds(kd.present)
        lines.append(f"| {level} | {count(run.excluded):,} | "
                     + " | ".join(f"{counts.get(name, 0):,}" for name in EXCLUSIONS)
                     + f" | {'yes' if same else 'NO'} | {run.seconds:.2f} |")
    lines.append("")
    lines.append(f"present (1st bitmap: the PT_LOADs' pfns) {count(kd.present):,}; past "
                 f"p_filesz or a partial page (excluded at every level, under no reason) "
                 f"{nodata:,}")
    return lines


def describe(path: Path) -> list[str]:
    kd = read_kdump(path)
    shown: list[tuple[str, object]] = [
        ("header_version", kd.header_version), ("release", kd.release),
        ("machine", kd.machine), ("status", f"{kd.status:#x}"
                                  + (" (incomplete)" if kd.status & INCOMPLETE else "")),
        ("block_size", kd.block_size), ("sub_hdr_size", kd.sub_hdr_size),
        ("bitmap_blocks", kd.bitmap_blocks), ("max_mapnr", kd.max_mapnr),
        ("max_mapnr (32-bit field)", kd.max_mapnr_32), ("phys_base", f"{kd.phys_base:#x}"),
        ("dump_level", kd.dump_level), ("present", count(kd.present)),
        ("dumped", count(kd.dumped)), ("excluded (present - dumped)", count(kd.excluded)),
        ("zero pages (dumped as the zero page)", count(kd.zero))]
    return [f"{name}: {value}" for name, value in shown]


def _levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",")]
    if any(not 0 <= x <= 31 for x in levels):
        raise argparse.ArgumentTypeError("dump levels are 0 to 31")
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kdumpbitmap",
                                     description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", nargs="*", type=Path, metavar="DUMP",
                        help="an ELF dump, or a directory of dumps `bench.lab --keep` kept")
    parser.add_argument("--levels", type=_levels, default=[1, 2, 4, 8, 16, 31])
    parser.add_argument("--kdump", type=Path, action="append", default=[], metavar="FILE",
                        help="describe this kdump-compressed file (repeatable)")
    parser.add_argument("--work", type=Path, help="makedumpfile's output goes here (TMPDIR)")
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = parser.parse_args(argv)
    said = " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# makedumpfile's exclusions: pages per dump level and reason", "",
             f"`python -m bench.kdumpbitmap {said}` on {time.strftime('%Y-%m-%d')}, "
             f"{makedumpfile_version()}", ""]
    try:
        for path in args.kdump:
            print("\n".join(describe(path)), end="\n\n")
        for dump in expand(args.dumps):
            rows = table(dump, args.levels, args.work)
            print("\n".join(rows), end="\n\n", flush=True)
            lines += [*rows, ""]
    except (KdumpError, StartupError, OSError) as exc:
        print(f"kdumpbitmap: {exc}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
