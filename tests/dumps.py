"""Build real ELF core files and raw images for the tests.

The writing is done by `dumpd.testing.elfwriter` (also used by `dumpd demo`); this
module adds test-friendly defaults and a few file helpers. Segment contents default to
`pattern(paddr, length)`, so the expected bytes of any physical range can be recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from dumpd.sources.base import Segment
from dumpd.sources.elf import ET_CORE
from dumpd.testing.elfwriter import (
    EM_386,
    EM_X86_64,
    ET_EXEC,
    CoreLayout,
    Fill,
    LoadSpec,
    Note,
    pattern,
    prstatus_note,
    vmcoreinfo_note,
    write_elf_core,
    write_raw,
)

__all__ = [
    "EM_386",
    "EM_X86_64",
    "ET_CORE",
    "ET_EXEC",
    "IRREGULAR",
    "CoreLayout",
    "Dump",
    "LoadSpec",
    "Note",
    "SegSpec",
    "build_elf",
    "build_raw",
    "file_bytes",
    "patch",
    "pattern",
    "truncate",
    "vmcoreinfo_note",
]

SegSpec = LoadSpec
"""A PT_LOAD to write: paddr, memsz, optional filesz (default memsz), offset, vaddr."""

IRREGULAR = [
    SegSpec(paddr=0x1000, memsz=0x5000),
    SegSpec(paddr=0x10000, memsz=0x3000, filesz=0x1800),  # memsz > filesz
    SegSpec(paddr=0x20123, memsz=0x2345),  # not page aligned, not a page multiple
    SegSpec(paddr=0x30000, memsz=0x2000, filesz=0),  # nothing in the file
    SegSpec(paddr=0x40000, memsz=0x8000),
]
"""PT_LOADs with the irregularities real dumps have, for tests of every layer."""


@dataclass(frozen=True, slots=True)
class Dump:
    """A file written for a test: its path and size, and the PT_LOADs as placed."""

    path: str
    size: int
    segments: tuple[Segment, ...]
    layout: CoreLayout | None = None


def build_elf(
    path: str | os.PathLike[str],
    segments: Sequence[SegSpec],
    *,
    elf_class: int = 64,
    endian: str = "little",
    page_size_note: int | None = None,
    vmcoreinfo: dict[str, str] | None = None,
    cpus: int = 0,
    notes: Sequence[Note] = (),
    phoff: int | None = None,
    ehsize: int | None = None,
    phentsize: int | None = None,
    pn_xnum: bool = False,
    machine: int = EM_X86_64,
    e_type: int = ET_CORE,
    data_align: int = 4096,
    tail: int = 0,
    fill: Fill = pattern,
) -> Dump:
    """Write an ELF core; notes are `cpus` NT_PRSTATUS notes, then VMCOREINFO, then `notes`.

    A VMCOREINFO note is written when `page_size_note` or `vmcoreinfo` is given.
    """
    all_notes = [prstatus_note(cpu) for cpu in range(cpus)]
    if page_size_note is not None or vmcoreinfo is not None:
        all_notes.append(vmcoreinfo_note(page_size_note, vmcoreinfo))
    all_notes += notes
    layout = write_elf_core(
        path, segments, elf_class=elf_class, endian=endian, machine=machine, e_type=e_type,
        notes=all_notes, phoff=phoff, ehsize=ehsize, phentsize=phentsize, pn_xnum=pn_xnum,
        data_align=data_align, tail=tail, fill=fill,
    )
    return Dump(str(path), layout.size, layout.segments, layout)


def build_raw(path: str | os.PathLike[str], size: int, fill: Fill = pattern) -> Dump:
    """Write a raw image of `size` bytes whose byte at offset N is physical byte N."""
    write_raw(path, size, fill)
    return Dump(str(path), size, (Segment(0, 0, size, size),))


def file_bytes(path: str | os.PathLike[str], offset: int = 0, length: int = -1) -> bytes:
    """Plain buffered read of the file, for comparing against a source."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def truncate(path: str | os.PathLike[str], size: int) -> None:
    os.truncate(path, size)


def patch(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    """Overwrite bytes in place (to corrupt a header field)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
