"""dumpd-balloon: an is-RAM hook for dumpd that reads ballooned pfns from a file.

The pfns a balloon file names (e.g. the pages a Xen guest gave back to the
hypervisor) are not RAM, verdict 0: dumpd serves them as zeros and never reads them.
Every other pfn is RAM, verdict 1. The entry point `balloon` in the group
`dumpd.pfn_is_ram` loads `create`.

The file is a text list (`ranges.py`) or a bitmap used in place through mmap
(`bitmap.py`), told apart by its content (`formats.py`). `reload()` re-reads it;
`close()` unmaps a bitmap. The `dumpd-balloon` command (`tool.py`) converts
between the formats and shows a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from dumpd.hooks.contract import ERROR, NOT_RAM, RAM, HookConfigError, check_option_names
from dumpd.hooks.pfnrange import MAX_PFN, PFN_LIMIT, clip

from .bitmap import MAGIC, PfnBitmap, write_bitmap
from .formats import Balloon, detect, load
from .ranges import (
    BalloonFormatError,
    PfnRanges,
    format_text,
    parse_line,
    read_file,
    write_text,
)

__all__ = [
    "MAGIC",
    "MAX_PFN",
    "PFN_LIMIT",
    "Balloon",
    "BalloonFormatError",
    "BalloonHook",
    "PfnBitmap",
    "PfnRanges",
    "create",
    "detect",
    "format_text",
    "load",
    "parse_line",
    "read_file",
    "write_bitmap",
    "write_text",
]

OPTIONS = ("file",)
"""The options `create` accepts."""


class BalloonHook:
    """Listed pfns are not RAM (0), all others are RAM (1); pfns outside [0, 2**64) are errors.

    The data (`PfnRanges` or `PfnBitmap`) sits in one attribute, `_data`: `reload`
    replaces it with a single assignment, so every call sees the old data or the new.
    """

    def __init__(
        self,
        ranges: Iterable[tuple[int, int]] | Balloon,
        source: str = "<memory>",
        *,
        path: str | None = None,
    ) -> None:
        """Serve `ranges` (`(start, end_exclusive)` pairs, a `PfnRanges` or a `PfnBitmap`).

        `source` names them in messages; `path` is the file `reload` reads again
        (None: the hook cannot reload).
        """
        self._data: Balloon = (
            ranges if isinstance(ranges, PfnRanges | PfnBitmap) else PfnRanges(ranges)
        )
        self.source = source
        self.path = path

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BalloonHook:
        """A hook for the balloon file (text or bitmap) at `path`; HookConfigError when bad."""
        source = os.fspath(path)
        return cls(load(source), source, path=source)

    @property
    def data(self) -> Balloon:
        """The data the hook answers from now: a `PfnRanges` or a `PfnBitmap`."""
        return self._data

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The ballooned ranges as sorted, disjoint `(start, end_exclusive)` pairs."""
        return tuple(self._data)

    @property
    def count(self) -> int:
        """How many pfns are ballooned."""
        return self._data.count

    def __repr__(self) -> str:
        return f"BalloonHook({self.source!r}: {self._data.describe()})"

    def pfn_is_ram(self, pfn: int) -> int:
        """0 if `pfn` is ballooned, 1 if not, -1 outside [0, 2**64).

        O(log ranges) for a text list, O(1) for a bitmap.
        """
        if not 0 <= pfn < PFN_LIMIT:
            return ERROR
        return NOT_RAM if self._data.holds(pfn) else RAM

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> list[tuple[int, int]]:
        """`(run_length, verdict)` runs covering exactly `count` pfns from `first_pfn`.

        The runs are maximal; the part of the window outside [0, 2**64) gets the
        error verdict. A text list costs O(log ranges + runs); a bitmap O(runs) plus
        a C-speed scan of the bytes the window covers.
        """
        below, low, inside, above = clip(first_pfn, count)
        runs = [(below, ERROR)] if below else []
        runs += [
            (length, NOT_RAM if held else RAM)
            for length, held in self._data.runs(low, inside)
        ]
        if above:
            runs.append((above, ERROR))
        return runs

    def reload(self) -> None:
        """Read the file again (re-detecting its format) and swap the new data in.

        The new data is built completely first; when the file is bad this raises
        HookConfigError and the hook keeps answering from the old data. The old
        data is closed (a bitmap unmapped) after the swap.
        """
        if self.path is None:
            raise HookConfigError(f"balloon: {self.source}: not made from a file, cannot reload")
        new = load(self.path)
        old, self._data = self._data, new
        old.close()

    def close(self) -> None:
        """Release the data (unmap a bitmap); idempotent. Later calls may raise."""
        self._data.close()


def _path_option(options: Mapping[str, object]) -> str:
    """The `file` option as a non-empty path string, made absolute (in this process's
    directory) when relative, so messages and reloads name the file actually read."""
    if "file" not in options:
        raise HookConfigError("balloon: missing required option 'file' (path to the balloon list)")
    value = options["file"]
    path = os.fspath(value) if isinstance(value, str | os.PathLike) else None
    if not isinstance(path, str) or not path:
        raise HookConfigError(f"balloon: option 'file' must be a non-empty path, got {value!r}")
    return path if os.path.isabs(path) else os.path.abspath(path)


def create(options: Mapping[str, object]) -> BalloonHook:
    """The `dumpd.pfn_is_ram` factory: `options` is `{"file": path to the balloon list}`."""
    check_option_names("balloon", options, OPTIONS)
    return BalloonHook.from_file(_path_option(options))
