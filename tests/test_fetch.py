"""`dumpd fetch` as an operator runs it: real `dumpd serve` processes, real copies on disk,
servers killed mid-way, resumed copies compared byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dumpd.fetch import FetchRequest, fetch
from dumpd.sources import open_source
from tests.daemon import DUMPD, ENV, run, served, slow_server, state_of, stats_json
from tests.dumps import SegSpec, build_elf, build_raw, file_bytes
from tests.servers import failing, serving
from tests.views import PAGE, balloon_file, expected_view

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def halves_ballooned(tmp_path: Path, pages: int) -> tuple[str, set[int]]:
    """A balloon list naming every other run of 8 pages in `[0, pages)`: half of them."""
    runs = [(first, first + 7) for first in range(0, pages, 16)]
    return balloon_file(tmp_path / "balloon.txt", runs), {
        p for a, b in runs for p in range(a, b + 1)}


def non_ram_bytes(segments: Any, zero_pfns: set[int], lo: int, hi: int) -> int:
    """File bytes in `[lo, hi)` that belong to non-RAM pfns."""
    total = 0
    for seg in segments:
        for pos in range(max(lo, seg.file_offset), min(hi, seg.file_offset + seg.filesz)):
            total += (seg.paddr + pos - seg.file_offset) // PAGE in zero_pfns
    return total


def test_fetch_of_an_elf_core_is_a_sparse_valid_elf_core(tmp_path: Path) -> None:
    loads = [SegSpec(paddr=0x100000, memsz=4 * MiB), SegSpec(paddr=0x1000000, memsz=4 * MiB)]
    dump = build_elf(tmp_path / "vmcore", loads, page_size_note=PAGE, cpus=2)
    balloon, zero_pfns = halves_ballooned(tmp_path, 0x2000000 // PAGE)
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path, "--hook", "balloon", "--hook-option",
                f"file={balloon}") as sock:
        result = run("fetch", "-o", str(copy), "--verify", "--socket", sock)
        stats = stats_json(sock)
    stderr = result.stderr.decode().splitlines()
    assert result.returncode == 0, stderr
    want = expected_view(dump.path, dump.segments, zero_pfns)
    assert sha(copy.read_bytes()) == sha(want)
    assert copy.stat().st_size == dump.size
    allocated = copy.stat().st_blocks * 512
    assert allocated <= dump.size * 0.6  # half the pages are holes in the copy
    assert not Path(f"{copy}.dumpd-fetch").exists()
    assert stderr[-1] == f"verify: sha256 {sha(want)} matches"
    assert stderr[-2].startswith(f"fetched 8.0 MiB of {copy} in ")
    assert stderr[-2].endswith(": data 4.0 MiB, holes 4.0 MiB, errors 0 B; pages left out: "
                               "1,024 hook")
    # Each RAM byte read once for the copy, once for --verify's digest, and the first
    # MiB's RAM bytes once more for the fingerprint that recognises the dump.
    ram = dump.size - 4 * MiB
    head_ram = MiB - non_ram_bytes(dump.segments, zero_pfns, 0, MiB)
    assert stats["source_bytes_read"] == ram + ram + head_ram
    reopened = open_source(str(copy))
    assert reopened.segments == open_source(dump.path).segments
    reopened.close()
    if shutil.which("readelf"):
        original = subprocess.run(["readelf", "-l", "-n", dump.path], capture_output=True,
                                  text=True, check=True).stdout
        fetched = subprocess.run(["readelf", "-l", "-n", str(copy)], capture_output=True,
                                 text=True, check=True).stdout
        assert fetched.replace(str(copy), dump.path) == original


def test_fetch_of_raw_oldmem_with_non_ram_pages(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * MiB)
    balloon, zero_pfns = halves_ballooned(tmp_path, dump.size // PAGE)
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path, "--hook", "balloon", "--hook-option",
                f"file={balloon}") as sock:
        result = run("fetch", "-o", str(copy), "--socket", sock)
    assert result.returncode == 0, result.stderr.decode()
    want = expected_view(dump.path, dump.segments, zero_pfns)
    assert sha(copy.read_bytes()) == sha(want)
    assert copy.stat().st_blocks * 512 <= dump.size * 0.6


def test_fetch_of_a_raw_dump_a_range_and_quiet(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * MiB)
    whole, part = tmp_path / "whole", tmp_path / "part"
    with served(tmp_path, dump.path) as sock:
        first = run("fetch", "-o", str(whole), "--quiet", "--socket", sock)
        second = run("fetch", "-o", str(part), "--range", f"{MiB + 5}:{0x2000}", "--socket",
                     sock)
    assert (first.returncode, first.stdout, first.stderr) == (0, b"", b"")
    assert whole.read_bytes() == file_bytes(dump.path)
    assert second.returncode == 0
    got = part.read_bytes()
    assert len(got) == dump.size
    assert got[MiB + 5 : MiB + 5 + 0x2000] == file_bytes(dump.path, MiB + 5, 0x2000)
    assert got[: MiB + 5] == bytes(MiB + 5) and got[MiB + 5 + 0x2000 :].count(0) == len(
        got) - MiB - 5 - 0x2000
    lines = second.stderr.decode().splitlines()  # not a terminal: a line per tenth
    assert lines[-1].startswith(f"fetched 8.0 KiB of {part} in ")
    assert any(line.startswith("fetch: 8.0 KiB of 8.0 KiB (100%)") for line in lines)


def test_a_fetch_cut_by_killing_the_server_resumes_to_an_identical_copy(
        tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 12 * MiB)
    sock, copy = tmp_path / "dumpd.sock", tmp_path / "copy"
    server = slow_server(tmp_path, dump.path, sock)
    fetcher = subprocess.Popen([*DUMPD, "fetch", "-o", str(copy), "--chunk", "65536",
                                "--socket", str(sock)], stderr=subprocess.PIPE, env=ENV)
    time.sleep(1.5)
    server.send_signal(signal.SIGKILL)
    server.wait()
    _, err = fetcher.communicate(timeout=30)
    assert fetcher.returncode == 1
    stopped = state_of(copy)["done"]
    assert 0 < stopped < dump.size
    assert err.decode().splitlines()[-1].startswith(f"dumpd: fetch stopped at {stopped:#x} of "
                                                    f"{dump.size:#x}: ")
    sock.unlink()
    server = slow_server(tmp_path, dump.path, sock)
    try:
        resumed = run("fetch", "-o", str(copy), "--resume", "--verify", "--chunk", "65536",
                      "--socket", str(sock), timeout=120)
        stats = stats_json(str(sock))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert copy.read_bytes() == file_bytes(dump.path)
    # Only the rest was fetched again (plus the first MiB hashed to recognise the dump
    # and the whole view hashed for --verify).
    assert stats["source_bytes_read"] == (dump.size - stopped) + MiB + dump.size
    assert not Path(f"{copy}.dumpd-fetch").exists()


def test_a_killed_fetch_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 6 * MiB)
    copy = tmp_path / "copy"
    sock = tmp_path / "dumpd.sock"
    server = slow_server(tmp_path, dump.path, sock)
    try:
        fetcher = subprocess.Popen([*DUMPD, "fetch", "-o", str(copy), "--chunk", "65536",
                                    "--socket", str(sock)], stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(1.0)
        fetcher.send_signal(signal.SIGKILL)  # no chance to write a last checkpoint
        fetcher.wait()
        assert state_of(copy)["done"] == 0  # the state never claims more than is on disk
        resumed = run("fetch", "-o", str(copy), "--resume", "--socket", str(sock),
                      timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert copy.read_bytes() == file_bytes(dump.path)


async def test_unreadable_ranges_are_reported_and_resume_retries_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * MiB)
    copy = str(tmp_path / "copy")
    bad = range(0x80 * PAGE, 0x82 * PAGE)
    async with serving(tmp_path, dump.path) as server:
        assert server.source is not None
        sock = server.config.server.socket
        with failing(server.source, bad):
            first = await asyncio.to_thread(fetch, FetchRequest(sock, copy))
        report = capsys.readouterr().err.splitlines()
        state = state_of(Path(copy))
        second = await asyncio.to_thread(fetch, FetchRequest(sock, copy, resume=True,
                                                             verify=True))
    assert first == 1
    assert report[-3:] == [
        "dumpd: the copy is incomplete: 1 ranges could not be read (zeros in the copy):",
        f"  {0x80 * PAGE:#x}+0x2000 EIO: source read failed at {0x80 * PAGE:#x}: "
        "Input/output error",
        "dumpd: --resume retries them"]
    assert state["done"] == dump.size
    assert state["errors"] == [[0x80 * PAGE, 0x2000, "EIO", f"source read failed at "
                                f"{0x80 * PAGE:#x}: Input/output error"]]
    assert second == 0
    assert Path(copy).read_bytes() == file_bytes(dump.path)
    assert not Path(f"{copy}.dumpd-fetch").exists()


def test_resume_refuses_another_dump(tmp_path: Path) -> None:
    first = build_raw(tmp_path / "a", 2 * MiB)
    other = build_raw(tmp_path / "b", 3 * MiB)
    copy = tmp_path / "copy"
    with served(tmp_path, first.path) as sock:
        assert run("fetch", "-o", str(copy), "--socket", sock).returncode == 0
    Path(f"{copy}.dumpd-fetch").write_text(json.dumps({
        "version": 1, "identity": {"size": first.size}, "offset": 0, "length": first.size,
        "done": 0, "errors": []}))
    with served(tmp_path, other.path) as sock:
        refused = run("fetch", "-o", str(copy), "--resume", "--socket", sock)
    assert (refused.returncode, refused.stderr.decode()) == (2, (
        f"dumpd: {copy}.dumpd-fetch: the server serves a different dump now (size differs);"
        " fetch again without --resume\n"))
    assert os.path.exists(copy)


def test_the_summary_rate_keeps_its_digits_at_any_speed() -> None:
    """A fetch over a slow link read `(0.00 GB/s)`: the unit follows the rate."""
    from dumpd.fetch.progress import rate

    assert [rate(n, 2.0) for n in (4.62e9, 6.4e6, 24e3, 0)] == [
        "2.31 GB/s", "3.2 MB/s", "12 kB/s", "0 kB/s"]
    assert rate(1e6, 0.0) == "0 kB/s"
