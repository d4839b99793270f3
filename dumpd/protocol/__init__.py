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
  (`method_name`), and wherever an integer is expected a float that holds one exactly,
  up to 2**53, counts as that integer (`integral`).

Modules: `events` (kinds, bounds, errors, events, limits), `decoder` (bytes to events),
`encoder` (events to bytes). The names below are the protocol's API.
"""

from dumpd.protocol.decoder import FrameDecoder, decode_frame, oversized
from dumpd.protocol.encoder import (
    encode,
    encode_bin_notification_head,
    encode_bin_response_head,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
)
from dumpd.protocol.events import (
    DEFAULT_CLIENT_MAX_FRAME_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    MAX_FLOAT_INT,
    MAX_MSGID,
    MAX_UINT64,
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    Event,
    InvalidRequest,
    Limits,
    LocalProtocolError,
    Notification,
    ProtocolViolation,
    Request,
    Response,
    Role,
    brief,
    integral,
)

__all__ = [
    "DEFAULT_CLIENT_MAX_FRAME_SIZE", "DEFAULT_MAX_FRAME_SIZE", "MAX_FLOAT_INT", "MAX_MSGID",
    "MAX_UINT64", "NOTIFICATION", "REQUEST", "RESPONSE", "Event", "FrameDecoder",
    "InvalidRequest", "Limits", "LocalProtocolError", "Notification", "ProtocolViolation",
    "Request", "Response", "Role", "brief", "decode_frame", "encode",
    "encode_bin_notification_head", "encode_bin_response_head", "encode_error",
    "encode_notification", "encode_request", "encode_response", "integral", "oversized",
]
