"""What a `stream` sends back, checked in this one place for every reader.

The decoder (`dumpd.protocol`) checks that a frame is msgpack-RPC; what a stream's
notifications and its final response carry is the `stream` method's contract
(docs/protocol.md), checked here: by the blocking receiver (`dumpd.client.receiver`, its
fast path for `stream.data` included) and by both clients for stream notifications
that reach them outside a stream. A wrong shape is a `ProtocolViolation`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dumpd.errors import DumpdError
from dumpd.protocol import MAX_MSGID, MAX_UINT64, Notification, ProtocolViolation, brief
from dumpd.protocol.events import is_uint

if TYPE_CHECKING:
    from dumpd.codecs import Codec


@dataclass(frozen=True, slots=True)
class StreamData:
    """File-view bytes at `offset`; `data` is only valid until the next piece."""

    offset: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class StreamHole:
    """Zeros in the file view, not sent; `reason` says why: "not_ram" (the hook's
    verdict; what a hole without a reason is), "zero" (RAM pages that are all zero),
    "file_hole" (the served file holds no data there). The last two come only from a
    stream asked for `zeros_as_holes`."""

    offset: int
    length: int
    reason: str = "not_ram"


@dataclass(frozen=True, slots=True)
class StreamError:
    """A range the source could not read; the stream goes on past it."""

    offset: int
    length: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class StreamPages:
    """File-view bytes `[offset, offset+length)` of a stream asked to `compress`, as
    units cut at the view's page boundaries (multiples of `page_size` from offset 0;
    the first and the last may be shorter), one blob each in `payload`, `sizes[i]`
    bytes, in order: a blob as long as its unit is the unit's bytes as they are, a
    shorter one the unit compressed on its own with the stream's codec. Checked when
    made (`stream_piece`); `payload` is only valid until the next piece."""

    offset: int
    length: int
    sizes: tuple[int, ...]
    payload: memoryview
    page_size: int

    def units(self) -> Iterator[tuple[int, int, memoryview]]:
        """`(offset, unit_length, blob)` of each unit, in order (a blob as long as its
        unit is stored as it is)."""
        pos, at, end = self.offset, 0, self.offset + self.length
        for size in self.sizes:
            stop = min(end, (pos // self.page_size + 1) * self.page_size)
            yield pos, stop - pos, self.payload[at : at + size]
            pos, at = stop, at + size

    def data(self, codec: Codec) -> bytearray:
        """The view's bytes, each compressed unit decompressed with `codec` (that of the
        stream); a unit that does not decompress to exactly its length is a
        `ProtocolViolation`."""
        out = bytearray(self.length)
        for pos, length, blob in self.units():
            start = pos - self.offset
            if len(blob) == length:
                out[start : start + length] = blob
                continue
            try:
                out[start : start + length] = codec.decompress(blob, length)
            except DumpdError as exc:
                raise ProtocolViolation("EINVAL", f"stream.pages unit at {pos:#x}: "
                                        f"{exc.message}") from exc
        return out


@dataclass(frozen=True, slots=True)
class StreamWritten:
    """File-view bytes at `offset` already written to the receiver's sink."""

    offset: int
    length: int


StreamPiece = StreamData | StreamPages | StreamHole | StreamError | StreamWritten


class SinkError(OSError):
    """Writing to the sink failed (ENOSPC, EIO, ...): the sink's fault, not the
    connection's; `errno` and `strerror` are those of the failed write."""


Check = Callable[[object], bool]


def _uint(maximum: int) -> Check:
    return lambda value: is_uint(value, maximum)


def _of(kind: type) -> Check:
    return lambda value: type(value) is kind


_MSGID, _UINT64 = _uint(MAX_MSGID), _uint(MAX_UINT64)


def _sizes(value: object) -> bool:
    return type(value) is list and all(type(n) is int and n > 0 for n in value)


# Each stream notification's params: (name, check) in order.
PARAMS: dict[str, Sequence[tuple[str, Check]]] = {
    "stream.data": (("msgid", _MSGID), ("offset", _UINT64), ("bin", _of(bytes))),
    "stream.pages": (("msgid", _MSGID), ("offset", _UINT64), ("length", _UINT64),
                     ("sizes", _sizes), ("bin", _of(bytes))),
    "stream.hole": (("msgid", _MSGID), ("offset", _UINT64), ("length", _UINT64)),
    "stream.error": (("msgid", _MSGID), ("offset", _UINT64), ("length", _UINT64),
                     ("code", _of(str)), ("message", _of(str))),
}
OPTIONAL: dict[str, Sequence[tuple[str, Check]]] = {"stream.hole": (("reason", _of(str)),)}
"""Trailing params a notification may leave out (a newer field older servers omit)."""
COUNTS = ("bytes", "data_bytes", "hole_bytes", "error_bytes")


def malformed(method: str, params: object) -> ProtocolViolation:
    """The violation of a stream notification whose params are not as `PARAMS` says."""
    names = ", ".join([name for name, _ in PARAMS[method]]
                      + [f"{name}?" for name, _ in OPTIONAL.get(method, ())])
    return ProtocolViolation("EINVAL", f"{method} params must be [{names}], got {brief(params)}")


def checked_params(event: Notification) -> Sequence[Any] | None:
    """The params of a stream notification, of the shape `PARAMS` says (and a
    `stream.pages` payload as long as its sizes say); None for any other notification.
    What needs the page size (a `stream.pages`' units) is checked by `stream_piece`."""
    checks = PARAMS.get(event.method)
    if checks is None:
        return None
    params = event.params
    allowed = (*checks, *OPTIONAL.get(event.method, ()))
    if not len(checks) <= len(params) <= len(allowed) or not all(
            ok(param) for (_, ok), param in zip(allowed, params, strict=False)):
        raise malformed(event.method, params)
    if event.method == "stream.pages" and sum(params[3]) != len(params[4]):
        raise ProtocolViolation("EINVAL", f"stream.pages sizes add up to {sum(params[3])}, "
                                f"its payload is {len(params[4])} bytes")
    return params


def stream_piece(event: Notification, page_size: int = 0) -> tuple[int, StreamPiece] | None:
    """`(msgid, piece)` of a stream notification; None for any other notification.
    `page_size`: the server's, for a stream asked to `compress` (0: a `stream.pages` is
    a violation)."""
    params = checked_params(event)
    if params is None:
        return None
    msgid, offset = params[0], params[1]
    if event.method == "stream.pages":
        return msgid, pages_piece(offset, params[2], params[3], memoryview(params[4]),
                                  page_size)
    if event.method == "stream.data":
        return msgid, StreamData(offset, memoryview(params[2]))
    if event.method == "stream.hole":
        return msgid, StreamHole(offset, *params[2:])
    return msgid, StreamError(offset, params[2], params[3], params[4])


def pages_piece(offset: int, length: int, sizes: Sequence[int], payload: memoryview,
                page_size: int) -> StreamPages:
    """A `stream.pages` piece, checked: one unit per page the range touches, each blob
    at least a byte and no longer than its unit, the payload exactly the blobs."""
    where = f"stream.pages at {offset:#x}+{length:#x}"
    if not page_size:
        raise ProtocolViolation("EINVAL", f"{where} in a stream not asked to compress")
    if not 0 < length <= MAX_UINT64 - offset:
        raise ProtocolViolation("EINVAL", f"{where}: the range is empty or past 2**64")
    first, last = offset // page_size, (offset + length - 1) // page_size
    if len(sizes) != last - first + 1:
        raise ProtocolViolation("EINVAL", f"{where}: {len(sizes)} sizes for "
                                f"{last - first + 1} units of {page_size} bytes")
    piece = StreamPages(offset, length, tuple(sizes), payload, page_size)
    if sum(sizes) != len(payload):
        raise ProtocolViolation("EINVAL", f"{where}: sizes add up to {sum(sizes)}, the "
                                f"payload is {len(payload)} bytes")
    for pos, unit, blob in piece.units():
        if not 0 < len(blob) <= unit:
            raise ProtocolViolation("EINVAL", f"{where}: the blob of the unit at {pos:#x} "
                                    f"is {len(blob)} bytes, its unit {unit}")
    return piece


def stream_summary(result: Any) -> dict[str, Any]:
    """A stream's final result, its counts checked: `{"bytes", "data_bytes",
    "hole_bytes", "error_bytes": uint, "cancelled": bool}` (other keys pass)."""
    if (type(result) is not dict or not all(_UINT64(result.get(key)) for key in COUNTS)
            or type(result.get("cancelled")) is not bool):
        raise ProtocolViolation("EINVAL", f"stream returned {brief(result)}, expected "
                                f"{{{', '.join(COUNTS)}: uint, cancelled: bool}}")
    return result
