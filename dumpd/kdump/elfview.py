"""The ELF core a kdump-compressed file is served as (its file view), no I/O.

makedumpfile 1.7.2 does not convert a kdump-compressed file to ELF: `makedumpfile -E`
takes such a file for refiltering and then fails in `write_elf_header`, which needs the
ELF headers of its input. So the layout is the one tools already read in /proc/vmcore:

- the ELF64 header (ET_CORE, the machine of the dump's utsname), then the program
  headers: one PT_NOTE (p_align 4), then one PT_LOAD per run of the 1st bitmap in pfn
  order (p_paddr its first byte, p_filesz = p_memsz, flags RWX, p_align 0, as kexec
  writes them; p_vaddr 0: the file does not say where the kernel maps that memory);
- the notes, from the next page on; the first PT_LOAD's pages from the page after
  them, and each PT_LOAD's right after the one before: page-aligned, so every page of
  the view is one page of memory.
- Pages of a run that the dump left out (not in the 2nd bitmap) are in the view, as
  zeros, at their place: the view of a dump at any level has the same layout.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

ET_CORE, EV_CURRENT = 4, 1
PT_LOAD, PT_NOTE = 1, 4
PF_RWX = 7
MAX_LOADS = 0xFFFF - 2  # with the PT_NOTE, below PN_XNUM
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
NHDR = struct.Struct("<III")
IDENT = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # ELFCLASS64, ELFDATA2LSB, EV_CURRENT
MACHINES = {"x86_64": 62, "aarch64": 183, "arm64": 183, "ppc64le": 21, "riscv64": 243,
            "loongarch64": 258}
"""utsname machine -> e_machine, for the 64-bit little-endian machines the format is
written on (format.py)."""


@dataclass(frozen=True, slots=True)
class Load:
    """One PT_LOAD: `pages` pages from pfn `first_pfn`, at `offset` of the view."""

    first_pfn: int
    pages: int
    offset: int


@dataclass(frozen=True, slots=True)
class ElfView:
    """Where everything is in the view: `header` (ELF and program headers) at 0, the
    notes at `notes`, page data from `data` on, `size` bytes in all."""

    header: bytes
    notes: int
    data: int
    loads: tuple[Load, ...]
    size: int


def _up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def elf_view(page_size: int, machine: int, runs: Sequence[tuple[int, int]],
             notes_size: int) -> ElfView:
    """The view of a dump whose 1st bitmap has `runs` (`[first, end)` pfns, sorted)
    and whose notes take `notes_size` bytes; ValueError past MAX_LOADS runs."""
    if len(runs) > MAX_LOADS:
        raise ValueError(f"{len(runs)} runs of memory: more than the {MAX_LOADS} "
                         "program headers of an ELF core without PN_XNUM")
    phnum = 1 + len(runs)
    notes = _up(EHDR.size + phnum * PHDR.size, page_size)
    data = _up(notes + notes_size, page_size)
    loads: list[Load] = []
    offset = data
    for first, end in runs:
        loads.append(Load(first, end - first, offset))
        offset += (end - first) * page_size
    header = [EHDR.pack(IDENT, ET_CORE, machine, EV_CURRENT, 0, EHDR.size, 0, 0, EHDR.size,
                        PHDR.size, phnum, 0, 0, 0),
              PHDR.pack(PT_NOTE, 0, notes, 0, 0, notes_size, notes_size, 4)]
    for load in loads:
        size = load.pages * page_size
        header.append(PHDR.pack(PT_LOAD, PF_RWX, load.offset, 0, load.first_pfn * page_size,
                                size, size, 0))
    return ElfView(b"".join(header), notes, data, tuple(loads), offset)


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    """One ELF note: its header, `name` with its NUL and `desc`, each padded to 4 bytes."""
    named = name + b"\0"
    return (NHDR.pack(len(named), len(desc), kind) + named.ljust(_up(len(named), 4), b"\0")
            + desc.ljust(_up(len(desc), 4), b"\0"))


def note_names(notes: bytes) -> list[bytes]:
    """The names of the notes in `notes`, in order, up to a note with no name (the
    kernel's end of the list) or one that runs past the end."""
    names: list[bytes] = []
    pos = 0
    while pos + NHDR.size <= len(notes):
        namesz, descsz, _ = NHDR.unpack_from(notes, pos)
        if namesz == 0:
            break
        name_at = pos + NHDR.size
        end = name_at + _up(namesz, 4) + _up(descsz, 4)
        if end > len(notes):
            break
        names.append(notes[name_at : name_at + namesz].rstrip(b"\0"))
        pos = end
    return names
