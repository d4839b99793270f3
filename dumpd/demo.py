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
from dataclasses import dataclass
from typing import Any

from dumpd.client.aio import AsyncClient
from dumpd.config import Config, HookConfig, ServerConfig, SourceConfig
from dumpd.engine.layout import Layout
from dumpd.errors import StartupError
from dumpd.hooks.discovery import installed_plugins
from dumpd.runner import loop_factory
from dumpd.sources.base import Segment, Source, build_file_map
from dumpd.testing.elfwriter import vmcoreinfo_note, write_elf_core
from dumpd.testing.guest import PAGE, Guest, MiB, check_guest, distinct_pfns, make_guest

DEBUG_PAGES = 16
COPY_CHUNK = 8 * MiB
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
    core = write_elf_core(vmcore, guest.loads, notes=[vmcoreinfo_note(PAGE)], fill=guest.fill)
    with open(balloon_file, "w") as f:
        f.write("# pfns the balloon driver gave back: START-END, inclusive\n")
        f.writelines(f"{first:#x}-{end - 1:#x}\n" for first, end in guest.balloon)
    print(f"wrote {vmcore}: {core.size / MiB:.0f} MiB ELF core, {len(core.segments)} PT_LOADs,"
          f" {sum(e - f for f, e in guest.balloon)} ballooned pages in {len(guest.balloon)} runs"
          f" ({time.perf_counter() - started:.1f} s)")
    layout = Layout(build_file_map(core.segments, core.size), PAGE)
    # The PT_LOADs in the order of the guest's loads: where its high RAM went in the file.
    high = core.segments[guest.loads.index(guest.ram_above_crash)]
    runs, expects = {}, {}
    for name, options in (("none", {}), ("balloon", {"file": balloon_file})):
        config = Config(
            source=SourceConfig(path=vmcore),
            server=ServerConfig(socket=os.path.join(workdir, "dumpd.sock")),
            hook=HookConfig(name=name, options=options),
        )
        expect = expects[name] = _Expected(vmcore, guest, layout, zeroed=name == "balloon")
        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            runs[name] = runner.run(_exercise(config, guest, expect, high, core.size))
    _report(runs, guest, core.size, distinct_pfns(core.segments))
    ok = True
    for name, run in runs.items():
        zeroed, expect = name == "balloon", expects[name]
        ok_copy = run.digest == expect.digest(core.size)
        want_bytes = core.size - expect.zero_bytes(core.size) if zeroed else core.size
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


async def _exercise(config: Config, guest: Guest, expect: _Expected, high: Segment, size: int
                    ) -> Run:
    from dumpd.server import Server

    server = Server(config)
    await server.start()
    assert server.source is not None
    touched = _watch_ballooned_reads(server.source, guest)
    try:
        async with await AsyncClient.connect(config.server.socket) as client:
            debug_s, debug_reads = await _debugger(client, expect, high)
            copy_s, digest = await _copier(client, size)
            stats = await client.stats()
    finally:
        await server.shutdown()
    return Run(stats, debug_s, debug_reads, copy_s, digest, len(touched))


def _watch_ballooned_reads(source: Source, guest: Guest) -> set[int]:
    """The set of ballooned pfns the engine reads from `source` from now on.

    Watched where the engine calls the source, so the figure is what happened,
    not what should have.
    """
    touched: set[int] = set()
    layout = Layout(source.file_map, PAGE)
    real_read, real_cached = source.read_into, source.read_cached_into

    def note(offset: int, length: int) -> None:
        for first, end in layout.pfn_ranges(offset, offset + length):
            touched.update(p for p in range(first, end) if guest.ballooned(p))

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


class _Expected:
    """What the file view must hold, computed from the file and the balloon, not by the
    server: the pfn of each file page is the engine's `Layout` answer (whole pages: the
    guest's PT_LOADs start and end on page boundaries, in memory and in the file)."""

    def __init__(self, path: str, guest: Guest, layout: Layout, zeroed: bool) -> None:
        if any(run.paddr is not None and (run.file_start | run.file_end | run.paddr) % PAGE
               for run in layout.file_map):
            raise ValueError("the demo's vmcore holds memory in part pages")
        self._path = path
        self._guest = guest
        self._layout = layout
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
        """The parts of `[lo, hi)` in file pages that hold a ballooned pfn."""
        out = []
        for page in range(lo - lo % PAGE, hi, PAGE):
            pfns = self._layout.pfn_ranges(page, page + PAGE)  # one pfn, or none
            if pfns and self._guest.ballooned(pfns[0][0]):
                out.append((max(page, lo), min(page + PAGE, hi)))
        return out

    def zero_bytes(self, size: int) -> int:
        return sum(end - start for start, end in self._zero_ranges(0, size))

    def digest(self, size: int) -> str:
        h = hashlib.sha256()
        for pos in range(0, size, COPY_CHUNK):
            h.update(self.chunk(pos, min(COPY_CHUNK, size - pos)))
        return h.hexdigest()


async def _debugger(client: AsyncClient, expect: _Expected, seg: Segment
                    ) -> tuple[float, int]:
    """8-byte dependent reads over whole pages of PT_LOAD `seg`, as gdb/crash would."""
    rng = random.Random(7)
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
