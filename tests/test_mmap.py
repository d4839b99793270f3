"""Reading the source through mmap windows (sources/mapped.py), as dumpd reads
/proc/vmcore: a regular file mapped with `mmap = "on"` stands in for it.

What must hold: the bytes are exactly the file view's, whatever the window size; a
page the hook calls non-RAM is never touched through a mapping; no more than the
window budget is ever mapped; reads need no worker thread; where mapping fails the
source reads with pread and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import random
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from dumpd import sources
from dumpd.client import Client, StreamData
from dumpd.config import EngineConfig
from dumpd.engine import Engine
from dumpd.sources import mapped, open_source
from dumpd.sources.base import Segment
from dumpd.sources.mapped import Windows
from tests.dumps import IRREGULAR, build_elf, build_raw, file_bytes
from tests.servers import client_of, serving
from tests.views import (
    BALLOONED,
    PAGE,
    ZERO_PFNS,
    balloon_file,
    expected_view,
    pfns_read,
    streamed_dump,
)

KiB, MiB = 1 << 10, 1 << 20


def record_touches(windows: Windows) -> list[tuple[int, int]]:
    """From now on, every `(offset, length)` of the file touched through a mapping."""
    touched: list[tuple[int, int]] = []
    real_piece = windows.piece

    @contextlib.contextmanager
    def piece(offset: int, count: int) -> Iterator[memoryview]:
        with real_piece(offset, count) as view:
            touched.append((offset, len(view)))
            yield view

    windows.piece = piece  # type: ignore[method-assign]
    return touched


def mappings_of(path: str) -> list[int]:
    """The sizes of this process's mappings of the file at `path` (/proc/self/maps)."""
    sizes = []
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == path:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                sizes.append(hi - lo)
    return sizes


def stream_all(sock: str, size: int) -> bytes:
    out = bytearray(size)
    with Client.connect(sock, timeout=30) as client:
        for piece in client.stream(0, size, 64 * KiB):
            if isinstance(piece, StreamData):
                out[piece.offset : piece.offset + len(piece.data)] = piece.data
    return bytes(out)


@pytest.mark.parametrize("kind", ["elf", "raw"])
@pytest.mark.parametrize("sendfile", [True, False])
async def test_every_path_serves_the_exact_view_and_never_touches_non_ram(
        tmp_path: Path, kind: str, sendfile: bool) -> None:
    path, size, segments = streamed_dump(tmp_path, kind)
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    want = expected_view(path, segments, ZERO_PFNS)
    rng = random.Random(14)
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": hook},
                       mmap="on", windows=(64, 2), stream_sendfile=sendfile) as server:
        assert server.source is not None and server.source.windows is not None
        windows = server.source.windows
        touched = record_touches(windows)
        sock = server.config.server.socket
        async with client_of(server) as client:
            info = await client.info()
            for _ in range(200):  # small reads, cached or not, across windows and segments
                off, n = rng.randrange(size), rng.randrange(1, 3 * PAGE)
                assert await client.read(off, n) == want[off : off + n]
            assert await client.read(0, 8 * MiB) == want  # a large read, pieces of 2 windows
            for paddr in (0x1000, 0x20FF8, 0x9EFF8, 0x200000, 0x4FF7F8):
                phys = await client.read_phys(paddr, 8)
                assert phys == _phys(want, segments, paddr, 8)
            streamed = await asyncio.to_thread(stream_all, sock, size)
            digest = await client.digest(0, size)
        counters = server.engine.counters if server.engine else None
    assert info["source"]["read_path"] == "mmap"
    assert streamed == want
    assert digest["digest"] == hashlib.sha256(want).hexdigest()
    touched_pfns = pfns_read(touched, segments)
    assert touched_pfns & ZERO_PFNS == set()
    held = {p for s in segments
            for p in range(s.paddr // PAGE, (s.paddr + s.filesz - 1) // PAGE + 1)}
    assert touched_pfns == held - ZERO_PFNS  # every RAM page was read through a mapping
    assert windows.maps_made > 2  # the windows were unmapped and mapped again
    assert counters is not None and counters.worker_hops == 0


def _phys(view: bytes, segments: tuple[Segment, ...], paddr: int, length: int) -> bytes:
    seg = next(s for s in segments if s.paddr <= paddr < s.paddr + s.memsz)
    start = seg.file_offset + paddr - seg.paddr
    return view[start : start + length]


async def test_the_window_budget_holds_while_a_stream_and_reads_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * MiB)
    seen: list[list[int]] = []
    real_window = mapped._Window

    class Sampled(real_window):  # type: ignore[misc, valid-type]
        def __init__(self, fd: int, start: int, length: int) -> None:
            seen.append(mappings_of(dump.path))  # before this one is mapped
            super().__init__(fd, start, length)

    monkeypatch.setattr(mapped, "_Window", Sampled)
    async with serving(tmp_path, dump.path, mmap="on", windows=(256, 3)) as server:
        sock = server.config.server.socket
        async with client_of(server) as client:
            reads = [client.read(off, 3 * PAGE) for off in range(0, 8 * MiB, 300 * KiB)]
            streamed, *parts = await asyncio.gather(
                asyncio.to_thread(stream_all, sock, 8 * MiB), *reads)
        during = mappings_of(dump.path)
    after = mappings_of(dump.path)
    assert streamed == file_bytes(dump.path)
    assert b"".join(parts) == b"".join(file_bytes(dump.path, off, 3 * PAGE)
                                       for off in range(0, 8 * MiB, 300 * KiB))
    assert len(seen) >= 32  # every 256 KiB window of 8 MiB was mapped at least once
    assert max(len(maps) for maps in seen) <= 2  # two at most mapped when a third is made
    assert all(size == 256 * KiB for maps in [*seen, during] for size in maps)
    assert len(during) == 3
    assert after == []  # shutdown unmaps them all


def test_a_window_in_use_is_never_unmapped(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * 64 * KiB)
    data = file_bytes(dump.path)
    with closing(open_source(dump.path, "raw", mmap="on", window=64 * KiB, windows=1)) as src:
        windows = src.windows
        assert windows is not None
        held, release = threading.Event(), threading.Event()
        got: list[bytes] = []

        def holder() -> None:
            with windows.piece(10, 100) as view:
                held.set()
                release.wait(30)
                got.append(bytes(view))

        def other() -> None:
            with windows.piece(64 * KiB + 5, 10) as view:
                got.append(bytes(view))

        first = threading.Thread(target=holder)
        first.start()
        assert held.wait(30)
        second = threading.Thread(target=other)
        second.start()
        while not windows._changed._waiters:  # type: ignore[attr-defined]
            pass  # until the second waits for the one window to be let go
        assert got == [] and windows.mapped_bytes == 64 * KiB
        release.set()
        first.join(30)
        second.join(30)
    assert got == [data[10:110], data[64 * KiB + 5 : 64 * KiB + 15]]


def test_pieces_end_at_their_window_and_at_the_file(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 3 * 64 * KiB + 3 * PAGE)
    data = file_bytes(dump.path)
    with closing(open_source(dump.path, "raw", mmap="on", window=64 * KiB, windows=2)) as src:
        windows = src.windows
        assert windows is not None
        with windows.piece(64 * KiB - 3, MiB) as view:
            assert bytes(view) == data[64 * KiB - 3 : 64 * KiB]
        with windows.piece(3 * 64 * KiB + 7, MiB) as view:
            assert bytes(view) == data[3 * 64 * KiB + 7 :]
        for offset, count in ((len(data), 1), (-1, 1), (0, 0)):
            with pytest.raises(ValueError), windows.piece(offset, count):
                pass
        buf = bytearray(len(data) - 1)
        src.read_into(1, memoryview(buf))
        assert bytes(buf) == data[1:]
        assert src.read_cached_into(5, memoryview(buf)[:100]) == 100
        assert bytes(buf[:100]) == data[5:105]
        assert windows.mapped_bytes == 64 * KiB + 3 * PAGE  # the last two windows


@pytest.mark.parametrize("layout", ["irregular", "raw"])
async def test_engine_reads_through_mmap_need_no_worker_thread(
        tmp_path: Path, layout: str) -> None:
    if layout == "irregular":
        dump = build_elf(tmp_path / "vmcore", IRREGULAR, page_size_note=PAGE)
    else:
        dump = build_raw(tmp_path / "oldmem", 3 * MiB)
    want = expected_view(dump.path, dump.segments, set())
    source = open_source(dump.path, mmap="on", window=64 * KiB, windows=2)
    engine = Engine(source, EngineConfig(cache_mib=0.0625))
    try:
        rng = random.Random(7)
        for _ in range(300):
            off, n = rng.randrange(dump.size), rng.choice((1, 8, PAGE, 200 * KiB, MiB))
            assert bytes(await engine.read(off, n)) == want[off : off + n]
    finally:
        engine.close()
        source.close()
    counts = engine.counters
    assert counts.worker_hops == 0
    assert counts.source_reads_inline == counts.source_read_calls > 0
    assert not [t for t in threading.enumerate() if t.name.startswith("dumpd-read")]


@pytest.mark.parametrize(("path", "kind", "mode", "read_path", "why"), [
    ("FILE", "auto", "auto", "pread",
     "a file that could be cut short while mapped (SIGBUS): pread and sendfile"),
    ("FILE", "auto", "off", "pread", "mmap = off"),
    ("FILE", "auto", "on", "mmap", "mmap = on: mmap windows of 4096 KiB, 8 at most"),
    ("/dev/zero", "raw", "auto", "mmap",
     "a memory device: mmap windows of 4096 KiB, 8 at most"),
    ("/dev/null", "raw", "auto", "pread",
     "mmap failed (mmap of 0x0+0x400000: No such device), a memory device: pread instead"),
    ("PROC", "auto", "auto", "mmap", "a file of /proc: mmap windows of 4096 KiB, 8 at most"),
])
def test_which_files_are_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str,
                                kind: str, mode: str, read_path: str, why: str) -> None:
    proc = path == "PROC"
    if path in ("FILE", "PROC"):
        path = build_raw(tmp_path / "oldmem", MiB).path
    if proc:  # /proc/vmcore exists only in a crash kernel: the file stands in
        monkeypatch.setattr(sources, "procfs_device", lambda: os.stat(path).st_dev)
    with closing(open_source(path, kind, size=64 * KiB if kind == "raw" else None,
                             mmap=mode)) as src:
        assert (src.read_path, src.read_path_why) == (read_path, why)
        assert (src.windows is not None) == (read_path == "mmap")
        if path == "/dev/zero":
            buf = bytearray(b"x" * 100)
            src.read_into(5, memoryview(buf))
            assert buf == bytes(100)


@pytest.mark.parametrize(("mode", "line"), [
    ("on", "reading {path} with mmap: mmap = on: mmap windows of 64 KiB, 2 at most"),
    ("auto", "reading {path} with pread: a file that could be cut short while mapped "
             "(SIGBUS): pread and sendfile"),
])
async def test_the_server_says_once_how_it_reads(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, line: str) -> None:
    dump = build_raw(tmp_path / "oldmem", MiB)
    with caplog.at_level(logging.INFO, logger="dumpd.server"):
        async with serving(tmp_path, dump.path, mmap=mode, windows=(64, 2)) as server, \
                client_of(server) as client:
            info: dict[str, Any] = await client.info()
            assert await client.read(0, MiB) == file_bytes(dump.path)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reading ")]
    assert said == [line.format(path=dump.path)]
    assert info["source"]["read_path"] == ("mmap" if mode == "on" else "pread")


async def test_a_window_the_kernel_will_not_map_is_read_with_pread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """/proc/vmcore answers EAGAIN for any remap failure: those bytes still arrive."""
    path, size, segments = streamed_dump(tmp_path, "elf")
    want = expected_view(path, segments, set())
    real_window = mapped._Window

    class Refusing(real_window):  # type: ignore[misc, valid-type]
        def __init__(self, fd: int, start: int, length: int) -> None:
            if start == 64 * KiB:
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            super().__init__(fd, start, length)

    monkeypatch.setattr(mapped, "_Window", Refusing)
    with caplog.at_level(logging.WARNING, logger="dumpd.source"):
        async with serving(tmp_path, path, mmap="on", windows=(64, 2)) as server, \
                client_of(server) as client:
            assert server.source is not None and server.source.windows is not None
            windows = server.source.windows
            for off in (64 * KiB - 5, 64 * KiB, 100 * KiB):
                assert await client.read(off, 20) == want[off : off + 20]
            assert await client.read(0, size) == want
            streamed = await asyncio.to_thread(stream_all, server.config.server.socket, size)
            digest = await client.digest(0, size)
    assert streamed == want
    assert digest["digest"] == hashlib.sha256(want).hexdigest()
    assert windows.map_failures >= 4  # reads, the stream and the digest each met it
    said = [r.getMessage() for r in caplog.records if r.name == "dumpd.source"]
    assert said == [f"{path}: [Errno 11] mmap of 0x10000+0x10000: Resource temporarily "
                    "unavailable; the bytes of a window that cannot be mapped are read "
                    "with pread (said once)"]
