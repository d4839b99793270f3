"""`dumpd demo`: the built-in sample, end to end.

Builds the ELF vmcore of a simulated guest whose balloon driver gave back part
of its memory, with the crash kernel's reservation missing from the dump as in
a real kdump; writes a balloon list for the `balloon` hook; serves it on a Unix
socket; reads it back as a debugger would (8-byte reads) and as a copier would
(8 MiB reads); checks every byte; and prints what the hook and the page
coalescing saved compared with a naive 8-byte reader.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import tempfile
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dumpd.client.aio import AsyncClient
from dumpd.config import Config, HookConfig, ServerConfig, SourceConfig
from dumpd.errors import StartupError
from dumpd.hooks.discovery import installed_plugins
from dumpd.runner import loop_factory
from dumpd.sources.base import Segment, Source
from dumpd.sources.elfwriter import LoadSpec, pattern, vmcoreinfo_note, write_elf_core

PAGE = 4096
MiB = 1 << 20
BALLOON_FILL = b"\xbb" * PAGE  # what a ballooned page would hold if anyone read it
DEBUG_PAGES = 16
COPY_CHUNK = 8 * MiB
MIN_SIZE_MIB = 24  # the kernel text's PT_LOAD (16-24 MiB) lies inside the guest


@dataclass(frozen=True, slots=True)
class Guest:
    """The simulated machine: its PT_LOADs and its ballooned pfn ranges (end exclusive)."""

    loads: tuple[LoadSpec, ...]
    balloon: tuple[tuple[int, int], ...]

    def ballooned(self, pfn: int) -> bool:
        i = bisect_right(self.balloon, (pfn, 1 << 64)) - 1
        return i >= 0 and self.balloon[i][0] <= pfn < self.balloon[i][1]

    def fill(self, paddr: int, length: int) -> bytes:
        """Guest memory: the writer's pattern, ballooned pages full of 0xbb."""
        data = bytearray(pattern(paddr, length))
        first, last = paddr // PAGE, (paddr + length - 1) // PAGE
        i = max(0, bisect_right(self.balloon, (first, 1 << 64)) - 1)
        while i < len(self.balloon) and self.balloon[i][0] <= last:
            lo = max(self.balloon[i][0] * PAGE, paddr)
            hi = min(self.balloon[i][1] * PAGE, paddr + length)
            if lo < hi:
                data[lo - paddr : hi - paddr] = BALLOON_FILL[: 1] * (hi - lo)
            i += 1
        return bytes(data)


def check_guest(size_mib: int, balloon_percent: int, crash_mib: int | None = None,
                crash_at_mib: int | None = None) -> tuple[int, int]:
    """The crash kernel's reservation `(start, end)` in bytes of a guest `make_guest` can
    build; ValueError (one line, in the demo's terms) for one it cannot."""
    size = size_mib * MiB
    crash_lo = size // 4 if crash_at_mib is None else crash_at_mib * MiB
    crash_hi = crash_lo + (size // 8 if crash_mib is None else crash_mib * MiB)
    if size_mib < MIN_SIZE_MIB:
        raise ValueError(f"a guest of {size_mib} MiB is too small: the model needs at least "
                         f"{MIN_SIZE_MIB} MiB (its kernel text is at 16-24 MiB)")
    if not MiB < crash_lo < crash_hi < size:
        raise ValueError(f"the crash kernel's reservation {crash_lo / MiB:g}-{crash_hi / MiB:g}"
                         f" MiB must lie between 1 MiB and the guest's {size_mib} MiB")
    if not 0 <= balloon_percent <= 100:
        raise ValueError(f"a balloon of {balloon_percent}% is impossible: it takes 0 to 100% "
                         "of the guest's RAM outside the crash kernel's reservation")
    return crash_lo, crash_hi


def make_guest(size_mib: int, balloon_percent: int, seed: int = 2011, *,
               crash_mib: int | None = None, crash_at_mib: int | None = None) -> Guest:
    """A guest of `size_mib` MiB: page 0 and the crash kernel's reservation missing, text
    mapped twice.

    The reservation (`crashkernel=X@Y`) is `crash_mib` MiB at `crash_at_mib` MiB, by
    default 1/8 of the memory at 1/4 of it; it belongs clear of the kernel text (16-24 MiB).
    The balloon takes `balloon_percent` of the RAM outside the reservation: at most all of
    it (more could never be chosen). ValueError for a guest `check_guest` refuses.
    """
    size = size_mib * MiB
    crash_lo, crash_hi = check_guest(size_mib, balloon_percent, crash_mib, crash_at_mib)
    loads = (
        LoadSpec(paddr=PAGE, memsz=0x9F000 - PAGE),  # low memory, page 0 is a hole
        LoadSpec(paddr=16 * MiB, memsz=8 * MiB),  # kernel text, inside the direct map below
        LoadSpec(paddr=MiB, memsz=crash_lo - MiB),
        LoadSpec(paddr=crash_hi, memsz=size - crash_hi),
    )
    rng = random.Random(seed)
    ram = [(s.paddr // PAGE, (s.paddr + s.memsz) // PAGE) for s in (loads[0], loads[2], loads[3])]
    total = sum(end - first for first, end in ram)
    want = total * balloon_percent // 100
    chosen: set[int] = set()
    while len(chosen) < want:  # the balloon driver frees runs of pages
        first, end = rng.choice(ram)
        start = rng.randrange(first, end)
        stop = min(end, start + rng.randint(1, 64), start + want - len(chosen))
        chosen.update(range(start, stop))
    runs: list[tuple[int, int]] = []
    for pfn in sorted(chosen):
        if runs and runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], pfn + 1)
        else:
            runs.append((pfn, pfn + 1))
    return Guest(loads, tuple(runs))


DEMO_FILES = ("vmcore", "balloon.txt")


def run_demo(size_mib: int, balloon_percent: int, workdir: str | None) -> int:
    if "balloon" not in {p.name for p in installed_plugins()}:
        raise StartupError("demo: the `balloon` hook plugin is not installed "
                           "(pip install ./plugins/balloon)")
    try:
        check_guest(size_mib, balloon_percent)
    except ValueError as exc:
        raise StartupError(f"demo: {exc}") from None
    if workdir is not None:
        _check_free(workdir)
        os.makedirs(workdir, exist_ok=True)
    _check_room(workdir or tempfile.gettempdir(), size_mib)
    guest = make_guest(size_mib, balloon_percent)  # before the temporary directory exists
    if workdir is not None:
        return _run_in(workdir, guest)
    with tempfile.TemporaryDirectory(prefix="dumpd-demo-") as tmp:
        return _run_in(tmp, guest)


def _check_free(workdir: str) -> None:
    """The files the demo writes are not in `workdir` yet: a `vmcore` there may be a
    real dump, fetched there before."""
    for name in DEMO_FILES:
        path = os.path.join(workdir, name)
        if os.path.lexists(path):
            raise StartupError(f"demo: {path} exists; the demo writes over nothing (remove "
                               "it, or name another --dir)")


def _check_room(workdir: str, size_mib: int) -> None:
    """The vmcore (at most the guest's size) fits in `workdir`'s file system."""
    free = shutil.disk_usage(workdir).free
    if free < size_mib * MiB:
        raise StartupError(f"demo: {workdir}: {free // MiB} MiB free, the vmcore of a "
                           f"{size_mib} MiB guest needs up to {size_mib} MiB (--size-mib, --dir)")


def _run_in(workdir: str, guest: Guest) -> int:
    vmcore, balloon_file = (os.path.join(workdir, name) for name in DEMO_FILES)
    started = time.perf_counter()
    layout = write_elf_core(vmcore, guest.loads, notes=[vmcoreinfo_note(PAGE)], fill=guest.fill)
    with open(balloon_file, "w") as f:
        f.write("# pfns the balloon driver gave back: START-END, inclusive\n")
        f.writelines(f"{first:#x}-{end - 1:#x}\n" for first, end in guest.balloon)
    print(f"wrote {vmcore}: {layout.size / MiB:.0f} MiB ELF core, {len(layout.segments)} PT_LOADs,"
          f" {sum(e - f for f, e in guest.balloon)} ballooned pages in {len(guest.balloon)} runs"
          f" ({time.perf_counter() - started:.1f} s)")
    runs = {}
    for name, options in (("none", {}), ("balloon", {"file": balloon_file})):
        config = Config(
            source=SourceConfig(path=vmcore),
            server=ServerConfig(socket=os.path.join(workdir, "dumpd.sock")),
            hook=HookConfig(name=name, options=options),
        )
        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            runs[name] = runner.run(_exercise(config, guest, layout.segments, layout.size))
    _report(runs, guest, layout.size, distinct_pfns(layout.segments))
    ok = True
    for name, run in runs.items():
        zeroed = name == "balloon"
        expect = _Expected(vmcore, guest, layout.segments, zeroed)
        ok_copy = run.digest == expect.digest(layout.size)
        want_bytes = layout.size - expect.zero_bytes(layout.size) if zeroed else layout.size
        ok_reads = run.stats["source_bytes_read"] == want_bytes
        ok = ok and ok_copy and ok_reads and (run.ballooned_pages_read == 0 or not zeroed)
        print(f"{name + ':':<9}byte-exact: {'yes' if ok_copy else 'NO'}; source bytes read "
              f"{run.stats['source_bytes_read']:,} == {'RAM' if zeroed else 'all'} bytes: "
              f"{ok_reads}; ballooned pages read: {run.ballooned_pages_read:,}")
    return 0 if ok else 1


@dataclass(frozen=True, slots=True)
class Run:
    """One pass of the workload against a server with one hook."""

    stats: dict[str, Any]
    debug_s: float
    debug_reads: int
    copy_s: float
    digest: str
    ballooned_pages_read: int


async def _exercise(config: Config, guest: Guest, segments: tuple[Segment, ...], size: int
                    ) -> Run:
    from dumpd.server import Server

    server = Server(config)
    await server.start()
    assert server.source is not None
    touched = _watch_ballooned_reads(server.source, guest, segments)
    try:
        async with await AsyncClient.connect(config.server.socket) as client:
            expect = _Expected(config.source.path, guest, segments, config.hook.name == "balloon")
            debug_s, debug_reads = await _debugger(client, expect)
            copy_s, digest = await _copier(client, size)
            stats = await client.stats()
    finally:
        await server.shutdown()
    return Run(stats, debug_s, debug_reads, copy_s, digest, len(touched))


def _watch_ballooned_reads(source: Source, guest: Guest, segments: tuple[Segment, ...]
                           ) -> set[int]:
    """The set of ballooned pfns the engine reads from `source` from now on.

    Watched where the engine calls the source, so the figure is what happened,
    not what should have.
    """
    touched: set[int] = set()
    real_read, real_cached = source.read_into, source.read_cached_into

    def note(offset: int, length: int) -> None:
        for seg in segments:
            lo = max(offset, seg.file_offset)
            hi = min(offset + length, seg.file_offset + seg.filesz)
            if lo < hi:
                first = (seg.paddr + lo - seg.file_offset) // PAGE
                last = (seg.paddr + hi - 1 - seg.file_offset) // PAGE
                touched.update(p for p in range(first, last + 1) if guest.ballooned(p))

    def read_into(offset: int, view: memoryview) -> None:
        note(offset, len(view))
        real_read(offset, view)

    def read_cached_into(offset: int, view: memoryview) -> int:
        n = real_cached(offset, view)
        note(offset, n)
        return n

    source.read_into = read_into  # type: ignore[method-assign]
    source.read_cached_into = read_cached_into  # type: ignore[method-assign]
    return touched


def distinct_pfns(segments: Sequence[Segment]) -> int:
    """Pfns held by the PT_LOADs, a pfn mapped twice counted once."""
    spans = sorted((s.paddr // PAGE, (s.paddr + s.memsz + PAGE - 1) // PAGE) for s in segments)
    total, reach = 0, 0
    for first, end in spans:
        total += max(0, end - max(first, reach))
        reach = max(reach, end)
    return total


class _Expected:
    """What the file view must hold, computed from the file and the balloon, not by dumpd."""

    def __init__(self, path: str, guest: Guest, segments: tuple[Segment, ...], zeroed: bool
                 ) -> None:
        self._path = path
        self._guest = guest
        self._segments = segments
        self._zeroed = zeroed  # ballooned pages read as zeros (a hook says they are not RAM)

    def chunk(self, offset: int, length: int) -> bytes:
        with open(self._path, "rb") as f:
            f.seek(offset)
            data = bytearray(f.read(length))
        if self._zeroed:
            for start, end in self._zero_ranges(offset, offset + len(data)):
                data[start - offset : end - offset] = bytes(end - start)
        return bytes(data)

    def _zero_ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        out = []
        for seg in self._segments:
            s_lo, s_hi = max(lo, seg.file_offset), min(hi, seg.file_offset + seg.filesz)
            for pos in range(s_lo - (s_lo - seg.file_offset) % PAGE, s_hi, PAGE):
                pfn = (seg.paddr + pos - seg.file_offset) // PAGE
                if self._guest.ballooned(pfn):
                    out.append((max(pos, s_lo), min(pos + PAGE, s_hi)))
        return out

    def zero_bytes(self, size: int) -> int:
        return sum(end - start for start, end in self._zero_ranges(0, size))

    def digest(self, size: int) -> str:
        h = hashlib.sha256()
        for pos in range(0, size, COPY_CHUNK):
            h.update(self.chunk(pos, min(COPY_CHUNK, size - pos)))
        return h.hexdigest()


async def _debugger(client: AsyncClient, expect: _Expected) -> tuple[float, int]:
    """8-byte dependent reads over whole pages, half of them ballooned, as gdb/crash would."""
    rng = random.Random(7)
    seg = expect._segments[3]
    pages = [seg.file_offset + rng.randrange(seg.filesz // PAGE) * PAGE
             for _ in range(DEBUG_PAGES)]
    reads = 0
    started = time.perf_counter()
    for base in pages:
        want = expect.chunk(base, PAGE)
        for off in range(0, PAGE, 8):
            got = await client.read(base + off, 8)
            reads += 1
            if got != want[off : off + 8]:
                raise SystemExit(f"demo: wrong bytes at {base + off:#x}")
    return time.perf_counter() - started, reads


async def _copier(client: AsyncClient, size: int) -> tuple[float, str]:
    """The whole file view in 8 MiB reads, four in flight."""
    h = hashlib.sha256()
    started = time.perf_counter()
    offsets = list(range(0, size, COPY_CHUNK))
    for i in range(0, len(offsets), 4):
        parts = await asyncio.gather(*(client.read(o, COPY_CHUNK) for o in offsets[i : i + 4]))
        for part in parts:
            h.update(part)
    return time.perf_counter() - started, h.hexdigest()


def _report(runs: dict[str, Run], guest: Guest, size: int, pfns: int) -> None:
    ballooned = sum(e - f for f, e in guest.balloon)
    none, hooked = runs["none"], runs["balloon"]
    naive_calls = size // 8 + none.debug_reads

    def both(get: Any) -> tuple[str, str]:
        return get(none), get(hooked)

    rows = [
        ("reads sent by clients", f"{naive_calls:,}",
         *both(lambda r: f"{r.debug_reads:,} + {-(-size // COPY_CHUNK)}")),
        ("source reads", f"{naive_calls:,}", *both(lambda r: f"{r.stats['source_read_calls']:,}")),
        ("ballooned pages read", f"{ballooned:,}", *both(lambda r: f"{r.ballooned_pages_read:,}")),
        ("  (reads that touch them)", f"{ballooned * (PAGE // 8):,}", "", ""),
        ("hook verdicts per pfn", "-", *both(lambda r: f"{r.stats['pfns_asked'] / pfns:.3f}")),
        ("hook calls", "-", *both(lambda r: f"{r.stats['hook_calls']:,}")),
        ("pages served as zeros", "-", *both(lambda r: f"{r.stats['zero_pages_served']:,}")),
        ("cache hits", "-", *both(lambda r: f"{r.stats['cache_hits']:,}")),
        (f"{none.debug_reads} dependent 8-byte reads", "-",
         *both(lambda r: f"{r.debug_s:.2f} s")),
        (f"whole dump in {COPY_CHUNK // MiB} MiB reads", "-",
         *both(lambda r: f"{r.copy_s:.2f} s")),
    ]
    print(f"\n{'':<30}{'naive 8-byte reader':>21}{'dumpd, hook none':>19}"
          f"{'dumpd, hook balloon':>22}")
    for name, naive, plain, ours in rows:
        print(f"{name:<30}{naive:>21}{plain:>19}{ours:>22}".rstrip())
    print("\nUnder Xen every read of a ballooned page is a round trip to qemu-dm; a naive "
          "reader\nmakes one per 8 bytes. dumpd reads each page once; with the balloon hook, "
          "never.\n")
