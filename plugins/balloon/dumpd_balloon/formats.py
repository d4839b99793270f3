"""Which format a balloon file is in, from its content, and loading either one.

A file that starts with the bitmap magic `DUMPDBMP` is a bitmap (`bitmap.py`);
anything else is a text list (`ranges.py`). The file is opened once, so a file
renamed over meanwhile is never half one and half the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO, Literal, Protocol

from dumpd.hooks.contract import HookConfigError

from .bitmap import MAGIC, PfnBitmap
from .ranges import PfnRanges, parse_lines

Format = Literal["text", "bitmap"]


class Balloon(Protocol):
    """What the hook asks of loaded balloon data, whichever the format."""

    @property
    def count(self) -> int:
        """How many pfns are ballooned."""
        ...

    def holds(self, pfn: int) -> bool:
        """Whether `pfn` is ballooned."""
        ...

    def runs(self, first: int, count: int) -> list[tuple[int, bool]]:
        """`[first, first+count)` as maximal `(length, ballooned)` runs."""
        ...

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The ballooned ranges as sorted, disjoint `(start, end_exclusive)`."""
        ...

    def describe(self) -> str:
        """A short, cheap description for `repr`."""
        ...

    def close(self) -> None:
        """Release what the data holds (idempotent)."""
        ...


def _format_of(file: BinaryIO) -> Format:
    """The format of the file open at offset 0, peeking at its start without consuming it."""
    peek = getattr(file, "peek", None)
    head: bytes = peek(len(MAGIC)) if peek is not None else b""
    return "bitmap" if head[: len(MAGIC)] == MAGIC else "text"


def detect(path: str | os.PathLike[str]) -> Format:
    """The format of the balloon file at `path`; HookConfigError when it is unreadable."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            return _format_of(file)
    except OSError as e:
        raise HookConfigError(f"balloon: {source}: cannot read: {e.strerror or e}") from e


def load(path: str | os.PathLike[str]) -> PfnRanges | PfnBitmap:
    """The balloon file at `path`, in the format its content shows.

    Raises HookConfigError (`balloon: FILE: reason`, one line) when it is unreadable
    or malformed.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            if _format_of(file) == "bitmap":
                return PfnBitmap(file, source)
            return PfnRanges(parse_lines(file, source))
    except OSError as e:
        raise HookConfigError(f"balloon: {source}: cannot read: {e.strerror or e}") from e
