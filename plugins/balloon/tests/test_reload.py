"""Reload and close: new data swapped in whole, bad data leaves the old data working."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dumpd.hooks.contract import NOT_RAM, RAM, Closable, HookConfigError, Reloadable

import dumpd_balloon
from dumpd_balloon import BalloonHook, PfnBitmap, PfnRanges
from dumpd_balloon.bitmap import header


def text_file(path: Path, text: str) -> None:
    """Replace `path` with a text list, atomically."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def bitmap_file(path: Path, ranges: list[tuple[int, int]], first: int = 0, count: int = 64) -> None:
    """Replace `path` with a bitmap, atomically."""
    dumpd_balloon.write_bitmap(path, ranges, first, count)


def verdicts(hook: BalloonHook, stop: int = 64) -> list[int]:
    return [hook.pfn_is_ram(p) for p in range(stop)]


OLD = [(10, 20)]
NEW = [(30, 40), (50, 51)]


def expected(ranges: list[tuple[int, int]], stop: int = 64) -> list[int]:
    listed = {p for s, e in ranges for p in range(s, e)}
    return [NOT_RAM if p in listed else RAM for p in range(stop)]


@pytest.fixture(params=["text", "bitmap"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def write(path: Path, kind: str, ranges: list[tuple[int, int]]) -> None:
    if kind == "text":
        text_file(path, dumpd_balloon.format_text(ranges))
    else:
        bitmap_file(path, ranges)


def test_the_hook_is_reloadable_and_closable(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "balloon"
    write(path, kind, OLD)
    hook = dumpd_balloon.create({"file": str(path)})
    assert isinstance(hook, Reloadable)
    assert isinstance(hook, Closable)
    hook.close()


def test_reload_swaps_in_the_new_data(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "balloon"
    write(path, kind, OLD)
    hook = dumpd_balloon.create({"file": str(path)})
    assert verdicts(hook) == expected(OLD)
    write(path, kind, NEW)
    assert verdicts(hook) == expected(OLD)  # nothing changes until the reload
    hook.reload()
    assert verdicts(hook) == expected(NEW)
    assert hook.pfn_range_is_ram(28, 24) == [
        (2, RAM),
        (10, NOT_RAM),
        (10, RAM),
        (1, NOT_RAM),
        (1, RAM),
    ]
    assert hook.count == 11
    hook.close()


def test_reload_of_unchanged_data_changes_nothing(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "balloon"
    write(path, kind, OLD)
    hook = dumpd_balloon.create({"file": str(path)})
    hook.reload()
    hook.reload()
    assert verdicts(hook) == expected(OLD)
    hook.close()


@pytest.mark.parametrize(("before", "after"), [("text", "bitmap"), ("bitmap", "text")])
def test_reload_detects_the_format_again(tmp_path: Path, before: str, after: str) -> None:
    path = tmp_path / "balloon"
    write(path, before, OLD)
    hook = dumpd_balloon.create({"file": str(path)})
    old = hook.data
    write(path, after, NEW)
    hook.reload()
    assert isinstance(hook.data, PfnBitmap if after == "bitmap" else PfnRanges)
    assert verdicts(hook) == expected(NEW)
    if isinstance(old, PfnBitmap):
        assert old.closed  # the old mapping is released after the swap
    hook.close()


def test_the_old_bitmap_is_unmapped_after_the_swap(tmp_path: Path) -> None:
    path = tmp_path / "balloon.bmp"
    bitmap_file(path, OLD)
    hook = dumpd_balloon.create({"file": str(path)})
    old = hook.data
    assert isinstance(old, PfnBitmap)
    bitmap_file(path, NEW)
    hook.reload()
    assert old.closed
    assert isinstance(hook.data, PfnBitmap)
    assert not hook.data.closed
    hook.close()


GOOD_BITMAP = header(0, 64) + bytes(8)
BAD_FILES: list[tuple[bytes | None, str]] = [
    (b"0x20-0x10\n", ":1: END 0x10 is below START 0x20"),
    (b"1\n2\nnope\n", ":3: PFN 'nope' is not a decimal or 0x hex number"),
    (GOOD_BITMAP[:37], ": bitmap holds 5 bytes, header says 8"),
    (GOOD_BITMAP[:20], ": bitmap header holds 20 bytes, needs 32"),
    (GOOD_BITMAP[:8] + b"\x02" + GOOD_BITMAP[9:], ": bitmap version 2 is not supported (known: 1)"),
    (None, ": cannot read: No such file or directory"),
]
"""New contents (None: the file is gone) that a reload must refuse, and the message's end."""


@pytest.mark.parametrize(
    ("data", "reason"),
    BAD_FILES,
    ids=["text-order", "text-syntax", "short-bitmap", "short-header", "version", "missing"],
)
def test_a_bad_reload_keeps_the_old_data(
    tmp_path: Path, kind: str, data: bytes | None, reason: str
) -> None:
    path = tmp_path / "balloon"
    write(path, kind, OLD)
    hook = dumpd_balloon.create({"file": str(path)})
    old = hook.data
    if data is None:
        path.unlink()
    else:
        tmp = tmp_path / "new"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    with pytest.raises(HookConfigError) as caught:
        hook.reload()
    message = str(caught.value)
    assert message == f"balloon: {path}{reason}"
    assert "\n" not in message
    assert hook.data is old
    assert verdicts(hook) == expected(OLD)
    assert hook.pfn_range_is_ram(0, 64) == [(10, RAM), (10, NOT_RAM), (44, RAM)]
    assert hook.count == 10
    write(path, kind, NEW)  # fixed: the next reload takes it
    hook.reload()
    assert verdicts(hook) == expected(NEW)
    hook.close()


def test_a_hook_without_a_file_cannot_reload() -> None:
    hook = BalloonHook(OLD)
    with pytest.raises(HookConfigError) as caught:
        hook.reload()
    assert str(caught.value) == "balloon: <memory>: not made from a file, cannot reload"
    assert hook.pfn_is_ram(10) == NOT_RAM
    hook.close()
    hook.close()
    assert hook.pfn_is_ram(10) == NOT_RAM  # closing heap ranges releases nothing


def test_reload_reads_the_file_a_relative_path_named_at_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path / "balloon.txt", "10-19\n")
    hook = dumpd_balloon.create({"file": "balloon.txt"})
    text_file(tmp_path / "balloon.txt", "0x20-0x10\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the same file, whatever the directory now
    with pytest.raises(HookConfigError) as caught:
        hook.reload()
    assert str(caught.value) == (
        f"balloon: {tmp_path / 'balloon.txt'}:1: END 0x10 is below START 0x20")


def test_a_mapped_bitmap_survives_being_renamed_over(tmp_path: Path) -> None:
    path = tmp_path / "balloon.bmp"
    bitmap_file(path, OLD)
    hook = dumpd_balloon.create({"file": str(path)})
    bitmap_file(path, NEW)  # the hook keeps the old inode mapped
    path.unlink()
    assert verdicts(hook) == expected(OLD)
    hook.close()
