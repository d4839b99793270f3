"""dumpd.kdump.format against makedumpfile's real output: the headers it writes unpack
to what it means and pack back to the same bytes; the layout puts each part where it
put it; what is not such a file is refused in one line."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from dumpd.kdump.format import (
    DESC,
    FLAT_END_RECORD,
    MAIN_SIZE,
    SUB_SIZE,
    FormatError,
    Layout,
    MainHeader,
    SubHeader,
    check_flat_header,
    flat_header,
    flat_record,
)
from dumpd.testing.elfwriter import LoadSpec, prstatus_note, write_elf_core

PAGE = 4096
MiB = 1 << 20
LOADS = [LoadSpec(0x1000, 0x9F000), LoadSpec(1 * MiB, 7 * MiB)]
PFNS = 0x9F + 7 * 256  # pfns 1-0x9f and 256-2047
needs_makedumpfile = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                        reason="makedumpfile is not installed")


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("format") / "vmcore"
    write_elf_core(path, LOADS, notes=[prstatus_note(0), prstatus_note(1)])
    return path


def _makedumpfile(core: Path, out: Path, *options: str) -> bytes:
    subprocess.run(["makedumpfile", *options, "--message-level", "4", str(core), str(out)],
                   check=True, capture_output=True)
    return out.read_bytes()


@needs_makedumpfile
@pytest.mark.parametrize(("option", "status"), [("-c", 0x1), ("-l", 0x2)])
def test_headers_unpack_and_pack_back_to_makedumpfiles_bytes(
        core: Path, tmp_path: Path, option: str, status: int) -> None:
    data = _makedumpfile(core, tmp_path / "kdump", option, "-d", "0")
    main = MainHeader.unpack(data[:PAGE])
    sub = SubHeader.unpack(data[PAGE:2 * PAGE], main)
    assert (main.header_version, main.status, main.block_size, main.max_mapnr,
            main.nr_cpus) == (6, status, PAGE, 2048, 2)
    assert (sub.max_mapnr_64, sub.dump_level, sub.offset_note) == (2048, 0, PAGE + SUB_SIZE)
    assert data[:MAIN_SIZE] == main.pack()
    assert data[PAGE:PAGE + SUB_SIZE] == sub.pack()
    assert (sub.size_note, sub.offset_vmcoreinfo, sub.size_vmcoreinfo) == (2 * 356, 0, 0)
    assert data[sub.offset_note:sub.offset_note + 8] == struct.pack("<ii", 5, 336)
    layout = Layout.of(main, sub)
    assert layout == Layout.for_notes(PAGE, 2048, sub.size_note)
    assert (layout.bitmap1, layout.bitmap2, layout.descriptors) == (2 * PAGE, 2 * PAGE + PAGE,
                                                                    4 * PAGE)
    dumped = data[layout.bitmap2:layout.bitmap2 + layout.bitmap_size]
    count = sum(bin(byte).count("1") for byte in dumped)
    assert count == PFNS
    first = DESC.unpack_from(data, layout.descriptors)
    assert first[0] == layout.descriptors + count * DESC.size  # data right after the table


@needs_makedumpfile
def test_the_flattened_header_is_makedumpfiles(core: Path, tmp_path: Path) -> None:
    out = subprocess.run(["makedumpfile", "-F", "-c", "-d", "0", "--message-level", "4",
                          str(core)], check=True, capture_output=True).stdout
    assert out[:4096] == flat_header()
    check_flat_header(out)
    assert out.endswith(FLAT_END_RECORD)
    offset, size = struct.unpack_from(">qq", out, 4096)
    assert out[4096:4112] == flat_record(offset, size)


def test_what_is_not_a_kdump_file_is_refused_in_one_line() -> None:
    good = MainHeader(6, (b"Linux",) * 6, (1, 2), 1, PAGE, 1, 2, 2048)
    assert MainHeader.unpack(good.pack()) == good
    cases = {
        b"KDUMP  ": "7 bytes: shorter than a disk_dump_header",
        b"ELF" + good.pack()[3:]: "signature b'ELF",
        good.pack()[:8] + struct.pack("<i", 6 << 24) + good.pack()[12:]:
            "header_version 100663296: not a header this reader knows",
    }
    for data, message in cases.items():
        with pytest.raises(FormatError, match="^" + message.replace("(", r"\(")):
            MainHeader.unpack(data)
    with pytest.raises(FormatError, match=r"^block_size 1000 is not a page size$"):
        MainHeader.unpack(_with(good, block_size=1000))
    with pytest.raises(FormatError, match=r"^sub_hdr_size 1, bitmap_blocks 3: not a layout"):
        MainHeader.unpack(_with(good, bitmap_blocks=3))
    short = SubHeader(max_mapnr_64=1 << 40)
    with pytest.raises(FormatError, match=r"^bitmap_blocks 2 cannot hold 1099511627776 pfns$"):
        Layout.of(good, short)
    with pytest.raises(FormatError, match=r"^signature b'makedumpfilX"):
        check_flat_header(b"makedumpfilX" + flat_header()[12:])


def _with(main: MainHeader, **changes: int) -> bytes:
    fields = {name: getattr(main, name) for name in MainHeader.__slots__}
    fields.update(changes)
    return MainHeader(**fields).pack()


def test_before_version_6_the_32_bit_pfns_stand() -> None:
    main = MainHeader(5, (), (0, 0), 1, PAGE, 1, 2, 4096)
    raw = SubHeader(start_pfn_64=7, end_pfn_64=9, max_mapnr_64=1 << 33).pack()
    sub = SubHeader.unpack(raw, main)
    assert (sub.start_pfn_64, sub.end_pfn_64, sub.max_mapnr_64) == (7, 9, 4096)
