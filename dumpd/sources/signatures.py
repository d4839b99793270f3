"""Files that are neither an ELF core nor raw memory, known by their first bytes.

Served as raw memory, a diskdump dump or a gzip file would hand clients compressed
bytes as if they were physical memory; `open_source` refuses them with one line naming
the format and what to do instead. kdump-compressed dumps (and their flattened form)
are served as what they are (`kind = "kdump"`, which `auto` chooses by their
signature); as another kind they are refused the same way. Signatures are at offset 0
and taken from each format's definition (makedumpfile's `diskdump_mod.h`,
`makedumpfile.h` and `sadump_mod.h`; the gzip, xz, zstd, bzip2 and lz4 frame specs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dumpd.kdump.format import FLAT_SIGNATURE, SIGNATURE

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


_AS_KDUMP = 'serve it as kind = "kdump" (or auto)'
KDUMP = _exact(SIGNATURE, "a kdump-compressed dump (makedumpfile output without -E)",
               _AS_KDUMP)
FLATTENED = _exact(FLAT_SIGNATURE,
                   "a flattened makedumpfile dump (makedumpfile -F output)", _AS_KDUMP)
SERVED_FORMATS = (KDUMP, FLATTENED)
"""The dump formats served as `kind = "kdump"`."""

KNOWN_FORMATS = (
    _exact(b"DISKDUMP", "a diskdump dump (the diskdump format)",
           "dumpd cannot serve it; read it with crash"),
    _exact(b"sadump\0\0", "an sadump dump",
           "dumpd cannot serve it; read it with crash, or convert it with makedumpfile "
           "(without -E: to a kdump-compressed dump, which dumpd serves)"),
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


def known_format(head: bytes, formats: tuple[KnownFormat, ...] = KNOWN_FORMATS
                 ) -> KnownFormat | None:
    """The format of `formats` (by default those never served) whose signature `head`
    (a file's first bytes) has."""
    for fmt in formats:
        if fmt.signature.match(head):
            return fmt
    return None


def cut_short_format(head: bytes) -> KnownFormat | None:
    """The known format whose signature a file shorter than it (all of it is `head`)
    begins: a dump or compressed file cut short, not memory."""
    if not head or len(head) >= HEAD_BYTES:
        return None
    for fmt in (*SERVED_FORMATS, *KNOWN_FORMATS):
        if len(head) < len(fmt.magic) and fmt.magic.startswith(head):
            return fmt
    return None
