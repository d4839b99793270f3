"""msgpack-RPC for dumpd, with no I/O in it (the h11 model).

Design rules:
- Bytes in, events out: `FrameDecoder.feed(bytes) -> [event]`; events or arguments in,
  bytes out: the `encode_*` functions. No sockets, no asyncio, no clocks.
- Events are frozen, slotted dataclasses that validate themselves on construction.
- Two kinds of error keep blame clear: `ProtocolViolation` (the peer broke the protocol;
  fatal, close the connection) and `LocalProtocolError` (we tried to encode something
  invalid: a bug on our side).
- A request that decodes but is malformed becomes an `InvalidRequest` event when its
  msgid can be recovered, so the server answers that msgid and carries on.
- Limits are enforced here: no single incoming object may exceed `max_frame_size` bytes,
  and the decoder never buffers more than twice that.
- Wire: request `[0, msgid, method, params]`, response `[1, msgid, error, result]`,
  notification `[2, method, params]`; msgid is a uint32, bytes travel as bin, text as str.
- Stock clients are met where they differ harmlessly (docs/protocol.md, "Compatibility
  with stock clients"): a method name sent as bin holding UTF-8 decodes as a str
  (`_method_name`), and wherever an integer is expected a float that holds one exactly,
  up to 2**53, counts as that integer (`integral`).
"""

from __future__ import annotations

import reprlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from dumpd.errors import CODES, DumpdError

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

MAX_MSGID = 2**32 - 1
MAX_UINT64 = 2**64 - 1
MAX_FLOAT_INT = 2**53  # a float64 holds every integer up to this one, and only some beyond
DEFAULT_MAX_FRAME_SIZE = 1 << 20
# A client receives read results (up to the server's max read length, 8 MiB by default,
# configurable) and long extents lists, and it trusts its server more than a server
# trusts its clients: its decoder accepts far bigger frames unless told otherwise.
DEFAULT_CLIENT_MAX_FRAME_SIZE = 256 << 20

Role = Literal["server", "client"]


class ProtocolViolation(DumpdError):
    """The peer broke the protocol (not msgpack, frame too big, bad message shape).

    Fatal: the stream cannot be trusted any more and the caller closes the connection.
    `code` is "E2BIG" for an oversized frame, "EINVAL" for anything else.
    """


class LocalProtocolError(DumpdError):
    """We tried to build or encode an invalid message: a bug on this side (code EFAULT)."""

    def __init__(self, message: str) -> None:
        super().__init__("EFAULT", message)


def _is_uint(value: object, maximum: int) -> bool:
    return type(value) is int and 0 <= value <= maximum


def integral(value: object) -> int | None:
    """`value` as an int if it is one (a bool is not), or a float holding an integer
    exactly with a magnitude of at most 2**53; else None.

    JavaScript encoders (msgpack-lite) send every integer from 2**31 up as float64, so a
    float stands for an integer where one is expected. Past 2**53 a float64 cannot hold
    every integer (the client's number may have been rounded), and 1.5, NaN and the
    infinities are no integers: those stay refused. -0.0 is 0.
    """
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer() and abs(value) <= MAX_FLOAT_INT:
        return int(value)
    return None


def _method_name(value: object) -> str | None:
    """A method name as sent: a str, or a bin holding UTF-8 (pynvim sends its names as
    bin); None for anything else."""
    if type(value) is str:
        return value
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _check_msgid(msgid: object) -> None:
    if not _is_uint(msgid, MAX_MSGID):
        raise LocalProtocolError(f"msgid must be an int in [0, 2**32-1], got {msgid!r}")


def _check_method(method: object) -> None:
    if type(method) is not str:
        raise LocalProtocolError(f"method must be a str, got {type(method).__name__}")


def _check_params(params: object) -> None:
    if not isinstance(params, list | tuple):
        raise LocalProtocolError(f"params must be a list or tuple, got {type(params).__name__}")


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A call `[0, msgid, method, params]` that expects exactly one response with `msgid`."""

    msgid: int
    method: str
    params: list[Any] | tuple[Any, ...]

    def __post_init__(self) -> None:
        _check_msgid(self.msgid)
        _check_method(self.method)
        _check_params(self.params)


@dataclass(frozen=True, slots=True)
class Response:
    """The answer `[1, msgid, error, result]`; `error` is None or `(code, message)`.

    Codes are kept as the peer sent them, even ones this version does not know.
    """

    msgid: int
    error: tuple[str, str] | None
    result: Any

    def __post_init__(self) -> None:
        _check_msgid(self.msgid)
        if self.error is not None and not (
            type(self.error) is tuple
            and len(self.error) == 2
            and all(type(part) is str for part in self.error)
        ):
            raise LocalProtocolError(f"error must be None or (code, message), got {self.error!r}")


@dataclass(frozen=True, slots=True)
class Notification:
    """A one-way message `[2, method, params]`: no msgid, never answered."""

    method: str
    params: list[Any] | tuple[Any, ...]

    def __post_init__(self) -> None:
        _check_method(self.method)
        _check_params(self.params)


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """A request that decoded but is malformed; the server answers `msgid` with `code`.

    Produced only by a server-role decoder, and only when `msgid` could be recovered
    (element 0 is 0 and element 1 a uint32); otherwise the decoder raises.
    """

    msgid: int
    code: str = "EINVAL"
    message: str = "invalid request"

    def __post_init__(self) -> None:
        _check_msgid(self.msgid)
        if self.code not in CODES:
            raise LocalProtocolError(f"unknown error code {self.code!r}")


Event = Request | Response | Notification | InvalidRequest


# -- decoding -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """What a decoder accepts. `max_frame_size`: bytes of one incoming msgpack object."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE

    def __post_init__(self) -> None:
        if type(self.max_frame_size) is not int or not 16 <= self.max_frame_size <= 2**31:
            raise ValueError(f"max_frame_size must be in [16, 2**31], got {self.max_frame_size!r}")


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 40


def brief(obj: object) -> str:
    """A bounded repr for error messages: a frame can hold a megabyte."""
    return _REPR.repr(obj)


class _MapKeyError(ValueError):
    """A map key that is not a str (msgpack itself lets bin keys through)."""


def _str_keyed(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A decoded map, refused unless every key is a str (the protocol's rule)."""
    for key, _ in pairs:
        if type(key) is not str:
            raise _MapKeyError(f"a map key must be a str, got {type(key).__name__}")
    return dict(pairs)


def _violation_from(exc: Exception) -> ProtocolViolation:
    """Name what the unpacker choked on; after any of these the stream is unsynchronized."""
    if isinstance(exc, _MapKeyError):
        return ProtocolViolation("EINVAL", str(exc))
    if isinstance(exc, UnicodeDecodeError):
        return ProtocolViolation("EINVAL", f"invalid UTF-8 in a str: {exc.reason}")
    if isinstance(exc, msgpack.StackError):
        return ProtocolViolation("EINVAL", "msgpack nested too deeply")
    if isinstance(exc, msgpack.FormatError):
        return ProtocolViolation("EINVAL", "bytes are not msgpack")
    if isinstance(exc, msgpack.BufferFull):
        return ProtocolViolation("E2BIG", "frame exceeds max_frame_size")
    if isinstance(exc, ValueError) and "exceeds max_" in str(exc):
        # An array or map header announcing more items than fit in a frame.
        return ProtocolViolation("E2BIG", f"frame exceeds max_frame_size ({exc})")
    return ProtocolViolation("EINVAL", f"undecodable msgpack: {exc}")


class FrameDecoder:
    """Turn a byte stream into events, for one connection and one `role`.

    role "server" (bytes from a client): yields `Request`, `Notification`, `InvalidRequest`.
    role "client" (bytes from a server): yields `Response`, `Notification`.
    Without `limits`, a server-role decoder takes frames up to `DEFAULT_MAX_FRAME_SIZE`,
    a client-role one up to `DEFAULT_CLIENT_MAX_FRAME_SIZE`.
    `feed` raises `ProtocolViolation` when the stream is unusable; the decoder then stays
    failed and raises the same error on every later `feed`. Events decoded earlier in the
    same `feed` call are discarded with it.
    """

    def __init__(self, role: Role = "server", limits: Limits | None = None) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', got {role!r}")
        self.role: Role = role
        if limits is None:
            limits = Limits(
                DEFAULT_CLIENT_MAX_FRAME_SIZE if role == "client" else DEFAULT_MAX_FRAME_SIZE
            )
        self.limits = limits
        size = self.limits.max_frame_size
        # Each element of an array takes at least one byte (a map entry two), so longer
        # headers cannot fit in a frame; the limits also stop msgpack preallocating them.
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            object_pairs_hook=_str_keyed,  # every key checked here, for one clear message
            strict_map_key=False,
            max_buffer_size=2 * size,
            max_array_len=size,
            max_map_len=size // 2,
            read_size=min(size, 64 * 1024),
        )
        self._fed = 0  # bytes given to the unpacker since the start
        self._frame_start = 0  # stream offset where the incomplete object begins
        self._error: ProtocolViolation | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held so far (0 at a frame boundary)."""
        return self._fed - self._frame_start

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Take the next bytes of the stream; return the events they complete."""
        if self._error is not None:
            raise self._error
        try:
            return self._decode(data)
        except ProtocolViolation as exc:
            self._error = exc
            raise

    def _decode(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Events in stream order; the first message that is wrong ends the stream (the
        bytes after it are not decoded, so the violation named is the first one)."""
        limit = self.limits.max_frame_size
        unpacker = self._unpacker
        events: list[Event] = []
        view = memoryview(data) if len(data) > limit else None
        try:
            # Slices of at most `limit` bytes: the buffer holds an incomplete frame of at
            # most `limit` (checked below) plus one slice, never more than 2 * limit.
            for start in range(0, len(data), limit):
                chunk = data if view is None else view[start : start + limit]
                unpacker.feed(chunk)
                self._fed += len(chunk)
                for obj in unpacker:
                    # tell() is past the object just completed: its exact size.
                    end = unpacker.tell()
                    if end - self._frame_start > limit:
                        raise ProtocolViolation(
                            "E2BIG", f"frame of {end - self._frame_start} bytes exceeds {limit}"
                        )
                    self._frame_start = end
                    events.append(self._event(obj))
                # tell() also advances over headers of an incomplete object, so measure it
                # from where it began, not from tell().
                if self._fed - self._frame_start > limit:
                    raise ProtocolViolation(
                        "E2BIG", f"incomplete frame already {self.buffered} bytes, limit {limit}"
                    )
        except DumpdError:  # ours: a violation named, or a LocalProtocolError (a bug)
            raise
        except Exception as exc:
            raise _violation_from(exc) from exc
        return events

    def _event(self, obj: Any) -> Event:
        if type(obj) is not list or not obj:
            raise ProtocolViolation(
                "EINVAL", f"a message must be a non-empty array, got {brief(obj)}"
            )
        kind = obj[0]
        if type(kind) is int and kind == NOTIFICATION:
            method = _method_name(obj[1]) if len(obj) == 3 else None
            if method is None or type(obj[2]) is not list:
                raise ProtocolViolation("EINVAL", f"malformed notification {brief(obj)}")
            return Notification(method, obj[2])
        if self.role == "server":
            return self._request(obj, kind)
        return self._response(obj, kind)

    @staticmethod
    def _request(obj: list[Any], kind: object) -> Request | InvalidRequest:
        if not (type(kind) is int and kind == REQUEST):
            raise ProtocolViolation(
                "EINVAL", f"expected a request or notification, got {brief(obj)}"
            )
        msgid = integral(obj[1]) if len(obj) >= 2 else None
        if msgid is None or not 0 <= msgid <= MAX_MSGID:
            raise ProtocolViolation("EINVAL", f"request without a valid msgid: {brief(obj)}")
        if len(obj) != 4:
            return InvalidRequest(msgid, message=f"a request has 4 elements, got {len(obj)}")
        method, params = _method_name(obj[2]), obj[3]
        if method is None:
            sent = "bin that is not UTF-8" if type(obj[2]) is bytes else type(obj[2]).__name__
            return InvalidRequest(msgid, message=f"method must be a str, got {sent}")
        if type(params) is not list:
            return InvalidRequest(
                msgid, message=f"params must be an array, got {type(params).__name__}"
            )
        return Request(msgid, method, params)

    @staticmethod
    def _response(obj: list[Any], kind: object) -> Response:
        if not (type(kind) is int and kind == RESPONSE):
            raise ProtocolViolation(
                "EINVAL", f"expected a response or notification, got {brief(obj)}"
            )
        if len(obj) != 4 or not _is_uint(obj[1], MAX_MSGID):
            raise ProtocolViolation("EINVAL", f"malformed response {brief(obj)}")
        error = obj[2]
        if error is None:
            return Response(obj[1], None, obj[3])
        if (
            type(error) is not list
            or len(error) != 2
            or type(error[0]) is not str
            or type(error[1]) is not str
        ):
            raise ProtocolViolation(
                "EINVAL", f"response error is not [code, message]: {brief(error)}"
            )
        return Response(obj[1], (error[0], error[1]), obj[3])


# -- encoding -----------------------------------------------------------------------


def _pack(obj: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode as msgpack: {exc}") from exc
    return packed


def encode_request(msgid: int, method: str, params: Sequence[Any]) -> bytes:
    """`[0, msgid, method, params]`; params may be a list or a tuple."""
    _check_msgid(msgid)
    _check_method(method)
    _check_params(params)
    return _pack([REQUEST, msgid, method, params])


def encode_notification(method: str, params: Sequence[Any]) -> bytes:
    """`[2, method, params]`."""
    _check_method(method)
    _check_params(params)
    return _pack([NOTIFICATION, method, params])


def encode_response(msgid: int, result: Any) -> bytes:
    """`[1, msgid, nil, result]`. For large bytes prefer `encode_bin_response_head`."""
    _check_msgid(msgid)
    return _pack([RESPONSE, msgid, None, result])


def encode_error(msgid: int, code: str, message: str) -> bytes:
    """`[1, msgid, [code, message], nil]`; `code` must be one of `dumpd.errors.CODES`."""
    _check_msgid(msgid)
    if code not in CODES:
        raise LocalProtocolError(f"unknown error code {code!r}")
    if type(message) is not str:
        raise LocalProtocolError(f"error message must be a str, got {type(message).__name__}")
    return _pack([RESPONSE, msgid, [code, message], None])


_BIN8 = struct.Struct(">BB")
_BIN16 = struct.Struct(">BH")
_BIN32 = struct.Struct(">BI")


def encode_bin_response_head(msgid: int, payload_len: int) -> bytes:
    """Bytes of `[1, msgid, nil, <bin header>]` without the payload (zero-copy sends).

    `head + payload` equals `msgpack.packb([1, msgid, None, payload], use_bin_type=True)`,
    so the payload can be written straight from its buffer after the head.
    """
    _check_msgid(msgid)
    return b"\x94\x01" + _pack(msgid) + b"\xc0" + _bin_header(payload_len)


def encode_bin_notification_head(method: str, leading: Sequence[Any], payload_len: int) -> bytes:
    """Bytes of `[2, method, [*leading, <bin header>]]` without the payload.

    `head + payload` equals the packed notification whose last param is the payload
    (`stream.data` frames are written this way, the payload from its own buffer).
    """
    _check_method(method)
    params = _pack([*leading, b""])  # the array header and the leading params, then bin8(0)
    return b"\x93\x02" + _pack(method) + params[:-2] + _bin_header(payload_len)


def _bin_header(payload_len: int) -> bytes:
    if not _is_uint(payload_len, 2**32 - 1):
        raise LocalProtocolError(f"bin payload length must be in [0, 2**32-1], got {payload_len!r}")
    if payload_len < 0x100:
        return _BIN8.pack(0xC4, payload_len)
    if payload_len < 0x10000:
        return _BIN16.pack(0xC5, payload_len)
    return _BIN32.pack(0xC6, payload_len)


def encode(event: Request | Response | Notification) -> bytes:
    """Encode an event object (the h11 `send` form of the functions above)."""
    if isinstance(event, Request):
        return encode_request(event.msgid, event.method, event.params)
    if isinstance(event, Notification):
        return encode_notification(event.method, event.params)
    if isinstance(event, Response):
        if event.error is not None:
            return encode_error(event.msgid, *event.error)
        return encode_response(event.msgid, event.result)
    raise LocalProtocolError(f"cannot encode {type(event).__name__}")
