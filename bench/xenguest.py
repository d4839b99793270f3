"""Scenario 1, the Xen balloon scenario: the case of Linux's 2011 `pfn_is_ram` patch (a
512 MiB guest's dump, 200 s -> 2 s).

A simulated HVM guest of 512 MiB whose crash kernel reserved 128 MiB (no PT_LOAD
covers it), as an ELF vmcore, with 25% and then 50% of its other pages ballooned (runs
of pages, as a balloon driver frees them; `dumpd.testing.guest.make_guest`, fixed seed). Reading
a ballooned page is slow, as under Xen where each read of one is a round trip to
qemu-dm: the server runs as `bench.qemudm`, whose source sleeps 2 ms for every
ballooned page an access touches, one access at a time.

For each hook (`none`, `balloon` with the list of ballooned pfns, `xen` with the stub
hypervisor answering `mmio_dm` for the same pfns) a real `dumpd fetch` copies the whole
dump; each copy is checked against the image (ballooned pages as zeros where a hook
says they are not RAM). Reported per run: the fetch's wall time, hook verdicts per pfn
(`pfns_asked` / pfns in the dump), ballooned pages read from the source (counted by
the slow source) and the speedup over `none`; then what a naive 8-byte reader would
take, computed from measured costs of one 8-byte access to a RAM page and to a
ballooned page (it is not run: at 50% it would take hours).

`quick`: a 64 MiB guest with 16 MiB reserved at 32 MiB and 0.25 ms per ballooned page,
so that the `none` runs, which pay for every ballooned page, fit a smoke test; the
speedup target is held in the full run only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dumpd_balloon

from bench.common import DUMPD, PAGE, Emit, MiB, Row, dumpd_server, fresh, held, timed, warm
from bench.qemudm import BalloonedPages, QemuDm, wrapped
from dumpd.client import Client
from dumpd.sources import open_source
from dumpd.testing.elfwriter import vmcoreinfo_note, write_elf_core
from dumpd.testing.guest import distinct_pfns, make_guest

TITLE = ("The Xen balloon scenario: `dumpd fetch` of an HVM guest's vmcore whose ballooned "
         "pages are slow to read (qemu-dm)")
LEVELS = (25, 50)  # percent of the guest's pages ballooned
SPEEDUP_TARGET = 100.0  # at 50% ballooned, over `none`
SPEEDUP_LEVEL = 50
BLOCK = 8 * MiB  # bytes hashed at a time
RAM_SAMPLES = 20_000  # 8-byte reads of RAM pages timed for the naive reader's cost
BALLOONED_SAMPLES = 32  # and of ballooned pages, through the slow source
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Setup:
    """The guest's size, its crash reservation (`crashkernel=X@Y`, in MiB; None: the
    demo's 1/4), and what reading one ballooned page costs."""

    size_mib: int
    crash_mib: int
    crash_at_mib: int | None
    cost_ms: float


FULL = Setup(512, 128, None, 2.0)
QUICK = Setup(64, 16, 32, 0.25)


@dataclass(frozen=True, slots=True)
class Dump:
    """One guest's vmcore, its hook data files, and what a copy of it must hash to."""

    image: Path
    balloon: Path
    memtypes: Path
    size: int
    pfns: int  # distinct pfns the PT_LOADs hold
    ballooned_pfns: int
    pages: BalloonedPages
    view_sha: str  # the file view
    zeroed_sha: str  # the file view with ballooned pages as zeros

    def hook_args(self, hook: str) -> list[str]:
        options = {"none": [], "balloon": [f"file={self.balloon}"],
                   "xen": ["transport=stub", f"map={self.memtypes}"]}[hook]
        args = ["--hook", hook]
        for option in options:
            args += ["--hook-option", option]
        return args


@dataclass(frozen=True, slots=True)
class Run:
    """One `dumpd fetch` of the whole dump through one hook."""

    hook: str
    seconds: float
    stats: dict[str, Any]
    qemu: dict[str, Any]  # what the slow source counted
    copy_ok: bool

    def verdicts_per_pfn(self, dump: Dump) -> float:
        return float(self.stats["pfns_asked"]) / dump.pfns

    def values(self, dump: Dump) -> dict[str, Any]:
        return {"hook": self.hook, "seconds": round(self.seconds, 3),
                "verdicts_per_pfn": self.verdicts_per_pfn(dump), "copy_ok": self.copy_ok,
                "stats": self.stats, "slow_source": self.qemu}


def run(work: Path, quick: bool, emit: Emit) -> None:
    setup = QUICK if quick else FULL
    for percent in LEVELS:
        dump = build(work, setup, percent)
        label = f"1. balloon {percent}%"
        runs: dict[str, Run] = {}
        for hook in ("none", "balloon", "xen"):
            runs[hook] = fetch(work, dump, hook, setup.cost_ms)
            emit(run_row(label, dump, runs, hook, setup, percent, quick))
        emit(naive_row(label, dump, runs, setup))
        dump.image.unlink()


def build(work: Path, setup: Setup, percent: int) -> Dump:
    """Write the guest's vmcore, balloon list and memory-type map; hash the views."""
    guest = make_guest(setup.size_mib, percent, crash_mib=setup.crash_mib,
                       crash_at_mib=setup.crash_at_mib)
    image = work / f"vmcore-{percent}"
    layout = write_elf_core(image, guest.loads, notes=[vmcoreinfo_note(PAGE)], fill=guest.fill)
    balloon = work / f"balloon-{percent}.txt"
    dumpd_balloon.write_text(balloon, guest.balloon)
    memtypes = work / f"memtypes-{percent}.txt"
    memtypes.write_text("".join(f"{a:#x}-{b - 1:#x} mmio_dm\n" for a, b in guest.balloon))
    pages = BalloonedPages.of(image, balloon)
    view_sha, zeroed_sha = view_hashes(image, pages)
    return Dump(image, balloon, memtypes, layout.size, distinct_pfns(layout.segments),
                sum(b - a for a, b in guest.balloon), pages, view_sha, zeroed_sha)


def view_hashes(image: Path, pages: BalloonedPages) -> tuple[str, str]:
    """sha256 of the file, and of the file with the ballooned pages zeroed."""
    plain, zeroed = hashlib.sha256(), hashlib.sha256()
    with open(image, "rb") as f:
        pos = 0
        while chunk := f.read(BLOCK):
            plain.update(chunk)
            data = bytearray(chunk)
            for i in pages.touched(pos, len(chunk)):
                lo, hi = max(pages.starts[i], pos), min(pages.ends[i], pos + len(chunk))
                data[lo - pos : hi - pos] = bytes(hi - lo)
            zeroed.update(data)
            pos += len(chunk)
    return plain.hexdigest(), zeroed.hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
    return h.hexdigest()


def fetch(work: Path, dump: Dump, hook: str, cost_ms: float) -> Run:
    """`dumpd fetch` of the whole dump from a `bench.qemudm` server with `hook`; the copy
    checked and removed."""
    name = f"{dump.image.name}-{hook}"
    sock, report, copy = work / f"{name}.sock", work / f"{name}.json", work / f"{name}.copy"
    wrapper = [sys.executable, "-m", "bench.qemudm", "--image", str(dump.image),
               "--balloon", str(dump.balloon), "--report", str(report),
               "--cost-ms", str(cost_ms)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    warm(dump.image)
    with dumpd_server(sock, ["--source", str(dump.image), *dump.hook_args(hook)],
                      argv=wrapper, env=env):
        seconds = timed([*DUMPD, "fetch", "-q", "-o", str(copy), "--socket", str(sock)])
        with Client.connect(str(sock)) as client:
            stats = client.stats()
    want = dump.view_sha if hook == "none" else dump.zeroed_sha
    copy_ok = file_sha(copy) == want
    fresh(copy)
    return Run(hook, seconds, stats, json.loads(report.read_text()), copy_ok)


def run_row(label: str, dump: Dump, runs: dict[str, Run], hook: str, setup: Setup,
            percent: int, quick: bool) -> Row:
    this, none = runs[hook], runs["none"]
    touched = this.qemu["ballooned_pages_touched"]
    per_pfn = this.verdicts_per_pfn(dump)
    figure = (f"{this.seconds:.2f} s; {per_pfn:.3f} verdicts/pfn; {touched:,} ballooned "
              f"pages read")
    targets = [held(per_pfn <= 1.0, "verdicts/pfn <= 1.0")]
    if hook == "none":
        targets.append(held(this.copy_ok, "copy == file view"))
        return Row(label, f"`dumpd fetch` of the whole dump ({dump.size / MiB:.0f} MiB, "
                   f"{setup.cost_ms:g} ms per ballooned page read), hook none", figure,
                   target="; ".join(targets), values=this.values(dump))
    speedup = none.seconds / this.seconds
    targets += [held(touched == 0, "0 ballooned pages read"),
                held(this.copy_ok, "copy == file view, ballooned pages zeros")]
    if percent == SPEEDUP_LEVEL and not quick:
        targets.append(held(speedup >= SPEEDUP_TARGET, f">= {SPEEDUP_TARGET:.0f}x over none"))
    hook_text = {"balloon": "hook balloon (list of the ballooned pfns)",
                 "xen": "hook xen (stub hypervisor, same pfns mmio_dm)"}[hook]
    return Row(label, f"`dumpd fetch` of the whole dump, {hook_text}", figure,
               f"hook none: {none.seconds:.1f} s", f"{speedup:.0f}x", "; ".join(targets),
               {**this.values(dump), "speedup_over_none": speedup})


def access_costs(dump: Dump, cost_ms: float) -> tuple[float, float]:
    """Measured seconds of one 8-byte read of a RAM page (`os.pread` on the image) and of
    a ballooned page (through the slow source's `read_into`)."""
    rng = random.Random(8)
    pages = dump.pages
    ram: list[int] = []
    while len(ram) < RAM_SAMPLES:
        offset = rng.randrange(dump.size // 8) * 8
        if not pages.touched(offset, 8):
            ram.append(offset)
    fd = os.open(dump.image, os.O_RDONLY)
    try:
        began = time.perf_counter()
        for offset in ram:
            os.pread(fd, 8, offset)
        ram_s = (time.perf_counter() - began) / len(ram)
    finally:
        os.close(fd)
    read_into = wrapped(QemuDm(pages, cost_ms / 1000)).read_into
    source = open_source(str(dump.image))
    view = memoryview(bytearray(8))
    samples = []
    try:
        for i in rng.sample(range(len(pages)), BALLOONED_SAMPLES):
            offset = pages.starts[i] + rng.randrange(PAGE // 8) * 8
            began = time.perf_counter()
            read_into(source, offset, view)
            samples.append(time.perf_counter() - began)
    finally:
        source.close()
    return ram_s, statistics.mean(samples)


def naive_row(label: str, dump: Dump, runs: dict[str, Run], setup: Setup) -> Row:
    """What a reader of 8 bytes at a time, no hook, no coalescing, would cost: computed
    from the access counts and the measured costs, not run."""
    ram_s, ballooned_s = access_costs(dump, setup.cost_ms)
    accesses = dump.size // 8
    ballooned = dump.pages.file_bytes() // 8
    naive_s = (accesses - ballooned) * ram_s + ballooned * ballooned_s
    none, hooked = runs["none"], runs["balloon"]
    return Row(
        label,
        f"naive 8-byte reader, no hook, no coalescing: {accesses:,} source accesses, "
        f"{ballooned:,} on ballooned pages ({PAGE // 8} per page); time computed from "
        f"measured costs ({ram_s * 1e6:.2f} us per RAM access, {ballooned_s * 1e3:.2f} ms "
        "per ballooned one), not run",
        f"hook none: {none.seconds:.1f} s in {none.qemu['accesses']:,} accesses; "
        f"hook balloon: {hooked.seconds:.2f} s",
        f"naive: {naive_s:,.0f} s ({naive_s / 3600:.1f} h), computed",
        f"{naive_s / none.seconds:,.0f}x (none), {naive_s / hooked.seconds:,.0f}x (balloon)",
        values={"computed": True, "accesses": accesses, "ballooned_accesses": ballooned,
                "ram_access_s": ram_s, "ballooned_access_s": ballooned_s,
                "naive_s": naive_s, "none_s": none.seconds, "balloon_s": hooked.seconds,
                "none_accesses": none.qemu["accesses"], "ballooned_pfns": dump.ballooned_pfns,
                "ballooned_pages_in_view": len(dump.pages), "pfns": dump.pfns,
                "dump_bytes": dump.size, "ram_samples": RAM_SAMPLES,
                "ballooned_samples": BALLOONED_SAMPLES, "cost_ms": setup.cost_ms},
    )
