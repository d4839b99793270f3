"""Scenario 7: the kdump-compressed format both ways, beside makedumpfile (issue 16).

    python -m bench.kdump DUMP|DIR... [--repeat 3] [--out bench/results/kdump.md]
    python -m bench --only 7 [--quick]     # the same on a synthetic kernel's dump

On each ELF dump (the crash-kernel lab's kept dumps; as scenario 7, the synthetic
kernel of `dumpd.testing.kernel`, whose mem_map makedumpfile reads), page cache warm,
each figure the best of `--repeat` runs:

Writing, dump level 31:
- the baselines: `makedumpfile -c -d 31` (zlib), `-l -d 31` (LZO), `-c -d 0`: bytes
  (st_size, what an archive holds) and seconds;
- `dumpd fetch --format kdump --compress C --zeros-as-holes` from a `dumpd serve` of
  the dump, timed together with registering the memmap hook (dump_level 30: bit 1,
  zero pages, is fetch's) just before, so that each run classifies every page afresh
  as makedumpfile does: zlib beside `-c -d 31` (size <= 1.05x, time <= 1.5x), zstd
  beside `-c -d 31` (smaller and faster), LZO beside `-l -d 31` (no target). Each copy
  is checked: its dumped pfns are makedumpfile's, its zero pages left out or stored as
  makedumpfile's one zero page (`bench.kdumpbitmap.read_kdump`), and where makedumpfile
  reads the codec and the dump's log, `makedumpfile --dump-dmesg` of the copy is that of
  the ELF dump.

Serving the saved file `makedumpfile -c -d 31` wrote: `bench.kdumpserve`.

A row whose dumpd feature is not there (fetch without `--format kdump`, a source that
refuses the kdump file) says so in one line and measures nothing; the baselines are
measured whatever. Exit status: 0, or 1 when a copy's check failed or a step failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import DUMPD, Emit, Row, dumpd_server, held, warm
from bench.kdumpbitmap import (
    KdumpError,
    built_with,
    expand,
    lab_run,
    makedumpfile_version,
    read_kdump,
)
from bench.kdumpserve import Failed, Plan, best, serve_rows, timed
from bench.memmap_check import HOOK, hook_installed, hook_level
from bench.pfnranges import show, subtract
from dumpd.client import Client
from dumpd.testing.kernel import SyntheticKernel

TITLE = "The kdump-compressed format: fetch --format kdump and .kdump sources beside makedumpfile"
SCENARIO = "7. kdump"
LEVEL = 31
RESULTS = Path(__file__).resolve().parent / "results" / "kdump.md"
BASELINES = (("-c", LEVEL), ("-l", LEVEL), ("-c", 0))
CODECS = (("zlib", "-c"), ("zstd", "-c"), ("lzo", "-l"))
"""dumpd's codec and the makedumpfile run it is set beside."""
FULL, QUICK = Plan(repeat=3, trips=1000, rounds=8), Plan(repeat=1, trips=100, rounds=2)


def fetch_has_kdump() -> bool:
    """Whether `dumpd fetch` writes the kdump-compressed format (`--format kdump`)."""
    text = subprocess.run([*DUMPD, "fetch", "--help"], capture_output=True, text=True,
                          check=False).stdout
    return "--format" in text and "kdump" in text and "--compress" in text


def dmesg(dump: Path, work: Path) -> str | None:
    """The dead kernel's log as `makedumpfile --dump-dmesg` writes it (None: it cannot)."""
    out = work / "dmesg.txt"
    out.unlink(missing_ok=True)
    done = subprocess.run(["makedumpfile", "--dump-dmesg", str(dump), str(out)],
                          capture_output=True, check=False)
    text = out.read_text(errors="replace") if done.returncode == 0 and out.exists() else None
    out.unlink(missing_ok=True)
    return text


@dataclass
class Made:
    """One kdump file of the dump: who wrote it how, its size and its best time."""

    path: Path
    seconds: float

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def allocated(self) -> int:
        return self.path.stat().st_blocks * 512


def makedumpfile(dump: Path, option: str, level: int, out: Path, repeat: int) -> Made:
    def once() -> float:
        out.unlink(missing_ok=True)
        return timed(["makedumpfile", option, "-d", str(level), "--message-level", "4",
                      str(dump), str(out)])

    return Made(out, best(repeat, once))


def dumpd_kdump(sock: Path, codec: str, out: Path, repeat: int) -> Made:
    """`dumpd fetch --format kdump --compress CODEC --zeros-as-holes`, the memmap hook
    registered at level 31 just before (its time counted) and unregistered after."""
    def once() -> float:
        for stale in (out, Path(f"{out}.dumpd-fetch"), Path(f"{out}.dumpd-holes")):
            stale.unlink(missing_ok=True)
        with Client.connect(str(sock), timeout=600) as client:
            started = time.perf_counter()
            client.hook_register(HOOK, {"dump_level": hook_level(LEVEL)})
            try:
                return time.perf_counter() - started + timed(
                    [*DUMPD, "fetch", "--socket", str(sock), "--format", "kdump",
                     "--compress", codec, "--zeros-as-holes", "-q", "-o", str(out)])
            finally:
                client.hook_unregister()

    return Made(out, best(repeat, once))


def check_copy(copy: Path, theirs: Path, codec: str, log: str | None, work: Path) -> str:
    """The copy's dumped pfns against makedumpfile's, and its log; "" when all agree,
    else what differs. makedumpfile keeps a zero page in its 2nd bitmap, stored as its
    one shared zero page; dumpd leaves them out, or stores them the same way."""
    ours, mdf = read_kdump(copy), read_kdump(theirs)
    want = subtract(mdf.dumped, mdf.zero)
    if (ours.dumped, ours.zero) != (mdf.dumped, mdf.zero) and ours.dumped != want:
        return (f"dumped pfns DIFFER: only makedumpfile {show(subtract(want, ours.dumped), 3)}"
                f", only dumpd {show(subtract(ours.dumped, want), 3)}")
    if log is not None and built_with(codec) and dmesg(copy, work) != log:
        return "`makedumpfile --dump-dmesg` of the copy DIFFERS from the ELF dump's"
    return ""


def mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def write_rows(dump: Path, work: Path, plan: Plan, scenario: str, emit: Emit) -> bool:
    """The writing half for one dump: the baselines, then dumpd's copies beside them.
    Returns whether every copy checked out."""
    warm(dump)
    made = {}
    for option, level in BASELINES:
        m = made[option, level] = makedumpfile(dump, option, level,
                                               work / f"makedumpfile{option}-d{level}.kdump",
                                               plan.repeat)
        emit(Row(scenario, f"`makedumpfile {option} -d {level}` (baseline)", "",
                 f"{mb(m.size)}, {m.seconds:.3f} s", "", "",
                 {"bytes": m.size, "allocated": m.allocated, "seconds": round(m.seconds, 4)}))
    if not fetch_has_kdump():
        emit(Row(scenario, "`dumpd fetch --format kdump`", "not measured: this dumpd fetch "
                 "has no `--format kdump --compress` (the kdump writer)", "", "", ""))
        return True
    if not hook_installed():
        emit(Row(scenario, "`dumpd fetch --format kdump`", f"not measured: hook {HOOK} is "
                 f"not installed (pip install ./plugins/{HOOK}/)", "", "", ""))
        return True
    log, good = dmesg(dump, work), True
    sock = work / "dumpd.sock"
    with dumpd_server(sock, ["--source", str(dump)]):
        for codec, option in CODECS:
            theirs = made[option, LEVEL]
            try:
                ours = dumpd_kdump(sock, codec, work / f"dumpd-{codec}.kdump", plan.repeat)
            except Failed as exc:
                emit(Row(scenario, f"`dumpd fetch --format kdump --compress {codec}`",
                         f"failed: {exc}", "", "", ""))
                good = False
                continue
            wrong = check_copy(ours.path, theirs.path, codec, log, work)
            good &= not wrong
            emit_pair(scenario, codec, option, ours, theirs, wrong, emit)
            ours.path.unlink()
    return good


def emit_pair(scenario: str, codec: str, option: str, ours: Made, theirs: Made,
              wrong: str, emit: Emit) -> None:
    """Size and time of one dumpd copy beside makedumpfile's, with their targets."""
    size, took = ours.size / theirs.size, ours.seconds / theirs.seconds
    size_target = {"zlib": (size <= 1.05, "<= 1.05x"), "zstd": (size < 1, "< 1x, smaller")}
    time_target = {"zlib": (took <= 1.5, "<= 1.5x"), "zstd": (took < 1, "< 1x, faster")}
    what = f"`dumpd fetch --format kdump --compress {codec}`, hook at {LEVEL}"
    checked = f"; CHECK: {wrong}" if wrong else ""
    base = f"`makedumpfile {option} -d {LEVEL}`"
    s_ok, s_text = size_target.get(codec, (True, ""))
    t_ok, t_text = time_target.get(codec, (True, ""))
    emit(Row(scenario, f"{what}: bytes{checked}", mb(ours.size), f"{base} {mb(theirs.size)}",
             f"{size:.3f}x", held(s_ok and not wrong, s_text) if s_text else "",
             {"bytes": ours.size, "allocated": ours.allocated, "baseline": theirs.size,
              "ratio": round(size, 4), "check": wrong or "equal"}))
    emit(Row(scenario, f"{what}: seconds (register the hook + fetch)", f"{ours.seconds:.3f} s",
             f"{base} {theirs.seconds:.3f} s", f"{took:.2f}x",
             held(t_ok, t_text) if t_text else "",
             {"seconds": round(ours.seconds, 4), "baseline": round(theirs.seconds, 4),
              "ratio": round(took, 3)}))


def one_dump(dump: Path, work: Path, plan: Plan, scenario: str, emit: Emit) -> bool:
    good = write_rows(dump, work, plan, scenario, emit)
    saved = work / f"makedumpfile-c-d{LEVEL}.kdump"
    good &= serve_rows(dump, saved, work, plan, scenario, emit)
    for stale in work.glob("makedumpfile*.kdump"):
        stale.unlink()
    return good


def run(work: Path, quick: bool, emit: Emit) -> None:
    """Scenario 7 of `python -m bench`: the synthetic kernel's dump."""
    dump = work / "synthetic.elf"
    SyntheticKernel().write(dump)
    one_dump(dump, work, QUICK if quick else FULL, f"{SCENARIO} (synthetic 6.1 kernel)", emit)


def markdown(dumps: list[Path], rows: list[Row], argv: list[str]) -> str:
    out = ["# The kdump-compressed format beside makedumpfile", "",
           f"`python -m bench.kdump {' '.join(argv)}` on {time.strftime('%Y-%m-%d')}, "
           f"{platform.node()}, {os.cpu_count()} CPUs, {makedumpfile_version()}", ""]
    out += [f"- {d}: {lab_run(d) or 'no lab record'}" for d in dumps]
    out += ["", "| dump | measure | dumpd | baseline | ratio | target |",
            "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in (
        r.scenario, r.measure, r.dumpd, r.baseline, r.ratio, r.target)) + " |" for r in rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kdump",
                                     description=(__doc__ or "").split("\n\n")[2])
    parser.add_argument("dumps", nargs="*", type=Path, metavar="DUMP",
                        help="an ELF dump, or a directory of dumps `bench.lab --keep` kept")
    parser.add_argument("--repeat", type=int, default=FULL.repeat, help="runs per timing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the report")
    parser.add_argument("--work", type=Path, help="copies and sockets (a temp dir in /var/tmp)")
    args = parser.parse_args(argv)
    dumps = [d for d in expand(args.dumps) if d.is_file()]
    if not dumps:
        print(f"kdump: skipped: no dump at {', '.join(map(str, args.dumps)) or 'all'} "
              "(python -m bench.lab --keep DIR keeps one)", file=sys.stderr)
        return 0
    plan = Plan(args.repeat, FULL.trips, FULL.rounds)
    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        print(" | ".join((row.scenario, row.measure, row.dumpd, row.baseline, row.ratio,
                          row.target)), flush=True)

    good = True
    with tempfile.TemporaryDirectory(prefix="bench-kdump-", dir=args.work or "/var/tmp") as tmp:
        try:
            for dump in dumps:
                good &= one_dump(dump, Path(tmp), plan, dump.name, emit)
        except (Failed, KdumpError, OSError) as exc:
            print(f"kdump: {exc}", file=sys.stderr)
            return 1
    args.out.write_text(markdown(dumps, rows, sys.argv[1:] if argv is None else argv))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
