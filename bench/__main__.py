"""The benchmark suite: every scenario side by side with its baseline, in one command.

    python -m bench [--quick] [--only 1,3] [--out-dir bench/results]

Scenarios (each a module with `TITLE` and `run(work, quick, emit)`):
1. bench.xenguest: the Xen balloon scenario (the 2011 patch's case).
2. bench.bulk: `dumpd fetch` and `stream` beside `cp` and `cat`, dense and half non-RAM.
3. bench.smallreads: 8-byte reads, dependent and pipelined, beside a bare echo server.
4. bench.concurrency: 1, 8, 64 clients on the same and different regions.
5. bench.footprint: exec to READY=1, idle RSS, peak RSS while serving and fetching.
7. bench.kdump: the kdump-compressed format written and served, beside makedumpfile, on a
   synthetic kernel's dump (`python -m bench.kdump DUMP` for a real one). (6 is the
   crash-kernel lab, its own command: `python -m bench.lab`.)
8. bench.compress: `dumpd fetch` over TLS without and with compression (zstd, zlib).
9. bench.debugger: drgn's kernel walk through `dumpd debug` (Unix socket, TCP+TLS)
   beside drgn on the local file (the lab's real dump; the synthetic kernel's always).

Each row is printed as it is measured; the run ends by writing `results.md` (the
table) and `results.json` (the rows with their raw numbers, and the machine) to
`--out-dir`. `--quick` runs every scenario reduced (a smoke test, under a minute);
ratios, not absolute times, are what carry from one machine to another.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import Row

SCENARIOS = {
    "1": "bench.xenguest",
    "2": "bench.bulk",
    "3": "bench.smallreads",
    "4": "bench.concurrency",
    "5": "bench.footprint",
    "7": "bench.kdump",
    "8": "bench.compress",
    "9": "bench.debugger",
}
HEADER = ("scenario", "measure", "dumpd", "baseline", "ratio", "target")


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        cells = (row.scenario, row.measure, row.dumpd, row.baseline, row.ratio, row.target)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="every scenario reduced: a smoke test, under a minute")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="scenarios to run, by number (default: all)")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where images and copies go (default: a temp dir in /tmp)")
    args = parser.parse_args(argv)
    chosen = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = [key for key in chosen if key not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)})")
    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        print(f"{row.scenario} | {row.measure} | {row.dumpd} | {row.baseline} | "
              f"{row.ratio} | {row.target}", flush=True)

    began = time.monotonic()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for key in chosen:
        module = importlib.import_module(SCENARIOS[key])
        print(f"== {key}. {module.TITLE}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"dumpd-bench-{key}-", dir=args.work_dir) as tmp:
            module.run(Path(tmp), args.quick, emit)
    seconds = time.monotonic() - began
    command = "python -m bench" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if chosen != list(SCENARIOS) else "")
    table = markdown(rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.md").write_text(
        f"`{command}`, {started}, {seconds:.0f} s, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n\n{table}")
    (args.out_dir / "results.json").write_text(json.dumps({
        "command": command, "started": started, "seconds": round(seconds, 1),
        "machine": machine(), "rows": [asdict(row) for row in rows]}, indent=1) + "\n")
    print(f"\n{table}\n{command}: {seconds:.0f} s; written to {args.out_dir}/results.md "
          f"and results.json", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
