"""What a `stream` sends back, checked in this one place for every reader.

The decoder (`dumpd.protocol`) checks that a frame is msgpack-RPC; what a stream's
notifications and its final response carry is the `stream` method's contract
(docs/protocol.md), checked here: by the blocking receiver (`dumpd.client.receiver`, its
fast path for `stream.data` included) and by both clients for stream notifications
that reach them outside a stream. A wrong shape is a `ProtocolViolation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dumpd.protocol import MAX_MSGID, MAX_UINT64, Notification, ProtocolViolation, brief
from dumpd.protocol.events import is_uint


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
class StreamWritten:
    """File-view bytes at `offset` already written to the receiver's sink."""

    offset: int
    length: int


StreamPiece = StreamData | StreamHole | StreamError | StreamWritten


class SinkError(OSError):
    """Writing to the sink failed (ENOSPC, EIO, ...): the sink's fault, not the
    connection's; `errno` and `strerror` are those of the failed write."""


Check = Callable[[object], bool]


def _uint(maximum: int) -> Check:
    return lambda value: is_uint(value, maximum)


def _of(kind: type) -> Check:
    return lambda value: type(value) is kind


_MSGID, _UINT64 = _uint(MAX_MSGID), _uint(MAX_UINT64)

# Each stream notification's params: (name, check) in order.
PARAMS: dict[str, Sequence[tuple[str, Check]]] = {
    "stream.data": (("msgid", _MSGID), ("offset", _UINT64), ("bin", _of(bytes))),
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


def stream_piece(event: Notification) -> tuple[int, StreamPiece] | None:
    """`(msgid, piece)` of a stream notification; None for any other notification."""
    checks = PARAMS.get(event.method)
    if checks is None:
        return None
    params = event.params
    allowed = (*checks, *OPTIONAL.get(event.method, ()))
    if not len(checks) <= len(params) <= len(allowed) or not all(
            ok(param) for (_, ok), param in zip(allowed, params, strict=False)):
        raise malformed(event.method, params)
    msgid, offset = params[0], params[1]
    if event.method == "stream.data":
        return msgid, StreamData(offset, memoryview(params[2]))
    if event.method == "stream.hole":
        return msgid, StreamHole(offset, *params[2:])
    return msgid, StreamError(offset, params[2], params[3], params[4])


def stream_summary(result: Any) -> dict[str, Any]:
    """A stream's final result, its counts checked: `{"bytes", "data_bytes",
    "hole_bytes", "error_bytes": uint, "cancelled": bool}` (other keys pass)."""
    if (type(result) is not dict or not all(_UINT64(result.get(key)) for key in COUNTS)
            or type(result.get("cancelled")) is not bool):
        raise ProtocolViolation("EINVAL", f"stream returned {brief(result)}, expected "
                                f"{{{', '.join(COUNTS)}: uint, cancelled: bool}}")
    return result
