"""dumpd's conformance kit (`dumpd.testing.HookConformance`), run on both file formats."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest
from dumpd.testing import HookConformance

import dumpd_balloon

OLD = [(0x100, 0x200), (0x1000, 0x1001), (0xFFFF0, 0x100000)]
NEW = [(0x180, 0x300)]


def verdicts(ranges: list[tuple[int, int]], pfns: list[int]) -> dict[int, int]:
    """The verdict each pfn must get: 0 when listed, 1 otherwise."""
    return {p: 0 if any(s <= p < e for s, e in ranges) else 1 for p in pfns}


EDGES = [0, 0xFF, 0x100, 0x1FF, 0x200, 0x2FF, 0x300, 0xFFF, 0x1000, 0x1001, 0xFFFF0, 0xFFFFF]


def replace(path: str, data: bytes) -> None:
    """Put `data` at `path` by renaming a new file over it (a mapped bitmap must not shrink)."""
    tmp = path + ".new"
    Path(tmp).write_bytes(data)
    os.replace(tmp, path)


class TestTextConformance(HookConformance):
    hook_name = "balloon"
    expected: ClassVar[Mapping[int, int]] = verdicts(OLD, EDGES)

    @pytest.fixture
    def hook_options(self, tmp_path: Path) -> dict[str, object]:
        path = tmp_path / "balloon.txt"
        dumpd_balloon.write_text(path, OLD)
        return {"file": str(path)}

    def change_data(self, options: Mapping[str, object]) -> Mapping[int, int]:
        replace(str(options["file"]), dumpd_balloon.format_text(NEW).encode())
        return verdicts(NEW, EDGES)

    def corrupt_data(self, options: Mapping[str, object]) -> bool:
        replace(str(options["file"]), b"0x10\n0x20-0x10\n")
        return True


class TestBitmapConformance(HookConformance):
    hook_name = "balloon"
    expected: ClassVar[Mapping[int, int]] = verdicts(OLD, EDGES)

    @pytest.fixture
    def hook_options(self, tmp_path: Path) -> dict[str, object]:
        path = tmp_path / "balloon.bmp"
        dumpd_balloon.write_bitmap(path, OLD, 0, 1 << 20)
        return {"file": str(path)}

    def change_data(self, options: Mapping[str, object]) -> Mapping[int, int]:
        dumpd_balloon.write_bitmap(str(options["file"]), NEW, 0, 1 << 20)
        return verdicts(NEW, EDGES)

    def corrupt_data(self, options: Mapping[str, object]) -> bool:
        path = str(options["file"])
        replace(path, Path(path).read_bytes()[:-1])  # one byte short of its bitmap
        return True
