"""Scenario 7's second half: a saved kdump-compressed file served, beside the ELF dump
it was made from and beside what makedumpfile and libkdumpfile do with the same file.

The file is `makedumpfile -c -d 31` of the dump (what an operator archives). Two
servers run at once, pinned as in scenario 3 (servers on one CPU, this client on the
other): `dumpd serve --source DUMP` (the ELF) and `--source FILE.kdump`.

- Dependent 8-byte `read_phys` (each waits for the one before, as a debugger chasing
  pointers does), `rounds` rounds of `trips`, at random 8-byte-aligned addresses in
  pages the kdump file holds data for (dumped, and not its one zero page); each page is
  read once per server, so neither finds it in its own page cache and the kdump source
  decompresses every one. The servers alternate round by round and must answer the
  same bytes. Target: p50 within 2x of the ELF source's.
- A whole-view `stream` of the kdump source (its synthesized ELF core) to a client
  that discards it. `makedumpfile -E` refuses a kdump-compressed input ("'-E' option is
  disable, because FILE is kdump compressed format.", exit 1, in 1.7.2 as in its
  source today), so the baselines are what comes nearest: makedumpfile refiltering the
  same file at level 31 into an uncompressed kdump file (it reads, decompresses and
  writes every dumped page: the target, at least 0.5x its speed, is taken against it);
  libkdumpfile (drgn) reading every dumped page of it; and `makedumpfile -E -d 30` of
  the ELF dump, the file -E would make of the kdump one if it took it (the same pages
  dumped: level 31 but for bit 1, as the `-c -d 31` file holds each zero page, as its
  one shared zero page), whose sha256 is set beside the view's.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.common import Emit, Row, client_pinned, dumpd_server, held, pin_server
from bench.kdumpbitmap import Kdump, read_kdump
from bench.pfnranges import subtract
from dumpd.client import Client
from dumpd.errors import StartupError
from dumpd.sources import open_source

READ_TARGET, STREAM_TARGET = 2.0, 0.5
PIECE = 1 << 20  # libkdumpfile's reads


@dataclass(frozen=True)
class Plan:
    """Runs per timing (the best counts); dependent reads: `rounds` of `trips`."""

    repeat: int
    trips: int
    rounds: int


class Failed(Exception):
    """A command failed: the message is its first line of complaint."""


def timed(command: Sequence[str]) -> float:
    """Wall seconds of `command`; Failed with its first line of output if it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        said = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        raise Failed(f"{' '.join(command[:3])}: exit {done.returncode}: "
                     f"{(said or ['no output'])[0]}")
    return seconds


def refused(kdump: Path) -> str:
    """Why dumpd will not serve `kdump` ("" when it will)."""
    try:
        open_source(str(kdump)).close()
    except StartupError as exc:
        return str(exc)
    return ""


def addresses(kd: Kdump, plan: Plan) -> list[list[int]]:
    """Per round, `trips` addresses in distinct pages holding data (fewer pages in the
    file than asked: pages repeat from round to round)."""
    pfns = [p for a, b in subtract(kd.dumped, kd.zero) for p in range(a, b)]
    rng = random.Random(16)
    want = plan.trips * plan.rounds
    chosen = rng.sample(pfns, want) if len(pfns) >= want else \
        [rng.choice(pfns) for _ in range(want)]
    return [[pfn * kd.block_size + rng.randrange(0, kd.block_size, 8)
             for pfn in chosen[r * plan.trips:(r + 1) * plan.trips]] for r in range(plan.rounds)]


def dependent(sock: Path, paddrs: list[int]) -> tuple[list[float], list[bytes]]:
    """Round-trip seconds of 8-byte `read_phys` at `paddrs`, one after the other."""
    seconds, got = [], []
    with Client.connect(str(sock), timeout=600) as client:
        for paddr in paddrs:
            started = time.perf_counter()
            data = client.read_phys(paddr, 8)
            seconds.append(time.perf_counter() - started)
            got.append(data)
    return seconds, got


def discard_stream(sock: Path) -> float:
    """Seconds to `stream` the whole view here, dropping the data."""
    started = time.perf_counter()
    with Client.connect(str(sock), timeout=600) as client:
        size = client.info()["size"]
        for _ in client.stream(0, size):
            pass
    return time.perf_counter() - started


def view_digest(sock: Path) -> tuple[int, str]:
    with Client.connect(str(sock), timeout=600) as client:
        size = client.info()["size"]
        digest: str = client.digest(0, size)["digest"]
    return size, digest


def libkdumpfile_reads(kd: Kdump, kdump: Path) -> float:
    """Seconds for drgn (libkdumpfile) to read every dumped page of `kdump`."""
    drgn = importlib.import_module("drgn")  # a test dependency, not dumpd's
    started = time.perf_counter()
    prog = drgn.Program()
    prog.set_core_dump(str(kdump))
    for first, end in kd.dumped:
        for paddr in range(first * kd.block_size, end * kd.block_size, PIECE):
            prog.read(paddr, min(PIECE, end * kd.block_size - paddr), True)
    return time.perf_counter() - started


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def best(repeat: int, once: Callable[[], float]) -> float:
    return min(once() for _ in range(repeat))


def read_rows(elf_sock: Path, kdump_sock: Path | None, kd: Kdump, plan: Plan,
              scenario: str, waits: str, emit: Emit) -> bool:
    """Dependent reads on the servers, alternating round by round (the ELF source's
    alone when the kdump file is not served: `waits` says why); whether they agreed."""
    socks = [elf_sock] if kdump_sock is None else [elf_sock, kdump_sock]
    times: dict[Path, list[float]] = {sock: [] for sock in socks}
    same = True
    for n, paddrs in enumerate(addresses(kd, plan)):
        answers = []
        for sock in socks if n % 2 == 0 else socks[::-1]:
            seconds, got = dependent(sock, paddrs)
            times[sock] += seconds
            answers.append(got)
        same &= all(a == answers[0] for a in answers)
    theirs = times[elf_sock]
    values = {"elf_p50_us": round(statistics.median(theirs) * 1e6, 1),
              "elf_p99_us": round(pct(theirs, 99) * 1e6, 1)}
    what = f"dependent 8-byte `read_phys`, p50 (p99), {len(theirs)} pages: .kdump source"
    base = (f"ELF source {statistics.median(theirs) * 1e6:,.0f} us "
            f"({pct(theirs, 99) * 1e6:,.0f})")
    if kdump_sock is None:
        emit(Row(scenario, what, waits, base, "", "", values))
        return True
    ours = times[kdump_sock]
    ratio = statistics.median(ours) / statistics.median(theirs)
    emit(Row(scenario, what + ("" if same else "; ANSWERS DIFFER from the ELF source's"),
             f"{statistics.median(ours) * 1e6:,.0f} us ({pct(ours, 99) * 1e6:,.0f})", base,
             f"{ratio:.2f}x", held(ratio <= READ_TARGET and same, f"<= {READ_TARGET:g}x"),
             {**values, "p50_us": round(statistics.median(ours) * 1e6, 1),
              "p99_us": round(pct(ours, 99) * 1e6, 1), "same_bytes": same}))
    return same


def stream_baselines(dump: Path, kdump: Path, kd: Kdump, work: Path, plan: Plan,
                     scenario: str, emit: Emit) -> tuple[list[tuple[str, float, bool]], str]:
    """(what, best seconds, whether the target is taken against it) of each baseline of
    the whole-view stream, and the sha256 of `makedumpfile -E -d 30` of the ELF dump."""
    refilter, elf = work / "refiltered.kdump", work / "makedumpfile-E.elf"

    def makedumpfile(args: list[str], out: Path) -> float:
        out.unlink(missing_ok=True)
        return timed(["makedumpfile", *args, "--message-level", "4", str(out)])

    found = [("`makedumpfile -d 31 FILE.kdump` (to an uncompressed kdump file; -E refuses "
              "the file)", best(plan.repeat, lambda: makedumpfile(["-d", "31", str(kdump)],
                                                                  refilter)), True)]
    try:
        found.append(("libkdumpfile (drgn) reading every dumped page of FILE.kdump",
                      best(plan.repeat, lambda: libkdumpfile_reads(kd, kdump)), False))
    except ImportError:
        emit(Row(scenario, "libkdumpfile (drgn) reading FILE.kdump", "not measured: drgn is "
                 "not installed (pip install drgn)", "", "", ""))
    found.append(("`makedumpfile -E -d 30` of the ELF dump", best(
        plan.repeat, lambda: makedumpfile(["-E", "-d", "30", str(dump)], elf)), False))
    with open(elf, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    refilter.unlink()
    elf.unlink()
    return found, digest


def stream_rows(sock: Path | None, baselines: list[tuple[str, float, bool]], elf_digest: str,
                plan: Plan, scenario: str, waits: str, emit: Emit) -> None:
    """The whole-view stream of the kdump source beside each baseline (the baselines
    alone when it is not served: `waits` says why)."""
    what = "whole-view `stream` of the .kdump source, client discards"
    if sock is None:
        for name, seconds, _ in baselines:
            emit(Row(scenario, what, waits, f"{name}: {seconds:.3f} s", "", "",
                     {"baseline": round(seconds, 4)}))
        return
    size, digest = view_digest(sock)
    ours = best(plan.repeat, lambda: discard_stream(sock))
    for name, seconds, targeted in baselines:
        ratio = seconds / ours
        emit(Row(scenario, f"{what} ({size / 1e6:,.1f} MB view)",
                 f"{ours:.3f} s ({size / ours / 1e6:,.0f} MB/s)", f"{name}: {seconds:.3f} s",
                 f"{ratio:.2f}x", held(ratio >= STREAM_TARGET, f">= {STREAM_TARGET:g}x its "
                                       "speed") if targeted else "",
                 {"seconds": round(ours, 4), "view_bytes": size, "baseline": round(seconds, 4),
                  "ratio": round(ratio, 3)}))
    emit(Row(scenario, "sha256 of the .kdump source's view == that of `makedumpfile -E -d 30` "
             "of the ELF dump", "yes" if digest == elf_digest else "no", "", "", "",
             {"view": digest, "makedumpfile_E": elf_digest}))


def serve_rows(dump: Path, kdump: Path, work: Path, plan: Plan, scenario: str,
               emit: Emit) -> bool:
    """Both halves for one dump and its saved `kdump`; whether the two sources answered
    alike. The baselines are measured whether this dumpd serves the file or not."""
    why = refused(kdump)
    waits = f"not measured: this dumpd refuses the file ({why.split(': ')[1]})" if why else ""
    kd = read_kdump(kdump)
    baselines, elf_digest = stream_baselines(dump, kdump, kd, work, plan, scenario, emit)
    elf_sock, kdump_sock = work / "elf.sock", work / "kdump.sock"
    with client_pinned(), ExitStack() as servers:
        for sock, source in ((elf_sock, dump), (kdump_sock, kdump))[: 1 if why else 2]:
            pin_server(servers.enter_context(dumpd_server(sock, ["--source", str(source)])).pid)
        served = None if why else kdump_sock
        same = read_rows(elf_sock, served, kd, plan, scenario, waits, emit)
        stream_rows(served, baselines, elf_digest, plan, scenario, waits, emit)
    return same
