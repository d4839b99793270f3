"""Frame boundaries found without decoding: checked against msgpack itself."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dumpd.client.framescan import DATA_PREFIX, data_head, object_end
from dumpd.protocol import encode_bin_notification_head

leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
          | st.text(max_size=300) | st.binary(max_size=70000))
objects = st.recursive(leaves, lambda inner: st.lists(inner, max_size=20)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=20), max_leaves=40)


@given(objects, st.binary(max_size=20))
def test_object_end_is_where_msgpack_stops(obj: object, tail: bytes) -> None:
    packed = msgpack.packb(obj, use_bin_type=True)
    data = b"\x00" * 3 + packed + tail
    assert object_end(data, 3, len(data)) == 3 + len(packed)
    for cut in range(3, 3 + len(packed), max(1, len(packed) // 50)):
        assert object_end(data, 3, cut) is None  # incomplete: more bytes needed


def test_object_end_refuses_the_unused_lead_byte() -> None:
    with pytest.raises(ValueError, match="byte 0xc1 starts no msgpack object"):
        object_end(b"\x92\x01\xc1", 0, 3)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_data_head_reads_every_encoding(msgid: int, offset: int, length: int) -> None:
    head = encode_bin_notification_head("stream.data", [msgid, offset], length)
    assert head.startswith(DATA_PREFIX)
    data = b"xy" + head + b"payload"
    assert data_head(data, 2, len(data)) == (msgid, offset, length, 2 + len(head))
    for cut in range(2, 2 + len(head)):
        assert data_head(data, 2, cut) is None


@pytest.mark.parametrize("frame", [
    msgpack.packb([2, "stream.hole", [1, 2, 3]]),
    msgpack.packb([2, "stream.data", [1, 2, "not bin"]]),
    msgpack.packb([1, 0, None, b"x"]),
])
def test_data_head_ignores_other_frames(frame: bytes) -> None:
    assert data_head(frame, 0, len(frame)) is None
