"""Bytes from a peer to events: `FrameDecoder` for a byte stream, `decode_frame` for
one frame whose boundaries the caller found; both apply the same checks and limits."""

from __future__ import annotations

from typing import Any

import msgpack

from dumpd.errors import DumpdError
from dumpd.protocol.events import (
    DEFAULT_CLIENT_MAX_FRAME_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    MAX_MSGID,
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    Event,
    InvalidRequest,
    Limits,
    Notification,
    ProtocolViolation,
    Request,
    Response,
    Role,
    brief,
    integral,
    is_uint,
    method_name,
)


class _MapKeyError(ValueError):
    """A map key that is not a str (msgpack itself lets bin keys through)."""


def _str_keyed(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A decoded map, refused unless every key is a str (the protocol's rule)."""
    for key, _ in pairs:
        if type(key) is not str:
            raise _MapKeyError(f"a map key must be a str, got {type(key).__name__}")
    return dict(pairs)


# How every frame from a peer is unpacked, by a `FrameDecoder` or by `decode_frame`.
_UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "use_list": True,
    "object_pairs_hook": _str_keyed,  # every key checked here, for one clear message
    "strict_map_key": False,
}


def _default_limits(role: Role) -> Limits:
    return Limits(DEFAULT_CLIENT_MAX_FRAME_SIZE if role == "client" else DEFAULT_MAX_FRAME_SIZE)


def oversized(size: int, limits: Limits, *, complete: bool = True) -> ProtocolViolation:
    """The violation of a frame of `size` bytes (so far, if not `complete`) over the limit."""
    limit = limits.max_frame_size
    if complete:
        return ProtocolViolation("E2BIG", f"frame of {size} bytes exceeds {limit}")
    return ProtocolViolation("E2BIG", f"incomplete frame already {size} bytes, limit {limit}")


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
        self.limits = limits or _default_limits(role)
        size = self.limits.max_frame_size
        # Each element of an array takes at least one byte (a map entry two), so longer
        # headers cannot fit in a frame; the limits also stop msgpack preallocating them.
        self._unpacker = msgpack.Unpacker(
            **_UNPACK_OPTIONS,
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
                        raise oversized(end - self._frame_start, self.limits)
                    self._frame_start = end
                    events.append(_message(obj, self.role))
                # tell() also advances over headers of an incomplete object, so measure it
                # from where it began, not from tell().
                if self._fed - self._frame_start > limit:
                    raise oversized(self.buffered, self.limits, complete=False)
        except DumpdError:  # ours: a violation named, or a LocalProtocolError (a bug)
            raise
        except Exception as exc:
            raise _violation_from(exc) from exc
        return events


def decode_frame(frame: bytes | bytearray | memoryview, role: Role,
                 limits: Limits | None = None) -> Event:
    """The event in `frame`, exactly one msgpack object's bytes, with every check and
    `ProtocolViolation` a `FrameDecoder` of `role` (and `limits`) would apply to it: for
    a receiver that finds frame boundaries itself (`dumpd.client.framescan`)."""
    limits = limits or _default_limits(role)
    if len(frame) > limits.max_frame_size:
        raise oversized(len(frame), limits)
    try:
        obj = msgpack.unpackb(frame, **_UNPACK_OPTIONS)
    except Exception as exc:
        raise _violation_from(exc) from exc
    return _message(obj, role)


def _message(obj: Any, role: Role) -> Event:
    """The event a decoded msgpack object is, from a peer of a `role` endpoint (a
    "client" receives responses and notifications); `ProtocolViolation` if it is none."""
    if type(obj) is not list or not obj:
        raise ProtocolViolation(
            "EINVAL", f"a message must be a non-empty array, got {brief(obj)}"
        )
    kind = obj[0]
    if type(kind) is int and kind == NOTIFICATION:
        method = method_name(obj[1]) if len(obj) == 3 else None
        if method is None or type(obj[2]) is not list:
            raise ProtocolViolation("EINVAL", f"malformed notification {brief(obj)}")
        return Notification(method, obj[2])
    if role == "server":
        return _request(obj, kind)
    return _response(obj, kind)


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
    method, params = method_name(obj[2]), obj[3]
    if method is None:
        sent = "bin that is not UTF-8" if type(obj[2]) is bytes else type(obj[2]).__name__
        return InvalidRequest(msgid, message=f"method must be a str, got {sent}")
    if type(params) is not list:
        return InvalidRequest(
            msgid, message=f"params must be an array, got {type(params).__name__}"
        )
    return Request(msgid, method, params)


def _response(obj: list[Any], kind: object) -> Response:
    if not (type(kind) is int and kind == RESPONSE):
        raise ProtocolViolation(
            "EINVAL", f"expected a response or notification, got {brief(obj)}"
        )
    if len(obj) != 4 or not is_uint(obj[1], MAX_MSGID):
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
