"""A saved kdump-compressed dump served, through a real server on a real socket and the
real CLI: every page the ELF core's it was made from and drgn's (libkdumpfile) reading
the same file, the pages makedumpfile left out holes that are never read, the dead
kernel's VMCOREINFO and virtual addresses, the memmap hook attached to it, a bad page
EIO alone; `dumpd fetch` of it an ELF core that drgn and readelf read."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bench.pfnranges import subtract
from dumpd.client import Client, RemoteError, StreamData, StreamError, StreamHole
from dumpd.kdump.format import DESC
from dumpd.sources import open_source
from dumpd.testing.kernel import SyntheticKernel
from tests.daemon import info_json, ok, one_line_error, run, served
from tests.kdumps import (
    PAGE,
    drgn_of,
    dumped,
    makedumpfile,
    needs_makedumpfile,
    patch,
    pfns,
    present,
    write_kdump,
)
from tests.servers import client_of, serving
from tests.views import record_reads

MiB = 1 << 20
pytestmark = needs_makedumpfile


def drgn_fault() -> type[Exception]:
    fault: type[Exception] = pytest.importorskip("drgn").FaultError
    return fault


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticKernel, Path]:
    synthetic = SyntheticKernel()
    path = tmp_path_factory.mktemp("kernel") / "vmcore"
    synthetic.write(str(path))
    return synthetic, path


@pytest.fixture(scope="module")
def level_31(kernel: tuple[SyntheticKernel, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> Path:
    """The synthetic kernel through `makedumpfile -c -d 31`."""
    return makedumpfile(kernel[1], tmp_path_factory.mktemp("kdump") / "dump.kdump",
                        "-c", "-d", "31")


def page_offsets(info: dict[str, Any]) -> dict[int, int]:
    """pfn -> the offset of its page in the view, from `info`'s segments."""
    return {(paddr + k) // PAGE: offset + k for paddr, offset, filesz, _ in info["segments"]
            for k in range(0, filesz, PAGE)}


def collect(sock: str, size: int) -> tuple[list[Any], dict[str, Any] | None]:
    with Client.connect(sock, timeout=30) as client:
        stream = client.stream(0, size)
        pieces = [StreamData(p.offset, memoryview(bytes(p.data))) if isinstance(p, StreamData)
                  else p for p in stream]
        return pieces, stream.summary


def hole_pfns(pieces: list[Any], offsets: dict[int, int], reason: str) -> list[int]:
    by_offset = {offset: pfn for pfn, offset in offsets.items()}
    return sorted(by_offset[at] for p in pieces if isinstance(p, StreamHole)
                  and p.reason == reason for at in range(p.offset, p.offset + p.length, PAGE))


async def test_every_page_over_the_socket_is_the_cores_and_drgns(
        kernel: tuple[SyntheticKernel, Path], level_31: Path, tmp_path: Path) -> None:
    """read_phys, extents, a stream and a digest of the view: dumped pages are the ELF
    core's and drgn's; pages left out are holes ("excluded"), zeros, never read."""
    core = kernel[1]
    prog = drgn_of(level_31)
    kept, memory = dumped(level_31), present(level_31)
    left_out = pfns(subtract(memory, kept))
    assert len(left_out) > 1000 and len(pfns(kept)) > 1000
    async with serving(tmp_path, level_31) as server:
        reads = record_reads(server.source)
        async with client_of(server) as client:
            info = await client.info()
            assert (info["source"]["kind"], info["page_size"]) == ("kdump", PAGE)
            offsets = page_offsets(info)
            assert sorted(offsets) == pfns(memory)
            with closing(open_source(str(core))) as elf:
                for pfn in pfns(kept):
                    got = await client.read_phys(pfn * PAGE, PAGE)
                    assert got == elf.read_phys(pfn * PAGE, PAGE), pfn
                    assert got == prog.read(pfn * PAGE, PAGE, True), pfn
            for pfn in left_out:
                assert await client.read_phys(pfn * PAGE, PAGE) == bytes(PAGE)
            extents = await client.extents(0, info["size"])
            zero = [(start, start + length) for start, length, kind in extents
                    if kind == "zero"]
            by_offset = {offset: pfn for pfn, offset in offsets.items()}
            assert sorted(by_offset[at] for s, e in zero for at in range(s, e, PAGE)) == left_out
            pieces, summary = await asyncio.to_thread(collect, server.config.server.socket,
                                                      info["size"])
            digest = await client.digest(0, info["size"])
            stats = await client.stats()
    assert hole_pfns(pieces, offsets, "excluded") == left_out
    assert summary is not None and summary["excluded_bytes"] == len(left_out) * PAGE
    assert summary["hole_bytes"] == summary["excluded_bytes"]
    view = bytearray(info["size"])
    for piece in pieces:
        assert not isinstance(piece, StreamError)
        if isinstance(piece, StreamData):
            view[piece.offset : piece.offset + len(piece.data)] = piece.data
    assert hashlib.sha256(view).hexdigest() == digest["digest"]
    for pfn in (*pfns(kept)[:50], *pfns(kept)[-50:]):
        assert bytes(view[offsets[pfn] : offsets[pfn] + PAGE]) == prog.read(pfn * PAGE, PAGE, True)
    never = {offsets[pfn] for pfn in left_out}
    assert not [(o, n) for o, n in reads if any(o <= at < o + n for at in
                                                range(o - o % PAGE, o + n, PAGE) if at in never)]
    assert stats["zero_pages_served"] >= len(left_out)


async def test_vmcoreinfo_read_virt_and_the_kernel_of_a_served_kdump(
        kernel: tuple[SyntheticKernel, Path], tmp_path: Path) -> None:
    synthetic, core = kernel
    kdump = makedumpfile(core, tmp_path / "dump.kdump", "-l", "-d", "0")
    async with serving(tmp_path, kdump) as server, client_of(server) as client:
        assert await client.vmcoreinfo() == synthetic.vmcoreinfo
        info = await client.info()
        assert info["kernel"] == {
            "vmcoreinfo": "the kdump-compressed file", "osrelease": "6.1.0-synth",
            "arch": "x86_64", "crashtime": info["kernel"]["crashtime"], "page_size": PAGE,
            "kernel_offset": synthetic.kernel_offset}
        for name, (vaddr, data) in synthetic.markers.items():
            assert await client.read_virt(vaddr, len(data)) == data, name


async def test_the_memmap_hook_attaches_to_a_served_kdump(
        kernel: tuple[SyntheticKernel, Path], level_31: Path, tmp_path: Path) -> None:
    """It reads the dead kernel's struct pages out of the kdump file as out of the ELF
    core: the same reasons for every pfn."""
    options = {"dump_level": 31}
    with closing(open_source(str(level_31))) as source:
        ranges = [(s.paddr // PAGE, s.memsz // PAGE) for s in source.segments]
    answers = []
    for served_source in (kernel[1], level_31):
        where = tmp_path / served_source.name
        where.mkdir()
        async with serving(where, served_source, hook="memmap",
                           hook_options=options) as server, client_of(server) as client:
            answers.append([(await client.hook_explain(first, count))["runs"]
                            for first, count in ranges])
    assert answers[0] == answers[1]
    assert {word for runs in answers[1] for _, word in runs} >= {"", "free", "user", "cache"}


def _stream_with_zeros(sock: str, size: int) -> tuple[list[Any], dict[str, Any] | None]:
    with Client.connect(sock, timeout=30) as client:
        stream = client.stream(0, size, zeros_as_holes=True)
        return [p for p in stream if not isinstance(p, StreamData)], stream.summary


async def test_zeros_as_holes_on_a_served_kdump(kernel: tuple[SyntheticKernel, Path],
                                                 tmp_path: Path) -> None:
    """Level 1 keeps zero pages (makedumpfile's one zero page): a stream asked for
    `zeros_as_holes` finds them all zero, and the pages with no data stay "excluded"."""
    synthetic, core = kernel
    kdump = makedumpfile(core, tmp_path / "dump.kdump", "-l", "-d", "1")
    kept, memory = dumped(kdump), present(kdump)
    async with serving(tmp_path, kdump) as server, client_of(server) as client:
        info = await client.info()
        pieces, summary = await asyncio.to_thread(_stream_with_zeros,
                                                  server.config.server.socket, info["size"])
    offsets = page_offsets(info)
    assert hole_pfns(pieces, offsets, "excluded") == pfns(subtract(memory, kept))
    assert hole_pfns(pieces, offsets, "zero") == sorted(set(pfns(kept)) & synthetic.zero_pfns)
    assert summary is not None and summary["zero_bytes"] == len(
        hole_pfns(pieces, offsets, "zero")) * PAGE
    assert not [p for p in pieces if isinstance(p, StreamError)]


def _corrupt(tmp_path: Path) -> tuple[Path, int]:
    """A small kdump file whose pfn 9 has a page descriptor past the end of the file."""
    written = write_kdump(tmp_path / "bad.kdump", ((1, 64),),
                          lambda pfn: (b"%08d" % pfn) * (PAGE // 8))
    patch(written.path, written.descriptor[9], DESC.pack(1 << 40, 100, 1, 0))
    return written.path, 9


async def test_a_bad_page_is_eio_alone_and_the_server_goes_on(tmp_path: Path) -> None:
    path, bad = _corrupt(tmp_path)
    async with serving(tmp_path, path) as server, client_of(server) as client:
        with pytest.raises(RemoteError) as info:
            await client.read_phys(bad * PAGE, 8)
        assert info.value.code == "EIO"
        assert f"pfn {bad:#x}: its data is outside the page data of the file" in str(info.value)
        offsets = page_offsets(await client.info())
        with pytest.raises(RemoteError, match="EIO"):
            await client.read(offsets[bad] + 8, 8)  # a page of the view: read at once
        assert await client.read(offsets[bad + 1], 8) == b"%08d" % (bad + 1)
        size = (await client.info())["size"]
        pieces, summary = await asyncio.to_thread(collect, server.config.server.socket, size)
        errors = [p for p in pieces if isinstance(p, StreamError)]
        assert [(e.offset, e.length, e.code) for e in errors] == [(offsets[bad], PAGE, "EIO")]
        assert summary is not None and summary["error_bytes"] == PAGE
        for pfn in (bad - 1, bad + 1, 63):
            assert await client.read_phys(pfn * PAGE, 8) == b"%08d" % pfn


# --------------------------------------------------------------------------- the CLI


def test_the_cli_serves_a_kdump_and_fetch_copies_it_as_an_elf_core(
        kernel: tuple[SyntheticKernel, Path], level_31: Path, tmp_path: Path) -> None:
    """`dumpd info` and `read --phys` on it; `dumpd fetch --verify` writes an ELF core
    whose pages left out are holes of the copy, recorded as "excluded", and which drgn
    reads as it reads the kdump file."""
    core = kernel[1]
    kept, memory = dumped(level_31), present(level_31)
    left_out = pfns(subtract(memory, kept))
    copy = tmp_path / "copy.elf"
    with served(tmp_path, str(level_31)) as sock:
        assert f"source   {level_31} (kdump)" in ok("info", "--socket", sock).splitlines()
        pfn = pfns(kept)[100]
        page = ok("read", "--phys", hex(pfn * PAGE), str(PAGE), "-o", str(tmp_path / "page"),
                  "--socket", sock)
        assert page == ""
        with closing(open_source(str(core))) as elf:
            assert (tmp_path / "page").read_bytes() == elf.read_phys(pfn * PAGE, PAGE)
        fetched = run("fetch", "--socket", sock, "-o", str(copy), "--verify", "--quiet")
        assert fetched.returncode == 0, fetched.stderr.decode()
        info = info_json(sock)
    offsets = page_offsets(info)
    with open(copy, "rb") as f:
        data_at = [os.lseek(f.fileno(), offsets[pfn], os.SEEK_DATA) for pfn in left_out[:200]]
    assert all(at > offsets[pfn] for at, pfn in zip(data_at, left_out, strict=False))
    record = [json.loads(line) for line in Path(f"{copy}.dumpd-holes").read_text().splitlines()]
    assert record[-1] == {"pages": {"excluded": len(left_out)}}
    from_kdump, from_copy = drgn_of(level_31), drgn_of(copy)
    for pfn in pfns(kept):
        assert from_copy.read(pfn * PAGE, PAGE, True) == from_kdump.read(pfn * PAGE, PAGE, True)
    read_virtually = 0  # through the dead kernel's page tables, as drgn reads any vmcore
    for vaddr, data in kernel[0].markers.values():
        try:
            want = from_kdump.read(vaddr, len(data))
        except drgn_fault() as exc:
            assert "Excluded page" in str(exc)  # left out at level 31: zeros in the copy
            continue
        assert from_copy.read(vaddr, len(data)) == want == data
        read_virtually += 1
    assert read_virtually >= 5
    if shutil.which("readelf") is not None:
        shown = subprocess.run(["readelf", "-W", "-l", str(copy)], capture_output=True,
                               text=True, check=True).stdout
        assert shown.count(" LOAD ") == len(memory)
    again = makedumpfile(copy, tmp_path / "again.kdump", "-c", "-d", "31")
    assert (present(again), dumped(again)) == (memory, kept)  # makedumpfile reads it alike


def test_serve_refuses_a_bad_kdump_or_a_kind_it_is_not_in_one_line(tmp_path: Path) -> None:
    path, _ = _corrupt(tmp_path)
    sock = str(tmp_path / "dumpd.sock")
    said = ("a kdump-compressed dump (makedumpfile output without -E), not an ELF core as "
            'kind = "elf" says: serve it as kind = "kdump" (or auto)')
    assert one_line_error(run("serve", "--source", str(path), "--kind", "elf",
                              "--socket", sock), 2) == f"dumpd: {path}: {said}"
    path.write_bytes(path.read_bytes()[:3 * PAGE])
    assert one_line_error(run("serve", "--source", str(path), "--kind", "kdump",
                              "--socket", sock), 2) == (
        f"dumpd: {path}: cut short: its bitmaps end at 0x4000, past the end of the file "
        "(0x3000 bytes)")
    assert not Path(sock).exists()


# --------------------------------------------------------------------------- the lab's dumps


def _lab_dumps() -> list[Path]:
    """The ELF dumps the lab engineer listed (a path a line, # comments) or kept."""
    listed = Path("/work/wt/lab-dumps.txt")
    lines = listed.read_text().splitlines() if listed.exists() else []
    paths = [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
    kept = Path("/var/tmp/dumpd-lab/dumps")
    if kept.is_dir():
        paths += sorted(kept.glob("vmcore-*[0-9]"))
    found = []
    for path in dict.fromkeys(paths):
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("level", ["31", "0"])
def test_the_labs_real_dumps_served_as_kdump_files(tmp_path: Path, level: str) -> None:
    """Each real dump the crash-kernel lab kept, through `makedumpfile -c -d LEVEL`:
    every dumped page served equal to the ELF dump's."""
    dumps = _lab_dumps()
    if not dumps:
        pytest.skip("no dumps of the crash-kernel lab here (/work/wt/lab-dumps.txt, "
                    "/var/tmp/dumpd-lab/dumps)")
    for dump in dumps:
        kdump = makedumpfile(dump, tmp_path / f"{dump.name}.kdump", "-c", "-d", level)
        kept = dumped(kdump)
        prog = drgn_of(kdump)
        copy = tmp_path / f"{dump.name}.copy"
        with closing(open_source(str(dump))) as elf, \
                served(tmp_path, str(kdump)) as sock, Client.connect(sock) as client:
            for first, end in kept:
                for pfn in range(first, end, 256):
                    n = min(256, end - pfn)
                    got = client.read_phys(pfn * PAGE, n * PAGE)
                    assert got == elf.read_phys(pfn * PAGE, n * PAGE), (dump, pfn)
                    assert got == prog.read(pfn * PAGE, n * PAGE, True), (dump, pfn)
            ok("fetch", "--socket", sock, "-o", str(copy), "--quiet")
        # the copy is a vmcore the tools read as the dump: its log, its release, and
        # makedumpfile's verdicts on it at the level of the kdump file
        logs = []
        for source in (dump, copy):
            log = tmp_path / f"{source.name}.dmesg"
            subprocess.run(["makedumpfile", "--dump-dmesg", str(source), str(log)],
                           check=True, capture_output=True)
            logs.append(log.read_bytes())
        assert logs[0] == logs[1] and logs[0].count(b"\n") > 100
        if shutil.which("crash") is not None:
            releases = [subprocess.run(["crash", "--osrelease", str(source)], check=True,
                                       capture_output=True, text=True).stdout.strip()
                        for source in (dump, copy)]
            assert releases[0] == releases[1] and releases[0].startswith(("5.", "6.", "7."))
        again = makedumpfile(copy, tmp_path / f"{dump.name}.again", "-c", "-d", level)
        assert (present(again), dumped(again)) == (present(kdump), kept)


@pytest.mark.slow
def test_crash_shows_the_copy_of_a_served_kdump_as_the_dump(tmp_path: Path) -> None:
    """With the dead kernel's debug vmlinux (bench.crashcheck: `sys`, `log`, `bt`, `ps`),
    crash shows of the ELF copy `dumpd fetch` makes of a served `makedumpfile -c -d 31`
    file what it shows of the original dump."""
    from bench.crashcheck import CACHE, crash_shows

    dumps = [dump for dump in _lab_dumps() if Path(f"{dump}.version").is_file()]
    vmlinux = CACHE / f"vmlinux-{Path(f'{dumps[0]}.version').read_text().strip()}" \
        if dumps else None
    if vmlinux is None or not vmlinux.is_file() or shutil.which("crash") is None:
        pytest.skip("needs a lab dump, its debug vmlinux in the lab's cache "
                    "(python -m bench.crashcheck fetches it) and crash")
    dump = dumps[0]
    kdump = makedumpfile(dump, tmp_path / "dump.kdump", "-c", "-d", "31")
    copy = tmp_path / "copy"
    with served(tmp_path, str(kdump)) as sock:
        ok("fetch", "--socket", sock, "-o", str(copy), "--quiet")
    assert crash_shows(vmlinux, copy) == crash_shows(vmlinux, dump)
