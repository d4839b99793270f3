"""Write ELF core files shaped like a kdump vmcore, for the tests and `dumpd demo`.

File layout: ELF header at 0, program headers at `phoff` (PT_NOTE first when there are
notes, then the PT_LOADs in the order given), section header 0 when `pn_xnum`, the
notes, then segment data. A PT_LOAD with an explicit `offset` goes exactly there (so
segments may overlap in the file or sit at odd offsets); the others follow the data
written so far, aligned to `data_align`.

Segment contents come from `fill(paddr, length)`; the default, `pattern`, depends only
on the physical address, so a reader can recompute what any physical byte must be.
Where PT_LOADs overlap in the file, the first one's bytes are the ones that end up
there (segments are written last to first), matching the first-wins rule of a reader.
With `sparse`, pages of segment data that are all zero are left as holes (the file is
sized first), which needs PT_LOADs that do not overlap in the file.

The header and program-header layouts here are written out independently of the
parser in `dumpd.sources.elf`, so that round-trip tests check one against the other.
The gABI's numbers (ET_CORE, PT_LOAD, PT_NOTE, PN_XNUM) are the reader's: a number
has one spelling, and a layout written twice still checks the other.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dumpd.sources.base import Segment
from dumpd.sources.elf import ET_CORE, PN_XNUM, PT_LOAD, PT_NOTE

ET_EXEC = 2
EM_386 = 3
EM_X86_64 = 62
NT_PRSTATUS = 1
PF_RWX = 7

PATTERN_PAGE = 4096
CHUNK = 4 << 20

Fill = Callable[[int, int], bytes]
"""`fill(paddr, length)` returns the `length` bytes of physical memory at `paddr`."""

_BASE = random.Random(0x64756D7064).randbytes(2 * PATTERN_PAGE)

# Field order (not just sizes) differs between the classes; see the ELF gABI.
_EHDR = {32: "16sHHIIIIIHHHHHH", 64: "16sHHIQQQIHHHHHH"}
_PHDR = {32: "8I", 64: "IIQQQQQQ"}
_SHDR = {32: "10I", 64: "IIQQQQIIQQ"}
_ENDIAN = {"little": "<", "big": ">"}
_EI_DATA = {"little": 1, "big": 2}


def pattern(paddr: int, length: int) -> bytes:
    """Deterministic bytes for physical `[paddr, paddr+length)`.

    Each 4 KiB physical page starts with its own address (8 bytes, little endian) and
    continues with a slice of a fixed random block chosen by the page number, so pages
    differ from each other while generation stays a per-page (not per-byte) loop.
    """
    if length <= 0:
        return b""
    first = paddr - paddr % PATTERN_PAGE
    pages = []
    for page in range(first, paddr + length, PATTERN_PAGE):
        rot = (page // PATTERN_PAGE * 0x9E5) % PATTERN_PAGE
        stamp = (page & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
        pages.append(stamp + _BASE[rot + 8 : rot + PATTERN_PAGE])
    start = paddr - first
    return b"".join(pages)[start : start + length]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One PT_LOAD to write: `filesz` defaults to `memsz`, `offset` to "next free spot"."""

    paddr: int
    memsz: int
    filesz: int | None = None
    offset: int | None = None
    vaddr: int | None = None


@dataclass(frozen=True, slots=True)
class Note:
    """One ELF note; `name` is written with its NUL terminator, as the kernel does."""

    name: str
    type: int
    desc: bytes

    def encode(self, endian: str) -> bytes:
        name = self.name.encode() + b"\0"
        header = struct.pack(_ENDIAN[endian] + "III", len(name), len(self.desc), self.type)
        return header + _pad4(name) + _pad4(self.desc)


def vmcoreinfo_note(page_size: int | None = 4096, extra: Mapping[str, str] | None = None) -> Note:
    """A VMCOREINFO note (type 0, like the kernel's) with `PAGESIZE=` and `extra` lines."""
    lines = [] if page_size is None else [f"PAGESIZE={page_size}"]
    lines += [f"{key}={value}" for key, value in (extra or {}).items()]
    return Note("VMCOREINFO", 0, "".join(line + "\n" for line in lines).encode())


def prstatus_note(cpu: int, size: int = 336) -> Note:
    """A stand-in for a CPU's NT_PRSTATUS note ("CORE"), `size` bytes of pattern."""
    return Note("CORE", NT_PRSTATUS, pattern(cpu * size, size))


@dataclass(frozen=True, slots=True)
class CoreLayout:
    """What `write_elf_core` wrote: where the metadata is and the PT_LOADs as placed."""

    path: str
    elf_class: int
    endian: str
    phoff: int
    phnum: int
    shoff: int
    note_offset: int
    note_size: int
    segments: tuple[Segment, ...]
    size: int


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _align(value: int, alignment: int) -> int:
    return value + (-value % alignment) if alignment > 1 else value


def _place_segments(loads: Sequence[LoadSpec], start: int, data_align: int) -> list[Segment]:
    """Give every PT_LOAD a file offset: explicit ones as asked, others after the data."""
    placed: list[Segment] = []
    end = start
    for spec in loads:
        filesz = spec.memsz if spec.filesz is None else spec.filesz
        if spec.offset is None:
            offset = _align(end, data_align)
        elif spec.offset < start:
            raise ValueError(f"PT_LOAD offset {spec.offset:#x} overlaps the headers/notes")
        else:
            offset = spec.offset
        placed.append(Segment(spec.paddr, offset, filesz, spec.memsz))
        end = max(end, offset + filesz)
    return placed


def _ident(elf_class: int, endian: str) -> bytes:
    return b"\x7fELF" + bytes([elf_class // 32, _EI_DATA[endian], 1]) + b"\0" * 9


def write_elf_core(
    path: str | os.PathLike[str],
    loads: Sequence[LoadSpec],
    *,
    elf_class: int = 64,
    endian: str = "little",
    machine: int = EM_X86_64,
    e_type: int = ET_CORE,
    notes: Sequence[Note] = (),
    phoff: int | None = None,
    ehsize: int | None = None,
    phentsize: int | None = None,
    pn_xnum: bool = False,
    data_align: int = 4096,
    tail: int = 0,
    fill: Fill = pattern,
    sparse: bool = False,
) -> CoreLayout:
    """Write an ELF core file; see the module docstring for the layout.

    `ehsize`/`phentsize` override the header fields (a bogus e_ehsize, padded program
    header entries); `pn_xnum` stores the program header count in section header 0's
    sh_info with e_phnum = PN_XNUM; `tail` appends that many bytes after all data.
    """
    if elf_class not in _EHDR or endian not in _ENDIAN:
        raise ValueError(f"unsupported ELF class {elf_class} / endian {endian!r}")
    e = _ENDIAN[endian]
    ehdr_size = struct.calcsize(_EHDR[elf_class])
    phdr_size = struct.calcsize(_PHDR[elf_class])
    shdr_size = struct.calcsize(_SHDR[elf_class])
    phentsize = phdr_size if phentsize is None else phentsize
    phoff = ehdr_size if phoff is None else phoff
    if phoff < ehdr_size or phentsize < phdr_size:
        raise ValueError("phoff must follow the ELF header and phentsize hold a Phdr")

    note_blob = b"".join(note.encode(endian) for note in notes)
    phnum = len(loads) + (1 if notes else 0)
    shoff = phoff + phnum * phentsize if pn_xnum else 0
    note_offset = _align((shoff + shdr_size) if pn_xnum else phoff + phnum * phentsize, 4)
    segments = _place_segments(loads, note_offset + len(note_blob), data_align)
    size = max([note_offset + len(note_blob)] + [s.file_offset + s.filesz for s in segments])
    size += tail

    header = struct.pack(
        e + _EHDR[elf_class], _ident(elf_class, endian), e_type, machine, 1, 0, phoff,
        shoff, 0, ehdr_size if ehsize is None else ehsize, phentsize,
        PN_XNUM if pn_xnum else phnum, shdr_size if pn_xnum else 0, 1 if pn_xnum else 0, 0,
    )
    phdrs = []
    if notes:
        n = len(note_blob)
        phdrs.append(_phdr(elf_class, e, PT_NOTE, note_offset, 0, 0, n, n, align=4))
    for spec, seg in zip(loads, segments, strict=True):
        vaddr = seg.paddr if spec.vaddr is None else spec.vaddr
        phdrs.append(
            _phdr(elf_class, e, PT_LOAD, seg.file_offset, vaddr, seg.paddr, seg.filesz,
                  seg.memsz)
        )
    pad = b"\0" * (phentsize - phdr_size)

    with open(path, "wb") as f:
        f.truncate(size)
        f.write(header)
        f.seek(phoff)
        f.write(b"".join(p + pad for p in phdrs))
        if pn_xnum:
            f.seek(shoff)
            f.write(struct.pack(e + _SHDR[elf_class], 0, 0, 0, 0, 0, 1, 0, phnum, 0, 0))
        f.seek(note_offset)
        f.write(note_blob)
        for seg in reversed(segments):
            _write_data(f, seg.file_offset, seg.paddr, seg.filesz, fill, sparse)
    return CoreLayout(str(path), elf_class, endian, phoff, phnum, shoff, note_offset,
                      len(note_blob), tuple(segments), size)


def _phdr(
    elf_class: int, e: str, p_type: int, offset: int, vaddr: int, paddr: int,
    filesz: int, memsz: int, align: int = 0,
) -> bytes:
    if elf_class == 32:
        return struct.pack(e + _PHDR[32], p_type, offset, vaddr, paddr, filesz, memsz,
                           PF_RWX, align)
    return struct.pack(e + _PHDR[64], p_type, PF_RWX, offset, vaddr, paddr, filesz, memsz,
                       align)


def _write_data(
    f: BinaryIO, offset: int, paddr: int, length: int, fill: Fill, sparse: bool = False
) -> None:
    """Write `fill(paddr, length)` at `offset`, CHUNK bytes at a time."""
    f.seek(offset)
    done = 0
    while done < length:
        n = min(CHUNK, length - done)
        data = fill(paddr + done, n)
        if len(data) != n:
            raise ValueError(f"fill returned {len(data)} bytes for {n}")
        if sparse:
            _write_sparse(f, offset + done, data)
        else:
            f.write(data)
        done += n


def _write_sparse(f: BinaryIO, offset: int, data: bytes) -> None:
    """Write `data` at `offset` but for its all-zero pages (PATTERN_PAGE-aligned in
    `data`), which stay holes; `bytes.find` looks for them, not a loop per page."""
    view, zero = memoryview(data), bytes(PATTERN_PAGE)
    start = search = 0  # data[:start] is done; no zero page begins before search
    while (hit := data.find(zero, search)) >= 0:
        page = end = -(-hit // PATTERN_PAGE) * PATTERN_PAGE
        while view[end : end + PATTERN_PAGE] == zero:  # the run: one find per run
            end += PATTERN_PAGE
        search = max(end, page + PATTERN_PAGE)
        if end == page:
            continue
        if page > start:
            f.seek(offset + start)
            f.write(view[start:page])
        start = end
    if start < len(data):
        f.seek(offset + start)
        f.write(view[start:])


def write_raw(path: str | os.PathLike[str], size: int, fill: Fill = pattern) -> None:
    """Write a raw physical memory image: file offset == physical address."""
    with open(path, "wb") as f:
        _write_data(f, 0, 0, size, fill)

