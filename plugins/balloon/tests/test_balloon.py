"""Tests of the balloon hook, run against the installed `dumpd_balloon` package."""

from __future__ import annotations

import importlib
import os
import tomllib
from collections.abc import Iterable
from importlib.metadata import entry_points
from itertools import pairwise
from pathlib import Path

import pytest
from dumpd.hooks.contract import (
    ENTRY_POINT_GROUP,
    ERROR,
    NOT_RAM,
    RAM,
    HookConfigError,
    PfnIsRam,
    PfnRangeIsRam,
)
from hypothesis import given
from hypothesis import strategies as st

import dumpd_balloon
from dumpd_balloon import (
    MAX_PFN,
    PFN_LIMIT,
    BalloonFormatError,
    BalloonHook,
    PfnRanges,
    parse_line,
)
from dumpd_balloon.ranges import parse_lines

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def write(tmp_path: Path, text: str, name: str = "balloon.txt") -> str:
    """Write `text` to a balloon file under `tmp_path`; its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path: Path, text: str) -> BalloonHook:
    """A hook made by the factory from a balloon file holding `text`."""
    return dumpd_balloon.create({"file": write(tmp_path, text)})


def expand(runs: Iterable[tuple[int, int]]) -> list[int]:
    """Runs as one verdict per pfn."""
    return [verdict for length, verdict in runs for _ in range(length)]


def oracle(listed: set[int], pfn: int) -> int:
    """The verdict the hook must give, from the plain set of listed pfns."""
    if not 0 <= pfn < PFN_LIMIT:
        return ERROR
    return NOT_RAM if pfn in listed else RAM


# --- parsing: every syntax form ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("5", (5, 6)),
        ("0", (0, 1)),
        ("0x10", (16, 17)),
        ("0X1f", (31, 32)),
        ("0xAbC", (0xABC, 0xABD)),
        ("010", (10, 11)),
        ("10-20", (10, 21)),
        ("0x10-0x1f", (16, 32)),
        ("10 - 20", (10, 21)),
        ("10\t-\t0x14", (10, 21)),
        ("7-7", (7, 8)),
        ("10+5", (10, 15)),
        ("0x10+0x10", (16, 32)),
        ("10 + 1", (10, 11)),
        ("   7   ", (7, 8)),
        ("7 # trailing comment", (7, 8)),
        ("7#no space", (7, 8)),
        ("1-2 # comment with - and + and 0x", (1, 3)),
        ("8 # kommentar: ballonierte Seiten \u00fc", (8, 9)),
        ("9\r\n", (9, 10)),
        (b"0x20-0x2f\n", (32, 48)),
        ("0xffffffffffffffff", (MAX_PFN, PFN_LIMIT)),
        ("18446744073709551615", (MAX_PFN, PFN_LIMIT)),
        ("0-0xffffffffffffffff", (0, PFN_LIMIT)),
        ("0+0x10000000000000000", (0, PFN_LIMIT)),
        ("0xffffffffffffffff+1", (MAX_PFN, PFN_LIMIT)),
        ("0x8000000000000000+0x100000000", (2**63, 2**63 + 2**32)),
    ],
)
def test_parse_line_forms(line: str | bytes, expected: tuple[int, int]) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize("line", ["", "   ", "\n", "\r\n", "# comment", "   # indented", "#"])
def test_blank_and_comment_lines(line: str) -> None:
    assert parse_line(line) is None


def test_file_with_every_form(tmp_path: Path) -> None:
    hook = load(
        tmp_path,
        "# ballooned pfns\n"
        "\n"
        "5\n"
        "0x10-0x1f   # hex range\n"
        "100+4\n"
        "   \n"
        "0x200 # single hex\r\n"
        "1000 - 1009\n",
    )
    assert hook.ranges == ((5, 6), (16, 32), (100, 104), (512, 513), (1000, 1010))
    assert hook.count == 1 + 16 + 4 + 1 + 10


def test_empty_file_means_everything_is_ram(tmp_path: Path) -> None:
    hook = load(tmp_path, "# nothing ballooned\n\n")
    assert hook.ranges == ()
    assert hook.count == 0
    assert [hook.pfn_is_ram(p) for p in (0, 1, 2**32, MAX_PFN)] == [RAM] * 4
    assert hook.pfn_range_is_ram(0, 100) == [(100, RAM)]


# --- parsing: merging --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("10-20\n15-30\n", ((10, 31),)),  # overlapping
        ("10-20\n21-30\n", ((10, 31),)),  # adjacent
        ("10-20\n22-30\n", ((10, 21), (22, 31))),  # one pfn apart: stay separate
        ("50-60\n10-20\n30\n", ((10, 21), (30, 31), (50, 61))),  # unsorted
        ("10-100\n20-30\n50\n", ((10, 101),)),  # contained
        ("7\n7\n7-7\n7+1\n", ((7, 8),)),  # duplicates in every form
        ("3\n1\n2\n", ((1, 4),)),  # unsorted singles that chain up
        ("0x10+16\n0x20-0x2f\n0x0-0xf\n", ((0, 48),)),  # adjacent across forms
        ("0xfffffffffffffff0-0xffffffffffffffff\n0xffffffffffffffe0+16\n", ((2**64 - 32, 2**64),)),
    ],
)
def test_merging(tmp_path: Path, text: str, ranges: tuple[tuple[int, int], ...]) -> None:
    hook = load(tmp_path, text)
    assert hook.ranges == ranges
    assert hook.count == sum(end - start for start, end in ranges)


# --- parsing: malformed lines ----------------------------------------------------------

BAD_LINES = [
    ("0x20-0x10", "END 0x10 is below START 0x20"),
    ("32-16", "END 16 is below START 32"),
    ("abc", "PFN 'abc' is not a decimal or 0x hex number"),
    ("0x", "PFN '0x' is not a decimal or 0x hex number"),
    ("0xg1", "PFN '0xg1' is not a decimal or 0x hex number"),
    ("1.5", "PFN '1.5' is not a decimal or 0x hex number"),
    ("1_000", "PFN '1_000' is not a decimal or 0x hex number"),
    ("0b101", "PFN '0b101' is not a decimal or 0x hex number"),
    ("0o17", "PFN '0o17' is not a decimal or 0x hex number"),
    ("\u0663", "PFN '\u0663' is not a decimal or 0x hex number"),
    ("zz-5", "START 'zz' is not a decimal or 0x hex number"),
    ("5-zz", "END 'zz' is not a decimal or 0x hex number"),
    ("5+zz", "COUNT 'zz' is not a decimal or 0x hex number"),
    ("-5", "expected PFN, START-END or START+COUNT, got '-5'"),
    ("+5", "expected PFN, START-END or START+COUNT, got '+5'"),
    ("5-", "expected PFN, START-END or START+COUNT, got '5-'"),
    ("5+", "expected PFN, START-END or START+COUNT, got '5+'"),
    ("1 2", "expected PFN, START-END or START+COUNT, got '1 2'"),
    ("1-2-3", "expected PFN, START-END or START+COUNT, got '1-2-3'"),
    ("1+2+3", "expected PFN, START-END or START+COUNT, got '1+2+3'"),
    ("1--2", "expected PFN, START-END or START+COUNT, got '1--2'"),
    ("5+0", "COUNT 0 must be at least 1"),
    ("5+0x0", "COUNT 0x0 must be at least 1"),
    (
        "0x10000000000000000",
        "PFN 0x10000000000000000 is above the largest pfn 0xffffffffffffffff",
    ),
    (
        "18446744073709551616",
        "PFN 18446744073709551616 is above the largest pfn 0xffffffffffffffff",
    ),
    (
        "0x10000000000000000-0x10000000000000001",
        "START 0x10000000000000000 is above the largest pfn 0xffffffffffffffff",
    ),
    (
        "0-0x10000000000000000",
        "END 0x10000000000000000 is above the largest pfn 0xffffffffffffffff",
    ),
    (
        "0xffffffffffffffff+2",
        "START+COUNT 0xffffffffffffffff+2 ends past the largest pfn 0xffffffffffffffff",
    ),
    (
        "1+0x10000000000000000",
        "START+COUNT 1+0x10000000000000000 ends past the largest pfn 0xffffffffffffffff",
    ),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, f"# header\n\n1-2\n0x10 # fine\n\n   \n{line}\n99\n")
    with pytest.raises(BalloonFormatError) as caught:
        dumpd_balloon.create({"file": path})
    assert str(caught.value) == f"balloon: {path}:7: {reason}"
    assert (caught.value.source, caught.value.line, caught.value.reason) == (path, 7, reason)
    assert isinstance(caught.value, HookConfigError)


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_parse_line_reasons(line: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_line(line)
    assert str(caught.value) == reason


def test_relative_path_is_named_as_the_absolute_path_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "5\n5\n5\n5\n5\n5\n0x20-0x10\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": "balloon.txt"})
    assert str(caught.value) == (
        f"balloon: {tmp_path / 'balloon.txt'}:7: END 0x10 is below START 0x20")


def test_first_bad_line_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "1\nnope\n3-1\n")
    with pytest.raises(HookConfigError, match=r":2: PFN 'nope' is not"):
        dumpd_balloon.create({"file": path})


def test_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "balloon.txt"
    path.write_bytes(b"1\n2 # caf\xe9\n")
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": str(path)})
    assert str(caught.value) == f"balloon: {path}:2: line is not UTF-8 text"


def test_huge_numbers_are_rejected_without_converting() -> None:
    with pytest.raises(ValueError, match=r"^PFN 9{5000} is above the largest pfn"):
        parse_line("9" * 5000)
    with pytest.raises(ValueError, match=r"^START\+COUNT 1\+9{5000} ends past the largest pfn"):
        parse_line("1+" + "9" * 5000)
    assert parse_line("0" * 5000 + "7") == (7, 8)


# --- verdicts at range edges -----------------------------------------------------------


def test_verdicts_at_edges(tmp_path: Path) -> None:
    hook = load(tmp_path, "10-19\n30\n0x100+0x100\n")
    expected = {
        0: RAM,
        9: RAM,
        10: NOT_RAM,
        11: NOT_RAM,
        19: NOT_RAM,
        20: RAM,
        29: RAM,
        30: NOT_RAM,
        31: RAM,
        0xFF: RAM,
        0x100: NOT_RAM,
        0x1FF: NOT_RAM,
        0x200: RAM,
        MAX_PFN: RAM,
    }
    assert {pfn: hook.pfn_is_ram(pfn) for pfn in expected} == expected


def test_range_at_pfn_zero_and_at_the_top(tmp_path: Path) -> None:
    hook = load(tmp_path, "0-3\n0xfffffffffffffffe-0xffffffffffffffff\n")
    assert [hook.pfn_is_ram(p) for p in (0, 3, 4)] == [NOT_RAM, NOT_RAM, RAM]
    assert [hook.pfn_is_ram(p) for p in (MAX_PFN - 2, MAX_PFN - 1, MAX_PFN)] == [
        RAM,
        NOT_RAM,
        NOT_RAM,
    ]
    assert hook.ranges[-1] == (2**64 - 2, 2**64)


def test_pfns_outside_64_bits_are_errors() -> None:
    hook = BalloonHook([(0, 10)])
    assert hook.pfn_is_ram(-1) == ERROR
    assert hook.pfn_is_ram(PFN_LIMIT) == ERROR
    assert hook.pfn_is_ram(2**100) == ERROR


def test_pfns_near_2_63() -> None:
    top = 2**63
    hook = BalloonHook([(top - 5, top + 5), (top + 2**32, top + 2**33)])
    assert [hook.pfn_is_ram(p) for p in (top - 6, top - 5, top, top + 4, top + 5)] == [
        RAM,
        NOT_RAM,
        NOT_RAM,
        NOT_RAM,
        RAM,
    ]
    assert hook.pfn_is_ram(top + 2**32 - 1) == RAM
    assert hook.pfn_is_ram(top + 2**32) == NOT_RAM
    assert hook.pfn_is_ram(top + 2**33 - 1) == NOT_RAM
    assert hook.pfn_is_ram(top + 2**33) == RAM
    assert hook.pfn_range_is_ram(top - 10, 20) == [(5, RAM), (10, NOT_RAM), (5, RAM)]
    assert hook.pfn_range_is_ram(top, 2**34) == [
        (5, NOT_RAM),
        (2**32 - 5, RAM),
        (2**32, NOT_RAM),
        (2**34 - 2**33, RAM),
    ]
    assert hook.count == 10 + 2**32


def test_2_32_pfns_cost_one_range() -> None:
    hook = BalloonHook([(2**32, 2**33), (0, 2**32)])
    assert hook.ranges == ((0, 2**33),)
    assert hook.count == 2**33
    assert hook.pfn_is_ram(2**33 - 1) == NOT_RAM
    assert hook.pfn_is_ram(2**33) == RAM
    assert hook.pfn_range_is_ram(0, 2**34) == [(2**33, NOT_RAM), (2**33, RAM)]


# --- the batched form ------------------------------------------------------------------


def test_batched_edges() -> None:
    hook = BalloonHook([(10, 20), (30, 31)])
    assert hook.pfn_range_is_ram(0, 0) == []
    assert hook.pfn_range_is_ram(10, 0) == []
    assert hook.pfn_range_is_ram(0, 40) == [
        (10, RAM),
        (10, NOT_RAM),
        (10, RAM),
        (1, NOT_RAM),
        (9, RAM),
    ]
    assert hook.pfn_range_is_ram(10, 10) == [(10, NOT_RAM)]
    assert hook.pfn_range_is_ram(15, 1) == [(1, NOT_RAM)]
    assert hook.pfn_range_is_ram(19, 2) == [(1, NOT_RAM), (1, RAM)]
    assert hook.pfn_range_is_ram(9, 2) == [(1, RAM), (1, NOT_RAM)]
    assert hook.pfn_range_is_ram(20, 10) == [(10, RAM)]
    assert hook.pfn_range_is_ram(31, 1000) == [(1000, RAM)]


def test_batched_windows_outside_64_bits() -> None:
    hook = BalloonHook([(0, 2), (PFN_LIMIT - 2, PFN_LIMIT)])
    assert hook.pfn_range_is_ram(-3, 6) == [(3, ERROR), (2, NOT_RAM), (1, RAM)]
    assert hook.pfn_range_is_ram(-10, 5) == [(5, ERROR)]
    assert hook.pfn_range_is_ram(PFN_LIMIT - 3, 6) == [(1, RAM), (2, NOT_RAM), (3, ERROR)]
    assert hook.pfn_range_is_ram(PFN_LIMIT + 5, 4) == [(4, ERROR)]
    assert hook.pfn_range_is_ram(-1, PFN_LIMIT + 2) == [
        (1, ERROR),
        (2, NOT_RAM),
        (PFN_LIMIT - 4, RAM),
        (2, NOT_RAM),
        (1, ERROR),
    ]


def test_batched_negative_count() -> None:
    with pytest.raises(ValueError, match="count must not be negative"):
        BalloonHook([]).pfn_range_is_ram(0, -1)


BASES = [0, 2**32 - 300, 2**63 - 300, PFN_LIMIT - 500]


@st.composite
def raw_ranges(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A base pfn and unsorted, possibly overlapping `(start, end_exclusive)` near it."""
    base = draw(st.sampled_from(BASES))
    spans = draw(
        st.lists(st.tuples(st.integers(0, 600), st.integers(1, 40)), max_size=25),
    )
    ranges = [
        (base + start, min(base + start + length, PFN_LIMIT))
        for start, length in spans
        if base + start < PFN_LIMIT
    ]
    return base, ranges


def listed_set(ranges: Iterable[tuple[int, int]]) -> set[int]:
    """Every pfn the raw ranges name."""
    return {pfn for start, end in ranges for pfn in range(start, end)}


@given(raw_ranges(), st.integers(-50, 700), st.integers(0, 700))
def test_batched_matches_per_pfn(
    based: tuple[int, list[tuple[int, int]]], offset: int, count: int
) -> None:
    base, ranges = based
    hook = BalloonHook(ranges)
    listed = listed_set(ranges)
    first = base + offset
    runs = hook.pfn_range_is_ram(first, count)
    window = range(first, first + count)
    assert sum(length for length, _ in runs) == count
    assert all(length > 0 for length, _ in runs)
    assert all(a[1] != b[1] for a, b in pairwise(runs))  # maximal runs
    assert expand(runs) == [hook.pfn_is_ram(pfn) for pfn in window]
    assert expand(runs) == [oracle(listed, pfn) for pfn in window]


@given(raw_ranges())
def test_merged_ranges_are_sorted_disjoint_and_exact(
    based: tuple[int, list[tuple[int, int]]],
) -> None:
    _, ranges = based
    hook = BalloonHook(ranges)
    merged = hook.ranges
    assert all(start < end for start, end in merged)
    assert all(a[1] < b[0] for a, b in pairwise(merged))
    assert listed_set(merged) == listed_set(ranges)
    assert hook.count == len(listed_set(ranges))


@st.composite
def balloon_text(draw: st.DrawFn) -> tuple[list[tuple[int, int]], str]:
    """Raw ranges and a balloon file naming them in random forms, order and spelling."""
    _, ranges = draw(raw_ranges())
    lines = ["# generated"]
    for start, end in ranges:
        form = draw(st.sampled_from(["single", "range", "count"]))
        hexa = draw(st.booleans())
        num = (lambda n: f"{n:#x}") if hexa else str
        if form == "single" or end - start == 1:
            lines += [num(pfn) for pfn in range(start, end)]
        elif form == "range":
            lines.append(f"{num(start)}-{num(end - 1)}")
        else:
            lines.append(f"{num(start)}+{num(end - start)}")
        if draw(st.booleans()):
            lines[-1] += "  # note"
        if draw(st.booleans()):
            lines.append("")
    return ranges, "\n".join(lines) + "\n"


@given(balloon_text())
def test_parsed_text_equals_merged_ranges(generated: tuple[list[tuple[int, int]], str]) -> None:
    ranges, text = generated
    parsed = PfnRanges(parse_lines(text.splitlines(), "gen.txt"))
    assert parsed == PfnRanges(ranges)


@given(raw_ranges())
def test_format_text_round_trips(based: tuple[int, list[tuple[int, int]]]) -> None:
    _, ranges = based
    text = dumpd_balloon.format_text(ranges)
    parsed = PfnRanges(parse_lines(text.splitlines(), "out.txt"))
    assert tuple(parsed) == BalloonHook(ranges).ranges


# --- write_text ------------------------------------------------------------------------


def test_write_text_then_create(tmp_path: Path) -> None:
    path = tmp_path / "sample.txt"
    dumpd_balloon.write_text(path, [(0x300, 0x301), (0x100, 0x200), (0x150, 0x250)])
    body = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert body == ["0x100-0x24f", "0x300"]
    hook = dumpd_balloon.create({"file": str(path)})
    assert hook.ranges == ((0x100, 0x250), (0x300, 0x301))
    assert hook.count == 0x151


def test_write_text_round_trips_a_hook(tmp_path: Path) -> None:
    hook = BalloonHook([(5, 9), (2**63, 2**63 + 1), (PFN_LIMIT - 4, PFN_LIMIT)])
    dumpd_balloon.write_text(tmp_path / "again.txt", hook.ranges)
    assert dumpd_balloon.create({"file": tmp_path / "again.txt"}).ranges == hook.ranges


@pytest.mark.parametrize("bad", [[(5, 5)], [(6, 5)], [(-1, 3)], [(0, PFN_LIMIT + 1)], [(0.5, 3)]])
def test_write_text_rejects_bad_ranges(tmp_path: Path, bad: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError, match="bad range"):
        dumpd_balloon.write_text(tmp_path / "bad.txt", bad)
    assert not (tmp_path / "bad.txt").exists()


# --- the factory ----------------------------------------------------------------------


def test_factory_makes_a_contract_hook(tmp_path: Path) -> None:
    hook = load(tmp_path, "1-2\n")
    assert isinstance(hook, PfnIsRam)
    assert isinstance(hook, PfnRangeIsRam)
    assert hook.pfn_is_ram(1) == NOT_RAM
    assert isinstance(hook.pfn_is_ram(3), int)
    assert "1 ranges, 2 pfns" in repr(hook)


def test_factory_accepts_a_path_object(tmp_path: Path) -> None:
    hook = dumpd_balloon.create({"file": Path(write(tmp_path, "4\n"))})
    assert hook.ranges == ((4, 5),)


def test_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": write(tmp_path, "1\n"), "bogus": 1})
    assert str(caught.value) == "balloon: unknown option 'bogus' (known: file)"


def test_unknown_options_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"path": "x", "file": "y", "format": "text"})
    assert str(caught.value) == "balloon: unknown options 'format', 'path' (known: file)"


def test_missing_file_option() -> None:
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({})
    assert str(caught.value) == "balloon: missing required option 'file' (path to the balloon list)"


@pytest.mark.parametrize(("value", "shown"), [(5, "5"), ("", "''"), (None, "None"), (b"x", "b'x'")])
def test_file_option_of_the_wrong_kind(value: object, shown: str) -> None:
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": value})
    assert str(caught.value) == f"balloon: option 'file' must be a non-empty path, got {shown}"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.txt")
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": path})
    assert str(caught.value) == f"balloon: {path}: cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": str(tmp_path)})
    assert str(caught.value) == f"balloon: {tmp_path}: cannot read: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "1\n")
    os.chmod(path, 0)
    with pytest.raises(HookConfigError) as caught:
        dumpd_balloon.create({"file": path})
    assert str(caught.value) == f"balloon: {path}: cannot read: Permission denied"


# --- packaging ------------------------------------------------------------------------


def test_pyproject_declares_the_entry_point() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    target = project["entry-points"][ENTRY_POINT_GROUP]["balloon"]
    module, _, attr = target.partition(":")
    assert getattr(importlib.import_module(module), attr) is dumpd_balloon.create


def test_installed_entry_point_loads_the_factory() -> None:
    found = entry_points(group=ENTRY_POINT_GROUP, name="balloon")
    if not found:
        pytest.skip("dumpd-balloon is importable but not installed as a distribution")
    (entry,) = found
    assert entry.load() is dumpd_balloon.create
