"""The memmap hook beside makedumpfile, page for page and in time.

`python -m bench.memmap_check DUMP|DIR... [--levels 1,2,4,8,16,31] [--compare-only]`

For each ELF dump and dump level L, a real `dumpd serve --hook memmap --hook-option
dump_level=L` (bit 1, zero pages, is no verdict: the hook gets L without it) is asked
for the whole view's extents; its non-RAM pages must be, page for page, the pages
makedumpfile excludes at level L for any reason but zero (its 1st bitmap minus its
2nd: `bench.kdumpbitmap`), over the pfns both hold. When L has bit 1, the pages
`dumpd fetch --zeros-as-holes` leaves out as zero (its record, COPY.dumpd-holes) must
be makedumpfile's zero pages. A difference prints its first pfns with each side's
reason (single-level runs of both).

Then the Targets of issue 15 (unless `--compare-only`), best of `--repeat`, page cache
warm: classifying every pfn (`makedumpfile -d L --dry-run` beside registering the hook
on a running server and walking its extents) and, at level 31, a whole copy
(`makedumpfile -E -d 31` beside `dumpd fetch` from a server with the hook at 31, with
fetch's zero-page option when its --help has one): seconds and allocated bytes
(st_blocks), ratios, written to bench/results/memmap.md.

Exit status: 0 every comparison equal, 1 a difference or a failure, 77 the hook memmap
is not installed (one line says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path

from bench.common import DUMPD, dumpd_server, held, warm
from bench.kdumpbitmap import (
    KdumpError,
    Makedumpfile,
    elf_loads,
    expand,
    lab_run,
    makedumpfile_version,
)
from bench.pfnranges import (
    Ranges,
    contains,
    count,
    intersect,
    normal,
    show,
    subtract,
    union,
)
from dumpd.client import Client
from dumpd.errors import StartupError
from dumpd.hooks.contract import ENTRY_POINT_GROUP

HOOK = "memmap"
SKIP = 77
EXTENTS_MAX = 1 << 30  # the server's largest `extents` length
RESULTS = Path(__file__).resolve().parent / "results" / "memmap.md"
SINGLE = (("offline|hwpoison", 0), ("free", 16), ("cache", 2), ("cache_private", 4),
          ("user", 8))
"""The hook's exclusions one level at a time, in makedumpfile's order of tests."""


def hook_installed() -> bool:
    return bool(entry_points(group=ENTRY_POINT_GROUP, name=HOOK))


def hook_level(level: int) -> int:
    return level & ~1


def file_pfns(segments: Sequence[Sequence[int]], offset: int, length: int,
              page_size: int) -> list[tuple[int, int]]:
    """The pfns whose bytes lie in file view `[offset, offset+length)`, through the
    PT_LOADs `[paddr, file_offset, filesz, memsz]` (a page partly there counts)."""
    out = []
    for paddr, start, filesz, _memsz in segments:
        lo, hi = max(offset, start), min(offset + length, start + filesz)
        if lo < hi:
            out.append(((paddr + lo - start) // page_size,
                        -(-(paddr + hi - start) // page_size)))
    return out


def holes(client: Client) -> Ranges:
    """Every pfn the server's hook calls non-RAM: `extents` over the whole view."""
    info = client.info()
    size, ps, segments = info["size"], info["page_size"], info["segments"]
    runs: list[tuple[int, int]] = []
    for offset in range(0, size, EXTENTS_MAX):
        for start, length, kind in client.extents(offset, min(EXTENTS_MAX, size - offset)):
            if kind == "zero":
                runs += file_pfns(segments, start, length, ps)
    return normal(runs)


def view_pfns(client: Client) -> Ranges:
    info = client.info()
    return normal(file_pfns(info["segments"], 0, info["size"], info["page_size"]))


@contextmanager
def serving(dump: Path, work: Path, level: int | None) -> Iterator[Client]:
    """A real `dumpd serve` of `dump` (with the hook at `level` unless None), a client."""
    hook = [] if level is None else ["--hook", HOOK, "--hook-option",
                                     f"dump_level={hook_level(level)}"]
    sock = work / "dumpd.sock"
    with dumpd_server(sock, ["--source", str(dump), *hook]), \
            Client.connect(str(sock), timeout=600) as client:
        yield client


class Dumpd:
    """The hook's verdicts on one dump, per level, each asked of a server once."""

    def __init__(self, dump: Path, work: Path) -> None:
        self.dump, self.work = dump, work
        self._holes: dict[int, Ranges] = {}
        self.view: Ranges = ()

    def holes(self, level: int) -> Ranges:
        key = hook_level(level)
        if key not in self._holes:
            with serving(self.dump, self.work, key) as client:
                self._holes[key], self.view = holes(client), view_pfns(client)
        return self._holes[key]

    def reason_of(self, level: int, pfn: int) -> str:
        """RAM, or the first single level (in makedumpfile's order) that excludes it."""
        if not contains(self.holes(level), pfn):
            return "RAM"
        return next((name for name, bit in SINGLE
                     if (bit == 0 or level & bit) and contains(self.holes(bit), pfn)),
                    "not RAM")


def fetched_zeros(dump: Path, work: Path, level: int) -> Ranges:
    """The pfns `dumpd fetch --zeros-as-holes` leaves out as all-zero RAM, with the hook
    at `level`, as its record beside the copy (COPY.dumpd-holes) says."""
    copy = work / "zeros.vmcore"
    with serving(dump, work, level):
        subprocess.run([*DUMPD, "fetch", "--socket", str(work / "dumpd.sock"), "-q",
                        "--zeros-as-holes", "-o", str(copy)], check=True)
    record = Path(f"{copy}.dumpd-holes")
    runs = [(first, first + n) for first, n, why in
            (json.loads(line) for line in record.read_text().splitlines()[1:-1])
            if why == "zero"]
    copy.unlink()
    record.unlink()
    return normal(runs)


def compare_zeros(dump: Path, level: int, mdf: Makedumpfile, hook: Dumpd,
                  scope: Ranges) -> tuple[bool, str]:
    """Level bit 1: the zero pages fetch left out against makedumpfile's zero pages."""
    theirs = intersect(mdf.run(level).kdump.zero, scope)
    ours = intersect(fetched_zeros(dump, hook.work, level), scope)
    if theirs == ours:
        return True, f"; zero pages (fetch --zeros-as-holes): equal, {count(ours):,}"
    return False, (f"; zero pages DIFFER: only makedumpfile {show(subtract(theirs, ours), 3)}, "
                   f"only dumpd {show(subtract(ours, theirs), 3)}")


def compare(dump: Path, level: int, mdf: Makedumpfile, hook: Dumpd) -> tuple[bool, str]:
    """One dump at one level, page for page: (equal, the line that says so)."""
    served = hook.holes(level)
    run = mdf.run(level)
    scope = intersect(run.kdump.present, hook.view)
    theirs, ours = intersect(run.kdump.excluded, scope), intersect(served, scope)
    zeros_equal, zero = compare_zeros(dump, level, mdf, hook, scope) if level & 1 else (True, "")
    if not zeros_equal:
        return False, f"{dump.name} level {level}: DIFFER in zero pages{zero}"
    if theirs == ours:
        return True, (f"{dump.name} level {level}: equal, {count(ours):,} of {count(scope):,} "
                      f"pfns not RAM{zero}")
    only_mdf, only_hook = subtract(theirs, ours), subtract(ours, theirs)
    firsts = sorted(union(only_mdf, only_hook))[:4]
    said = "; ".join(f"pfn {a:#x}: makedumpfile {mdf.reason_of(level, a)}, dumpd "
                     f"{hook.reason_of(level, a)}" for a, _ in firsts)
    return False, (f"{dump.name} level {level}: DIFFER: only makedumpfile excludes "
                   f"{count(only_mdf):,} ({show(only_mdf, 3)}), only dumpd {count(only_hook):,} "
                   f"({show(only_hook, 3)}); first: {said}")


def _best(repeat: int, once: Callable[[], float]) -> float:
    return min(once() for _ in range(repeat))


def _timed(command: Sequence[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise KdumpError(f"{' '.join(command[:4])}: exit {done.returncode}: {tail[0]}")
    return seconds


def zero_option() -> str | None:
    """fetch's option that sends all-zero RAM pages as holes, when it has one."""
    text = subprocess.run([*DUMPD, "fetch", "--help"], capture_output=True, text=True,
                          check=False).stdout
    found = re.search(r"(--[a-z-]*zero[a-z-]*)", text)
    return found[1] if found else None


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def targets(dump: Path, levels: list[int], work: Path, repeat: int) -> list[str]:
    """The Targets' rows for one dump (markdown)."""
    rows = []
    warm(dump)
    for level in levels:
        def mdf_once(level: int = level) -> float:
            return _timed(["makedumpfile", "-d", str(level), "--dry-run", "--message-level",
                           "4", str(dump), str(work / "dry-run.kdump")])

        def hook_once(level: int = level) -> float:
            with serving(dump, work, None) as client:
                started = time.perf_counter()
                client.hook_register(HOOK, {"dump_level": hook_level(level)})
                holes(client)
                return time.perf_counter() - started

        theirs, ours = _best(repeat, mdf_once), _best(repeat, hook_once)
        rows.append(f"| {dump.name} | classify every pfn, level {level} (dumpd: register "
                    f"+ extents of the view) | {ours:.3f} s | {theirs:.3f} s | "
                    f"{ours / theirs:.2f}x | {held(ours <= 2 * theirs, '<= 2x')} |")
    elf, copy = work / "makedumpfile-E-d31.elf", work / "dumpd-fetch-31.vmcore"
    option = zero_option()

    def mdf_copy() -> float:
        elf.unlink(missing_ok=True)
        return _timed(["makedumpfile", "-E", "-d", "31", "--message-level", "4", str(dump),
                       str(elf)])

    with serving(dump, work, 31) as client:
        client.info()

        def fetch_once() -> float:
            copy.unlink(missing_ok=True)
            Path(f"{copy}.dumpd-holes").unlink(missing_ok=True)
            return _timed([*DUMPD, "fetch", "--socket", str(work / "dumpd.sock"), "-q",
                           *([option] if option else []), "-o", str(copy)])

        theirs, ours = _best(repeat, mdf_copy), _best(repeat, fetch_once)
    what = f"`dumpd fetch{' ' + option if option else ''}`, hook at 31"
    rows.append(f"| {dump.name} | whole copy: {what} beside `makedumpfile -E -d 31` | "
                f"{ours:.3f} s | {theirs:.3f} s | {ours / theirs:.2f}x | "
                f"{held(ours <= 1.5 * theirs, '<= 1.5x')} |")
    a, b = _allocated(copy), _allocated(elf)
    rows.append(f"| {dump.name} | allocated bytes of that copy (st_blocks) | {a / 1e6:,.1f} MB "
                f"| {b / 1e6:,.1f} MB | {a / b:.2f}x | {held(a <= b, '<= 1x')} |")
    for done in (elf, copy, Path(f"{copy}.dumpd-holes")):
        done.unlink(missing_ok=True)
    return rows


def _levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",")]
    if any(not 0 <= x <= 31 for x in levels):
        raise argparse.ArgumentTypeError("dump levels are 0 to 31")
    return levels


def report(dumps: list[Path], lines: list[str], rows: list[str], argv: list[str]) -> str:
    out = ["# The memmap hook beside makedumpfile", "",
           f"`python -m bench.memmap_check {' '.join(argv)}` on "
           f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
           f"{makedumpfile_version()}", ""]
    out += [f"- {d}: {lab_run(d) or 'no lab record'}" for d in dumps]
    out += ["", "## Page for page", ""] + [f"- {line}" for line in lines]
    if rows:
        out += ["", "## Targets (best of the runs, page cache warm)", "",
                "| dump | measure | dumpd | makedumpfile | ratio | target |",
                "|---|---|---|---|---|---|", *rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memmap_check",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("dumps", nargs="+", type=Path, metavar="DUMP",
                        help="an ELF dump, or a directory of dumps `bench.lab --keep` kept")
    parser.add_argument("--levels", type=_levels, default=[1, 2, 4, 8, 16, 31])
    parser.add_argument("--compare-only", action="store_true", help="no timings")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (best)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"the report ({RESULTS.relative_to(RESULTS.parents[2])})")
    parser.add_argument("--work", type=Path, help="copies and sockets (a temp dir in /var/tmp)")
    args = parser.parse_args(argv)
    dumps = expand(args.dumps)
    if not hook_installed():
        print(f"memmap_check: hook {HOOK} is not installed (pip install ./plugins/{HOOK}/)",
              file=sys.stderr)
        return SKIP
    lines: list[str] = []
    rows: list[str] = []
    equal = True
    with tempfile.TemporaryDirectory(prefix="memmap-check-",
                                     dir=args.work or "/var/tmp") as tmp:
        work = Path(tmp)
        try:
            for dump in dumps:
                elf_loads(dump)  # an ELF dump, or one line saying why not
                mdf, hook = Makedumpfile(dump, work), Dumpd(dump, work)
                for level in args.levels:
                    same, line = compare(dump, level, mdf, hook)
                    equal &= same
                    lines.append(line)
                    print(line, flush=True)
                if not args.compare_only:
                    rows += targets(dump, args.levels, work, args.repeat)
                    print("\n".join(rows[-len(args.levels) - 2:]), flush=True)
        except (KdumpError, StartupError, OSError) as exc:
            print(f"memmap_check: {exc}", file=sys.stderr)
            return 1
    args.out.write_text(report(dumps, lines, rows, sys.argv[1:] if argv is None
                               else argv))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
