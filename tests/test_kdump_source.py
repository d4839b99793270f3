"""The kdump source (dumpd/sources/kdump.py): kdump-compressed files of the real
makedumpfile, of every codec, flattened; their ELF view; refusals in one line; a bad
page failing alone; memory that does not grow with the memory a file claims."""

from __future__ import annotations

import os
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from bench.pfnranges import Ranges, subtract
from dumpd import codecs
from dumpd.errors import DumpdError, StartupError
from dumpd.kdump.format import DESC, FLAT_END_RECORD, flat_header, flat_record
from dumpd.sources import flattened, open_source
from dumpd.sources.base import ReadError
from dumpd.sources.elf import ElfSource
from dumpd.sources.kdump import KdumpSource
from dumpd.testing.elfwriter import LoadSpec, pattern, prstatus_note, write_elf_core
from dumpd.testing.kernel import SyntheticKernel
from tests.kdumps import (
    PAGE,
    allocated,
    descriptor_at,
    drgn_of,
    dumped,
    makedumpfile,
    needs_makedumpfile,
    patch,
    pfns,
    present,
    write_kdump,
)

MiB = 1 << 20
# pfns 1-0x9e and a partial 0x9f, 256-4095, and 8192-10239 of which only 8192-9215
# are in the file (p_filesz): makedumpfile leaves out the partial page and the pages
# with no data even at level 0.
LOADS = [LoadSpec(0x1000, 0x9EC00), LoadSpec(1 * MiB, 15 * MiB),
         LoadSpec(32 * MiB, 8 * MiB, filesz=4 * MiB)]
PRESENT = ((1, 0xA0), (256, 4096), (8192, 10240))
LEVEL_0 = ((1, 0x9F), (256, 4096), (8192, 9216))


def _zero_pfn(pfn: int) -> bool:
    return pfn % 7 == 0 or 300 <= pfn < 400


def _page(pfn: int) -> bytes:
    """Page `pfn` of the core: zero (for -d 1), text that compresses well, or the
    pattern (which does not: stored as it is)."""
    if _zero_pfn(pfn):
        return bytes(PAGE)
    if pfn % 3 == 0:
        return b"%016x" % pfn * (PAGE // 16)
    return pattern(pfn * PAGE, PAGE)


def _fill(paddr: int, length: int) -> bytes:
    first = paddr // PAGE
    data = b"".join(_page(pfn) for pfn in range(first, -(-(paddr + length) // PAGE)))
    return data[paddr - first * PAGE : paddr - first * PAGE + length]


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("core") / "vmcore"
    write_elf_core(path, LOADS, notes=[prstatus_note(0)], fill=_fill)
    return path


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticKernel, Path]:
    synthetic = SyntheticKernel()
    path = tmp_path_factory.mktemp("kernel") / "vmcore"
    synthetic.write(str(path))
    return synthetic, path


def kdump_source(path: Path, kind: str = "auto") -> KdumpSource:
    source = open_source(str(path), kind)
    assert isinstance(source, KdumpSource)
    return source


def read(source: KdumpSource, offset: int, length: int) -> bytes:
    buffer = bytearray(length)
    source.read_into(offset, memoryview(buffer))
    return bytes(buffer)


def view_pfns(source: KdumpSource, ranges: list[tuple[int, int]]) -> list[int]:
    """The pfns whose pages the view ranges `ranges` (whole pages) hold."""
    out = []
    for start, end in ranges:
        for seg in source.segments:
            lo, hi = max(start, seg.file_offset), min(end, seg.file_offset + seg.filesz)
            out += [(seg.paddr + offset - seg.file_offset) // PAGE
                    for offset in range(lo, hi, PAGE)]
    return sorted(out)


def assert_pages_are_the_cores(source: KdumpSource, core: Path, dumped_runs: Ranges,
                               present_runs: Ranges, drgn: bool = False) -> None:
    """The view's segments are the 1st bitmap's runs, page-aligned; every dumped page
    is the ELF core's (and, with `drgn`, what drgn reads of the file: libkdumpfile
    needs its VMCOREINFO); every other page is zeros and `excluded`."""
    assert [(s.paddr // PAGE, (s.paddr + s.memsz) // PAGE) for s in source.segments] == list(
        present_runs)
    assert all(s.file_offset % PAGE == 0 and s.filesz == s.memsz for s in source.segments)
    prog = drgn_of(source.path) if drgn else None  # libkdumpfile reading the same file
    with closing(open_source(str(core))) as elf:
        for pfn in pfns(dumped_runs):
            got = source.read_phys(pfn * PAGE, PAGE)
            assert got == elf.read_phys(pfn * PAGE, PAGE), pfn
            assert prog is None or got == prog.read(pfn * PAGE, PAGE, True), pfn
    excluded = pfns(subtract(present_runs, dumped_runs))
    for pfn in excluded:
        assert source.read_phys(pfn * PAGE, PAGE) == bytes(PAGE)
    assert view_pfns(source, source.excluded(0, source.size)) == excluded


# --------------------------------------------------------------------------- real makedumpfile


@needs_makedumpfile
@pytest.mark.parametrize("options", [("-c", "-d", "0"), ("-l", "-d", "0"), ("-c", "-d", "1"),
                                     ("-l", "-d", "1")], ids=" ".join)
def test_every_dumped_page_is_the_elf_cores(core: Path, tmp_path: Path,
                                            options: tuple[str, ...]) -> None:
    """Level 1 keeps zero pages dumped (as makedumpfile's one zero page): zeros, equal."""
    kdump = makedumpfile(core, tmp_path / "dump.kdump", *options)
    assert (present(kdump), dumped(kdump)) == (PRESENT, LEVEL_0)
    with closing(kdump_source(kdump)) as source:
        assert (source.kind, source.page_size, source.arch) == ("kdump", PAGE, "")
        assert source.vmcoreinfo_text is None
        assert_pages_are_the_cores(source, core, LEVEL_0, PRESENT)


@needs_makedumpfile
@pytest.mark.parametrize("options", [("-c", "-d", "0"), ("-l", "-d", "0"), ("-c", "-d", "1"),
                                     ("-c", "-d", "31"), ("-F", "-l", "-d", "31"),
                                     ("-F", "-c", "-d", "0")], ids=" ".join)
def test_a_synthetic_kernel_at_every_compression_and_form(
        kernel: tuple[SyntheticKernel, Path], tmp_path: Path, options: tuple[str, ...]) -> None:
    """Its VMCOREINFO and machine come through; the flattened form reads as the file
    `makedumpfile -R` rebuilds from it."""
    synthetic, core = kernel
    kdump = makedumpfile(core, tmp_path / "dump", *options)
    plain = kdump
    if "-F" in options:
        plain = tmp_path / "rearranged"
        with open(kdump, "rb") as flat_file:
            subprocess.run(["makedumpfile", "-R", str(plain)], stdin=flat_file, check=True,
                           capture_output=True)
    with closing(kdump_source(kdump)) as source:
        assert (source.arch, source.vmcoreinfo_text) == ("x86_64", synthetic.vmcoreinfo)
        assert source.dump_level == int(options[-1])
        assert_pages_are_the_cores(source, core, dumped(plain), present(plain), drgn=True)
        if "-F" in options:
            assert "flattened" in source.read_path_why
            with closing(kdump_source(plain)) as rebuilt:
                assert read(source, 0, source.size) == read(rebuilt, 0, rebuilt.size)


@needs_makedumpfile
def test_the_view_is_an_elf_core_that_readelf_and_dumpd_read(
        kernel: tuple[SyntheticKernel, Path], tmp_path: Path) -> None:
    """Written out, the view is an ELF core: its notes the dump's (VMCOREINFO among
    them), a PT_LOAD per run of memory at page-aligned offsets, the same pages."""
    synthetic, core = kernel
    kdump = makedumpfile(core, tmp_path / "dump.kdump", "-c", "-d", "31")
    view = tmp_path / "view.elf"
    with closing(kdump_source(kdump)) as source:
        view.write_bytes(read(source, 0, source.size))
        segments = source.segments
    with closing(open_source(str(view))) as elf:
        assert isinstance(elf, ElfSource)
        assert (elf.segments, elf.vmcoreinfo_text, elf.arch) == (
            segments, synthetic.vmcoreinfo, "x86_64")
    if shutil.which("readelf") is None:
        return
    shown = subprocess.run(["readelf", "-W", "-l", "-n", str(view)], capture_output=True,
                           text=True, check=True).stdout
    loads = [line.split() for line in shown.splitlines() if line.strip().startswith("LOAD")]
    assert [(int(f[1], 16), int(f[3], 16), int(f[4], 16), f[6]) for f in loads] == [
        (s.file_offset, s.paddr, s.filesz, "RWE") for s in segments]
    assert "VMCOREINFO" in shown and shown.count("NT_PRSTATUS") == 2


# --------------------------------------------------------------------------- every codec


@pytest.mark.parametrize("codec", codecs.NAMES)
def test_every_codec(tmp_path: Path, codec: str) -> None:
    """Pages that shrink are stored compressed, the others as they are; all read back,
    whole or in pieces across pages and segments."""
    if codec not in codecs.available():
        pytest.skip(f"{codec}: its library is not installed")
    memory = ((1, 200), (256, 400))
    written = write_kdump(tmp_path / "dump", memory, _page, codec=codec,
                          dumped=((1, 150), (160, 200), (256, 400)))
    flags = set()
    with open(written.path, "rb") as f:
        for at in written.descriptor.values():
            f.seek(at)
            flags.add(DESC.unpack(f.read(DESC.size))[2])
    assert flags == {0, codecs.codec(codec).flag}
    with closing(kdump_source(written.path)) as source:
        assert source.arch == "x86_64"
        for pfn in pfns(memory):
            want = bytes(PAGE) if 150 <= pfn < 160 else _page(pfn)
            assert source.read_phys(pfn * PAGE, PAGE) == want, pfn
        assert view_pfns(source, source.excluded(0, source.size)) == list(range(150, 160))
        seg = source.segments[0]
        at = seg.file_offset + 4 * PAGE - 3  # the last 3 bytes of pfn 4 on
        assert read(source, at, 2 * PAGE + 9) == (_page(4)[-3:] + _page(5) + _page(6)
                                                   + _page(7)[:6])
        assert read(source, seg.file_offset + seg.filesz - 8, 16) == (
            _page(199)[-8:] + _page(256)[:8])
        assert read(source, 0, 4) == b"\x7fELF"


def test_reads_on_the_loop_are_small_and_from_the_os_cache(tmp_path: Path) -> None:
    """`read_cached_into` decompresses only small reads whose bitmap blocks are known:
    all of it or nothing."""
    written = write_kdump(tmp_path / "dump", ((0, 64),), _page)
    with closing(kdump_source(written.path)) as source:
        offset = source.segments[0].file_offset
        page = memoryview(bytearray(PAGE))
        assert source.read_cached_into(offset, page) == 0  # the bitmap is not read yet
        source.read_into(offset, page)
        assert source.read_cached_into(offset + PAGE, page) == PAGE
        assert page == _page(1)
        assert source.read_cached_into(offset, memoryview(bytearray(16 * PAGE))) == 0


def test_copy_to_writes_the_views_bytes_not_the_files(tmp_path: Path) -> None:
    """What a socket would get from `copy_to` is the view, decompressed (the engine
    never asks it of a kdump source: `spliced` is False)."""
    written = write_kdump(tmp_path / "dump", ((0, 8),), _page)
    with closing(kdump_source(written.path)) as source:
        assert not source.spliced and source.excludes
        offset = source.segments[0].file_offset + PAGE - 5
        reader, writer = os.pipe()
        try:
            assert source.copy_to(writer, offset, PAGE + 10) == PAGE + 10
            assert source.copy_to(writer, source.size, 10) == 0
            assert os.read(reader, 2 * PAGE) == _page(0)[-5:] + _page(1) + _page(2)[:5]
        finally:
            os.close(reader)
            os.close(writer)


# --------------------------------------------------------------------------- refused


def refusal(path: Path, kind: str = "auto") -> str:
    """The one-line StartupError of opening `path`, without the path in front."""
    with pytest.raises(StartupError) as info:
        open_source(str(path), kind)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return write_kdump(tmp_path / "dump", ((1, 40),), _page,
                       vmcoreinfo=b"OSRELEASE=6.1.0\nPAGESIZE=4096\n").path


def test_headers_that_are_wrong_are_refused_in_one_line(small: Path) -> None:
    data = small.read_bytes()
    small.write_bytes(data[:100])
    assert refusal(small) == ("not a kdump-compressed dump dumpd reads: 100 bytes: shorter "
                              "than a disk_dump_header")
    small.write_bytes(data)
    patch(small, 8, (7).to_bytes(4, "little"))  # header_version
    assert refusal(small) == ("kdump-compressed header_version 7: newer than the versions "
                              "dumpd reads (1 to 6)")
    patch(small, 8, (6).to_bytes(4, "little"))
    patch(small, PAGE + 96, (1 << 20).to_bytes(8, "little"))  # max_mapnr_64
    assert refusal(small) == ("not a kdump-compressed dump dumpd reads: bitmap_blocks 2 "
                              "cannot hold 1048576 pfns")
    patch(small, PAGE + 96, (40).to_bytes(8, "little"))
    patch(small, PAGE + 12, (1).to_bytes(4, "little"))  # split
    assert refusal(small).startswith("one part of a dump split with makedumpfile --split")
    patch(small, PAGE + 12, bytes(4))
    patch(small, PAGE + 48, (1 << 30).to_bytes(8, "little"))  # offset_note
    assert refusal(small) == ("its notes at 0x40000000+0x38 run past the end of the file "
                              f"({len(data):#x} bytes)")
    small.write_bytes(data.replace(b"PAGESIZE=4096", b"PAGESIZE=8192"))
    assert refusal(small) == "its VMCOREINFO says PAGESIZE=8192, its header block_size 4096"
    small.write_bytes(data[: 4 * PAGE - 1])  # the bitmaps end with block 4
    assert refusal(small) == ("cut short: its bitmaps end at 0x4000, past the end of the "
                              "file (0x3fff bytes)")


def test_a_dump_of_no_memory_or_too_many_runs_is_refused(tmp_path: Path) -> None:
    empty = write_kdump(tmp_path / "empty", ((1, 2),), _page, dumped=(), max_mapnr=64)
    patch(empty.path, empty.layout.bitmap1, bytes(1))
    assert refusal(empty.path) == "its 1st bitmap is empty: the dump holds no memory"
    runs = tuple((pfn, pfn + 1) for pfn in range(0, 2 * 65534, 2))
    striped = write_kdump(tmp_path / "striped", runs, _page, dumped=())
    assert refusal(striped.path) == ("its 1st bitmap has more than 65533 runs of memory, more "
                                     "than an ELF core's program headers hold")


def test_kinds_that_disagree_with_the_file_are_refused(small: Path, core: Path) -> None:
    said = ', not {}: serve it as kind = "kdump" (or auto)'
    kdump = "a kdump-compressed dump (makedumpfile output without -E)"
    assert refusal(small, "elf") == kdump + said.format('an ELF core as kind = "elf" says')
    assert refusal(small, "raw") == kdump + said.format('raw memory as kind = "raw" says')
    assert refusal(core, "kdump") == ('not a kdump-compressed dump as kind = "kdump" says (no '
                                      "kdump-compressed or flattened signature at offset 0)")
    with closing(kdump_source(small, "kdump")) as source:
        assert source.kind == "kdump"


def test_a_codec_whose_library_is_missing_is_refused(small: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = codecs.by_flag

    def by_flag(flag: int) -> codecs.Codec:
        if flag == codecs.ZLIB:
            raise DumpdError("ENOSYS", "zlib: the library is not installed")
        return real(flag)

    monkeypatch.setattr(codecs, "by_flag", by_flag)
    assert refusal(small) == "its pages are compressed with zlib: the library is not installed"


def flat(path: Path, records: list[tuple[int, bytes]], end: bool = True) -> Path:
    """A flattened file of `records` (offset, data), with its end record unless not."""
    with open(path, "wb") as f:
        f.write(flat_header())
        for offset, data in records:
            f.write(flat_record(offset, len(data)) + data)
        if end:
            f.write(FLAT_END_RECORD)
    return path


def test_flattened_files_in_any_order_and_those_refused(small: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = small.read_bytes()
    half = len(data) // 2
    halves = [(0, data[:half]), (half, data[half:])]
    path = tmp_path / "f"
    rearrange = f"rearrange it first (makedumpfile -R OUTPUT < {path}) and serve OUTPUT"
    with closing(kdump_source(flat(path, halves[::-1]))) as source, \
            closing(kdump_source(small)) as plain:
        assert source.pages.page_size == PAGE
        assert read(source, 0, source.size) == read(plain, 0, plain.size)
    assert refusal(flat(path, halves, end=False)) == (
        f"cut short: it ends at {len(data) + 4096 + 32:#x}, before its end record (2 records)")
    flat(path, halves)
    os.truncate(path, len(data) + 4096 + 16)
    assert refusal(path) == (f"cut short: the record at {half + 4096 + 16:#x} "
                             f"({len(data) - half:#x} bytes) runs past the end of the file "
                             f"({len(data) + 4096 + 16:#x} bytes)")
    assert refusal(flat(path, [*halves, (100, b"x")])) == (
        f"its records overlap at offset 0x64 of the dump: {rearrange}")
    backwards = [(len(data) + 17 - k, b"x") for k in range(17)]
    assert refusal(flat(path, [halves[0], *backwards])) == (
        f"its records come in an order makedumpfile does not write: {rearrange}")
    monkeypatch.setattr(flattened, "MAX_RECORDS", 1)
    assert refusal(flat(path, halves)) == (
        f"more than 1 records, more than dumpd indexes: {rearrange}")
    monkeypatch.undo()
    flat(path, [(0, b"\x7fELF" + bytes(60))])
    assert refusal(path) == ("a flattened ELF core (makedumpfile -E -F output): rearrange it "
                             f"(makedumpfile -R OUTPUT < {path}) and serve OUTPUT")


# --------------------------------------------------------------------------- a bad page


CORRUPT: dict[str, tuple[Callable[[int], bytes], str]] = {
    "past-the-end": (lambda at: DESC.pack(1 << 40, 100, codecs.ZLIB, 0),
                     "its data is outside the page data of the file"),
    "size": (lambda at: DESC.pack(at, 2 * PAGE, codecs.ZLIB, 0),
             "a compressed page of 8192 bytes"),
    "raw-size": (lambda at: DESC.pack(at, 100, 0, 0),
                 "an uncompressed page of 100 bytes, not 4096"),
    "flags": (lambda at: DESC.pack(at, 100, 0x40, 0),
              "page compressed with an unknown method (flags 0x40)"),
    "empty": (lambda at: bytes(DESC.size), "an empty page descriptor"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_bad_page_descriptor_fails_its_page_alone(tmp_path: Path, case: str) -> None:
    corrupt, why = CORRUPT[case]
    written = write_kdump(tmp_path / "dump", ((1, 40),), _page)
    with open(written.path, "rb") as f:
        f.seek(written.descriptor[9])
        at = DESC.unpack(f.read(DESC.size))[0]
    patch(written.path, written.descriptor[9], corrupt(at))
    with closing(kdump_source(written.path)) as source:
        page_9 = source.segments[0].file_offset + 8 * PAGE
        with pytest.raises(ReadError) as info:
            read(source, source.segments[0].file_offset, 20 * PAGE)
        assert (info.value.offset, info.value.length) == (page_9, PAGE)
        assert f"{written.path}: pfn 0x9: {why}" in info.value.reason
        assert read(source, page_9 - PAGE, PAGE) == _page(8)
        assert read(source, page_9 + PAGE, 10 * PAGE) == b"".join(map(_page, range(10, 20)))


@needs_makedumpfile
def test_a_page_that_does_not_decompress_fails_alone(core: Path, tmp_path: Path) -> None:
    kdump = makedumpfile(core, tmp_path / "dump.kdump", "-c", "-d", "0")
    at = descriptor_at(kdump, 297)  # text: compressed
    with open(kdump, "rb") as f:
        f.seek(at)
        offset, size, flags, _ = DESC.unpack(f.read(DESC.size))
    assert flags == codecs.ZLIB
    patch(kdump, offset + size // 2, b"\xff" * 8)
    with closing(kdump_source(kdump)) as source:
        with pytest.raises(ReadError, match="pfn 0x129: zlib: a compressed page does not "
                                            "decompress"):
            source.read_phys(297 * PAGE, PAGE)
        assert source.read_phys(296 * PAGE, PAGE) == _page(296)
        assert source.read_phys(298 * PAGE, PAGE) == _page(298)


def test_a_file_cut_short_in_its_pages_fails_those_pages(tmp_path: Path) -> None:
    written = write_kdump(tmp_path / "dump", ((1, 40),), _page)
    with open(written.path, "rb") as f:
        f.seek(written.descriptor[30])
        at = DESC.unpack(f.read(DESC.size))[0]
    os.truncate(written.path, at + 1)
    with closing(kdump_source(written.path)) as source:
        assert source.read_phys(29 * PAGE, PAGE) == _page(29)
        with pytest.raises(ReadError, match="pfn 0x1e: its data is outside the page data"):
            source.read_phys(30 * PAGE, PAGE)


# --------------------------------------------------------------------------- bounded


def test_a_huge_claimed_memory_costs_no_memory_per_pfn(tmp_path: Path) -> None:
    """A file claiming 2**36 pfns (256 TiB of memory: bitmaps of 8 GiB each, sparse):
    opened and read at both ends in a few MiB, the holes of its bitmaps never read."""
    top = 1 << 36
    memory = ((1, 100), (top - 50, top - 10))
    written = write_kdump(tmp_path / "huge", memory, _page, max_mapnr=top)
    assert allocated(written.path) < 4 * MiB and written.path.stat().st_size > 16 << 30
    tracemalloc.start()
    try:
        with closing(kdump_source(written.path)) as source:
            last = source.read_phys((top - 11) * PAGE, PAGE)
            first = source.read_phys(PAGE, PAGE)
            excluded = source.excluded(0, source.size)
            rank = source.pages.dumped
            assert rank.memory < MiB and rank.blocks_read < 200, (rank.memory, rank.blocks_read)
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (first, last, excluded) == (_page(1), _page(top - 11), [])
    assert peak < 16 * MiB, peak
