"""What `zeros_as_holes` costs: `python -m bench.zeros` (not part of `python -m bench`).

bench.bulk's ELF cores (1 GiB; `--quick`: 64 MiB), page cache warm, `dumpd serve` in
its own process with no hook, so that zero pages are RAM and only the option finds
them: dense (no zero page), and 50% zero pages in runs of 512 pages and of 8.

For each core, alternating runs (best of `--runs`, median in brackets):
- `stream` of the whole view to a client that discards it, without and with the
  option, the source read with pread (RAM runs by `sendfile`; with the option the
  chunks are read, so the read path without it, `stream_sendfile = false`, is shown
  too) and through mmap windows (as /proc/vmcore is: looked at in the mapping, still
  sent from it);
- `dumpd fetch` to a new file without and with `--zeros-as-holes`, and the bytes each
  copy holds on disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.bulk import LAYOUTS, make_core
from bench.common import DUMPD, MiB, dumpd_server, fresh, timed, warm
from dumpd.client import Client

SIZE, QUICK_SIZE = 1024 * MiB, 64 * MiB


def discard(sock: Path, view: int, zeros: bool) -> float:
    """Seconds to stream the whole view to this process, dropping every piece."""
    start = time.perf_counter()
    with Client.connect(str(sock)) as client:
        for _ in client.stream(0, view, zeros_as_holes=zeros):
            pass
    return time.perf_counter() - start


def rate(view: int, seconds: list[float]) -> str:
    return (f"{view / min(seconds) / 1e9:.2f} GB/s "
            f"({view / statistics.median(seconds) / 1e9:.2f})")


def streams(work: Path, image: Path, view: int, runs: int) -> dict[str, list[float]]:
    """Seconds per run of each way to stream `image`, alternating."""
    plain = work / "plain.toml"
    plain.write_text("[server]\nstream_sendfile = false\n")
    ways: dict[str, tuple[list[str], bool]] = {
        "pread, sendfile": (["--mmap", "off"], False),
        "pread, read path": (["--mmap", "off", "-c", str(plain)], False),
        "pread, zeros_as_holes": (["--mmap", "off"], True),
        "mmap": (["--mmap", "on"], False),
        "mmap, zeros_as_holes": (["--mmap", "on"], True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    sock = work / "dumpd.sock"
    for _ in range(runs):
        for name, (args, zeros) in ways.items():
            with dumpd_server(sock, ["--source", str(image), *args]):
                seconds[name].append(discard(sock, view, zeros))
    return seconds


def fetches(work: Path, image: Path, runs: int) -> tuple[dict[str, list[float]],
                                                         dict[str, int]]:
    """Seconds per run of fetch without and with the option, and each copy's bytes on
    disk."""
    sock = work / "dumpd.sock"
    ways: dict[str, list[str]] = {"fetch": [], "fetch --zeros-as-holes": ["--zeros-as-holes"]}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    held: dict[str, int] = {}
    copy = work / "copy"
    with dumpd_server(sock, ["--source", str(image)]):
        for _ in range(runs):
            for name, extra in ways.items():
                fresh(copy)
                Path(f"{copy}.dumpd-holes").unlink(missing_ok=True)
                seconds[name].append(timed([*DUMPD, "fetch", "-q", "-o", str(copy),
                                            *extra, "--socket", str(sock)]))
                held[name] = copy.stat().st_blocks * 512
    fresh(copy)
    Path(f"{copy}.dumpd-holes").unlink(missing_ok=True)
    return seconds, held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zeros",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB cores, one run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    size, runs = (QUICK_SIZE, 1) if args.quick else (SIZE, args.runs)
    print("| core | measure | GB/s, best (median) |\n|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.work_dir) as temp:
        work = Path(temp)
        for layout in LAYOUTS:
            image = work / "core.elf"
            _, listing = make_core(image, size, layout.run)
            if listing is not None:
                listing.unlink()  # no hook: the zero pages are RAM
            view = image.stat().st_size
            warm(image)
            core = layout.label.replace("holes", "zero pages")
            for name, seconds in streams(work, image, view, runs).items():
                print(f"| {core} | `stream`, {name} | {rate(view, seconds)} |", flush=True)
            copies, held = fetches(work, image, runs)
            for name, seconds in copies.items():
                print(f"| {core} | `{name}` | {rate(view, seconds)}; on disk "
                      f"{held[name] / MiB:.0f} MiB |", flush=True)
            fresh(image)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
