"""dumpd-balloon: an is-RAM hook for dumpd that reads ballooned pfns from a file.

The pfns a balloon list names (e.g. the pages a Xen guest gave back to the
hypervisor) are not RAM, verdict 0: dumpd serves them as zeros and never reads them.
Every other pfn is RAM, verdict 1. The entry point `balloon` in the group
`dumpd.pfn_is_ram` loads `create`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from dumpd.hooks.contract import ERROR, NOT_RAM, RAM, HookConfigError
from dumpd.hooks.pfnrange import MAX_PFN, PFN_LIMIT

from .ranges import (
    BalloonFormatError,
    PfnRanges,
    format_text,
    parse_line,
    read_file,
    write_text,
)

__all__ = [
    "MAX_PFN",
    "PFN_LIMIT",
    "BalloonFormatError",
    "BalloonHook",
    "PfnRanges",
    "create",
    "format_text",
    "parse_line",
    "read_file",
    "write_text",
]

OPTIONS = frozenset({"file"})
"""The options `create` accepts."""


class BalloonHook:
    """Listed pfns are not RAM (0), all others are RAM (1); pfns outside [0, 2**64) are errors."""

    def __init__(self, ranges: Iterable[tuple[int, int]], source: str = "<memory>") -> None:
        """Serve `ranges` (`(start, end_exclusive)` pairs or a `PfnRanges`); `source` names them."""
        self._ranges = ranges if isinstance(ranges, PfnRanges) else PfnRanges(ranges)
        self.source = source

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BalloonHook:
        """A hook for the balloon list at `path`; HookConfigError when it is bad."""
        return cls(read_file(path), os.fspath(path))

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The ballooned ranges as sorted, disjoint `(start, end_exclusive)` pairs."""
        return tuple(self._ranges)

    @property
    def count(self) -> int:
        """How many pfns are ballooned."""
        return self._ranges.count

    def __repr__(self) -> str:
        return f"BalloonHook({self.source!r}: {len(self._ranges)} ranges, {self.count} pfns)"

    def pfn_is_ram(self, pfn: int) -> int:
        """0 if `pfn` is listed, 1 if not, -1 if it is outside [0, 2**64); O(log ranges)."""
        if not 0 <= pfn < PFN_LIMIT:
            return ERROR
        return NOT_RAM if self._ranges.holds(pfn) else RAM

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> list[tuple[int, int]]:
        """`(run_length, verdict)` runs covering exactly `count` pfns from `first_pfn`.

        The runs are maximal and computed in O(log ranges + runs); the part of the
        window outside [0, 2**64) gets the error verdict.
        """
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        stop = first_pfn + count
        below = max(0, min(stop, 0) - first_pfn)
        low = first_pfn + below
        above = max(0, stop - max(low, PFN_LIMIT))
        runs = [(below, ERROR)] if below else []
        runs += [
            (length, NOT_RAM if held else RAM)
            for length, held in self._ranges.runs(low, count - below - above)
        ]
        if above:
            runs.append((above, ERROR))
        return runs


def _path_option(options: Mapping[str, object]) -> str:
    """The `file` option as a non-empty path string."""
    if "file" not in options:
        raise HookConfigError("balloon: missing required option 'file' (path to the balloon list)")
    value = options["file"]
    path = os.fspath(value) if isinstance(value, str | os.PathLike) else None
    if not isinstance(path, str) or not path:
        raise HookConfigError(f"balloon: option 'file' must be a non-empty path, got {value!r}")
    return path


def create(options: Mapping[str, object]) -> BalloonHook:
    """The `dumpd.pfn_is_ram` factory: `options` is `{"file": path to the balloon list}`."""
    unknown = sorted(map(str, set(options) - OPTIONS))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise HookConfigError(f"balloon: unknown option{plural} {names} (known: file)")
    return BalloonHook.from_file(_path_option(options))
