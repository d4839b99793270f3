"""Files that are neither an ELF core nor raw memory, known by their first bytes.

Served as raw memory, a kdump-compressed dump or a gzip file would hand clients
compressed bytes as if they were physical memory; `open_source` refuses them with
one line naming the format and what to do instead. Signatures are at offset 0 and
taken from each format's definition (makedumpfile's `diskdump_mod.h`,
`makedumpfile.h` and `sadump_mod.h`; the gzip, xz, zstd, bzip2 and lz4 frame specs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEAD_BYTES = 16
"""How many bytes at offset 0 the signatures look at."""


@dataclass(frozen=True, slots=True)
class KnownFormat:
    """A format dumpd does not serve: what it is and what the operator can do."""

    signature: re.Pattern[bytes]
    what: str
    advice: str  # "{path}" stands for the file
    magic: bytes  # the fixed bytes the signature starts with


def _exact(magic: bytes, what: str, advice: str) -> KnownFormat:
    return KnownFormat(re.compile(re.escape(magic)), what, advice, magic)


def _compressed(command: str) -> str:
    return f"decompress it first ({command}) and serve the result"


KNOWN_FORMATS = (
    _exact(b"KDUMP   ",
           "a kdump-compressed dump (makedumpfile output without -E)",
           "dumpd cannot serve it, and makedumpfile cannot convert it to ELF; serve "
           "/proc/vmcore itself, or an ELF copy saved with makedumpfile -E"),
    _exact(b"DISKDUMP", "a diskdump dump (the diskdump format)",
           "dumpd cannot serve it; read it with crash"),
    _exact(b"makedumpfile\0\0\0\0",
           "a flattened makedumpfile dump (makedumpfile -F output)",
           "rearrange it with makedumpfile -R OUTPUT < {path}, and serve OUTPUT if it is "
           "an ELF core (it is when the dump was made with -E)"),
    _exact(b"sadump\0\0", "an sadump dump",
           "dumpd cannot serve it, and makedumpfile cannot convert it to ELF; read it "
           "with crash"),
    _exact(b"\x1f\x8b\x08", "a gzip-compressed file",
           _compressed("gunzip -k {path}")),
    _exact(b"\xfd7zXZ\0", "an xz-compressed file",
           _compressed("unxz -k {path}")),
    _exact(b"\x28\xb5\x2f\xfd", "a zstd-compressed file",
           _compressed("unzstd {path}")),
    KnownFormat(re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)"), "a bzip2-compressed file",
                _compressed("bunzip2 -k {path}"), b"BZh"),
    _exact(b"\x04\x22\x4d\x18", "an lz4-compressed file",
           _compressed("unlz4 {path}")),
)


def known_format(head: bytes) -> KnownFormat | None:
    """The known non-memory format whose signature `head` (a file's first bytes) has."""
    for fmt in KNOWN_FORMATS:
        if fmt.signature.match(head):
            return fmt
    return None


def cut_short_format(head: bytes) -> KnownFormat | None:
    """The known format whose signature a file shorter than it (all of it is `head`)
    begins: a dump or compressed file cut short, not memory."""
    if not head or len(head) >= HEAD_BYTES:
        return None
    for fmt in KNOWN_FORMATS:
        if len(head) < len(fmt.magic) and fmt.magic.startswith(head):
            return fmt
    return None
