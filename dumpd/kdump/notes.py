"""What a kdump-compressed file takes from the ELF core it is made of: where its notes are,
what they say (the CPUs, the VMCOREINFO), and a VMCOREINFO note for a dump without one.

Design rules:
- Only what makedumpfile reads: the PT_NOTE segments of an ELF64 little-endian core
  (PN_XNUM counts included), notes as the kernel writes them (4-byte alignment), "CORE"
  notes of type NT_PRSTATUS counted as CPUs (`nr_cpus`), the "VMCOREINFO" note of type 0
  located for the sub header.
- Reading is the caller's: `elf_notes` takes a `read(offset, length)` callable over the
  dump's file view; anything that is not such a core is `FormatError`, one line.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dumpd.kdump.format import FormatError

PT_NOTE = 4
PN_XNUM = 0xFFFF
NT_PRSTATUS = 1
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SH_INFO = struct.Struct("<I")  # sh_info of section header 0: the real e_phnum
_NHDR = struct.Struct("<III")
EHDR_SIZE = _EHDR.size  # 64


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def elf_notes(head: bytes, read: Callable[[int, int], bytes]) -> list[tuple[int, int]]:
    """`(offset, size)` of each PT_NOTE of the ELF core whose first bytes are `head`
    (at least `EHDR_SIZE`), in program-header order; `read` gets the rest."""
    if len(head) < EHDR_SIZE or head[:4] != b"\x7fELF":
        raise FormatError("the dump is not an ELF core")
    ident, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, _, _, _ = _EHDR.unpack_from(head)
    if ident[4] != 2 or ident[5] != 1:
        raise FormatError("the dump is not a 64-bit little-endian ELF core (the "
                          "kdump-compressed format dumpd writes is for those)")
    if phentsize != _PHDR.size:
        raise FormatError(f"e_phentsize {phentsize}, not {_PHDR.size}")
    if phnum == PN_XNUM:
        (phnum,) = _SH_INFO.unpack(read(shoff + 44, _SH_INFO.size))
    table = read(phoff, phnum * _PHDR.size)
    if len(table) < phnum * _PHDR.size:
        raise FormatError(f"{phnum} program headers at {phoff:#x} pass the end of the dump")
    notes = []
    for (kind, _, offset, _, _, filesz, _, _) in _PHDR.iter_unpack(table):
        if kind == PT_NOTE and filesz:
            notes.append((offset, filesz))
    return notes


@dataclass(frozen=True, slots=True)
class NoteFacts:
    """What the notes say: `nr_cpus` (NT_PRSTATUS notes), and the VMCOREINFO note's
    text and `(offset, size)` of its desc within the notes (None: there is none)."""

    nr_cpus: int
    vmcoreinfo: tuple[int, int] | None
    vmcoreinfo_text: str | None

    @classmethod
    def scan(cls, notes: bytes) -> NoteFacts:
        cpus, found, text = 0, None, None
        pos = 0
        while pos + _NHDR.size <= len(notes):
            namesz, descsz, kind = _NHDR.unpack_from(notes, pos)
            name_at = pos + _NHDR.size
            desc_at = name_at + _pad4(namesz)
            end = desc_at + _pad4(descsz)
            if desc_at + descsz > len(notes):
                raise FormatError(f"the note at {pos:#x} of the notes passes their end")
            name = bytes(notes[name_at : name_at + namesz]).rstrip(b"\0")
            if name == b"CORE" and kind == NT_PRSTATUS:
                cpus += 1
            elif name == b"VMCOREINFO" and kind == 0 and found is None:
                found = (desc_at, descsz)
                text = bytes(notes[desc_at : desc_at + descsz]).split(b"\0", 1)[0].decode(
                    errors="replace")
            if not namesz and not descsz and not kind:
                break  # padding after the last note
            pos = end
        return cls(cpus, found, text)


def vmcoreinfo_note(text: str) -> bytes:
    """A VMCOREINFO note holding `text` (for a dump whose VMCOREINFO came from a file)."""
    name, desc = b"VMCOREINFO\0", text.encode()
    return (_NHDR.pack(len(name), len(desc), 0) + name.ljust(_pad4(len(name)), b"\0")
            + desc.ljust(_pad4(len(desc)), b"\0"))
