"""The protocol's vocabulary: message kinds and bounds, the two error kinds, the events
(frozen, slotted dataclasses that validate themselves), the decoder's limits, and the
checks the decoder and the encoder share."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any, Literal

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


def is_uint(value: object, maximum: int) -> bool:
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


def method_name(value: object) -> str | None:
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


def check_msgid(msgid: object) -> None:
    if not is_uint(msgid, MAX_MSGID):
        raise LocalProtocolError(f"msgid must be an int in [0, 2**32-1], got {msgid!r}")


def check_method(method: object) -> None:
    if type(method) is not str:
        raise LocalProtocolError(f"method must be a str, got {type(method).__name__}")


def check_params(params: object) -> None:
    if not isinstance(params, list | tuple):
        raise LocalProtocolError(f"params must be a list or tuple, got {type(params).__name__}")





@dataclass(frozen=True, slots=True)
class Request:
    """A call `[0, msgid, method, params]` that expects exactly one response with `msgid`."""

    msgid: int
    method: str
    params: list[Any] | tuple[Any, ...]

    def __post_init__(self) -> None:
        check_msgid(self.msgid)
        check_method(self.method)
        check_params(self.params)


@dataclass(frozen=True, slots=True)
class Response:
    """The answer `[1, msgid, error, result]`; `error` is None or `(code, message)`.

    Codes are kept as the peer sent them, even ones this version does not know.
    """

    msgid: int
    error: tuple[str, str] | None
    result: Any

    def __post_init__(self) -> None:
        check_msgid(self.msgid)
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
        check_method(self.method)
        check_params(self.params)


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
        check_msgid(self.msgid)
        if self.code not in CODES:
            raise LocalProtocolError(f"unknown error code {self.code!r}")


Event = Request | Response | Notification | InvalidRequest


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
