"""The memmap hook beside makedumpfile on one dump: time, pages excluded per reason, memory.

    .venv/bin/python -m bench.memmap /var/tmp/dumpd-lab/fetched.vmcore

- time: every pfn the dump holds classified in-process (a fresh hook attached, then
  `explain` over the dump's pfn ranges) at levels 0 and 31, best and median of the
  runs, beside `makedumpfile -d 31 --dry-run` on the same file (its whole run, wall
  clock); target: at most 2x makedumpfile's time.
- counts: the pages the hook excludes per reason at levels 2, 4, 8, 16 and 31 beside
  makedumpfile's `--show-stats` counters for the same level; they must be equal.
- memory: tracemalloc's peak while classifying the whole dump at level 31, and what
  the hook keeps after it (the LRU of chunks and dumpd.kernel's caches).

makedumpfile reads the dump itself (page cache warm after the first run); it writes
nothing with --dry-run. The dump is only read.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import dumpd_memmap

from dumpd.sources import open_source
from dumpd.sources.physical import SourceMemory

LEVELS = (2, 4, 8, 16, 31)
RUNS = 7
STATS = {  # makedumpfile's --show-stats line -> the hook's reason
    "Non-private cache pages": "cache",
    "Private cache pages": "cache_private",
    "User process data pages": "user",
    "Free pages": "free",
    "Hwpoison pages": "hwpoison",
    "Offline pages": "offline",
}
_STAT = re.compile(r"^\s*(?P<name>[A-Za-z -]+?)\s*: 0x(?P<value>[0-9a-f]+)\s*$", re.M)


def classify(memory: SourceMemory, level: int) -> Counter[str]:
    """Pages per reason over every pfn the dump holds, by a fresh hook at `level`."""
    hook = dumpd_memmap.create({"dump_level": level})
    hook.attach(memory)
    counts: Counter[str] = Counter()
    for first, end in memory.pfn_ranges:
        for length, reason in hook.explain(first, end - first):
            counts[reason] += length
    return counts


def timed(call: object, runs: int = RUNS) -> tuple[float, float]:
    """Best and median seconds of `runs` calls of `call()`."""
    assert callable(call)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def makedumpfile(dump: Path, level: int, out: Path) -> str:
    """makedumpfile's output for `-d level --dry-run --show-stats` of `dump`."""
    done = subprocess.run(["makedumpfile", "-d", str(level), "--dry-run", "--show-stats",
                           str(dump), str(out)], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def excluded(stats: str) -> dict[str, int]:
    """makedumpfile's counters, by the hook's reason names."""
    return {STATS[m["name"]]: int(m["value"], 16) for m in _STAT.finditer(stats)
            if m["name"] in STATS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memmap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", type=Path, help="an ELF vmcore with VMCOREINFO (read only)")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args(argv)
    source = open_source(str(args.dump))
    memory = SourceMemory(source)
    pfns = sum(end - first for first, end in memory.pfn_ranges)
    print(f"dump: {args.dump} ({pfns:,} pfns in {len(memory.pfn_ranges)} ranges)")
    ok = True
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "dumpfile"
        makedumpfile(args.dump, 31, out)  # page cache warm for both
        best_md, median_md = timed(lambda: makedumpfile(args.dump, 31, out), args.runs)
        print(f"makedumpfile -d 31 --dry-run: {best_md * 1e3:.1f} ms "
              f"(median {median_md * 1e3:.1f})")
        for level in (0, 31):
            best, median = timed(lambda level=level: classify(memory, level), args.runs)
            ratio = best / best_md
            ok &= ratio <= 2
            print(f"memmap level {level:2}: {best * 1e3:.1f} ms (median {median * 1e3:.1f}), "
                  f"{ratio:.2f}x makedumpfile -d 31 (target <= 2x: "
                  f"{'met' if ratio <= 2 else 'MISSED'})")
        print(f"{'level':>5}  {'reason':<14}{'memmap':>10}{'makedumpfile':>14}")
        for level in LEVELS:
            ours = classify(memory, level)
            theirs = excluded(makedumpfile(args.dump, level, out))
            for reason in dumpd_memmap.COUNTED:
                same = ours[reason] == theirs.get(reason)
                ok &= same
                print(f"{level:>5}  {reason:<14}{ours[reason]:>10,}{theirs.get(reason, -1):>14,}"
                      f"{'' if same else '  DIFFERENT'}")
    tracemalloc.start()
    hook = dumpd_memmap.create({"dump_level": 31})
    hook.attach(memory)
    for first, end in memory.pfn_ranges:
        hook.explain(first, end - first)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"memory at level 31: peak {peak / 1024:.0f} KiB while classifying, "
          f"{kept / 1024:.0f} KiB kept after (LRU of {dumpd_memmap.CACHED_CHUNKS} chunks "
          f"of {dumpd_memmap.CHUNK_PAGES} pfns, dumpd.kernel's caches)")
    source.close()
    print("all counts equal, time within target" if ok else "MISMATCH or target missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
