"""Scenario 10, the debugger: drgn's kernel walk through `dumpd debug` beside drgn on
the local file, and its round trips over a Unix socket and over TCP+TLS.

    python -m bench.debugger [DUMP] [--vmlinux FILE] [--runs N]

The walk on the lab's real dump (`DUMP`, default the newest kept in
/var/tmp/dumpd-lab/dumps; its debug vmlinux from the lab's cache, `bench.crashcheck`):
the release (`init_uts_ns`), the task list (`for_each_task`: pid and comm of each) and
the crashed thread's stack trace. On the synthetic kernel (`--quick`, and where no real
dump or vmlinux is had, said in its row): its markers read at their virtual addresses
and the struct page of every 7th pfn of RAM through the vmemmap, drgn walking the page
tables itself.

`dumpd serve` in its own process (on one CPU, the walks on the other: bench.common),
listening on a Unix socket and on 127.0.0.1 with TLS; page cache warm. Each run is a
fresh program (a cold client cache), its debug info loaded before the clock starts;
the three ways alternate, best of `RUNS` with the median beside. The results of the
three walks must be equal, or the scenario fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    Emit,
    Row,
    client_pinned,
    held,
    pin_server,
    serve_tls,
    wait_for_socket,
    warm,
)
from bench.crashcheck import debug_vmlinux
from bench.kdumpbitmap import kept_dumps
from bench.lab.images import LabError, certificates
from dumpd.client import Client
from dumpd.debug import DebugMemory, MemoryStats, load_debug_info, memory_of, program
from dumpd.testing.kernel import SyntheticKernel
from dumpd.tls import client_context

if TYPE_CHECKING:
    import drgn

TITLE = "The debugger: drgn's kernel walk through `dumpd debug` beside drgn on the file"
LAB_DUMPS = Path("/var/tmp/dumpd-lab/dumps")
RUNS = 5
STRUCT_PAGE_STEP = 7
Walk = Callable[["drgn.Program"], Any]


@dataclass(frozen=True, slots=True)
class KernelWalk:
    """What the walk of a real dump found."""

    release: str
    tasks: tuple[tuple[int, str], ...]
    trace: str


def kernel_walk(prog: drgn.Program) -> KernelWalk:
    """The release, every task's pid and comm, the crashed thread's stack trace."""
    from drgn.helpers.linux.pid import for_each_task

    release = prog["init_uts_ns"].name.release.string_().decode()
    tasks = tuple((int(task.pid), task.comm.string_().decode(errors="replace"))
                  for task in for_each_task(prog))
    return KernelWalk(release, tasks, str(prog.crashed_thread().stack_trace()))


def synthetic_walk(kernel: SyntheticKernel) -> Walk:
    """The synthetic kernel's markers at their virtual addresses, and the struct page of
    every STRUCT_PAGE_STEP-th pfn of its RAM (the vmemmap's page tables walked)."""
    def walk(prog: drgn.Program) -> tuple[bytes, ...]:
        found = [prog.read(vaddr, len(data)) for vaddr, data in kernel.markers.values()]
        found += [prog.read(kernel.vmemmap + pfn * 64, 64)
                  for first, end in kernel.ram for pfn in range(first, end, STRUCT_PAGE_STEP)]
        return tuple(found)

    return walk


def local_program(dump: Path, vmlinux: Path | None) -> drgn.Program:
    """drgn on the file itself, with the kernel's debug info when `vmlinux` is given."""
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(str(dump))
    if vmlinux is not None:
        prog.load_debug_info([str(vmlinux)], main=True)
    return prog


def served_program(client: Client, vmlinux: Path | None) -> tuple[drgn.Program, DebugMemory]:
    """drgn through dumpd (`dumpd.debug`), and its memory whose counters count."""
    memory = memory_of(client)
    prog = program(client, memory)
    if vmlinux is not None and (missing := load_debug_info(prog, str(vmlinux))):
        raise SystemExit(f"bench: {vmlinux}: {missing}")
    return prog, memory


@dataclass
class Ways:
    """Seconds per run of each way, and the walk's cost through dumpd per transport."""

    seconds: dict[str, list[float]]
    cost: dict[str, MemoryStats]
    found: Any = None  # what the walk found (the same every way)


def measure(dump: Path, vmlinux: Path | None, walk: Walk, work: Path, runs: int) -> Ways:
    """The walk `runs` times each way: on the file, over the Unix socket, over TLS."""
    pki = work / "pki"
    certificates(pki)
    tls = client_context(str(pki / "client.pem"), str(pki / "client.key"), str(pki / "ca.pem"))
    warm(dump)
    server = serve_tls(work, dump, pki)
    proc, port, sock = server.proc, server.port, server.sock
    connect: dict[str, Callable[[], Client]] = {"unix": lambda: Client.connect(str(sock)),
               "tls": lambda: Client.connect_tcp("127.0.0.1", port, tls=tls)}
    ways = Ways({"file": [], "unix": [], "tls": []}, {})
    try:
        wait_for_socket(proc, sock, "dumpd serve")
        pin_server(proc.pid)
        with client_pinned():
            for _ in range(runs):
                prog = local_program(dump, vmlinux)
                start = time.perf_counter()
                want = walk(prog)
                ways.seconds["file"].append(time.perf_counter() - start)
                for name, connected in connect.items():
                    with connected() as client:
                        prog, memory = served_program(client, vmlinux)
                        before = memory.stats
                        start = time.perf_counter()
                        got = walk(prog)
                        ways.seconds[name].append(time.perf_counter() - start)
                    if got != want:
                        raise SystemExit(f"bench: the walk through dumpd ({name}) differs "
                                         "from drgn's on the file")
                    ways.cost[name] = _less(memory.stats, before)
                ways.found = want
    finally:
        proc.terminate()
        proc.wait()
    return ways


def _less(after: MemoryStats, before: MemoryStats) -> MemoryStats:
    return MemoryStats(after.reads - before.reads, after.hits - before.hits,
                       after.round_trips - before.round_trips, after.received - before.received)


def report(label: str, ways: Ways, emit: Emit, timed: bool = True) -> None:
    """The walk's time through dumpd (Unix socket) beside drgn's on the file, and its
    round trips over TLS beside the Unix socket's. `timed`: the time ratio is a target
    (the real dump's walk; the synthetic one is all reads and no drgn work, the worst
    case, shown without one)."""
    def took(runs: list[float]) -> str:
        return f"{min(runs) * 1e3:.1f} ms ({statistics.median(runs) * 1e3:.1f})"

    seconds, unix, tls = ways.seconds, ways.cost["unix"], ways.cost["tls"]
    ratio = min(seconds["unix"]) / min(seconds["file"])
    emit(Row("9. debugger", f"{label}: the walk through `dumpd debug` (Unix socket) beside "
             "drgn on the file", f"{took(seconds['unix'])}; {unix.line()}",
             took(seconds["file"]), f"{ratio:.2f}x",
             held(ratio <= 2, "<= 2x") if timed else "none (the real dump's walk: <= 2x)",
             {"seconds": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
              "unix": asdict(unix)}))
    emit(Row("9. debugger", f"{label}: the same walk over TCP+TLS (loopback): round trips",
             f"{tls.round_trips:,} round trips, {tls.received:,} bytes, "
             f"{took(seconds['tls'])}", f"Unix socket: {unix.round_trips:,} round trips",
             f"{tls.round_trips - unix.round_trips:+,}",
             held(tls.round_trips == unix.round_trips, "the same count"),
             {"tls": asdict(tls)}))


def real_dump(given: Path | None) -> tuple[Path, Path] | str:
    """The real dump and its debug vmlinux, or why there are none."""
    dumps = [given] if given is not None else kept_dumps(LAB_DUMPS)
    if not dumps:
        return f"no lab dump kept in {LAB_DUMPS} (python -m bench.lab --keep {LAB_DUMPS})"
    dump = dumps[-1]
    version = Path(f"{dump}.version")
    if not version.exists():
        return f"{dump}: no {version.name} beside it names its kernel"
    try:
        return dump, debug_vmlinux(version.read_text().strip())
    except LabError as exc:
        return f"no debug vmlinux for {dump.name}: {exc}"


def run(work: Path, quick: bool, emit: Emit, dump: Path | None = None,
        vmlinux: Path | None = None, runs: int = RUNS) -> None:
    kernel = SyntheticKernel()
    core = work / "synthetic.vmcore"
    kernel.write(core)
    report("synthetic kernel (markers, struct pages through the vmemmap)",
           measure(core, None, synthetic_walk(kernel), work, 1 if quick else runs), emit,
           timed=False)
    core.unlink()
    if quick:
        emit(Row("9. debugger", "the real dump's walk", "skipped: --quick"))
        return
    found = (dump, vmlinux) if dump is not None and vmlinux is not None else real_dump(dump)
    if isinstance(found, str):
        emit(Row("9. debugger", "the real dump's walk", f"skipped: {found}"))
        return
    dump, vmlinux = found
    ways = measure(dump, vmlinux, kernel_walk, work, runs)
    report(f"{dump.name} (release {ways.found.release}, {len(ways.found.tasks)} tasks, the "
           f"crashed thread's {ways.found.trace.count(chr(10)) + 1} frames)", ways, emit)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.debugger",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("dump", nargs="?", type=Path, help="a real dump (default: the "
                        f"newest kept in {LAB_DUMPS})")
    parser.add_argument("--vmlinux", type=Path, help="its vmlinux with debug info "
                        "(default: the lab's cache, downloaded once)")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    def emit(row: Row) -> None:
        print(f"{row.measure} | {row.dumpd} | {row.baseline} | {row.ratio} | {row.target}",
              flush=True)

    with tempfile.TemporaryDirectory(prefix="dumpd-bench-10-") as tmp:
        run(Path(tmp), args.quick, emit, args.dump, args.vmlinux, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
