"""`stream`'s `zeros_as_holes` and `hook.explain` through a real server on a real socket:
which pages become holes and why, counted exactly, the view byte for byte.

Expected holes are computed here from the dump's layout, the ballooned pfns and the
pfns written as zeros, never by dumpd."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from dumpd.client import Client, RemoteError, StreamData, StreamHole
from dumpd.sources.base import Segment
from tests.dumps import SegSpec, build_elf
from tests.plugindist import explaining
from tests.servers import free_port, serving
from tests.views import (
    BALLOONED,
    EXPLAINED,
    PAGE,
    ZERO_PFNS,
    ZEROED,
    balloon_file,
    expected_view,
    zeroed_dump,
    zeroed_fill,
)

MiB = 1 << 20


def expected_holes(segments: tuple[Segment, ...], chunk: int, unallocated: range = range(0),
                   not_ram: frozenset[int] = frozenset(ZERO_PFNS)
                   ) -> list[tuple[int, int, str]]:
    """`(offset, length, reason)` holes: `not_ram` pfns (the hook's), then RAM pfns in
    `unallocated` (file_hole), then zeroed RAM pfns wholly in the file, in one `chunk`
    (zero); adjacent holes of one reason merged."""
    pages: list[tuple[int, int, str]] = []
    claimed: set[int] = set()  # file offsets of pfns placed: the first PT_LOAD wins
    for seg in segments:
        for pfn in range(seg.paddr // PAGE, (seg.paddr + seg.filesz - 1) // PAGE + 1):
            lo = seg.file_offset + max(0, pfn * PAGE - seg.paddr)
            hi = seg.file_offset + min(seg.filesz, (pfn + 1) * PAGE - seg.paddr)
            if lo in claimed:
                continue
            claimed.add(lo)
            if pfn in not_ram:
                pages.append((lo, hi, "not_ram"))
            elif pfn in unallocated:
                pages.append((lo, hi, "file_hole"))
            elif pfn in ZEROED and hi - lo == PAGE and lo // chunk == (hi - 1) // chunk:
                pages.append((lo, hi, "zero"))
    holes: list[tuple[int, int, str]] = []
    for lo, hi, reason in sorted(pages):
        if holes and sum(holes[-1][:2]) == lo and holes[-1][2] == reason:
            holes[-1] = (holes[-1][0], holes[-1][1] + hi - lo, reason)
        else:
            holes.append((lo, hi - lo, reason))
    return holes


def collect(sock: str, zeros: bool) -> tuple[list[Any], dict[str, Any] | None]:
    with Client.connect(sock, timeout=30) as client:
        stream = client.stream(0, 1 << 40, zeros_as_holes=zeros)
        pieces = [StreamData(p.offset, memoryview(bytes(p.data))) if isinstance(p, StreamData)
                  else p for p in stream]
        return pieces, stream.summary


def assemble(size: int, pieces: list[Any]) -> bytes:
    out = bytearray(size)
    for piece in pieces:
        if isinstance(piece, StreamData):
            out[piece.offset : piece.offset + len(piece.data)] = piece.data
    return bytes(out)


@pytest.mark.parametrize("kind", ["elf", "raw"])
@pytest.mark.parametrize(("sendfile", "mmap"), [(True, "on"), (True, "off"), (False, "off")],
                         ids=["mapped", "sendfile-source", "read"])
async def test_zero_pages_come_as_holes_that_say_why(
        tmp_path: Path, kind: str, sendfile: bool, mmap: str) -> None:
    path, size, segments = zeroed_dump(tmp_path, kind)
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    # 64 KiB windows: in the ELF core, zero page 0x40 straddles two (looked at in a copy).
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": hook},
                       stream_sendfile=sendfile, mmap=mmap, windows=(64, 8)) as server:
        sock = server.config.server.socket
        pieces, summary = await asyncio.to_thread(collect, sock, True)
        plain, plain_summary = await asyncio.to_thread(collect, sock, False)
        assert server.engine is not None
        read = server.engine.counters.source_bytes_read
    want = expected_view(path, segments, ZERO_PFNS)
    assert assemble(size, pieces) == want == assemble(size, plain)
    holes = [(p.offset, p.length, p.reason) for p in pieces if isinstance(p, StreamHole)]
    assert holes == expected_holes(segments, MiB)
    zero = sum(n for _, n, reason in holes if reason == "zero")
    not_ram = sum(n for _, n, reason in holes if reason == "not_ram")
    assert zero == (9 if kind == "elf" else 10) * PAGE
    data = size - zero - not_ram
    assert summary == {"bytes": size, "data_bytes": data, "hole_bytes": zero + not_ram,
                       "error_bytes": 0, "zero_bytes": zero, "file_hole_bytes": 0,
                       "cancelled": False}
    # Without the option: holes as before (no reason on the wire: "not_ram"), no new counts.
    assert [(p.offset, p.length, p.reason) for p in plain if isinstance(p, StreamHole)] == [
        (o, n, r) for o, n, r in expected_holes(segments, MiB) if r == "not_ram"]
    assert plain_summary == {"bytes": size, "data_bytes": size - not_ram,
                             "hole_bytes": not_ram, "error_bytes": 0, "cancelled": False}
    # Every RAM byte is read (or looked at) once per stream; no ballooned byte ever.
    assert read == 2 * (size - not_ram)


async def test_a_zero_page_partly_in_the_file_stays_data(tmp_path: Path) -> None:
    """Pfn 4 has 0x800 bytes in the file, all zero: data, as makedumpfile keeps a page
    partly in a memory hole; pfns 2 and 3, whole and zero, are holes."""
    dump = build_elf(tmp_path / "vmcore", [SegSpec(paddr=0x1000, memsz=0x3800)],
                     page_size_note=PAGE, fill=zeroed_fill)
    async with serving(tmp_path, dump.path) as server:
        pieces, summary = await asyncio.to_thread(collect, server.config.server.socket, True)
    base = dump.segments[0].file_offset
    holes = [(p.offset, p.length, p.reason) for p in pieces if isinstance(p, StreamHole)]
    assert holes == [(base + PAGE, 2 * PAGE, "zero")]
    assert pieces[-1] == StreamData(base + 3 * PAGE, memoryview(bytes(0x800)))
    assert summary is not None and summary["zero_bytes"] == 2 * PAGE


async def test_holes_of_a_sparse_source_file_say_the_file_has_no_data(tmp_path: Path) -> None:
    """A saved dump with holes (a copy of a copy): pages in a hole of the file are
    never looked at, and say so."""
    path, size, segments = zeroed_dump(tmp_path, "raw")
    unallocated = range(0x100, 0x110)
    content = Path(path).read_bytes()
    os.unlink(path)
    with open(path, "wb") as f:  # the same bytes, pfns 0x100-0x10f a hole of the file
        f.write(content[: unallocated.start * PAGE])
        f.seek(unallocated.stop * PAGE)
        f.write(content[unallocated.stop * PAGE :])
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.lseek(fd, unallocated.start * PAGE, os.SEEK_HOLE) != unallocated.start * PAGE:
            pytest.skip("this file system keeps no holes")
    finally:
        os.close(fd)
    async with serving(tmp_path, path, stream_sendfile=True) as server:
        pieces, summary = await asyncio.to_thread(collect, server.config.server.socket, True)
    want = bytearray(content)
    want[unallocated.start * PAGE : unallocated.stop * PAGE] = bytes(len(unallocated) * PAGE)
    assert assemble(size, pieces) == bytes(want)
    holes = [(p.offset, p.length, p.reason) for p in pieces if isinstance(p, StreamHole)]
    assert (unallocated.start * PAGE, 0x10 * PAGE, "file_hole") in holes
    assert holes == expected_holes(segments, MiB, unallocated, frozenset())
    assert summary is not None and summary["file_hole_bytes"] == 0x10 * PAGE
    assert summary["zero_bytes"] == 13 * PAGE  # no hook: the ballooned ones too


def server_info(sock: str) -> dict[str, Any]:
    with Client.connect(sock) as client:
        return client.info()


def explain(sock: str | int, first: int, count: int) -> Any:
    """`hook.explain`'s reply, or the RemoteError it got (a TCP port: over loopback)."""
    try:
        with (Client.connect(sock) if isinstance(sock, str) else
              Client.connect_tcp("127.0.0.1", sock)) as client:
            return client.hook_explain(first, count)
    except RemoteError as exc:
        return exc.code, exc.message


async def test_hook_explain_says_why_the_hook_calls_pages_not_ram(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(explaining(tmp_path / "site")))
    path, _, _ = zeroed_dump(tmp_path, "raw")
    port = free_port()
    async with serving(tmp_path, path, hook="explaining", hook_options={"runs": EXPLAINED},
                       tcp=f"127.0.0.1:{port}") as server:
        sock = server.config.server.socket
        runs = await asyncio.to_thread(explain, port, 0x20, 0x20)  # anyone may ask
        big = await asyncio.to_thread(explain, sock, 0, (1 << 20) + 1)
        info = await asyncio.to_thread(server_info, sock)
    assert runs == {"hook": "explaining", "hook_generation": 1,
                    "runs": [[1, ""], [2, "ballooned"], [13, ""], [16, "offline"]]}
    assert big == ("E2BIG", "count 1048577 is above the maximum 1048576")
    assert info["hook_options"] == {"runs": EXPLAINED}
    async with serving(tmp_path, path, hook="explaining",
                       hook_options={"runs": EXPLAINED, "broken": 1}) as server:
        broken = await asyncio.to_thread(explain, server.config.server.socket, 0, 10)
    assert broken == ("EIO", "hook 'explaining' explain failed: ValueError: bad run "
                             "length 11 at pfn 0x0")


async def test_hook_explain_needs_a_hook_that_explains(tmp_path: Path) -> None:
    path, _, _ = zeroed_dump(tmp_path, "raw")
    async with serving(tmp_path, path) as server:
        none = await asyncio.to_thread(explain, server.config.server.socket, 0, 10)
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": hook}) as server:
        mute = await asyncio.to_thread(explain, server.config.server.socket, 0, 10)
    assert none == ("ENOSYS", "no hook is registered")
    assert mute == ("ENOSYS", "hook 'balloon' does not explain its verdicts")
