"""Finding msgpack frame boundaries without decoding payloads, for bulk receivers.

A receiver of `stream.data` notifications wants each payload read straight into
the buffer it writes out, never copied through a decoder. `data_head` recognises
the head of `[2, "stream.data", [msgid, offset, <bin>]]` and says how long the
payload is; `object_end` finds where any other (small) frame ends, so it can be
handed whole to `dumpd.protocol.decode_frame`. Both look at bytes only: no I/O
(sans-IO), and neither validates: `data_head` only recognises.
"""

from __future__ import annotations

import struct

DATA_PREFIX = b"\x93\x02\xabstream.data\x93"
"""The first bytes of every `stream.data` frame: `[2, "stream.data", [`."""

_UINT = {0xCC: struct.Struct(">B"), 0xCD: struct.Struct(">H"), 0xCE: struct.Struct(">I"),
         0xCF: struct.Struct(">Q")}
_BIN = {0xC4: struct.Struct(">B"), 0xC5: struct.Struct(">H"), 0xC6: struct.Struct(">I")}
# Lead bytes of fixed size (beyond the lead byte): ints, floats, fixext.
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
# Lead bytes followed by a length and that many bytes: bin, str, ext (ext adds a type byte).
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),
          0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
# Lead bytes of arrays and maps followed by a count: (count bytes, items per count).
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def _uint(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int] | None:
    """A msgpack unsigned int at `pos`: `(value, next_pos)`, None if incomplete or not one."""
    if pos >= end:
        return None
    lead = buf[pos]
    if lead < 0x80:
        return lead, pos + 1
    fmt = _UINT.get(lead)
    if fmt is None or pos + 1 + fmt.size > end:
        return None
    return fmt.unpack_from(buf, pos + 1)[0], pos + 1 + fmt.size


def data_head(buf: bytes | bytearray | memoryview, pos: int, end: int
              ) -> tuple[int, int, int, int] | None:
    """`(msgid, offset, payload_len, payload_pos)` when a complete `stream.data` head
    starts at `pos`; None when the bytes there are not one (or not all there yet:
    check `buf[pos:end]` is a prefix of `DATA_PREFIX` before reading more)."""
    start = pos + len(DATA_PREFIX)
    if start > end or buf[pos:start] != DATA_PREFIX:
        return None
    msgid = _uint(buf, start, end)
    if msgid is None:
        return None
    offset = _uint(buf, msgid[1], end)
    if offset is None or offset[1] >= end:
        return None
    fmt = _BIN.get(buf[offset[1]])
    payload_pos = offset[1] + 1 + (fmt.size if fmt else 0)
    if fmt is None or payload_pos > end:
        return None
    return msgid[0], offset[0], fmt.unpack_from(buf, offset[1] + 1)[0], payload_pos


def object_end(buf: bytes | bytearray | memoryview, pos: int, end: int) -> int | None:
    """Where the msgpack object starting at `pos` ends; None if it is not complete yet.

    Raises ValueError for a byte that starts no msgpack object (0xc1).
    """
    pending = 1  # objects still to skip
    while pending:
        if pos >= end:
            return None
        lead = buf[pos]
        pending -= 1
        if lead <= 0x7F or lead >= 0xE0:  # positive and negative fixint
            pos += 1
        elif lead <= 0x8F:  # fixmap
            pending += 2 * (lead & 0x0F)
            pos += 1
        elif lead <= 0x9F:  # fixarray
            pending += lead & 0x0F
            pos += 1
        elif lead <= 0xBF:  # fixstr
            pos += 1 + (lead & 0x1F)
        elif lead in _FIXED:
            pos += 1 + _FIXED[lead]
        elif lead in _SIZED:
            width, extra = _SIZED[lead]
            if pos + 1 + width > end:
                return None
            size = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width + extra + size
        elif lead in _CONTAINERS:
            width, per = _CONTAINERS[lead]
            if pos + 1 + width > end:
                return None
            pending += per * int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        else:
            raise ValueError(f"byte {lead:#04x} starts no msgpack object")
    return pos if pos <= end else None
