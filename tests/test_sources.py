"""Sources: ELF cores of every irregular shape, raw images, and malformed files."""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dumpd.errors import DumpdError, StartupError
from dumpd.kernel.vmcoreinfo import parse_lines
from dumpd.sources import Segment, Source, open_source
from dumpd.sources.base import MappedRun, PhysPiece, PhysRun
from dumpd.sources.elf import ElfSource, vmcoreinfo_text
from tests.daemon import info_json, log_lines, one_line_error, run, served, server_pid
from tests.dumps import (
    EM_386,
    ET_EXEC,
    Dump,
    SegSpec,
    build_elf,
    build_raw,
    file_bytes,
    patch,
    pattern,
    truncate,
)

# --------------------------------------------------------------------------- helpers


def read_view(src: Source, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    src.read_into(offset, memoryview(buf))
    return bytes(buf)


def read_phys(src: Source, paddr: int, length: int) -> bytes:
    out = bytearray()
    for piece in src.phys_to_file(paddr, length):
        if piece.file_offset is None:
            out += bytes(piece.length)
        else:
            out += read_view(src, piece.file_offset, piece.length)
    return bytes(out)


def assert_reads_match_file(src: Source, path: str | Path) -> None:
    """`read_into` returns exactly the file's bytes: whole, and around every run edge."""
    data = file_bytes(path)
    assert src.size == len(data)
    assert read_view(src, 0, src.size) == data
    edges = {0, src.size} | {run.file_start for run in src.file_map}
    for edge in sorted(edges):
        start, end = max(0, edge - 5), min(src.size, edge + 7)
        assert read_view(src, start, end - start) == data[start:end]
    assert read_view(src, src.size, 0) == b""


def elf(path: str | Path, page_size: int = 4096, size: int | None = None) -> ElfSource:
    src = open_source(str(path), "auto", page_size, size)
    assert isinstance(src, ElfSource)
    return src


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def startup_error(
    path: str | Path, kind: str = "auto", page_size: int = 4096, size: int | None = None
) -> str:
    """The one-line StartupError `open_source` raises; also checks no fd leaked."""
    before = open_fds()
    with pytest.raises(StartupError) as info:
        open_source(str(path), kind, page_size, size)
    assert open_fds() <= before
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --------------------------------------------------------------------------- well-formed ELF


def test_elf64_vmcore_with_notes_and_hole(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    dump = build_elf(
        path, [SegSpec(0x0, 0x9F000), SegSpec(0x100000, 0x300000)], cpus=2,
        page_size_note=4096, vmcoreinfo={"OSRELEASE": "6.8.0", "NUMBER(phys_base)": "0"},
    )
    assert dump.segments == (
        Segment(0x0, 0x1000, 0x9F000, 0x9F000),
        Segment(0x100000, 0xA0000, 0x300000, 0x300000),
    )
    assert dump.size == 0x3A0000
    with closing(elf(path, page_size=8192)) as src:
        assert src.kind == "elf"
        assert src.path == str(path)
        assert src.size == 0x3A0000
        assert src.page_size == 4096
        assert src.vmcoreinfo == {
            "PAGESIZE": "4096", "OSRELEASE": "6.8.0", "NUMBER(phys_base)": "0",
        }
        assert (src.elf_class, src.byte_order, src.machine) == (64, "little", 62)
        assert src.segments == dump.segments
        assert src.file_map == (
            MappedRun(0, 0x1000, None),
            MappedRun(0x1000, 0xA0000, 0x0),
            MappedRun(0xA0000, 0x3A0000, 0x100000),
        )
        assert src.phys_map == (
            PhysRun(0x0, 0x9F000, 0x1000),
            PhysRun(0x100000, 0x400000, 0xA0000),
        )
        assert src.phys_to_file(0x9E000, 0x1000) == [PhysPiece(0x1000, 0x9F000)]
        assert src.phys_to_file(0x100010, 0x20) == [PhysPiece(0x20, 0xA0010)]
        for bad in (0x9F000, 0xFFFFF, 0x400000, 1 << 40):
            with pytest.raises(DumpdError) as info:
                src.phys_to_file(bad, 1)
            assert info.value.code == "ERANGE"
            assert info.value.message == f"physical address {bad:#x} is not in any segment"
        assert read_phys(src, 0x0, 0x9F000) == pattern(0x0, 0x9F000)
        assert read_phys(src, 0x100000, 0x300000) == pattern(0x100000, 0x300000)
        assert_reads_match_file(src, path)
        assert (src.kind, src.path, src.size, src.page_size) == ("elf", str(path), 0x3A0000, 4096)
        assert src.segments == (Segment(0x0, 0x1000, 0x9F000, 0x9F000),
                                Segment(0x100000, 0xA0000, 0x300000, 0x300000))


@pytest.mark.parametrize("elf_class", [32, 64])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_elf_classes_and_byte_orders(tmp_path: Path, elf_class: int, endian: str) -> None:
    path = tmp_path / "vmcore"
    build_elf(
        path,
        [SegSpec(0x0, 0x3000, offset=0x1000),
         SegSpec(0x100000, 0x1800, filesz=0x1000, offset=0x4000)],
        elf_class=elf_class, endian=endian, cpus=1, page_size_note=65536,
    )
    # The bytes really are in the requested class and byte order (e_type is 4).
    assert file_bytes(path, 4, 2) == bytes([elf_class // 32, 1 if endian == "little" else 2])
    assert file_bytes(path, 16, 2) == (b"\x04\x00" if endian == "little" else b"\x00\x04")
    with closing(elf(path)) as src:
        assert (src.elf_class, src.byte_order) == (elf_class, endian)
        assert src.page_size == 65536
        assert src.vmcoreinfo == {"PAGESIZE": "65536"}
        assert src.segments == (
            Segment(0x0, 0x1000, 0x3000, 0x3000),
            Segment(0x100000, 0x4000, 0x1000, 0x1800),
        )
        assert src.file_map == (
            MappedRun(0, 0x1000, None),
            MappedRun(0x1000, 0x4000, 0x0),
            MappedRun(0x4000, 0x5000, 0x100000),
        )
        assert src.phys_map == (
            PhysRun(0x0, 0x3000, 0x1000),
            PhysRun(0x100000, 0x101000, 0x4000),
            PhysRun(0x101000, 0x101800, None),
        )
        assert src.phys_to_file(0x100F00, 0x200) == [
            PhysPiece(0x100, 0x4F00), PhysPiece(0x100, None),
        ]
        assert read_phys(src, 0x100000, 0x1800) == pattern(0x100000, 0x1000) + bytes(0x800)
        assert_reads_match_file(src, path)


@pytest.mark.parametrize("elf_class", [32, 64])
def test_phdrs_after_a_gap_bogus_ehsize_padded_entries(tmp_path: Path, elf_class: int) -> None:
    path = tmp_path / "vmcore"
    phentsize = 40 if elf_class == 32 else 72
    dump = build_elf(
        path, [SegSpec(0x2000, 0x1000), SegSpec(0x8000, 0x2000)], elf_class=elf_class,
        phoff=0x300, ehsize=7, phentsize=phentsize, page_size_note=16384,
    )
    assert dump.layout is not None and dump.layout.phoff == 0x300
    with closing(elf(path)) as src:
        assert src.page_size == 16384
        assert src.segments == (
            Segment(0x2000, 0x1000, 0x1000, 0x1000),
            Segment(0x8000, 0x2000, 0x2000, 0x2000),
        )
        assert src.file_map == (
            MappedRun(0, 0x1000, None),
            MappedRun(0x1000, 0x2000, 0x2000),
            MappedRun(0x2000, 0x4000, 0x8000),
        )
        assert src.phys_map == (PhysRun(0x2000, 0x3000, 0x1000), PhysRun(0x8000, 0xA000, 0x2000))
        assert read_phys(src, 0x8000, 0x2000) == pattern(0x8000, 0x2000)
        assert_reads_match_file(src, path)


@pytest.mark.parametrize("elf_class", [32, 64])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_pn_xnum_count_from_section_header_0(
    tmp_path: Path, elf_class: int, endian: str
) -> None:
    path = tmp_path / "vmcore"
    build_elf(
        path, [SegSpec(0x1000 * i, 0x1000, offset=0x1000 * (i + 1)) for i in range(0, 10, 2)],
        elf_class=elf_class, endian=endian, pn_xnum=True, page_size_note=4096,
    )
    e_phnum_at = 44 if elf_class == 32 else 56
    assert file_bytes(path, e_phnum_at, 2) == b"\xff\xff"
    with closing(elf(path)) as src:
        assert src.segments == tuple(
            Segment(0x1000 * i, 0x1000 * (i + 1), 0x1000, 0x1000) for i in range(0, 10, 2)
        )
        assert src.phys_map == tuple(
            PhysRun(0x1000 * i, 0x1000 * (i + 1), 0x1000 * (i + 1)) for i in range(0, 10, 2)
        )
        assert src.file_map[0] == MappedRun(0, 0x1000, None)
        assert src.file_map[-1] == MappedRun(0x9000, 0xA000, 0x8000)
        assert src.page_size == 4096
        assert_reads_match_file(src, path)


def test_kernel_text_inside_direct_map_first_wins(tmp_path: Path) -> None:
    """A small PT_LOAD listed first wins over the big one covering the same addresses."""
    path = tmp_path / "vmcore"
    build_elf(
        path,
        [SegSpec(0x10000, 0x2000, offset=0x1000, vaddr=0xFFFFFFFF81000000),
         SegSpec(0x0, 0x40000, offset=0x3000, vaddr=0xFFFF888000000000)],
    )
    with closing(elf(path)) as src:
        assert src.page_size == 4096
        assert src.vmcoreinfo == {}
        assert src.file_map == (
            MappedRun(0, 0x1000, None),
            MappedRun(0x1000, 0x3000, 0x10000),
            MappedRun(0x3000, 0x43000, 0x0),
        )
        assert src.phys_map == (
            PhysRun(0x0, 0x10000, 0x3000),
            PhysRun(0x10000, 0x12000, 0x1000),
            PhysRun(0x12000, 0x40000, 0x15000),
        )
        assert src.phys_to_file(0xF000, 0x4000) == [
            PhysPiece(0x1000, 0x12000), PhysPiece(0x2000, 0x1000), PhysPiece(0x1000, 0x15000),
        ]
        assert read_phys(src, 0x0, 0x40000) == pattern(0x0, 0x40000)
        assert_reads_match_file(src, path)


def test_overlapping_file_offsets_first_wins(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(
        path,
        [SegSpec(0x100000, 0x3000, offset=0x1000),
         SegSpec(0x200000, 0x2000, offset=0x3000),
         SegSpec(0x300000, 0x1000, offset=0x4800)],
    )
    with closing(elf(path)) as src:
        assert src.size == 0x5800
        assert src.file_map == (
            MappedRun(0, 0x1000, None),
            MappedRun(0x1000, 0x4000, 0x100000),
            MappedRun(0x4000, 0x5000, 0x201000),
            MappedRun(0x5000, 0x5800, 0x300800),
        )
        assert src.phys_map == (
            PhysRun(0x100000, 0x103000, 0x1000),
            PhysRun(0x200000, 0x202000, 0x3000),
            PhysRun(0x300000, 0x301000, 0x4800),
        )
        # Shared file bytes hold the first PT_LOAD's memory, for every PT_LOAD using them.
        assert read_phys(src, 0x100000, 0x3000) == pattern(0x100000, 0x3000)
        assert read_phys(src, 0x200000, 0x2000) == pattern(0x102000, 0x1000) + pattern(
            0x201000, 0x1000
        )
        assert read_phys(src, 0x300000, 0x1000) == pattern(0x201800, 0x800) + pattern(
            0x300800, 0x800
        )
        assert_reads_match_file(src, path)


def test_unaligned_offsets_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(
        path,
        [SegSpec(0x1003, 0x1235, offset=0x1001), SegSpec(0x5000, 0xFFF, filesz=0x7FF)],
        data_align=1, tail=3,
    )
    with closing(elf(path)) as src:
        assert src.size == 0x2A38
        assert src.segments == (
            Segment(0x1003, 0x1001, 0x1235, 0x1235),
            Segment(0x5000, 0x2236, 0x7FF, 0xFFF),
        )
        assert src.file_map == (
            MappedRun(0, 0x1001, None),
            MappedRun(0x1001, 0x2236, 0x1003),
            MappedRun(0x2236, 0x2A35, 0x5000),
            MappedRun(0x2A35, 0x2A38, None),
        )
        assert src.phys_map == (
            PhysRun(0x1003, 0x2238, 0x1001),
            PhysRun(0x5000, 0x57FF, 0x2236),
            PhysRun(0x57FF, 0x5FFF, None),
        )
        assert src.phys_to_file(0x57FE, 2) == [PhysPiece(1, 0x2A34), PhysPiece(1, None)]
        assert read_phys(src, 0x1003, 0x1235) == pattern(0x1003, 0x1235)
        assert read_phys(src, 0x5000, 0xFFF) == pattern(0x5000, 0x7FF) + bytes(0x800)
        assert_reads_match_file(src, path)


def test_filesz_below_memsz_down_to_zero(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(
        path,
        [SegSpec(0x0, 0x2000, offset=0x1000),
         SegSpec(0x2000, 0x3000, filesz=0, offset=0x3000),
         SegSpec(0x5000, 0x1000, filesz=0x800, offset=0x3000)],
    )
    with closing(elf(path)) as src:
        assert src.segments == (
            Segment(0x0, 0x1000, 0x2000, 0x2000),
            Segment(0x2000, 0x3000, 0x0, 0x3000),
            Segment(0x5000, 0x3000, 0x800, 0x1000),
        )
        assert src.file_map == (
            MappedRun(0, 0x1000, None),
            MappedRun(0x1000, 0x3000, 0x0),
            MappedRun(0x3000, 0x3800, 0x5000),
        )
        assert src.phys_map == (
            PhysRun(0x0, 0x2000, 0x1000),
            PhysRun(0x2000, 0x5000, None),
            PhysRun(0x5000, 0x5800, 0x3000),
            PhysRun(0x5800, 0x6000, None),
        )
        assert src.phys_to_file(0x1800, 0x1000) == [
            PhysPiece(0x800, 0x2800), PhysPiece(0x800, None),
        ]
        assert read_phys(src, 0x0, 0x6000) == (
            pattern(0x0, 0x2000) + bytes(0x3000) + pattern(0x5000, 0x800) + bytes(0x800)
        )
        assert_reads_match_file(src, path)


def test_em_386_in_elfclass64_is_accepted(tmp_path: Path) -> None:
    """QEMU dumps of real-mode guests: ELFCLASS64 with e_machine EM_386."""
    path = tmp_path / "vmcore"
    build_elf(path, [SegSpec(0x0, 0xA0000)], machine=EM_386, page_size_note=4096)
    with closing(elf(path)) as src:
        assert (src.elf_class, src.machine) == (64, EM_386)
        assert src.segments == (Segment(0x0, 0x1000, 0xA0000, 0xA0000),)
        assert src.phys_map == (PhysRun(0x0, 0xA0000, 0x1000),)
        assert_reads_match_file(src, path)


HOLEY = [SegSpec(0x1000, 0x1000, offset=0x1000), SegSpec(0x10000, 0x2000, offset=0x2000)]


def test_holes_in_physical_memory(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(path, HOLEY)
    with closing(elf(path)) as src:
        assert src.phys_map == (PhysRun(0x1000, 0x2000, 0x1000), PhysRun(0x10000, 0x12000, 0x2000))
        assert src.phys_to_file(0x1800, 0x800) == [PhysPiece(0x800, 0x1800)]
        assert src.phys_to_file(0x10000, 0x2000) == [PhysPiece(0x2000, 0x2000)]
        assert src.phys_to_file(0x1800, 0) == []
        for paddr, length in [(0x0, 1), (0xFFF, 2), (0x2000, 1), (0xFFFF, 1), (0x12000, 1),
                              (0x11FFF, 2)]:
            with pytest.raises(DumpdError) as info:
                src.phys_to_file(paddr, length)
            assert info.value.code == "ERANGE"


@pytest.mark.parametrize(
    ("paddr", "length", "hole"), [(0x1800, 0x1000, 0x2000), (0x800, 0x1000, 0x800)]
)
def test_range_running_into_a_hole_is_erange(
    tmp_path: Path, paddr: int, length: int, hole: int
) -> None:
    path = tmp_path / "vmcore"
    build_elf(path, HOLEY)
    with closing(elf(path)) as src, pytest.raises(DumpdError) as info:
        src.phys_to_file(paddr, length)
    assert info.value.code == "ERANGE"
    assert info.value.message == f"physical address {hole:#x} is not in any segment"


def test_vmcoreinfo_without_pagesize_uses_the_configured_page_size(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(path, [SegSpec(0x0, 0x1000)], vmcoreinfo={"OSRELEASE": "5.14", "KERNELOFFSET": "0"})
    with closing(elf(path, page_size=16384)) as src:
        assert src.page_size == 16384
        assert src.vmcoreinfo == {"OSRELEASE": "5.14", "KERNELOFFSET": "0"}


def test_zero_padded_note_segment_is_accepted(tmp_path: Path) -> None:
    """kexec's note buffers are zero-filled past the last note (n_namesz 0 ends the list)."""
    path = tmp_path / "vmcore"
    dump = build_elf(path, [SegSpec(0x0, 0x1000)], cpus=1, page_size_note=8192)
    assert dump.layout is not None
    for extra in (4, 0x20):  # stray zero bytes, then a zero note header and more
        patch(path, 64 + 32, (dump.layout.note_size + extra).to_bytes(8, "little"))
        with closing(elf(path)) as src:
            assert src.page_size == 8192


def test_parse_vmcoreinfo_text() -> None:
    note = b"PAGESIZE=4096\nno equals\n=x\nA=1=2\nA=3\r\nB=\n\0C=4\n"
    assert parse_lines(vmcoreinfo_text(note)) == {
        "PAGESIZE": "4096", "A": "1=2", "B": "",
    }


@pytest.mark.slow
def test_a_few_hundred_mib(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    dump = build_elf(
        path, [SegSpec(0x1000000, 0x1000000), SegSpec(0x0, 0x10000000)], page_size_note=4096
    )
    assert dump.size == 0x11001000
    with closing(elf(path)) as src:
        for paddr in (0x0, 0xFFF000, 0x1000000, 0x1FFF000, 0x2000000, 0xFFFF000):
            assert read_phys(src, paddr, 0x2000 if paddr < 0xFFFF000 else 0x1000) == pattern(
                paddr, 0x2000 if paddr < 0xFFFF000 else 0x1000
            )


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils readelf")
@pytest.mark.parametrize(
    ("elf_class", "endian", "pn_xnum"),
    [(32, "big", False), (64, "little", True), (32, "little", True)],
)
def test_written_files_agree_with_readelf(
    tmp_path: Path, elf_class: int, endian: str, pn_xnum: bool
) -> None:
    """Cross-check the writer (and so the parser's round trip) against binutils."""
    path = tmp_path / "vmcore"
    dump = build_elf(
        path, [SegSpec(0x0, 0x3000), SegSpec(0x100000, 0x2000, filesz=0x800, offset=0x7003)],
        elf_class=elf_class, endian=endian, pn_xnum=pn_xnum, phoff=0x100, page_size_note=4096,
    )
    out = subprocess.run(
        ["readelf", "-lW", str(path)], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    loads = [[int(row[i], 16) for i in (1, 3, 4, 5)] for row in rows if row[:1] == ["LOAD"]]
    assert loads == [[s.file_offset, s.paddr, s.filesz, s.memsz] for s in dump.segments]
    notes = [[int(row[i], 16) for i in (1, 4)] for row in rows if row[:1] == ["NOTE"]]
    assert dump.layout is not None
    assert notes == [[dump.layout.note_offset, dump.layout.note_size]]


# --------------------------------------------------------------------------- raw


def test_raw_image(tmp_path: Path) -> None:
    path = tmp_path / "oldmem.img"
    build_raw(path, 0x5123)
    with closing(open_source(str(path), page_size=16384)) as src:
        assert src.kind == "raw"
        assert src.size == 0x5123
        assert src.page_size == 16384
        assert src.segments == (Segment(0, 0, 0x5123, 0x5123),)
        assert src.file_map == (MappedRun(0, 0x5123, 0),)
        assert src.phys_map == (PhysRun(0, 0x5123, 0),)
        assert src.phys_to_file(0x10, 0x20) == [PhysPiece(0x20, 0x10)]
        with pytest.raises(DumpdError) as info:
            src.phys_to_file(0x5123, 1)
        assert info.value.code == "ERANGE"
        assert read_phys(src, 0, 0x5123) == pattern(0, 0x5123)
        assert_reads_match_file(src, path)


def test_raw_size_override_and_forced_kinds(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(path, [SegSpec(0x0, 0x2000)])
    with closing(open_source(str(path), kind="raw", size=0x1800)) as src:
        assert (src.kind, src.size) == ("raw", 0x1800)
        assert src.segments == (Segment(0, 0, 0x1800, 0x1800),)
        assert read_view(src, 0, 0x1800) == file_bytes(path, 0, 0x1800)
    with closing(open_source(str(path), kind="elf")) as src:
        assert src.kind == "elf"
    assert startup_error(path, kind="raw", size=0x10000) == (
        f"{path}: size 0x10000 is larger than the file (0x3000 bytes)"
    )
    assert startup_error(path, kind="raw", size=-1) == f"{path}: size -1 is negative"


def test_elf_size_override_shrinks_the_view(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(path, [SegSpec(0x0, 0x2000)], tail=0x100)
    with closing(open_source(str(path), size=0x3000)) as src:
        assert src.size == 0x3000
        assert src.file_map == (MappedRun(0, 0x1000, None), MappedRun(0x1000, 0x3000, 0))
    assert startup_error(path, size=0x2800) == (
        f"{path}: PT_LOAD 0 at file offset 0x1000+0x2000 runs past the end of the file "
        "(0x2800 bytes)"
    )


def test_devices(tmp_path: Path) -> None:
    """Character devices report size 0: `size` must come from the configuration."""
    assert startup_error("/dev/null") == (
        "/dev/null: size unknown: set `size` in the configuration"
    )
    with closing(open_source("/dev/zero", size=0x3000)) as src:
        assert (src.kind, src.size) == ("raw", 0x3000)
        assert read_view(src, 0x1000, 0x2000) == bytes(0x2000)
    with closing(open_source("/dev/null", kind="raw", size=0x1000)) as src:
        with pytest.raises(DumpdError) as info:
            read_view(src, 0, 0x10)
        assert info.value.code == "EIO"


def test_read_after_the_file_shrank_is_eio(tmp_path: Path) -> None:
    path = tmp_path / "oldmem.img"
    build_raw(path, 0x3000)
    with closing(open_source(str(path))) as src:
        truncate(path, 0x1000)
        with pytest.raises(DumpdError) as info:
            read_view(src, 0x800, 0x1000)
        assert info.value.code == "EIO"


def test_close_releases_the_fd(tmp_path: Path) -> None:
    path = tmp_path / "oldmem.img"
    build_raw(path, 0x1000)
    before = open_fds()
    src = open_source(str(path))
    assert open_fds() > before
    src.close()
    src.close()
    assert open_fds() == before


# --------------------------------------------------------------------------- not memory

AS_KDUMP = 'serve it as kind = "kdump" (or auto)'


def dump_header(magic: bytes, rest: bytes = b"") -> bytes:
    """A page of a dump format's header: its signature at offset 0, then `rest`, zeros."""
    return (magic + rest).ljust(PAGE_4K, b"\0") + pattern(0, PAGE_4K)


def compressed(tmp_path: Path, tool: str) -> bytes:
    """A raw image compressed by the real `tool` (its default, framed format)."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    image = tmp_path / "image"
    image.write_bytes(pattern(0, 0x3000))
    return subprocess.run([tool, "-c", str(image)], capture_output=True, check=True).stdout


PAGE_4K = 4096
FORMATS: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "diskdump": (lambda _: dump_header(b"DISKDUMP", (1).to_bytes(4, "little")),
                 "a diskdump dump (the diskdump format), not {expected}: dumpd cannot serve "
                 "it; read it with crash"),
    # sadump_mod.h: struct sadump_part_header, signature1 "sadu", signature2 "mp\0\0"
    "sadump": (lambda _: dump_header((0x75646173).to_bytes(4, "little")
                                     + (0x0000706D).to_bytes(4, "little")),
               "an sadump dump, not {expected}: dumpd cannot serve it; read it with crash, "
               "or convert it with makedumpfile (without -E: to a kdump-compressed dump, "
               "which dumpd serves)"),
    "gzip": (lambda tmp: compressed(tmp, "gzip"), "a gzip-compressed file, not {expected}: "
             "decompress it first (gunzip -k {path}) and serve the result"),
    "xz": (lambda tmp: compressed(tmp, "xz"), "an xz-compressed file, not {expected}: "
           "decompress it first (unxz -k {path}) and serve the result"),
    "zstd": (lambda tmp: compressed(tmp, "zstd"), "a zstd-compressed file, not {expected}: "
             "decompress it first (unzstd {path}) and serve the result"),
    "bzip2": (lambda tmp: compressed(tmp, "bzip2"), "a bzip2-compressed file, not {expected}: "
              "decompress it first (bunzip2 -k {path}) and serve the result"),
    "lz4": (lambda tmp: compressed(tmp, "lz4"), "an lz4-compressed file, not {expected}: "
            "decompress it first (unlz4 {path}) and serve the result"),
}
EXPECTED = {"auto": "an ELF core, a kdump-compressed dump or raw memory",
            "raw": 'raw memory as kind = "raw" says', "elf": 'an ELF core as kind = "elf" says',
            "kdump": 'a kdump-compressed dump as kind = "kdump" says'}
SERVED = {
    # diskdump_mod.h: struct disk_dump_header, signature "KDUMP   ", header_version 6
    "kdump": (dump_header(b"KDUMP   ", (6).to_bytes(4, "little")),
              "a kdump-compressed dump (makedumpfile output without -E)"),
    # makedumpfile.h: struct makedumpfile_header, char signature[16], type and version
    # (TYPE_FLAT_HEADER 1, VERSION_FLAT_HEADER 1) as big-endian int64
    "flattened": (dump_header(b"makedumpfile\0\0\0\0", (1).to_bytes(8, "big") * 2),
                  "a flattened makedumpfile dump (makedumpfile -F output)"),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_dumps_and_compressed_files_are_refused_by_name(tmp_path: Path, fmt: str,
                                                        kind: str) -> None:
    """Never served as memory, whatever the kind: clients would get compressed bytes."""
    make, message = FORMATS[fmt]
    path = tmp_path / f"dump.{fmt}"
    path.write_bytes(make(tmp_path))
    assert startup_error(path, kind=kind) == f"{path}: " + message.format(
        expected=EXPECTED[kind], path=path)


@pytest.mark.parametrize("kind", ["elf", "raw"])
@pytest.mark.parametrize("fmt", sorted(SERVED))
def test_serve_refuses_a_kdump_file_as_another_kind_in_one_line(tmp_path: Path, fmt: str,
                                                                 kind: str) -> None:
    """Served as what it is (tests/test_kdump_source.py), never as memory or an ELF core."""
    path = tmp_path / "vmcore.kdump"
    head, what = SERVED[fmt]
    path.write_bytes(head)
    error = one_line_error(run("serve", "--source", str(path), "--kind", kind,
                               "--socket", str(tmp_path / "dumpd.sock")), 2)
    assert error == f"dumpd: {path}: {what}, not {EXPECTED[kind]}: {AS_KDUMP}"
    assert not (tmp_path / "dumpd.sock").exists()


@pytest.mark.parametrize("head,expect", [
    (b"KDUM", "only 4 bytes, the start of a kdump-compressed dump (makedumpfile output "
              'without -E) cut short, not raw memory (kind = "raw" serves it as raw memory)'),
    (b"makedumpfile", "only 12 bytes, the start of a flattened makedumpfile dump "
                      "(makedumpfile -F output) cut short, not raw memory "
                      '(kind = "raw" serves it as raw memory)'),
    (b"\x7fEL", "ELF header truncated: the file is only 0x3 bytes"),
    (b"\x7f", "ELF header truncated: the file is only 0x1 bytes"),
], ids=["kdump", "flattened", "elf", "elf-1"])
def test_auto_refuses_a_signature_cut_short(tmp_path: Path, head: bytes, expect: str) -> None:
    """A file shorter than a signature it begins is a dump cut short, not memory."""
    path = tmp_path / "vmcore"
    path.write_bytes(head)
    sock = tmp_path / "dumpd.sock"
    error = one_line_error(run("serve", "--source", str(path), "--socket", str(sock)), 2)
    assert error == f"dumpd: {path}: {expect}"
    assert not sock.exists()
    with closing(open_source(str(path), "raw")) as src:  # the operator may insist
        assert src.size == len(head)


def test_auto_says_when_it_takes_a_file_as_raw(tmp_path: Path) -> None:
    path = tmp_path / "random.img"
    path.write_bytes(random.Random(7).randbytes(0x3000))
    with served(tmp_path, str(path)) as sock:
        info = info_json(sock)
        data = run("read", "0", "0x3000", "--socket", sock).stdout
        pid = server_pid(sock)
    assert (info["source"]["kind"], data) == ("raw", path.read_bytes())
    sock_path = tmp_path / "run" / "dumpd.sock"
    assert log_lines(tmp_path / "serve.log", pid)[0] == (
        f'INFO: serving {path} (raw physical memory: no ELF or known dump signature, as '
        f'kind = "raw", 12288 bytes, page size 4096) on {sock_path}, hook (none registered)')


def test_auto_on_a_character_device_is_raw_and_said() -> None:
    """/dev/oldmem is a character device: memory, never sniffed for dump signatures."""
    with closing(open_source("/dev/zero", size=0x1000)) as src:
        assert (src.kind, src.guess) == ("raw", "a character device with no ELF header")


def test_explicit_kinds_and_elf_cores_make_no_guess(tmp_path: Path) -> None:
    raw = tmp_path / "oldmem.img"
    build_raw(raw, 0x1000)
    core = tmp_path / "vmcore"
    standard(core)
    for path, kind, size in ((raw, "raw", None), (core, "auto", None),
                             ("/dev/zero", "raw", 0x1000)):
        with closing(open_source(str(path), kind, size=size)) as src:
            assert src.guess is None


def test_a_failed_start_prints_only_its_error(tmp_path: Path) -> None:
    """The guess is logged once start-up succeeded, not above a start-up error."""
    path = tmp_path / "oldmem.img"
    build_raw(path, 0x1000)
    failed = run("serve", "--source", str(path), "--hook", "nope",
                 "--socket", str(tmp_path / "dumpd.sock"))
    assert one_line_error(failed, 2).startswith("dumpd: [hook] unknown hook 'nope'; ")


# --------------------------------------------------------------------------- cannot open


def test_open_errors(tmp_path: Path) -> None:
    assert startup_error(tmp_path / "missing") == (
        f"{tmp_path / 'missing'}: cannot open: No such file or directory"
    )
    assert startup_error(tmp_path) == f"{tmp_path}: cannot open: Is a directory"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert startup_error(fifo) == f"{fifo}: cannot open: not a regular file or a device"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "sock"))
        assert startup_error(tmp_path / "sock") == (
            f"{tmp_path / 'sock'}: cannot open: not a regular file or a device")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert startup_error(empty) == f"{empty}: the file is empty"
    assert startup_error(empty, kind="elf") == f"{empty}: the file is empty"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_raw(path, 0x1000)
    path.chmod(0)
    assert startup_error(path) == f"{path}: cannot open: Permission denied"


def test_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "oldmem.img"
    build_raw(path, 0x1000)
    assert startup_error(path, kind="sadump") == (
        f"{path}: unknown source kind 'sadump' (expected auto, elf, raw or kdump)"
    )
    for page_size in (0, 256, 3000):
        assert startup_error(path, page_size=page_size) == (
            f"{path}: page_size {page_size} is not a power of two >= 512"
        )


# --------------------------------------------------------------------------- malformed ELF


def standard(
    path: Path, elf_class: int = 64, endian: str = "little", pn_xnum: bool = False
) -> Dump:
    """PT_NOTE 0 (VMCOREINFO; at 0xe8 in ELF64), PT_LOAD 1 at 0x1000+0x2000, 2 at 0x3000+0x3000."""
    return build_elf(
        path, [SegSpec(0x0, 0x2000, offset=0x1000), SegSpec(0x100000, 0x3000, offset=0x3000)],
        elf_class=elf_class, endian=endian, pn_xnum=pn_xnum, page_size_note=4096,
    )


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        (10, "ELF header truncated: the file is only 0xa bytes"),
        (40, "ELF64 header truncated: the file is only 0x28 bytes, the header needs 0x40"),
        (0x64, "program header table (3 entries) at file offset 0x40+0xa8 runs past the end "
               "of the file (0x64 bytes)"),
        (0x100, "PT_LOAD 1 at file offset 0x1000+0x2000 runs past the end of the file "
                "(0x100 bytes)"),
        (0x2000, "PT_LOAD 1 at file offset 0x1000+0x2000 runs past the end of the file "
                 "(0x2000 bytes)"),
        (0x5FFF, "PT_LOAD 2 at file offset 0x3000+0x3000 runs past the end of the file "
                 "(0x5fff bytes)"),
    ],
)
def test_truncated_elf64(tmp_path: Path, size: int, problem: str) -> None:
    path = tmp_path / "vmcore"
    assert standard(path).size == 0x6000
    truncate(path, size)
    assert startup_error(path) == f"{path}: {problem}"


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        (2, "ELF header truncated: the file is only 0x2 bytes"),
        (40, "ELF32 header truncated: the file is only 0x28 bytes, the header needs 0x34"),
        (0x50, "program header table (3 entries) at file offset 0x34+0x60 runs past the end "
               "of the file (0x50 bytes)"),
        (0x4000, "PT_LOAD 2 at file offset 0x3000+0x3000 runs past the end of the file "
                 "(0x4000 bytes)"),
    ],
)
def test_truncated_elf32(tmp_path: Path, size: int, problem: str) -> None:
    path = tmp_path / "vmcore"
    standard(path, elf_class=32, endian="big")
    truncate(path, size)
    assert startup_error(path, kind="elf") == f"{path}: {problem}"


@pytest.mark.parametrize(
    ("offset", "data", "problem"),
    [
        (0, b"\x7fELG", "not an ELF file (bad magic 7f454c47, expected 7f454c46)"),
        (4, b"\x03", "bad ELF class 3 (expected 1 for ELF32 or 2 for ELF64)"),
        (5, b"\x00", "bad ELF data encoding 0 (expected 1 for little or 2 for big endian)"),
        (6, b"\x02", "bad ELF version 2 (expected 1)"),
        (54, (48).to_bytes(2, "little"),
         "e_phentsize 48 is smaller than an ELF64 program header (56 bytes)"),
        (56, b"\0\0", "no program headers (e_phnum is 0)"),
        (32, bytes(8), "e_phoff is 0 but there are 3 program headers"),
        (32, (0x5FB0).to_bytes(8, "little"), "program header table (3 entries) at file offset "
         "0x5fb0+0xa8 runs past the end of the file (0x6000 bytes)"),
        # PT_NOTE 0's p_offset / PT_LOAD 2's p_filesz, p_memsz
        (64 + 8, (0x5FF0).to_bytes(8, "little"), "PT_NOTE 0 at file offset 0x5ff0+0x28 runs "
         "past the end of the file (0x6000 bytes)"),
        (64 + 2 * 56 + 32, (0x4000).to_bytes(8, "little"),
         "PT_LOAD 2: p_filesz 0x4000 is larger than p_memsz 0x3000"),
        (64 + 2 * 56 + 32, (0x4000).to_bytes(8, "little") * 2,
         "PT_LOAD 2 at file offset 0x3000+0x4000 runs past the end of the file (0x6000 bytes)"),
        # the VMCOREINFO note's n_descsz, then its n_namesz
        (0xE8 + 4, (0x100).to_bytes(4, "little"), "PT_NOTE 0: the note at segment offset 0x0 "
         "(name 0xb + desc 0x100 bytes) runs past the end of the segment (0x28 bytes)"),
        (0xE8, (0x30).to_bytes(4, "little"), "PT_NOTE 0: the note at segment offset 0x0 "
         "(name 0x30 + desc 0xe bytes) runs past the end of the segment (0x28 bytes)"),
        (0xE8 + 12, b"VMCOREINFO\0\0PAGESIZE=1000\n", "VMCOREINFO PAGESIZE=1000 is not a "
         "power of two >= 512"),
        (0xE8 + 12, b"VMCOREINFO\0\0PAGESIZE=256\n\n", "VMCOREINFO PAGESIZE=256 is not a "
         "power of two >= 512"),
        (0xE8 + 12, b"VMCOREINFO\0\0PAGESIZE=4k\n\n\n", "VMCOREINFO PAGESIZE='4k' is not a "
         "number"),
    ],
)
def test_malformed_elf64(tmp_path: Path, offset: int, data: bytes, problem: str) -> None:
    path = tmp_path / "vmcore"
    dump = standard(path)
    assert dump.layout is not None and dump.layout.note_offset == 0xE8
    patch(path, offset, data)
    assert startup_error(path, kind="elf") == f"{path}: {problem}"


def test_bad_magic_with_auto_is_raw(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    standard(path)
    patch(path, 0, b"\x7fELG")
    with closing(open_source(str(path))) as src:
        assert src.kind == "raw"


def test_not_a_core_file(tmp_path: Path) -> None:
    path = tmp_path / "a.out"
    build_elf(path, [SegSpec(0x400000, 0x1000)], e_type=ET_EXEC)
    assert startup_error(path) == f"{path}: not an ELF core file (e_type 2, expected 4 for ET_CORE)"


def test_no_pt_load(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    build_elf(path, [], page_size_note=4096)
    assert startup_error(path) == f"{path}: no PT_LOAD segments: the core holds no memory"


def test_stray_bytes_after_the_last_note(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    dump = standard(path)
    assert dump.layout is not None
    patch(path, 64 + 32, (0x28 + 6).to_bytes(8, "little"))  # PT_NOTE 0 p_filesz
    patch(path, 0xE8 + 0x28, b"junk!!")
    assert startup_error(path) == f"{path}: PT_NOTE 0: 6 stray bytes after the last note"


def test_pn_xnum_errors(tmp_path: Path) -> None:
    path = tmp_path / "vmcore"
    dump = standard(path, pn_xnum=True)
    assert dump.layout is not None and dump.layout.shoff == 0xE8
    patch(path, 40, bytes(8))  # e_shoff
    assert startup_error(path) == (
        f"{path}: e_phnum is PN_XNUM (0xffff) but there is no section header 0 (e_shoff is 0)"
    )
    patch(path, 40, (0x5FE0).to_bytes(8, "little"))
    assert startup_error(path) == (
        f"{path}: section header 0 (PN_XNUM) at file offset 0x5fe0+0x40 runs past the end "
        "of the file (0x6000 bytes)"
    )
    patch(path, 40, (0xE8).to_bytes(8, "little"))
    patch(path, 0xE8 + 44, (70000).to_bytes(4, "little"))  # sh_info
    assert startup_error(path) == (
        f"{path}: program header table (70000 entries) at file offset 0x40+0x3bd080 runs "
        "past the end of the file (0x6000 bytes)"
    )


# --------------------------------------------------------------------------- properties

HYPOTHESIS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def load_specs(draw: st.DrawFn) -> list[SegSpec]:
    specs = []
    for _ in range(draw(st.integers(1, 5))):
        memsz = draw(st.integers(0, 0x1800))
        specs.append(SegSpec(
            paddr=draw(st.integers(0, 0x4000)),
            memsz=memsz,
            filesz=draw(st.integers(0, memsz)),
            offset=draw(st.integers(0x1000, 0x3000)),
        ))
    return specs


def first_containing(segments: Sequence[Segment], point: int, key: str) -> Segment | None:
    for seg in segments:
        start, length = (seg.paddr, seg.memsz) if key == "phys" else (seg.file_offset, seg.filesz)
        if start <= point < start + length:
            return seg
    return None


@contextmanager
def built(specs: list[SegSpec], elf_class: int) -> Iterator[tuple[Path, ElfSource]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vmcore"
        build_elf(path, specs, elf_class=elf_class, data_align=1)
        with closing(elf(path)) as src:
            yield path, src


@HYPOTHESIS
@given(specs=load_specs(), elf_class=st.sampled_from([32, 64]))
def test_maps_follow_first_wins_per_byte(specs: list[SegSpec], elf_class: int) -> None:
    """Byte-by-byte model: first PT_LOAD wins; the file holds the first PT_LOAD's bytes."""
    with built(specs, elf_class=elf_class) as (path, src):
        data = file_bytes(path)
        segments = src.segments
        for run in src.file_map:
            for off in {run.file_start, run.file_end - 1}:
                seg = first_containing(segments, off, "file")
                want = None if seg is None else seg.paddr + off - seg.file_offset
                paddr = None if run.paddr is None else run.paddr + off - run.file_start
                assert paddr == want
                if seg is not None:
                    assert data[off] == pattern(seg.paddr + off - seg.file_offset, 1)[0]
        edges = {s.paddr + d for s in segments for d in (0, s.filesz, s.memsz)}
        points = set(range(0, 0x5800, 0x3F)) | {e + d for e in edges for d in (-1, 0, 1)}
        for paddr in sorted(p for p in points if p >= 0):
            want = expected_piece(segments, paddr)
            if want is None:
                with pytest.raises(DumpdError):
                    src.phys_to_file(paddr, 1)
            else:
                assert src.phys_to_file(paddr, 1) == [want]
        for run, after in zip(src.phys_map, (*src.phys_map[1:], None), strict=False):
            if after is not None and run.end == after.start:  # one piece from each run
                assert src.phys_to_file(run.end - 1, 2) == [
                    expected_piece(segments, run.end - 1), expected_piece(segments, run.end),
                ]
            else:  # the range runs into a hole
                with pytest.raises(DumpdError) as info:
                    src.phys_to_file(run.end - 1, 2)
                assert info.value.message == f"physical address {run.end:#x} is not in any segment"
        assert_reads_match_file(src, path)


def expected_piece(segments: Sequence[Segment], paddr: int) -> PhysPiece | None:
    """Where one physical byte is served from, by the model (None: in no segment)."""
    seg = first_containing(segments, paddr, "phys")
    if seg is None:
        return None
    rel = paddr - seg.paddr
    return PhysPiece(1, seg.file_offset + rel if rel < seg.filesz else None)


@HYPOTHESIS
@given(
    cut=st.integers(0, 0x3000),
    flips=st.lists(st.tuples(st.integers(0, 0x200), st.integers(0, 255)), max_size=4),
    elf_class=st.sampled_from([32, 64]),
    endian=st.sampled_from(["little", "big"]),
)
def test_damaged_files_fail_cleanly(
    cut: int, flips: list[tuple[int, int]], elf_class: int, endian: str
) -> None:
    """Truncated or corrupted cores either open or raise a one-line StartupError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vmcore"
        build_elf(
            path, [SegSpec(0x0, 0x800, offset=0x1000), SegSpec(0x1000, 0x1000, filesz=0x800)],
            elf_class=elf_class, endian=endian, cpus=2, page_size_note=4096, pn_xnum=cut % 2 == 1,
            data_align=1,
        )
        for offset, value in flips:
            patch(path, offset, bytes([value]))
        truncate(path, min(cut, os.stat(path).st_size))
        try:
            src = open_source(str(path), kind="elf")
        except StartupError as exc:
            assert "\n" not in str(exc)
            assert str(exc).startswith(f"{path}: ")
            return
        with closing(src):
            assert_reads_match_file(src, path)
            for seg in src.segments:
                assert seg.file_offset + seg.filesz <= src.size


def test_opening_never_writes(tmp_path: Path) -> None:
    """Sources never write: opening works on a read-only file and leaves it unchanged."""
    path = tmp_path / "vmcore"
    standard(path)
    before = file_bytes(path)
    path.chmod(stat.S_IRUSR)
    with closing(open_source(str(path))) as src:
        assert_reads_match_file(src, path)
    assert file_bytes(path) == before
