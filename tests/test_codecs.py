"""dumpd.codecs: each of makedumpfile's page codecs round-trips a page exactly, refuses
corrupt input with EIO and a missing library with ENOSYS naming what to install."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dumpd import codecs
from dumpd.errors import DumpdError

PAGE = 4096
TEXT_PAGE = (b"dumpd pages: " * 400)[:PAGE]
HALF_RANDOM = os.urandom(PAGE // 2) + bytes(PAGE // 2)


@pytest.fixture(params=codecs.NAMES)
def codec(request: pytest.FixtureRequest) -> codecs.Codec:
    name = request.param
    if name not in codecs.available():
        pytest.skip(f"{name}: its library is not on this machine")
    return codecs.codec(name)


def test_this_machine_has_zlib_and_zstd() -> None:
    """zlib is the standard library's and zstd a dependency: never missing."""
    assert {"zlib", "zstd"} <= set(codecs.available())


def test_flags_are_makedumpfiles() -> None:
    assert {name: codecs.codec(name).flag for name in codecs.available()} == {
        name: flag for name, flag in
        (("zlib", 0x1), ("lzo", 0x2), ("snappy", 0x4), ("zstd", 0x20))
        if name in codecs.available()}
    for name in codecs.available():
        assert codecs.by_flag(codecs.codec(name).flag).name == name


@pytest.mark.parametrize("page", [TEXT_PAGE, HALF_RANDOM, bytes(PAGE)])
def test_a_page_round_trips(codec: codecs.Codec, page: bytes) -> None:
    blob = codec.compress(page)
    assert len(blob) < PAGE
    assert codec.decompress(blob, PAGE) == page
    assert codec.decompress(memoryview(blob), PAGE) == page


@given(st.binary(min_size=1, max_size=2 * PAGE))
def test_any_bytes_round_trip(data: bytes) -> None:
    for name in codecs.available():
        codec = codecs.codec(name)
        assert codec.decompress(codec.compress(data), len(data)) == data


def test_zlib_is_level_1_as_makedumpfile_compress2_best_speed() -> None:
    assert codecs.codec("zlib").compress(TEXT_PAGE) == zlib.compress(TEXT_PAGE, 1)


def test_a_cut_blob_is_eio(codec: codecs.Codec) -> None:
    blob = codec.compress(HALF_RANDOM)
    with pytest.raises(DumpdError) as caught:
        codec.decompress(blob[: len(blob) // 2], PAGE)
    assert caught.value.code == "EIO"
    assert caught.value.message.startswith(f"{codec.name}: a compressed page does not")


def test_a_page_of_another_size_is_eio(codec: codecs.Codec) -> None:
    blob = codec.compress(TEXT_PAGE)
    for size in (PAGE - 1, PAGE + 1):
        with pytest.raises(DumpdError, match=f"EIO: {codec.name}: "):
            codec.decompress(blob, size)


def test_unknown_names_and_flags() -> None:
    with pytest.raises(DumpdError, match=r"^EINVAL: unknown compression 'lz4' \(expected "
                       r"zlib, lzo, snappy, zstd\)$"):
        codecs.codec("lz4")
    with pytest.raises(DumpdError, match=r"^EIO: page compressed with an unknown method "
                       r"\(flags 0x3\)$"):
        codecs.by_flag(0x3)


def test_a_missing_library_is_enosys_saying_what_to_install() -> None:
    with pytest.raises(DumpdError) as caught:
        codecs._library("dumpd-no-such-lib", "libdumpd-no-such.so.9", "libdumpd-no-such9")
    assert (caught.value.code, caught.value.message) == (
        "ENOSYS", "dumpd-no-such-lib: the C library libdumpd-no-such.so.9 is not installed "
                  "(apt-get install libdumpd-no-such9)")
