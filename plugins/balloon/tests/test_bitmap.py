"""The bitmap format: exact bytes, header errors, detection, and agreement with text lists."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from dumpd.hooks.contract import ERROR, NOT_RAM, RAM, HookConfigError
from hypothesis import given, settings
from hypothesis import strategies as st

import dumpd_balloon
from dumpd_balloon import MAX_PFN, PFN_LIMIT, BalloonHook, PfnBitmap, PfnRanges
from dumpd_balloon.bitmap import HEADER_SIZE, MAGIC

KNOWN = [(3, 5), (10, 20), (30, 31)]
"""A small list: pfns 3-4, 10-19 and 30."""

KNOWN_HEADER = (
    b"DUMPDBMP"  # magic
    + b"\x01\x00\x00\x00"  # version 1
    + b"\x20\x00\x00\x00"  # header_size 32
    + b"\x00" * 8  # first_pfn 0
    + b"\x28\x00\x00\x00\x00\x00\x00\x00"  # pfn_count 40
)
KNOWN_BITS = bytes([0b0001_1000, 0b1111_1100, 0b0000_1111, 0b0100_0000, 0b0000_0000])


def header(
    first: int = 0,
    count: int = 0,
    *,
    version: int = 1,
    header_size: int = HEADER_SIZE,
    magic: bytes = MAGIC,
) -> bytes:
    """A bitmap header with any field set as given (valid or not)."""
    return struct.pack("<8sIIQQ", magic, version, header_size, first, count)


def put(tmp_path: Path, data: bytes, name: str = "balloon.bmp") -> str:
    """Write `data` under `tmp_path`; its path."""
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@contextmanager
def bitmap_hook(ranges: list[tuple[int, int]], base: int, count: int) -> Iterator[Any]:
    """The balloon hook over a bitmap of `ranges` spanning `count` pfns from `base`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.bmp"
        dumpd_balloon.write_bitmap(path, ranges, base, count)
        bitmap = dumpd_balloon.create({"file": str(path)})
        try:
            yield bitmap
        finally:
            bitmap.close()


def expand(runs: Iterable[tuple[int, int]]) -> list[int]:
    """Runs as one verdict per pfn."""
    return [verdict for length, verdict in runs for _ in range(length)]


# --- writing: exact bytes ---------------------------------------------------------------


def test_written_bytes_of_a_known_list(tmp_path: Path) -> None:
    path = tmp_path / "known.bmp"
    assert dumpd_balloon.write_bitmap(path, KNOWN, 0, 40) == (0, 40)
    assert path.read_bytes() == KNOWN_HEADER + KNOWN_BITS


def test_written_bytes_with_a_default_span(tmp_path: Path) -> None:
    path = tmp_path / "tiny.bmp"
    assert dumpd_balloon.write_bitmap(path, [(0x110, 0x111), (0x102, 0x106)]) == (0x102, 15)
    assert path.read_bytes() == header(0x102, 15) + bytes([0b1111, 0b0100_0000])


def test_written_bytes_of_the_readme_example(tmp_path: Path) -> None:
    path = tmp_path / "tiny.bmp"
    dumpd_balloon.write_bitmap(path, [(0x102, 0x106), (0x110, 0x111)], 0x100, 20)
    assert path.read_bytes().hex(" ") == (
        "44 55 4d 50 44 42 4d 50 01 00 00 00 20 00 00 00 "
        "00 01 00 00 00 00 00 00 14 00 00 00 00 00 00 00 "
        "3c 00 01"
    )


@pytest.mark.parametrize(
    ("ranges", "first", "count", "bits"),
    [
        ([], 0, 0, b""),
        ([], 7, 0, b""),
        ([], 0, 9, b"\x00\x00"),
        ([(0, 8)], 0, 8, b"\xff"),
        ([(0, 9)], 0, 9, b"\xff\x01"),
        ([(7, 9)], 0, 16, b"\x80\x01"),
        ([(8, 16)], 0, 24, b"\x00\xff\x00"),
        ([(1, 2), (3, 4), (5, 6), (7, 8)], 0, 8, b"\xaa"),
        ([(5, 30)], 5, 25, b"\xff\xff\xff\x01"),
        ([(0, 1), (23, 24)], 0, 24, b"\x01\x00\x80"),
    ],
)
def test_written_bits(
    tmp_path: Path, ranges: list[tuple[int, int]], first: int, count: int, bits: bytes
) -> None:
    path = tmp_path / "b.bmp"
    dumpd_balloon.write_bitmap(path, ranges, first, count)
    assert path.read_bytes() == header(first, count) + bits


def test_long_runs_are_streamed_and_zeros_become_holes(tmp_path: Path) -> None:
    path = tmp_path / "big.bmp"
    ones = (1 << 27, (1 << 27) + (1 << 24))  # 2 MiB of 0xff: more than one write chunk
    dumpd_balloon.write_bitmap(path, [(5, 6), ones, (2**32 - 1, 2**32)], 0, 2**32)
    assert path.stat().st_size == HEADER_SIZE + 2**29
    assert path.stat().st_blocks * 512 < 8 << 20  # sparse: about the 2 MiB of ones
    hook = dumpd_balloon.create({"file": str(path)})
    try:
        assert hook.count == 1 + (1 << 24) + 1
        assert hook.ranges == ((5, 6), ones, (2**32 - 1, 2**32))
    finally:
        hook.close()


@pytest.mark.parametrize(
    ("ranges", "first", "count", "reason"),
    [
        ([(5, 10)], 6, None, "listed pfn 0x5 lies below the span 0x6+0x4"),
        ([(5, 10)], None, 4, "listed pfn 0x9 lies past the span 0x5+0x4"),
        ([(5, 10)], 0, 9, "listed pfn 0x9 lies past the span 0x0+0x9"),
        ([], 2, MAX_PFN, "span 0x2+0xffffffffffffffff ends past the largest pfn"),
        ([], 0, PFN_LIMIT, "span count 0x10000000000000000 does not fit pfn_count, a u64"),
        ([], -1, 3, "first and count must not be negative"),
    ],
)
def test_write_bitmap_refuses_a_bad_span(
    tmp_path: Path,
    ranges: list[tuple[int, int]],
    first: int | None,
    count: int | None,
    reason: str,
) -> None:
    with pytest.raises(ValueError, match=reason.replace("+", r"\+")):
        dumpd_balloon.write_bitmap(tmp_path / "b.bmp", ranges, first, count)
    assert os.listdir(tmp_path) == []


def test_write_bitmap_at_the_top_of_the_pfn_space(tmp_path: Path) -> None:
    path = tmp_path / "top.bmp"
    dumpd_balloon.write_bitmap(path, [(PFN_LIMIT - 2, PFN_LIMIT)], PFN_LIMIT - 16, 16)
    hook = dumpd_balloon.create({"file": str(path)})
    assert [hook.pfn_is_ram(p) for p in (MAX_PFN - 2, MAX_PFN - 1, MAX_PFN)] == [
        RAM,
        NOT_RAM,
        NOT_RAM,
    ]
    assert hook.pfn_range_is_ram(PFN_LIMIT - 20, 22) == [(18, RAM), (2, NOT_RAM), (2, ERROR)]
    hook.close()


# --- reading: header errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (MAGIC, "bitmap header holds 8 bytes, needs 32"),
        (header(0, 8)[:31], "bitmap header holds 31 bytes, needs 32"),
        (header(0, 8, version=0) + b"\0", "bitmap version 0 is not supported (known: 1)"),
        (header(0, 8, version=2) + b"\0", "bitmap version 2 is not supported (known: 1)"),
        (header(0, 8, header_size=16) + b"\0", "bitmap header_size 16 is below 32"),
        (header(0, 8, header_size=0) + b"\0", "bitmap header_size 0 is below 32"),
        (
            header(0, 8, header_size=64) + b"\0" * 8,
            "bitmap header_size 64 is past the end of the file (40 bytes)",
        ),
        (header(0, 1024), "bitmap holds 0 bytes, header says 128"),
        (header(0, 1024) + b"\0" * 100, "bitmap holds 100 bytes, header says 128"),
        (header(0, 9) + b"\xff", "bitmap holds 1 bytes, header says 2"),
        (
            header(0, 8, header_size=40) + b"\0" * 8,
            "bitmap holds 0 bytes, header says 1",
        ),
        (
            header(PFN_LIMIT - 256, 512) + b"\0" * 64,
            "bitmap span 0xffffffffffffff00+0x200 ends past the largest pfn 0xffffffffffffffff",
        ),
    ],
)
def test_bad_bitmaps_name_the_file_and_the_problem(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    path = put(tmp_path, data)
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": path})
    assert str(caught.value) == f"balloon: {path}: {reason}"


def test_a_longer_header_is_skipped(tmp_path: Path) -> None:
    data = header(0x40, 16, header_size=48) + b"future fields..." + b"\x01\x80"
    hook = dumpd_balloon.create({"file": put(tmp_path, data)})
    assert hook.ranges == ((0x40, 0x41), (0x4F, 0x50))
    assert isinstance(hook.data, PfnBitmap)
    assert hook.data.header_size == 48
    hook.close()


def test_padding_bits_and_trailing_bytes_are_ignored(tmp_path: Path) -> None:
    hook = dumpd_balloon.create({"file": put(tmp_path, header(100, 3) + b"\xfa" + b"junk")})
    assert hook.ranges == ((101, 102),)
    assert hook.count == 1
    assert [hook.pfn_is_ram(p) for p in range(99, 106)] == [1, 1, 0, 1, 1, 1, 1]
    assert hook.pfn_range_is_ram(99, 7) == [(2, RAM), (1, NOT_RAM), (4, RAM)]
    hook.close()


def test_an_empty_span(tmp_path: Path) -> None:
    hook = dumpd_balloon.create({"file": put(tmp_path, header(5, 0))})
    assert hook.count == 0
    assert hook.ranges == ()
    assert hook.pfn_is_ram(5) == RAM
    assert hook.pfn_range_is_ram(0, 10) == [(10, RAM)]
    assert "bitmap of 0 pfns from 0x5" in repr(hook)
    hook.close()


# --- detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "form"),
    [
        (b"", "text"),
        (b"0x10\n", "text"),
        (b"DUMPDBM", "text"),
        (b"DUMPDBMX" + bytes(24), "text"),
        (b"dumpdbmp" + bytes(24), "text"),
        (b" DUMPDBMP" + bytes(24), "text"),
        (MAGIC, "bitmap"),
        (header(0, 0), "bitmap"),
        (header(0, 8, version=9), "bitmap"),
    ],
)
def test_detect(tmp_path: Path, data: bytes, form: str) -> None:
    assert dumpd_balloon.detect(put(tmp_path, data)) == form


def test_what_is_not_a_bitmap_is_parsed_as_text(tmp_path: Path) -> None:
    path = put(tmp_path, b"DUMPDBM\n")
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": path})
    assert (
        str(caught.value) == f"balloon: {path}:1: PFN 'DUMPDBM' is not a decimal or 0x hex number"
    )
    empty = dumpd_balloon.create({"file": put(tmp_path, b"", "empty")})
    assert isinstance(empty.data, PfnRanges)
    assert empty.count == 0


def test_load_returns_the_detected_kind(tmp_path: Path) -> None:
    text = put(tmp_path, b"3-4\n10-19\n30\n", "known.txt")
    bitmap = put(tmp_path, KNOWN_HEADER + KNOWN_BITS)
    ranges = dumpd_balloon.load(text)
    mapped = dumpd_balloon.load(bitmap)
    assert isinstance(ranges, PfnRanges)
    assert isinstance(mapped, PfnBitmap)
    assert list(ranges) == list(mapped) == KNOWN
    assert ranges.count == mapped.count == 13
    mapped.close()


def test_detect_of_a_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent")
    with pytest.raises(HookConfigError, match="cannot read: No such file or directory"):
        dumpd_balloon.detect(path)


# --- lookups ----------------------------------------------------------------------------


def test_known_bitmap_verdicts(tmp_path: Path) -> None:
    hook = dumpd_balloon.create({"file": put(tmp_path, KNOWN_HEADER + KNOWN_BITS)})
    listed = {p for s, e in KNOWN for p in range(s, e)}
    assert [hook.pfn_is_ram(p) for p in range(50)] == [
        NOT_RAM if p in listed else RAM for p in range(50)
    ]
    assert hook.pfn_range_is_ram(0, 50) == [
        (3, RAM),
        (2, NOT_RAM),
        (5, RAM),
        (10, NOT_RAM),
        (10, RAM),
        (1, NOT_RAM),
        (19, RAM),
    ]
    assert hook.pfn_is_ram(-1) == ERROR
    assert hook.pfn_is_ram(PFN_LIMIT) == ERROR
    assert hook.pfn_range_is_ram(-2, 5) == [(2, ERROR), (3, RAM)]
    assert hook.count == 13
    assert repr(hook) == f"BalloonHook({hook.source!r}: bitmap of 40 pfns from 0x0)"


def test_close_is_idempotent_and_later_calls_raise(tmp_path: Path) -> None:
    hook = dumpd_balloon.create({"file": put(tmp_path, KNOWN_HEADER + KNOWN_BITS)})
    data = hook.data
    assert isinstance(data, PfnBitmap)
    hook.close()
    hook.close()
    assert data.closed
    with pytest.raises(ValueError):
        hook.pfn_is_ram(3)


BASES = [0, 2**32 - 300, 2**63 - 300, PFN_LIMIT - 700]


@st.composite
def spans_and_ranges(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int]]]:
    """A bitmap span and unsorted, possibly overlapping ranges inside it."""
    base = draw(st.sampled_from(BASES))
    count = draw(st.integers(0, 650))
    spans = draw(st.lists(st.tuples(st.integers(0, 650), st.integers(1, 90)), max_size=25))
    ranges = [(base + s, base + min(s + n, count)) for s, n in spans if s < count]
    return base, count, ranges


@settings(max_examples=150, deadline=None)
@given(
    spans_and_ranges(),
    st.lists(st.tuples(st.integers(-80, 750), st.integers(0, 800)), min_size=1, max_size=6),
)
def test_bitmap_hook_agrees_with_text_hook(
    spanned: tuple[int, int, list[tuple[int, int]]], windows: list[tuple[int, int]]
) -> None:
    base, count, ranges = spanned
    text = BalloonHook(ranges)
    with bitmap_hook(ranges, base, count) as bitmap:
        assert bitmap.ranges == text.ranges
        assert bitmap.count == text.count
        for offset, length in windows:
            first = base + offset
            runs = bitmap.pfn_range_is_ram(first, length)
            assert runs == text.pfn_range_is_ram(first, length)
            assert sum(n for n, _ in runs) == length
            assert all(n > 0 for n, _ in runs)
            assert all(a[1] != b[1] for a, b in pairwise(runs))  # maximal
            single = [bitmap.pfn_is_ram(p) for p in range(first, first + length)]
            assert single == expand(runs)
            assert single == [text.pfn_is_ram(p) for p in range(first, first + length)]


@settings(max_examples=40, deadline=None)
@given(
    spans_and_ranges(),
    st.sampled_from([61, 4099]),
    st.lists(st.tuples(st.integers(-80, 750), st.integers(0, 800)), min_size=1, max_size=4),
)
def test_long_runs_agree_with_text_hook(
    spanned: tuple[int, int, list[tuple[int, int]]], scale: int, windows: list[tuple[int, int]]
) -> None:
    """The same, with runs and windows stretched across many scan slices."""
    base, count, ranges = spanned
    base = min(base, PFN_LIMIT - 800 * scale)
    ranges = [(base + (s - spanned[0]) * scale, base + (e - spanned[0]) * scale) for s, e in ranges]
    count *= scale
    text = BalloonHook(ranges)
    with bitmap_hook(ranges, base, count) as bitmap:
        assert bitmap.ranges == text.ranges
        assert bitmap.count == text.count
        for offset, length in windows:
            first, length = base + offset * scale + offset % 7, length * scale
            assert bitmap.pfn_range_is_ram(first, length) == text.pfn_range_is_ram(
                first, length
            )


@settings(max_examples=60, deadline=None)
@given(spans_and_ranges())
def test_default_span_holds_exactly_the_listed_pfns(
    spanned: tuple[int, int, list[tuple[int, int]]],
) -> None:
    _, _, ranges = spanned
    merged = PfnRanges(ranges)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.bmp"
        first, count = dumpd_balloon.write_bitmap(path, ranges)
        assert (first, first + count) == (merged.bounds() or (0, 0))
        bitmap = dumpd_balloon.load(path)
        assert list(bitmap) == list(merged)
        bitmap.close()


# --- 2**32 pfns: a 512 MiB sparse bitmap ------------------------------------------------


def rss_anon_kib() -> int | None:
    """This process's anonymous resident memory in KiB, where /proc tells."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return None


def test_a_sparse_2_32_pfn_bitmap(tmp_path: Path) -> None:
    path = tmp_path / "huge.bmp"
    first = 2**40
    with open(path, "wb") as out:
        out.write(header(first, 2**32))
        out.truncate(HEADER_SIZE + 2**29)  # 512 MiB, all holes
        for byte, value in ((0, 0x01), (2**28, 0xF0), (2**28 + 1, 0x0F), (2**29 - 1, 0x80)):
            out.seek(HEADER_SIZE + byte)
            out.write(bytes([value]))
    anon_before = rss_anon_kib()
    hook = dumpd_balloon.create({"file": str(path)})
    try:
        ballooned = [first, first + 2**31 + 4, first + 2**31 + 11, first + 2**32 - 1]
        assert [hook.pfn_is_ram(p) for p in ballooned] == [NOT_RAM] * 4
        assert hook.pfn_is_ram(first + 1) == RAM
        assert hook.pfn_is_ram(first + 2**31 + 12) == RAM
        assert hook.pfn_is_ram(first + 2**32) == RAM
        assert hook.pfn_range_is_ram(first - 5, 2**32 + 10) == [
            (5, RAM),
            (1, NOT_RAM),
            (2**31 + 3, RAM),
            (8, NOT_RAM),
            (2**31 - 13, RAM),
            (1, NOT_RAM),
            (5, RAM),
        ]
        assert hook.pfn_range_is_ram(first + 2**31, 16) == [(4, RAM), (8, NOT_RAM), (4, RAM)]
        assert hook.count == 10
        assert hook.ranges == (
            (first, first + 1),
            (first + 2**31 + 4, first + 2**31 + 12),
            (first + 2**32 - 1, first + 2**32),
        )
        anon_after = rss_anon_kib()
        if anon_before is not None and anon_after is not None:
            assert anon_after - anon_before < 64 * 1024  # the 512 MiB never reach the heap
    finally:
        hook.close()
