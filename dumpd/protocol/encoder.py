"""Events or their parts to bytes; the bin heads let a payload be written from its own
buffer after them (zero-copy replies and `stream.data`)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from dumpd.errors import CODES
from dumpd.protocol.events import (
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    LocalProtocolError,
    Notification,
    Request,
    Response,
    check_method,
    check_msgid,
    check_params,
    is_uint,
)


def _pack(obj: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode as msgpack: {exc}") from exc
    return packed


def encode_request(msgid: int, method: str, params: Sequence[Any]) -> bytes:
    """`[0, msgid, method, params]`; params may be a list or a tuple."""
    check_msgid(msgid)
    check_method(method)
    check_params(params)
    return _pack([REQUEST, msgid, method, params])


def encode_notification(method: str, params: Sequence[Any]) -> bytes:
    """`[2, method, params]`."""
    check_method(method)
    check_params(params)
    return _pack([NOTIFICATION, method, params])


def encode_response(msgid: int, result: Any) -> bytes:
    """`[1, msgid, nil, result]`. For large bytes prefer `encode_bin_response_head`."""
    check_msgid(msgid)
    return _pack([RESPONSE, msgid, None, result])


def encode_error(msgid: int, code: str, message: str) -> bytes:
    """`[1, msgid, [code, message], nil]`; `code` must be one of `dumpd.errors.CODES`."""
    check_msgid(msgid)
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
    check_msgid(msgid)
    return b"\x94\x01" + _pack(msgid) + b"\xc0" + _bin_header(payload_len)


def encode_bin_notification_head(method: str, leading: Sequence[Any], payload_len: int) -> bytes:
    """Bytes of `[2, method, [*leading, <bin header>]]` without the payload.

    `head + payload` equals the packed notification whose last param is the payload
    (`stream.data` frames are written this way, the payload from its own buffer).
    """
    check_method(method)
    params = _pack([*leading, b""])  # the array header and the leading params, then bin8(0)
    return b"\x93\x02" + _pack(method) + params[:-2] + _bin_header(payload_len)


def _bin_header(payload_len: int) -> bytes:
    if not is_uint(payload_len, 2**32 - 1):
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
