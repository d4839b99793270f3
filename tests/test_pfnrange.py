"""The pfn range syntax and window clipping that plugins share (dumpd.hooks.pfnrange)."""

from __future__ import annotations

import pytest

from dumpd.hooks.contract import HookConfigError
from dumpd.hooks.pfnrange import (
    MAX_PFN,
    PFN_LIMIT,
    PfnFileError,
    clip,
    line_text,
    parse_pfn_range,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("5", (5, 6)), ("0x10-0x1f", (16, 32)), (" 10 + 3 ", (10, 13)), ("0X1f", (31, 32)),
    (f"{MAX_PFN:#x}", (MAX_PFN, PFN_LIMIT)), ("0xffffffffffffffff+1", (MAX_PFN, PFN_LIMIT)),
])
def test_forms(text: str, expected: tuple[int, int]) -> None:
    assert parse_pfn_range(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("0x20-0x10", "END 0x10 is below START 0x20"),
    ("5+0", "COUNT 0 must be at least 1"),
    ("-5", "expected PFN, START-END or START+COUNT, got '-5'"),
    ("1_000", "PFN '1_000' is not a decimal or 0x hex number"),
    ("0x1" + "0" * 16, "PFN 0x10000000000000000 is above the largest pfn 0xffffffffffffffff"),
    ("0xffffffffffffffff+2",
     "START+COUNT 0xffffffffffffffff+2 ends past the largest pfn 0xffffffffffffffff"),
])
def test_errors_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_pfn_range(text)
    assert str(caught.value) == reason


@pytest.mark.parametrize(("first", "count", "parts"), [
    (10, 5, (0, 10, 5, 0)),
    (-3, 5, (3, 0, 2, 0)),
    (-9, 5, (5, -4, 0, 0)),
    (PFN_LIMIT - 2, 5, (0, PFN_LIMIT - 2, 2, 3)),
    (PFN_LIMIT + 1, 4, (0, PFN_LIMIT + 1, 0, 4)),
    (-1, PFN_LIMIT + 2, (1, 0, PFN_LIMIT, 1)),
    (7, 0, (0, 7, 0, 0)),
])
def test_clip_splits_at_both_ends(first: int, count: int,
                                  parts: tuple[int, int, int, int]) -> None:
    assert clip(first, count) == parts
    below, _, inside, above = parts
    assert below + inside + above == count


def test_clip_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="count must not be negative, got -1"):
        clip(0, -1)


def test_file_errors_name_plugin_file_and_line() -> None:
    error = PfnFileError("balloon", "/etc/b.txt", 7, "END 0x10 is below START 0x20")
    assert isinstance(error, HookConfigError)
    assert str(error) == "balloon: /etc/b.txt:7: END 0x10 is below START 0x20"
    assert (error.source, error.line, error.reason) == ("/etc/b.txt", 7,
                                                        "END 0x10 is below START 0x20")


@pytest.mark.parametrize(("line", "text"), [
    ("0x10-0x1f   # ballooned\n", "0x10-0x1f"), ("# only a comment\n", ""), ("\n", ""),
    (b"  5+3 mmio_dm # typed\n", "5+3 mmio_dm"),
])
def test_line_text_drops_comments_and_blanks(line: str | bytes, text: str) -> None:
    assert line_text(line) == text


def test_line_text_refuses_bytes_that_are_not_utf8() -> None:
    with pytest.raises(ValueError, match=r"^line is not UTF-8 text$"):
        line_text(b"\xff0x10\n")
