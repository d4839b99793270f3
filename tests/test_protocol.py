"""The sans-IO msgpack-RPC layer, tested without a socket."""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dumpd.errors import DumpdError
from dumpd.protocol import (
    FrameDecoder,
    InvalidRequest,
    Limits,
    LocalProtocolError,
    Notification,
    ProtocolViolation,
    Request,
    Response,
    Role,
    encode,
    encode_bin_response_head,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    integral,
)
from dumpd.server.params import as_map, as_str, as_uint

MiB = 1 << 20


def packb(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def server() -> FrameDecoder:
    return FrameDecoder("server")


def client() -> FrameDecoder:
    return FrameDecoder("client")


# -- events and encodings --------------------------------------------------------------


def test_request_round_trip() -> None:
    frame = encode_request(7, "read", (4096, 512))
    assert frame == packb([0, 7, "read", [4096, 512]])
    assert server().feed(frame) == [Request(7, "read", [4096, 512])]


def test_notification_round_trip_both_roles() -> None:
    frame = encode_notification("data", [1, b"\x00\x01"])
    assert frame == packb([2, "data", [1, b"\x00\x01"]])
    assert server().feed(frame) == [Notification("data", [1, b"\x00\x01"])]
    assert client().feed(frame) == [Notification("data", [1, b"\x00\x01"])]


def test_response_round_trip() -> None:
    frame = encode_response(2**32 - 1, {"size": 4096, "hook": None})
    assert frame == packb([1, 2**32 - 1, None, {"size": 4096, "hook": None}])
    assert client().feed(frame) == [Response(2**32 - 1, None, {"size": 4096, "hook": None})]


def test_error_round_trip() -> None:
    frame = encode_error(3, "ERANGE", "0x1000+0x10 is not covered")
    assert frame == packb([1, 3, ["ERANGE", "0x1000+0x10 is not covered"], None])
    assert client().feed(frame) == [Response(3, ("ERANGE", "0x1000+0x10 is not covered"), None)]


def test_unknown_error_code_is_kept_by_the_client_decoder() -> None:
    frame = packb([1, 3, ["EFUTURE", "from a newer server"], None])
    assert client().feed(frame) == [Response(3, ("EFUTURE", "from a newer server"), None)]


def test_bytes_travel_as_bin_and_text_as_str() -> None:
    frame = encode_response(1, [b"ab", "ab"])
    assert frame == b"\x94\x01\x01\xc0\x92\xc4\x02ab\xa2ab"


@pytest.mark.parametrize(
    "event",
    [
        Request(1, "info", []),
        Request(2, "read", (0, 4096)),
        Notification("tick", [1.5]),
        Response(9, None, b"x" * 300),
        Response(9, ("EIO", "read failed"), None),
    ],
)
def test_encode_event_matches_the_functions(event: Request | Response | Notification) -> None:
    role: Role = "client" if isinstance(event, Response) else "server"
    (decoded,) = FrameDecoder(role).feed(encode(event))
    assert type(decoded) is type(event)
    assert encode(decoded) == encode(event)


@pytest.mark.parametrize("length", [0, 1, 31, 32, 255, 256, 65535, 65536, 8 * MiB])
@pytest.mark.parametrize("msgid", [0, 127, 128, 65536, 2**32 - 1])
def test_bin_response_head_plus_payload_is_packb(length: int, msgid: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    head = encode_bin_response_head(msgid, length)
    assert head + payload == packb([1, msgid, None, payload])
    assert client().feed(head + payload) == [Response(msgid, None, payload)]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Request(-1, "m", []),
        lambda: Request(2**32, "m", []),
        lambda: Request(True, "m", []),
        lambda: Request(1, b"m", []),  # type: ignore[arg-type]
        lambda: Request(1, "m", "params"),  # type: ignore[arg-type]
        lambda: Response(1, ("EIO",), None),  # type: ignore[arg-type]
        lambda: Response(1, ["EIO", "x"], None),  # type: ignore[arg-type]
        lambda: Notification(None, []),  # type: ignore[arg-type]
        lambda: InvalidRequest(1, code="EWHAT"),
        lambda: encode_request(1, "m", [object()]),
        lambda: encode_request(1, "m", [2**64]),
        lambda: encode_response(1, "\udcff"),
        lambda: encode_error(1, "EUNKNOWN", "x"),
        lambda: encode_error(1, "EIO", b"x"),  # type: ignore[arg-type]
        lambda: encode_bin_response_head(1, 2**32),
        lambda: encode_bin_response_head(1, -1),
    ],
)
def test_invalid_local_messages_are_local_errors(build: Any) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.code == "EFAULT"


# -- framing ---------------------------------------------------------------------------

STREAM = [
    encode_request(1, "info", []),
    encode_request(2, "read", [0, 4096]),
    encode_notification("hello", ["x" * 40]),
    packb([0, 3, "read"]),
    encode_request(4, "hook.register", ["balloon", {"timeout": 0.5, "blob": b"\xff" * 70}]),
]


def test_every_split_point_yields_the_same_events() -> None:
    data = b"".join(STREAM)
    expected = server().feed(data)
    assert len(expected) == len(STREAM)
    for cut in range(len(data) + 1):
        decoder = server()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == expected
        assert decoder.buffered == 0


def test_byte_at_a_time_yields_the_same_events() -> None:
    data = b"".join(STREAM)
    decoder = server()
    events = [event for i in range(len(data)) for event in decoder.feed(data[i : i + 1])]
    assert events == server().feed(data)


def test_buffered_counts_an_incomplete_frame() -> None:
    frame = encode_request(1, "read", [0, 4096])
    decoder = server()
    assert decoder.feed(frame[:-2]) == []
    assert decoder.buffered == len(frame) - 2
    assert decoder.feed(frame[-2:]) == [Request(1, "read", [0, 4096])]
    assert decoder.buffered == 0


# -- limits ----------------------------------------------------------------------------


def _frame_of_size(size: int) -> bytes:
    """A request of exactly `size` bytes (a bin32 param padded to fit)."""
    overhead = len(encode_request(1, "m", [b"\x00" * 70000]))
    return encode_request(1, "m", [b"\x00" * (70000 + size - overhead)])


def test_frame_of_exactly_the_limit_is_accepted_and_one_more_is_not() -> None:
    limits = Limits(max_frame_size=MiB)
    ok, too_big = _frame_of_size(MiB), _frame_of_size(MiB + 1)
    assert (len(ok), len(too_big)) == (MiB, MiB + 1)
    assert len(FrameDecoder("server", limits).feed(ok)) == 1
    with pytest.raises(ProtocolViolation) as info:
        FrameDecoder("server", limits).feed(too_big)
    assert info.value.code == "E2BIG"


def test_many_frames_in_one_feed_are_each_measured_not_summed() -> None:
    frame = _frame_of_size(MiB // 2)
    events = FrameDecoder("server", Limits(MiB)).feed(frame * 7)
    assert len(events) == 7


def test_oversized_frame_in_small_pieces_fails_near_the_limit() -> None:
    decoder = FrameDecoder("server", Limits(max_frame_size=MiB))
    piece = 64 * 1024
    huge = b"\xc6" + (64 * MiB).to_bytes(4, "big")
    chunk = bytes(piece)
    fed = 0
    with pytest.raises(ProtocolViolation) as info:
        decoder.feed(huge)
        fed += len(huge)
        while fed < 64 * MiB:
            decoder.feed(chunk)
            fed += piece
    assert info.value.code == "E2BIG"
    assert fed <= MiB + piece
    # The decoder stays failed.
    with pytest.raises(ProtocolViolation):
        decoder.feed(encode_request(1, "info", []))


def test_oversized_frame_in_one_feed_buffers_at_most_twice_the_limit() -> None:
    data = b"\xc6" + (64 * MiB).to_bytes(4, "big") + bytes(64 * MiB)
    decoder = FrameDecoder("server", Limits(max_frame_size=MiB))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolViolation) as info:
            decoder.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "E2BIG"
    assert peak < 3 * MiB


def test_oversized_array_of_small_items_is_caught_although_msgpack_consumed_it() -> None:
    # msgpack's tell() advances over the parsed items of an incomplete array, so the
    # decoder must measure from where the frame began.
    decoder = FrameDecoder("server", Limits(max_frame_size=64 * 1024))
    with pytest.raises(ProtocolViolation) as info:
        decoder.feed(b"\xdd\x00\x01\x00\x00")
        for _ in range(100):
            decoder.feed(b"\x00" * 4096)
    assert info.value.code == "E2BIG"


@pytest.mark.parametrize(
    "header", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdc\xff\xff"]
)
def test_container_header_longer_than_a_frame_is_e2big(header: bytes) -> None:
    with pytest.raises(ProtocolViolation) as info:
        FrameDecoder("server", Limits(max_frame_size=1024)).feed(header)
    assert info.value.code == "E2BIG"


# -- malformed input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never used in msgpack
        b"\x94\x00\x01\xa1\xff\x90",  # invalid UTF-8 in the method
        b"\x91" * 2000 + b"\x00",  # nested too deeply
        b"\x81\x01\x02",  # a map with an int key
        packb(5),
        packb([]),
        packb("read"),
        packb([0]),
        packb([0, -1, "read", []]),
        packb([0, 2**32, "read", []]),
        packb([0, True, "read", []]),
        packb([0, "1", "read", []]),
        packb([True, 1, "read", []]),
        packb([1, 1, None, None]),  # a client does not send responses
        packb([3, 1, "read", []]),
        packb([2, "tick"]),
        packb([2, 5, []]),
        packb([2, "tick", {}]),
        packb([2, b"ti\xffck", []]),  # bin, but not UTF-8: no msgid to answer
        packb([0, 1.5, "read", []]),
        packb([0, float(2**32), "read", []]),
        packb([0, float("nan"), "read", []]),
    ],
)
def test_server_violations(data: bytes) -> None:
    with pytest.raises(ProtocolViolation) as info:
        server().feed(data)
    assert info.value.code == "EINVAL"


@pytest.mark.parametrize(
    "data",
    [
        packb([0, 1, "info", []]),  # a server does not send requests
        packb([1, 1, None]),
        packb([1, -1, None, None]),
        packb([1, 1, "EIO", None]),
        packb([1, 1, ["EIO"], None]),
        packb([1, 1, ["EIO", 5], None]),
    ],
)
def test_client_violations(data: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        client().feed(data)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ([0, 5, "read"], "4 elements"),
        ([0, 5, "read", [], None], "4 elements"),
        ([0, 5], "4 elements"),
        ([0, 5, 7, []], "method"),
        ([0, 5, b"re\xffad", []], "bin that is not UTF-8"),
        ([0, 5, "read", {"offset": 0}], "params"),
        ([0, 5, "read", None], "params"),
    ],
)
def test_bad_requests_with_a_msgid_become_invalid_request(message: list[Any], why: str) -> None:
    decoder = server()
    events = decoder.feed(packb(message) + encode_request(6, "info", []))
    assert len(events) == 2
    invalid, after = events
    assert isinstance(invalid, InvalidRequest)
    assert (invalid.msgid, invalid.code) == (5, "EINVAL")
    assert why in invalid.message
    assert after == Request(6, "info", [])


# -- params helpers --------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 2**64 - 1])
def test_as_uint_accepts(value: int) -> None:
    assert as_uint(value, "offset") == value


@pytest.mark.parametrize(
    ("value", "number"),
    [(0.0, 0), (-0.0, 0), (1.0, 1), (16.0, 16), (float(2**31), 2**31), (float(2**32), 2**32),
     (float(2**53), 2**53), (float(2**53 - 1), 2**53 - 1)],
)
def test_as_uint_takes_an_integral_float_up_to_2_53_as_its_int(value: float, number: int) -> None:
    result = as_uint(value, "offset")
    assert (type(result), result) == (int, number)
    assert integral(value) == number


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "offset must be in [0, 2**64-1], got -1"),
        (2**64, "offset must be in [0, 2**64-1], got 18446744073709551616"),
        (-1.0, "offset must be in [0, 2**64-1], got -1"),
        (True, "offset must be an unsigned int, got bool"),
        (False, "offset must be an unsigned int, got bool"),
        ("1", "offset must be an unsigned int, got str"),
        (None, "offset must be an unsigned int, got NoneType"),
        (b"\x01", "offset must be an unsigned int, got bytes"),
        (1.5, "offset must be an unsigned int (a float only if integral, at most 2**53), "
              "got float 1.5"),
        (float(2**53 + 2), "offset must be an unsigned int (a float only if integral, at "
                           "most 2**53), got float 9007199254740994.0"),
        (float(2**64), "offset must be an unsigned int (a float only if integral, at "
                       "most 2**53), got float 1.8446744073709552e+19"),
        (float("nan"), "offset must be an unsigned int (a float only if integral, at "
                       "most 2**53), got float nan"),
        (float("inf"), "offset must be an unsigned int (a float only if integral, at "
                       "most 2**53), got float inf"),
        (float("-inf"), "offset must be an unsigned int (a float only if integral, at "
                        "most 2**53), got float -inf"),
    ],
)
def test_as_uint_rejects(value: object, message: str) -> None:
    with pytest.raises(DumpdError) as info:
        as_uint(value, "offset")
    assert (info.value.code, info.value.message) == ("EINVAL", message)


# -- stock clients (docs/protocol.md, "Compatibility with stock clients") ---------------


def test_a_method_sent_as_bin_is_a_str_in_requests_and_notifications() -> None:
    # pynvim packs its method names as bin (msgpack's Packer, use_bin_type on).
    frames = packb([0, 5, b"read", [0, 16]]) + packb([2, b"nvim_set_client_info", [1]])
    assert server().feed(frames) == [Request(5, "read", [0, 16]),
                                     Notification("nvim_set_client_info", [1])]
    assert client().feed(packb([2, b"tick", []])) == [Notification("tick", [])]
    (request,) = server().feed(packb([0, 1, "read\u00e9".encode(), []]))
    assert request == Request(1, "read\u00e9", [])


@pytest.mark.parametrize(("sent", "msgid"), [(7.0, 7), (-0.0, 0), (float(2**31), 2**31),
                                             (float(2**32 - 1), 2**32 - 1)])
def test_an_integral_float_msgid_is_its_int(sent: float, msgid: int) -> None:
    # msgpack-lite sends every integer from 2**31 up as float64, msgids included.
    (request,) = server().feed(packb([0, sent, "info", []]))
    assert request == Request(msgid, "info", [])
    assert type(request.msgid) is int
    (invalid,) = server().feed(packb([0, sent, "info"]))
    assert invalid == InvalidRequest(msgid, message="a request has 4 elements, got 3")


def test_as_str_and_as_map() -> None:
    assert as_str("balloon", "name") == "balloon"
    assert as_map({"a": 1}, "options") == {"a": 1}
    assert as_map(None, "options") == {}
    for bad_call in (lambda: as_str(b"x", "name"), lambda: as_map({1: 2}, "options")):
        with pytest.raises(DumpdError) as info:
            bad_call()
        assert info.value.code == "EINVAL"


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        Limits(max_frame_size=0)


# -- properties ------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=300))
def test_arbitrary_bytes_raise_nothing_but_violations(data: bytes, cut: int) -> None:
    for role in ("server", "client"):
        decoder = FrameDecoder(role, Limits(max_frame_size=128))
        try:
            decoder.feed(data[:cut])
            decoder.feed(data[cut:])
        except ProtocolViolation as exc:
            assert exc.code in ("EINVAL", "E2BIG")


@settings(max_examples=300, deadline=None)
@given(
    msgid=st.integers(min_value=0, max_value=2**32 - 1),
    method=st.text(),
    params=st.lists(msgpack_values, max_size=6),
    cut=st.integers(min_value=0),
)
def test_arbitrary_valid_requests_round_trip(
    msgid: int, method: str, params: list[Any], cut: int
) -> None:
    frame = encode_request(msgid, method, params)
    cut %= len(frame) + 1
    decoder = server()
    assert decoder.feed(frame[:cut]) + decoder.feed(frame[cut:]) == [Request(msgid, method, params)]


@settings(max_examples=300, deadline=None)
@given(
    msgid=st.integers(min_value=0, max_value=2**32 - 1),
    method=st.text(),
    params=st.lists(msgpack_values, max_size=6),
    kind=st.sampled_from([0, 2]),
)
def test_a_method_as_bin_decodes_as_the_same_method_as_str(
    msgid: int, method: str, params: list[Any], kind: int
) -> None:
    head = [0, msgid] if kind == 0 else [2]
    as_bin = server().feed(packb([*head, method.encode(), params]))
    assert as_bin == server().feed(packb([*head, method, params]))


@settings(max_examples=300, deadline=None)
@given(value=st.floats() | st.integers(-(2**64), 2**64))
def test_a_float_is_an_integer_exactly_when_it_holds_one_up_to_2_53(value: float) -> None:
    if type(value) is int:
        expected: int | None = value
    else:  # a float holds an integer when it is a fraction with denominator 1
        exact = math.isfinite(value) and Fraction(value).denominator == 1
        expected = int(value) if exact and abs(value) <= 2**53 else None
    assert integral(value) == expected
    if expected is not None and 0 <= expected < 2**64:
        assert as_uint(value, "n") == expected
    else:
        with pytest.raises(DumpdError) as info:
            as_uint(value, "n")
        assert info.value.code == "EINVAL"


@settings(max_examples=200, deadline=None)
@given(msgid=st.integers(min_value=0, max_value=2**32 - 1), result=msgpack_values)
def test_arbitrary_responses_round_trip(msgid: int, result: Any) -> None:
    assert client().feed(encode_response(msgid, result)) == [Response(msgid, None, result)]
