"""`dumpd fetch --format kdump` as an operator runs it: a real `dumpd serve` with the
memmap hook on the synthetic kernel (its VMCOREINFO, page tables and struct pages),
the real CLI, copies on disk held against makedumpfile's own files byte for byte,
against an independent reader of the format (bench.kdumppages) page for page, and
opened by crash and drgn; the flattened form through the real `makedumpfile -R`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.kdumpbitmap import INCOMPLETE, kept_dumps, read_kdump
from bench.kdumppages import descriptors, kinds, pages
from bench.pfnranges import normal
from dumpd import codecs
from dumpd.client import Client
from dumpd.fetch import FetchRequest, fetch
from dumpd.fetch.kdumpcheck import verify
from dumpd.fetch.kdumpplan import make_plan
from dumpd.fetch.output import Output
from dumpd.kdump.format import MainHeader, SubHeader
from dumpd.testing.kernel import SyntheticKernel
from tests.daemon import (
    DUMPD,
    ENV,
    one_line_error,
    run,
    served,
    slow_server,
    state_of,
    stats_json,
)
from tests.dumps import IRREGULAR, SegSpec, build_elf, build_raw, pattern
from tests.pki import Pki
from tests.realdumps import kdump_copies_read_as_the_original
from tests.servers import failing, free_port, serving

PAGE = 4096
MiB, TiB = 1 << 20, 1 << 40
FLAGS = {"zlib": "-c", "lzo": "-l", "snappy": "-p", "zstd": "-z"}
needs_makedumpfile = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                        reason="makedumpfile is not installed")
KEPT = kept_dumps(Path("/var/tmp/dumpd-lab/dumps"))  # python -m bench.lab --keep DIR


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticKernel, Path]:
    k = SyntheticKernel()
    path = tmp_path_factory.mktemp("kernel") / "vmcore"
    k.write(path)
    return k, path


def memmap(level: int) -> list[str]:
    return ["--hook", "memmap", "--hook-option", f"dump_level={level}"]


def makedumpfile(dump: Path, out: Path, *flags: str) -> bytes:
    subprocess.run(["makedumpfile", *flags, str(dump), str(out)], check=True,
                   capture_output=True, timeout=120)
    return out.read_bytes()


def expected(k: SyntheticKernel, level: int) -> tuple[set[int], set[int], dict[str, int]]:
    """The pfns makedumpfile dumps at `level`, those of them it stores as its zero page,
    and the pages left out by reason as fetch counts them (the zero pages are holes of
    the sparse file `SyntheticKernel.write` makes)."""
    ram = {pfn for first, end in k.ram for pfn in range(first, end)}
    reasons = k.reasons(level)
    zero = {pfn for pfn, why in reasons.items() if why == "zero"}
    left: dict[str, int] = {}
    for why in reasons.values():
        key = "file_hole" if why == "zero" else f"hook:{why}"
        left[key] = left.get(key, 0) + 1
    return ram - set(reasons) | zero, zero, left


def summary(left: dict[str, int]) -> str:
    return "; pages left out: " + ", ".join(f"{n:,} {why}" for why, n in sorted(left.items()))


def needs_codec(name: str) -> None:
    if name not in codecs.available():
        pytest.skip(f"{name}: its library is not installed here")


@needs_makedumpfile
@pytest.mark.parametrize(("level", "codec"), [(0, "zlib"), (31, "zlib"), (31, "lzo")])
def test_a_kdump_copy_is_the_file_makedumpfile_writes(
        tmp_path: Path, kernel: tuple[SyntheticKernel, Path], level: int, codec: str) -> None:
    needs_codec(codec)
    k, dump = kernel
    copy = tmp_path / "copy"
    zeros = ["--zeros-as-holes"] if level & 1 else []
    with served(tmp_path, str(dump), *memmap(level)) as sock:
        result = run("fetch", "--format", "kdump", "--compress", codec, *zeros, "-o",
                     str(copy), "--verify", "--socket", sock)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 0, lines
    assert copy.read_bytes() == makedumpfile(dump, tmp_path / "want", FLAGS[codec], "-d",
                                             str(level))
    dumped, _, left = expected(k, level)
    assert lines[-2].startswith(f"fetched 70.6 MiB of {copy} in ")
    assert f"; kdump-compressed ({codec}): {len(dumped):,} pages dumped in " in lines[-2]
    assert lines[-2].endswith(summary(left))
    assert lines[-1] == ("verify: the copy matches 70.6 MiB of the view (7 runs of memory, "
                         "1 PT_NOTE)")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == [
        "copy", "copy.dumpd-holes"]
    assert copy.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("codec", codecs.NAMES)
def test_every_codec_gives_every_page_back_to_an_independent_reader_crash_and_drgn(
        tmp_path: Path, kernel: tuple[SyntheticKernel, Path], codec: str) -> None:
    needs_codec(codec)
    k, dump = kernel
    copy = tmp_path / "copy"
    with served(tmp_path, str(dump), *memmap(31)) as sock:
        result = run("fetch", "--format", "kdump", "--compress", codec, "--zeros-as-holes",
                     "-o", str(copy), "--socket", sock)
    assert result.returncode == 0, result.stderr.decode()
    dumped, zero, _ = expected(k, 31)
    kd = read_kdump(copy)
    assert (kd.header_version, kd.status, kd.dump_level, kd.release, kd.machine) == (
        6, codecs.codec(codec).flag, 31, "6.1.0-synth", "x86_64")
    assert (kd.phys_base, kd.max_mapnr) == (k.phys_base, 0x200C00)
    assert kd.present == normal(k.ram)
    assert kd.dumped == normal((pfn, pfn + 1) for pfn in dumped)
    assert kd.zero == normal((pfn, pfn + 1) for pfn in zero)
    got = dict(pages(copy))
    assert sorted(got) == sorted(dumped)
    assert [pfn for pfn, page in got.items() if page != k.read_phys(pfn * PAGE, PAGE)] == []
    stored = kinds(copy)
    assert stored["zero page"] == len(zero) and stored[codec] >= 400  # the rest: raw
    assert sum(stored.values()) == len(dumped)
    if shutil.which("crash"):
        said = subprocess.run(["crash", "--osrelease", str(copy)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert said.stdout.strip() == "6.1.0-synth", said.stderr
    drgn = pytest.importorskip("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(copy))
    for pfn in (5, 4608, 0x200000 + 600, *sorted(dumped)[::500]):
        assert prog.read(pfn * PAGE, PAGE, True) == k.read_phys(pfn * PAGE, PAGE)
    with pytest.raises(drgn.FaultError, match="Excluded page"):
        prog.read(min(set(k.reasons(31)) - zero) * PAGE, 8, True)


@needs_makedumpfile
def test_the_flattened_form_into_a_pipe_rebuilds_the_same_file(
        tmp_path: Path, kernel: tuple[SyntheticKernel, Path]) -> None:
    _, dump = kernel
    copy, rebuilt = tmp_path / "copy", tmp_path / "rebuilt"
    with served(tmp_path, str(dump), *memmap(31)) as sock:
        to_file = run("fetch", "--format", "kdump", "--zeros-as-holes", "-q", "-o",
                      str(copy), "--socket", sock)
        piped = run("fetch", "-o", "-", "--zeros-as-holes", "--verify", "--socket", sock)
    assert (to_file.returncode, piped.returncode) == (0, 0), piped.stderr.decode()
    assert piped.stdout.startswith(b"makedumpfile\0\0\0\0")
    subprocess.run(["makedumpfile", "-R", str(rebuilt)], input=piped.stdout, check=True,
                   capture_output=True, timeout=60)
    assert rebuilt.read_bytes() == copy.read_bytes()
    lines = piped.stderr.decode().splitlines()
    assert lines[-1] == ("verify: the copy matches 70.6 MiB of the view (7 runs of memory, "
                         "1 PT_NOTE)")
    # A pipe has no record beside it: the pages are counted, not explained.
    assert lines[-2].endswith("; pages left out: 1,373 file_hole, 11,318 hook")


def test_the_server_compresses_over_tcp_and_this_machine_over_a_unix_socket(
        tmp_path: Path, kernel: tuple[SyntheticKernel, Path], pki: Pki) -> None:
    """Measured on the lab's dump: over a Unix socket the fetch is faster compressing
    here while the server sends (two processes at once) than having the server do both."""
    _, dump = kernel
    port = free_port()
    config = tmp_path / "dumpd.toml"
    config.write_text(f'[server]\ntcp = "127.0.0.1:{port}"\ntls_cert = "{pki.server_cert}"\n'
                      f'tls_key = "{pki.server_key}"\ntls_client_ca = "{pki.ca}"\n')
    tcp = ["--tcp", f"127.0.0.1:{port}", *pki.client_args()]
    ways = {"unix": [], "unix-zlib": ["--wire-compress", "zlib"], "tls": tcp,
            "tls-none": [*tcp, "--wire-compress", "none"]}
    streams = {}
    with served(tmp_path, str(dump), "-c", str(config), *memmap(31)) as sock:
        for name, how in ways.items():
            before = stats_json(sock)["compressed_streams"]
            result = run("fetch", "--format", "kdump", "--zeros-as-holes", "-q", "-o",
                         str(tmp_path / name), *(how if "--tcp" in how else
                                                 [*how, "--socket", sock]))
            assert result.returncode == 0, result.stderr.decode()
            streams[name] = stats_json(sock)["compressed_streams"] - before
        other = run("fetch", "--format", "kdump", "--wire-compress", "lzo", "-o",
                    str(tmp_path / "x"), "--socket", sock)
    assert streams == {"unix": 0, "unix-zlib": 7, "tls": 7, "tls-none": 0}  # 7 runs
    copies = {name: (tmp_path / name).read_bytes() for name in ways}
    assert len(set(copies.values())) == 1
    assert one_line_error(other, 2) == (
        "dumpd: fetch: --wire-compress lzo: a kdump copy's pages travel compressed with its "
        "own codec (--compress zlib); --wire-compress none has this machine compress them")
    assert not (tmp_path / "x").exists()


def _wait_for(condition: object, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def _written(copy: Path) -> bool:
    """Pages are being written after the checkpointed bitmaps (dumped is known)."""
    try:
        state = state_of(copy)["kdump"]
    except (FileNotFoundError, ValueError):
        return False
    return bool(state["dumped"] >= 0 and copy.stat().st_size > state["cursor"] + MiB)


def test_a_killed_kdump_fetch_resumes_to_the_same_file(
        tmp_path: Path, kernel: tuple[SyntheticKernel, Path]) -> None:
    _, dump = kernel
    copy, whole = tmp_path / "copy", tmp_path / "whole"
    sock = tmp_path / "dumpd.sock"
    server = slow_server(tmp_path, str(dump), sock, *memmap(0))
    try:
        fetcher = subprocess.Popen([*DUMPD, "fetch", "--format", "kdump", "-q", "-o",
                                    str(copy), "--socket", str(sock)], env=ENV)
        _wait_for(lambda: _written(copy))
        fetcher.send_signal(signal.SIGKILL)  # no last checkpoint
        fetcher.wait()
        cut = state_of(copy)["kdump"]
        resumed = run("fetch", "--format", "kdump", "-o", str(copy), "--resume",
                      "--verify", "--socket", str(sock), timeout=120)
        clean = run("fetch", "--format", "kdump", "-q", "-o", str(whole), "--socket",
                    str(sock), timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    assert cut["next_pfn"] == cut["rank"] == 0 and cut["dumped"] == 18041
    assert read_kdump(whole).status == 0x1
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert (clean.returncode, copy.read_bytes() == whole.read_bytes()) == (0, True)
    assert not Path(f"{copy}.dumpd-fetch").exists()


def test_a_kdump_fetch_cut_by_killing_the_server_resumes_from_its_checkpoint(
        tmp_path: Path, kernel: tuple[SyntheticKernel, Path]) -> None:
    _, dump = kernel
    copy, whole, sock = tmp_path / "copy", tmp_path / "whole", tmp_path / "dumpd.sock"
    server = slow_server(tmp_path, str(dump), sock, *memmap(0))
    fetcher = subprocess.Popen([*DUMPD, "fetch", "--format", "kdump", "-q", "-o", str(copy),
                                "--socket", str(sock)], stderr=subprocess.PIPE, env=ENV)
    _wait_for(lambda: _written(copy))
    server.send_signal(signal.SIGKILL)
    server.wait()
    _, err = fetcher.communicate(timeout=30)
    cut = state_of(copy)
    assert fetcher.returncode == 1
    assert 0 < cut["kdump"]["next_pfn"] < 0x200C00 and 0 < cut["kdump"]["rank"] < 18041
    assert read_kdump(copy).status == 0x1 | INCOMPLETE
    assert err.decode().splitlines()[-1].startswith(
        f"dumpd: fetch stopped at pfn {cut['kdump']['next_pfn']:#x} of 0x200c00: ")
    assert err.decode().splitlines()[-1].endswith(
        "; run the same command with --resume to continue")
    sock.unlink()
    with served(tmp_path, str(dump), *memmap(0)) as again:
        resumed = run("fetch", "--format", "kdump", "-q", "-o", str(copy), "--resume",
                      "--socket", again)
        clean = run("fetch", "--format", "kdump", "-q", "-o", str(whole), "--socket", again)
    assert (resumed.returncode, clean.returncode) == (0, 0), resumed.stderr.decode()
    assert copy.read_bytes() == whole.read_bytes()


async def test_unreadable_pages_read_as_zeros_until_resume_fetches_them_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loads = [SegSpec(0x1000, 0x9F000), SegSpec(MiB, 7 * MiB)]
    dump = build_elf(tmp_path / "vmcore", loads, cpus=2, page_size_note=PAGE)
    copy, whole = str(tmp_path / "copy"), str(tmp_path / "whole")
    seg = dump.segments[1]
    bad = range(seg.file_offset + 0x10 * PAGE, seg.file_offset + 0x12 * PAGE)
    async with serving(tmp_path, dump.path) as server:
        assert server.source is not None
        sock = server.config.server.socket

        def kdump(out: str, resume: bool = False) -> int:
            return fetch(FetchRequest(sock, out, resume=resume, quiet=True, format="kdump"))

        with failing(server.source, bad):
            first = await asyncio.to_thread(kdump, copy)
        report = capsys.readouterr().err.splitlines()
        state = state_of(Path(copy))
        incomplete = read_kdump(copy).status
        zeros = dict(pages(copy))[0x110]
        second = await asyncio.to_thread(kdump, copy, True)
        clean = await asyncio.to_thread(kdump, whole)
    assert (first, second, clean) == (1, 0, 0)
    assert report == [
        "dumpd: the copy is incomplete: 1 ranges could not be read (pages of zeros in the "
        "copy):",
        f"  {bad.start:#x}+0x2000 EIO: source read failed at {bad.start:#x}: "
        "Input/output error",
        "dumpd: --resume retries them"]
    assert state["errors"] == [[bad.start, 0x2000, "EIO", f"source read failed at "
                                f"{bad.start:#x}: Input/output error", 0x110 * PAGE,
                                0x110 - 0x100 + 0x9F]]
    assert (incomplete, zeros) == (0x1 | INCOMPLETE, bytes(PAGE))
    assert Path(copy).read_bytes()[:PAGE] == Path(whole).read_bytes()[:PAGE]
    assert dict(pages(copy)) == dict(pages(whole))
    assert read_kdump(copy).status == 0x1
    assert not Path(f"{copy}.dumpd-fetch").exists()


@pytest.mark.parametrize("align", [PAGE, 8], ids=["pages-aligned", "offsets-unaligned"])
def test_each_page_of_an_irregular_layout_gets_its_bytes(tmp_path: Path, align: int) -> None:
    """PT_LOADs not page-aligned, cut by p_filesz, empty in the file; with `align` 8 no
    page of the view starts at a page boundary of the file, so every frame of the
    stream (8 KiB) cuts pages in two."""
    dump = build_elf(tmp_path / "vmcore", IRREGULAR, cpus=1, data_align=align)
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path) as sock:
        result = run("fetch", "--format", "kdump", "--chunk", "8192", "-o", str(copy),
                     "--verify", "--socket", sock)
    assert result.returncode == 0, result.stderr.decode()
    kd = read_kdump(copy)
    # Whole pages only (0x22, the partial last one of 0x20123+0x2345, is in neither
    # bitmap); 0x12 and 0x30-0x31 are past p_filesz; 0x11 is cut by it.
    assert kd.present == ((1, 6), (0x10, 0x13), (0x20, 0x22), (0x30, 0x32), (0x40, 0x48))
    assert kd.dumped == ((1, 6), (0x10, 0x12), (0x20, 0x22), (0x40, 0x48))

    def page(pfn: int) -> bytes:
        out = bytearray(PAGE)
        for seg in dump.segments:
            lo, hi = max(pfn * PAGE, seg.paddr), min((pfn + 1) * PAGE, seg.paddr + seg.filesz)
            if lo < hi:
                out[lo - pfn * PAGE : hi - pfn * PAGE] = pattern(lo, hi - lo)
        return bytes(out)

    assert dict(pages(copy)) == {pfn: page(pfn) for first, end in kd.dumped
                                 for pfn in range(first, end)}


def test_verify_finds_a_page_changed_on_disk(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    loads = [SegSpec(0x1000, 0x9F000), SegSpec(MiB, 3 * MiB)]
    dump = build_elf(tmp_path / "vmcore", loads, cpus=1, page_size_note=PAGE)
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path) as sock:
        assert run("fetch", "--format", "kdump", "-q", "-o", str(copy), "--socket",
                   sock).returncode == 0
        _, offset, length, flags, _ = next(d for d in descriptors(copy) if d[0] == 0x180)
        assert (length, flags) == (PAGE, 0)  # the pattern does not compress: stored raw
        with open(copy, "r+b") as f:
            f.seek(offset + 100)
            f.write(b"X")
        with Client.connect(sock) as client, open(copy, "rb") as f:
            info = client.info()
            plan, notes = make_plan(client, info, codecs.ZLIB, False)
            status = verify(client, info, plan, notes, Output(str(copy), f.fileno(), "file",
                                                              owned=False), None, False)
    seg = dump.segments[1]
    assert status == 1
    assert capsys.readouterr().err.startswith(
        f"dumpd: verify: {copy} differs from the server's view at {seg.file_offset:#x}"
        f"+{seg.filesz:#x} (sha256 ")


def test_what_a_kdump_copy_cannot_be_is_refused_in_one_line(tmp_path: Path) -> None:
    elf32 = build_elf(tmp_path / "vmcore32", [SegSpec(0x1000, 0x4000)], elf_class=32)
    dump = build_raw(tmp_path / "oldmem", MiB)
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path) as sock:
        compress = run("fetch", "--compress", "zstd", "-o", str(copy), "--socket", sock)
        elf_pipe = run("fetch", "--format", "elf", "-o", "-", "--socket", sock)
        ranged = run("fetch", "--format", "kdump", "--range", "0:0x1000", "-o", str(copy),
                     "--socket", sock)
    with served(tmp_path, elf32.path) as sock:
        narrow = run("fetch", "--format", "kdump", "-o", str(copy), "--socket", sock)
    assert one_line_error(compress, 2) == (
        "dumpd: fetch: --compress zstd: only a kdump-compressed copy is compressed (add "
        "--format kdump)")
    assert one_line_error(elf_pipe, 2) == (
        "dumpd: fetch: --format elf: stdout is a pipe, and an ELF copy needs seeking (its "
        "holes); write it to a file, or send the kdump-compressed form (--format kdump, a "
        "pipe's default)")
    assert one_line_error(ranged, 2) == (
        "dumpd: fetch: --range: a kdump-compressed copy holds the whole dump; copy a range "
        "with --format elf")
    assert one_line_error(narrow, 2) == (
        "dumpd: fetch: --format kdump: the dump is not a 64-bit little-endian ELF core (the "
        "kdump-compressed format dumpd writes is for those)")
    assert sorted(os.listdir(tmp_path)) == ["oldmem", "run", "serve.log", "vmcore32"]


def _begun(copy: Path) -> bool:
    """The bitmaps are written and checkpointed."""
    try:
        return bool(state_of(copy)["kdump"]["dumped"] >= 0)
    except (FileNotFoundError, ValueError):
        return False


def test_a_partial_copy_is_resumed_only_in_the_format_it_was_begun_in(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * MiB)
    copy = tmp_path / "copy"
    sock = tmp_path / "dumpd.sock"
    server = slow_server(tmp_path, dump.path, sock)
    try:
        fetcher = subprocess.Popen([*DUMPD, "fetch", "--format", "kdump", "--compress",
                                    "zlib", "-q", "-o", str(copy), "--socket", str(sock)],
                                   env=ENV)
        _wait_for(lambda: _begun(copy))
        fetcher.send_signal(signal.SIGKILL)
        fetcher.wait()
        as_elf = run("fetch", "-o", str(copy), "--resume", "--socket", str(sock))
        other = run("fetch", "--format", "kdump", "--compress", "lzo", "-o", str(copy),
                    "--resume", "--socket", str(sock))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    assert one_line_error(as_elf, 2) == (
        f"dumpd: {copy}.dumpd-fetch: the partial copy is a kdump-compressed copy (zlib), not "
        "an ELF copy: resume it with the options it was begun with")
    assert one_line_error(other, 2) == (
        f"dumpd: {copy}.dumpd-fetch: the partial copy is a kdump-compressed copy (zlib), not "
        "a kdump-compressed copy (lzo): resume it with the options it was begun with")


def test_a_raw_dump_served_with_its_vmcoreinfo_gets_the_note_and_the_release(
        tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    info = tmp_path / "vmcoreinfo"
    info.write_text("OSRELEASE=6.1.0-57-amd64\nPAGESIZE=4096\nCRASHTIME=1796173927\n")
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path, "--vmcoreinfo", str(info)) as sock:
        result = run("fetch", "-o", str(copy), "--format", "kdump", "--verify", "--socket",
                     sock)
    assert result.returncode == 0, result.stderr.decode()
    kd = read_kdump(copy)
    assert (kd.release, kd.machine, kd.dump_level) == ("6.1.0-57-amd64", "", 0)
    assert kd.present == kd.dumped == ((0, 512),)
    data = copy.read_bytes()
    assert data[PAGE + 104 : PAGE + 104 + 24] == b"\x0b\0\0\0" + len(info.read_bytes(
        )).to_bytes(4, "little") + b"\0\0\0\0VMCOREINFO\0\0"
    assert int.from_bytes(data[12 + 6 * 65 + 6 : 12 + 6 * 65 + 14], "little") == 1796173927
    if shutil.which("crash"):
        said = subprocess.run(["crash", "--osrelease", str(copy)], capture_output=True,
                              text=True, timeout=60, check=False)
        # No NT_PRSTATUS note in a raw dump: nr_cpus is 0, which crash warns of.
        assert said.stdout.splitlines() == ["WARNING: compressed kdump: invalid nr_cpus value: 0",
                                            "6.1.0-57-amd64"]


@pytest.fixture
def far_dump(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """RAM at 0 and at 16 TiB: max_mapnr past 2**32, two bitmaps of 512 MiB each."""
    dump = build_elf(tmp_path / "vmcore", [SegSpec(0, 4 * MiB), SegSpec(16 * TiB, 4 * MiB)],
                     cpus=1, page_size_note=PAGE)
    with served(tmp_path, dump.path) as sock:
        yield Path(dump.path), sock


def _peak_rss_mib(*args: str) -> tuple[int, float]:
    """Run `dumpd ARGS` in a child of its own; its exit status and peak RSS in MiB."""
    probe = ("import resource, subprocess, sys; "
             "status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
             "print(status, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *DUMPD, *args], capture_output=True,
                          text=True, env=ENV, timeout=300, check=True)
    status, kib = done.stdout.split()
    return int(status), int(kib) / 1024


def test_memory_stays_bounded_when_the_bitmaps_are_a_gibibyte(
        tmp_path: Path, far_dump: tuple[Path, str]) -> None:
    _, sock = far_dump
    copy = tmp_path / "copy"
    to_file = _peak_rss_mib("fetch", "--format", "kdump", "-q", "--verify", "-o", str(copy),
                            "--socket", sock)
    to_pipe = _peak_rss_mib("fetch", "-q", "-o", "-", "--socket", sock)
    assert to_file[0] == to_pipe[0] == 0  # --verify read every page back: they match
    assert to_file[1] < 64 and to_pipe[1] < 64, (to_file, to_pipe)  # a bitmap: 512 MiB
    with open(copy, "rb") as f:  # the headers only: bench's reader reads the bitmaps whole
        main = MainHeader.unpack(f.read(PAGE))
        sub = SubHeader.unpack(f.read(PAGE), main)
    assert (sub.max_mapnr_64, main.max_mapnr) == ((16 * TiB + 4 * MiB) // PAGE, 0xFFFFFFFF)
    assert main.bitmap_blocks == 2 * (16 * TiB // PAGE // 8 // PAGE + 1)
    assert copy.stat().st_blocks * 512 < 16 * MiB  # the bitmaps' empty blocks are holes


@pytest.mark.slow
@needs_makedumpfile
@pytest.mark.skipif(not KEPT, reason="no lab dumps kept in /var/tmp/dumpd-lab/dumps "
                    "(python -m bench.lab --keep /var/tmp/dumpd-lab/dumps)")
@pytest.mark.parametrize("dump", KEPT, ids=[p.name for p in KEPT])
def test_kdump_copies_of_a_real_dump_read_as_the_original(tmp_path: Path, dump: Path) -> None:
    # crash with the debug vmlinux is tests/test_lab.py's (slow: a minute a dump)
    sizes = asyncio.run(kdump_copies_read_as_the_original(tmp_path, dump, vmlinux=False))
    assert sizes["zstd"] < sizes["zlib"] < dump.stat().st_size // 10
