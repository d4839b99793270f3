"""ELF core files (/proc/vmcore, `makedumpfile -E`, QEMU dump-guest-memory) as sources.

Everything is read with `os.pread` and checked against the file size before it is
unpacked, so a truncated or malformed file is a one-line `StartupError` naming the file
and the problem, never a `struct.error`. Program header numbers in messages are
0-based indexes into the program header table.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from dumpd.errors import StartupError
from dumpd.kernel.vmcoreinfo import parse_lines
from dumpd.sources.base import Segment, Source
from dumpd.sources.raw import view_size

ELF_MAGIC = b"\x7fELF"
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF
MIN_PAGE_SIZE = 512
VMCOREINFO_MAX = 1 << 20
"""The kernel's VMCOREINFO is one page; anything past 1 MiB is not a real one."""

ARCHES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm",
          62: "x86_64", 183: "aarch64", 243: "riscv64", 258: "loongarch64"}
"""e_machine to the architecture's usual name."""


@dataclass(frozen=True, slots=True)
class _Layout:
    """Struct formats of one ELF class and where the Phdr fields we use sit in them."""

    name: str
    elf_class: int
    ehdr: str
    phdr: str
    shdr: str
    phdr_fields: tuple[int, int, int, int, int]  # p_type, p_offset, p_paddr, p_filesz, p_memsz


_LAYOUTS = {
    1: _Layout("ELF32", 32, "16sHHIIIIIHHHHHH", "8I", "10I", (0, 1, 3, 4, 5)),
    2: _Layout("ELF64", 64, "16sHHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", (0, 2, 4, 5, 6)),
}
_BYTE_ORDERS = {1: ("<", "little"), 2: (">", "big")}
_SH_INFO = 7  # index of sh_info in both Shdr layouts


@dataclass(frozen=True, slots=True)
class _Header:
    layout: _Layout
    endian: str
    byte_order: str
    machine: int
    phoff: int
    phentsize: int
    phnum: int
    shoff: int

    @property
    def elf_class(self) -> int:
        return self.layout.elf_class


@dataclass(frozen=True, slots=True)
class _Phdr:
    index: int
    type: int
    offset: int
    paddr: int
    filesz: int
    memsz: int


class ElfSource(Source):
    """A source over an ELF core; `vmcoreinfo` holds the VMCOREINFO note's KEY=VALUE lines."""

    def __init__(
        self, path: str, fd: int, size: int, page_size: int, segments: Sequence[Segment],
        *, vmcoreinfo: dict[str, str], elf_class: int, byte_order: str, machine: int,
    ) -> None:
        super().__init__("elf", path, fd, size, page_size, segments)
        self.vmcoreinfo = vmcoreinfo
        self.arch = ARCHES.get(machine, f"e_machine {machine}")
        self.elf_class = elf_class
        self.byte_order = byte_order
        self.machine = machine


class _File:
    """Bounds-checked positional reads whose errors name the file."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size

    def fail(self, problem: str) -> NoReturn:
        raise StartupError(f"{self.path}: {problem}")

    def past_end(self, what: str, offset: int, length: int) -> NoReturn:
        self.fail(
            f"{what} at file offset {offset:#x}+{length:#x} runs past the end of the file "
            f"({self.size:#x} bytes)"
        )

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset + length > self.size:
            self.past_end(what, offset, length)
        chunks = []
        done = 0
        while done < length:
            try:
                chunk = os.pread(self.fd, length - done, offset + done)
            except OSError as exc:
                self.fail(f"cannot read {what} at file offset {offset + done:#x}: {exc.strerror}")
            if not chunk:
                self.fail(f"{what} at file offset {offset:#x}: the file ended early at "
                          f"{offset + done:#x}")
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)


def is_valid_page_size(value: int) -> bool:
    """A page size must be a power of two of at least 512 bytes."""
    return value >= MIN_PAGE_SIZE and value & (value - 1) == 0


def _parse_header(f: _File) -> _Header:
    head = f.read(0, min(f.size, 64), "ELF header")
    magic = head[:4]
    if magic != ELF_MAGIC[: len(magic)]:
        f.fail(f"not an ELF file (bad magic {magic.hex()}, expected 7f454c46)")
    if len(head) < 16:
        f.fail(f"ELF header truncated: the file is only {f.size:#x} bytes")
    layout = _LAYOUTS.get(head[4])
    if layout is None:
        f.fail(f"bad ELF class {head[4]} (expected 1 for ELF32 or 2 for ELF64)")
    if head[5] not in _BYTE_ORDERS:
        f.fail(f"bad ELF data encoding {head[5]} (expected 1 for little or 2 for big endian)")
    if head[6] != 1:
        f.fail(f"bad ELF version {head[6]} (expected 1)")
    endian, byte_order = _BYTE_ORDERS[head[5]]
    ehdr = struct.Struct(endian + layout.ehdr)
    if len(head) < ehdr.size:
        f.fail(f"{layout.name} header truncated: the file is only {f.size:#x} bytes, "
               f"the header needs {ehdr.size:#x}")
    (_, e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, _, _, _) = (
        ehdr.unpack_from(head)
    )
    if e_type != ET_CORE:
        f.fail(f"not an ELF core file (e_type {e_type}, expected 4 for ET_CORE)")
    phdr_size = struct.calcsize(layout.phdr)
    if phentsize < phdr_size:
        f.fail(f"e_phentsize {phentsize} is smaller than an {layout.name} program header "
               f"({phdr_size} bytes)")
    return _Header(layout, endian, byte_order, machine, phoff, phentsize, phnum, shoff)


def _program_count(f: _File, hdr: _Header) -> int:
    """e_phnum, or with PN_XNUM the real count from section header 0's sh_info."""
    if hdr.phnum != PN_XNUM:
        return hdr.phnum
    if hdr.shoff == 0:
        f.fail("e_phnum is PN_XNUM (0xffff) but there is no section header 0 (e_shoff is 0)")
    shdr = struct.Struct(hdr.endian + hdr.layout.shdr)
    count: int = shdr.unpack(f.read(hdr.shoff, shdr.size, "section header 0 (PN_XNUM)"))[
        _SH_INFO
    ]
    return count


def _program_headers(f: _File, hdr: _Header, count: int) -> list[_Phdr]:
    if count == 0:
        f.fail("no program headers (e_phnum is 0)")
    if hdr.phoff == 0:
        f.fail(f"e_phoff is 0 but there are {count} program headers")
    table = f.read(hdr.phoff, count * hdr.phentsize, f"program header table ({count} entries)")
    phdr = struct.Struct(hdr.endian + hdr.layout.phdr)
    t, o, p, fs, ms = hdr.layout.phdr_fields
    out = []
    for i in range(count):
        v = phdr.unpack_from(table, i * hdr.phentsize)
        out.append(_Phdr(i, v[t], v[o], v[p], v[fs], v[ms]))
    return out


def _check_in_file(f: _File, ph: _Phdr, name: str) -> None:
    if ph.offset + ph.filesz > f.size:
        f.past_end(f"{name} {ph.index}", ph.offset, ph.filesz)


def _load_segments(f: _File, phdrs: Sequence[_Phdr]) -> list[Segment]:
    """The PT_LOADs, validated, in program-header order."""
    segments = []
    for ph in phdrs:
        if ph.type != PT_LOAD:
            continue
        if ph.filesz > ph.memsz:
            f.fail(f"PT_LOAD {ph.index}: p_filesz {ph.filesz:#x} is larger than "
                   f"p_memsz {ph.memsz:#x}")
        _check_in_file(f, ph, "PT_LOAD")
        segments.append(Segment(ph.paddr, ph.offset, ph.filesz, ph.memsz))
    if not segments:
        f.fail("no PT_LOAD segments: the core holds no memory")
    return segments


def _pad4(n: int) -> int:
    return n + (-n % 4)


def _scan_notes(f: _File, ph: _Phdr, endian: str) -> bytes | None:
    """Walk one PT_NOTE's notes, checking their sizes; return the first VMCOREINFO desc.

    Only the headers (and short names) are read, so large notes such as device dumps
    cost nothing. A note with n_namesz 0 ends the list, as in the kernel's vmcore code
    (kexec's per-CPU note buffers are zero-filled past the last note).
    """
    nhdr = struct.Struct(endian + "III")
    pos, end = ph.offset, ph.offset + ph.filesz
    found = None
    while end - pos >= nhdr.size:
        namesz, descsz, _ = nhdr.unpack(f.read(pos, nhdr.size, f"PT_NOTE {ph.index}"))
        if namesz == 0:
            return found
        name_at = pos + nhdr.size
        desc_at = name_at + _pad4(namesz)
        if name_at + namesz > end or (descsz and desc_at + descsz > end):
            f.fail(f"PT_NOTE {ph.index}: the note at segment offset {pos - ph.offset:#x} "
                   f"(name {namesz:#x} + desc {descsz:#x} bytes) runs past the end of the "
                   f"segment ({ph.filesz:#x} bytes)")
        if found is None and _is_vmcoreinfo(f, ph, name_at, namesz):
            if descsz > VMCOREINFO_MAX:
                f.fail(f"PT_NOTE {ph.index}: the VMCOREINFO note is {descsz:#x} bytes, "
                       f"more than {VMCOREINFO_MAX:#x}")
            found = f.read(desc_at, descsz, f"PT_NOTE {ph.index} VMCOREINFO")
        pos = desc_at + _pad4(descsz)
    if pos < end and any(f.read(pos, end - pos, f"PT_NOTE {ph.index}")):
        f.fail(f"PT_NOTE {ph.index}: {end - pos} stray bytes after the last note")
    return found


def _is_vmcoreinfo(f: _File, ph: _Phdr, name_at: int, namesz: int) -> bool:
    if namesz not in (10, 11):  # "VMCOREINFO", with or without its NUL
        return False
    name = f.read(name_at, namesz, f"PT_NOTE {ph.index} note name")
    return name.rstrip(b"\0") == b"VMCOREINFO"


def _read_vmcoreinfo(f: _File, phdrs: Sequence[_Phdr], endian: str) -> str | None:
    """Check every PT_NOTE; the first VMCOREINFO note's text (None when there is none)."""
    found = None
    for ph in phdrs:
        if ph.type != PT_NOTE:
            continue
        _check_in_file(f, ph, "PT_NOTE")
        desc = _scan_notes(f, ph, endian)
        if found is None:
            found = desc
    return None if found is None else vmcoreinfo_text(found)


def vmcoreinfo_text(desc: bytes) -> str:
    """A VMCOREINFO note's text: up to the first NUL."""
    return desc.split(b"\0", 1)[0].decode("utf-8", "replace")


def _page_size(f: _File, vmcoreinfo: dict[str, str], default: int) -> int:
    text = vmcoreinfo.get("PAGESIZE")
    if text is None:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        f.fail(f"VMCOREINFO PAGESIZE={text!r} is not a number")
    if not is_valid_page_size(value):
        f.fail(f"VMCOREINFO PAGESIZE={value} is not a power of two >= {MIN_PAGE_SIZE}")
    return value


def open_elf(
    path: str, fd: int, default_page_size: int, size: int | None = None
) -> ElfSource:
    """Parse the ELF core open on `fd` and serve it; on failure the caller still owns `fd`.

    `size` overrides the detected file size (for devices that report none). The page
    size is VMCOREINFO's PAGESIZE when present, else `default_page_size`.
    """
    f = _File(path, fd, view_size(path, fd, size))
    hdr = _parse_header(f)
    phdrs = _program_headers(f, hdr, _program_count(f, hdr))
    segments = _load_segments(f, phdrs)
    text = _read_vmcoreinfo(f, phdrs, hdr.endian)
    vmcoreinfo = {} if text is None else parse_lines(text)
    page_size = _page_size(f, vmcoreinfo, default_page_size)
    source = ElfSource(
        path, fd, f.size, page_size, segments, vmcoreinfo=vmcoreinfo,
        elf_class=hdr.elf_class, byte_order=hdr.byte_order, machine=hdr.machine,
    )
    if text is not None:
        source.vmcoreinfo_text, source.vmcoreinfo_from = text, "the ELF note"
    return source
