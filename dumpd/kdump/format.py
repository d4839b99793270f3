"""The kdump-compressed format's structures, packed and unpacked, and where each part is.

Design rules:
- The definitions are makedumpfile's (diskdump_mod.h, IMPLEMENTATION) for the LP64
  little-endian files x86_64 and arm64 makedumpfile writes: `disk_dump_header` in block 0,
  `kdump_sub_header` (then the ELF notes, VMCOREINFO among them) from block 1, the 1st
  bitmap (the pfn is memory) and the 2nd (the pfn is dumped), each a whole number of
  blocks, one 24-byte `page_desc` per dumped pfn in pfn order, then page data.
- A block is a page (`block_size` = the dump's page size). Bit `pfn` of a bitmap is bit
  `pfn % 8` of byte `pfn // 8`, least significant first.
- The flattened form (`makedumpfile -F`): a 4096-byte header ("makedumpfile", type 1,
  version 1, big-endian), then records of `(offset, size)` (big-endian int64) each
  followed by `size` bytes to be put at `offset` of the kdump file, ended by `(-1, -1)`.
- Unpacking checks what a reader relies on and says what is wrong in one line
  (`FormatError`); it never trusts a size to allocate by.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SIGNATURE = b"KDUMP   "
HEADER_VERSION = 6  # what makedumpfile 1.6.x and 1.7.x write (64-bit pfns in the sub header)
FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
FLAT_HEADER_SIZE = 4096  # MAX_SIZE_MDF_HEADER
FLAT_END = -1  # END_FLAG_FLAT_HEADER, in both fields of the last record

UTS_FIELD = 65  # each string of struct new_utsname
UTS_NAMES = ("sysname", "nodename", "release", "version", "machine", "domainname")
INCOMPLETE = 0x8  # DUMP_DH_COMPRESSED_INCOMPLETE: the writer did not finish
EXCLUDED_VMEMMAP = 0x10

_MAIN = struct.Struct("<8si65s65s65s65s65s65s6xqqIiiIIIIIIi")
_SUB = struct.Struct("<QiiQQqQqQqQQQQ")
DESC = struct.Struct("<qIIQ")  # page_desc: offset, size, flags, page_flags
FLAT_RECORD = struct.Struct(">qq")
_FLAT_HEAD = struct.Struct(">16sqq")
MAIN_SIZE, SUB_SIZE = _MAIN.size, _SUB.size  # 464 and 104
U32_MAX = 0xFFFFFFFF


class FormatError(Exception):
    """The bytes are not a kdump-compressed file dumpd reads: one line says why."""


@dataclass(frozen=True, slots=True)
class MainHeader:
    """`disk_dump_header`. `max_mapnr` is the 32-bit field (the sub header's 64-bit one
    wins from version 6 on); `utsname` the six strings of `new_utsname`."""

    header_version: int
    utsname: tuple[bytes, ...]
    timestamp: tuple[int, int]  # struct timeval: seconds, microseconds
    status: int
    block_size: int
    sub_hdr_size: int  # blocks
    bitmap_blocks: int  # both bitmaps
    max_mapnr: int
    total_ram_blocks: int = 0
    device_blocks: int = 0
    written_blocks: int = 0
    current_cpu: int = 0
    nr_cpus: int = 1

    def pack(self) -> bytes:
        names = [name[:UTS_FIELD - 1] for name in self.utsname]
        return _MAIN.pack(SIGNATURE, self.header_version, *names, *self.timestamp,
                          self.status, self.block_size, self.sub_hdr_size,
                          self.bitmap_blocks, min(self.max_mapnr, U32_MAX),
                          self.total_ram_blocks, self.device_blocks, self.written_blocks,
                          self.current_cpu, self.nr_cpus)

    @classmethod
    def unpack(cls, data: bytes) -> MainHeader:
        if len(data) < MAIN_SIZE:
            raise FormatError(f"{len(data)} bytes: shorter than a disk_dump_header")
        (signature, version, *rest) = _MAIN.unpack_from(data)
        if signature != SIGNATURE:
            raise FormatError(f"signature {signature!r}, not {SIGNATURE!r}")
        names, (sec, usec, status, block, sub, bitmap, mapnr, ram, device, written,
                cpu, cpus) = rest[:6], rest[6:]
        if not 0 < version < 1 << 16:
            raise FormatError(f"header_version {version}: not a header this reader knows "
                              "(a big-endian or 32-bit dump?)")
        if block < 512 or block & (block - 1) or block > 1 << 20:
            raise FormatError(f"block_size {block} is not a page size")
        if sub <= 0 or bitmap <= 0 or bitmap % 2:
            raise FormatError(f"sub_hdr_size {sub}, bitmap_blocks {bitmap}: not a layout "
                              "makedumpfile writes")
        return cls(version, tuple(name.split(b"\0", 1)[0] for name in names), (sec, usec),
                   status, block, sub, bitmap, mapnr, ram, device, written, cpu, cpus)


@dataclass(frozen=True, slots=True)
class SubHeader:
    """`kdump_sub_header` (the fields of version 6; 32-bit pfns mirror the 64-bit ones)."""

    phys_base: int = 0
    dump_level: int = 0
    split: int = 0
    offset_vmcoreinfo: int = 0
    size_vmcoreinfo: int = 0
    offset_note: int = 0
    size_note: int = 0
    offset_eraseinfo: int = 0
    size_eraseinfo: int = 0
    start_pfn_64: int = 0
    end_pfn_64: int = 0
    max_mapnr_64: int = 0

    def pack(self) -> bytes:
        return _SUB.pack(self.phys_base, self.dump_level, self.split,
                         min(self.start_pfn_64, U32_MAX), min(self.end_pfn_64, U32_MAX),
                         self.offset_vmcoreinfo, self.size_vmcoreinfo, self.offset_note,
                         self.size_note, self.offset_eraseinfo, self.size_eraseinfo,
                         self.start_pfn_64, self.end_pfn_64, self.max_mapnr_64)

    @classmethod
    def unpack(cls, data: bytes, main: MainHeader) -> SubHeader:
        """The sub header as `main`'s version has it: fields a version lacks are 0, and
        before version 6 the 64-bit pfns are the 32-bit ones."""
        if len(data) < SUB_SIZE:
            raise FormatError(f"{len(data)} bytes: shorter than a kdump_sub_header")
        (phys_base, level, split, start, end, off_info, size_info, off_note, size_note,
         off_erase, size_erase, start64, end64, mapnr64) = _SUB.unpack_from(data)
        version = main.header_version
        if version < 6:
            start64, end64, mapnr64 = start, end, main.max_mapnr
        if version < 5:
            off_erase = size_erase = 0
        if version < 4:
            off_note = size_note = 0
        if version < 3:
            off_info = size_info = 0
        return cls(phys_base, level, split, off_info, size_info, off_note, size_note,
                   off_erase, size_erase, start64, end64, mapnr64)


def _up(value: int, unit: int) -> int:
    """`value` divided by `unit`, rounded up."""
    return -(-value // unit)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part of a kdump-compressed file is: pages (blocks) of `block_size`
    bytes, pfns below `max_mapnr`, `sub_hdr_size` blocks of sub header (the struct and
    the notes after it, or more: the space is the writer's), `bitmap_blocks` blocks of
    the two bitmaps together."""

    block_size: int
    max_mapnr: int
    sub_hdr_size: int
    bitmap_blocks: int

    @classmethod
    def for_notes(cls, block_size: int, max_mapnr: int, note_size: int) -> Layout:
        """The layout makedumpfile gives: just enough sub header blocks for the notes,
        each bitmap the whole blocks that hold `max_mapnr` bits."""
        return cls(block_size, max_mapnr, _up(SUB_SIZE + note_size, block_size),
                   2 * _up(_up(max_mapnr, 8), block_size))

    @classmethod
    def of(cls, main: MainHeader, sub: SubHeader) -> Layout:
        """The layout a file's headers give (checked: each bitmap holds max_mapnr bits)."""
        if main.bitmap_blocks // 2 * main.block_size < _up(sub.max_mapnr_64, 8):
            raise FormatError(f"bitmap_blocks {main.bitmap_blocks} cannot hold "
                              f"{sub.max_mapnr_64} pfns")
        return cls(main.block_size, sub.max_mapnr_64, main.sub_hdr_size, main.bitmap_blocks)

    @property
    def bitmap_size(self) -> int:
        """Bytes of one bitmap."""
        return self.bitmap_blocks // 2 * self.block_size

    @property
    def sub_header(self) -> int:
        return self.block_size

    @property
    def notes(self) -> int:
        """Where the notes go, right after the sub header struct (as makedumpfile)."""
        return self.block_size + SUB_SIZE

    @property
    def bitmap1(self) -> int:
        return (1 + self.sub_hdr_size) * self.block_size

    @property
    def bitmap2(self) -> int:
        return self.bitmap1 + self.bitmap_size

    @property
    def descriptors(self) -> int:
        return (1 + self.sub_hdr_size + self.bitmap_blocks) * self.block_size


def flat_header() -> bytes:
    """The flattened form's 4096-byte header."""
    return _FLAT_HEAD.pack(FLAT_SIGNATURE, 1, 1).ljust(FLAT_HEADER_SIZE, b"\0")


def check_flat_header(data: bytes) -> None:
    """FormatError unless `data` starts with a flattened header of type and version 1."""
    if len(data) < _FLAT_HEAD.size:
        raise FormatError("shorter than a flattened header")
    signature, kind, version = _FLAT_HEAD.unpack_from(data)
    if signature != FLAT_SIGNATURE:
        raise FormatError(f"signature {signature!r}, not {FLAT_SIGNATURE!r}")
    if (kind, version) != (1, 1):
        raise FormatError(f"flattened type {kind}, version {version}: not 1 and 1")


def flat_record(offset: int, size: int) -> bytes:
    """The head of a flattened record: `size` bytes for `offset` follow it."""
    return FLAT_RECORD.pack(offset, size)


FLAT_END_RECORD = FLAT_RECORD.pack(FLAT_END, FLAT_END)
