"""The pfn range syntax every dumpd file format shares, for plugins to reuse.

    PFN            a single page frame number
    START-END      an inclusive range
    START+COUNT    COUNT pfns from START

Numbers are decimal or `0x` hex (no signs, no `_`, no other prefixes); spaces
around `-` and `+` are allowed. Pfns go up to 2**64-1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from dumpd.hooks.contract import HookConfigError

Item = TypeVar("Item")

PFN_LIMIT = 1 << 64
"""One past the largest pfn."""

MAX_PFN = PFN_LIMIT - 1

_ITEM = re.compile(r"(?P<a>[^\s+\-]+)(?:\s*(?P<op>[-+])\s*(?P<b>[^\s+\-]+))?", re.ASCII)
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+", re.ASCII)


def _integer(role: str, token: str) -> int:
    """`token` as decimal or 0x hex; anything past 2**64 saturates to `PFN_LIMIT + 1`."""
    if _NUMBER.fullmatch(token) is None:
        raise ValueError(f"{role} {token!r} is not a decimal or 0x hex number")
    base = 16 if token[:2] in ("0x", "0X") else 10
    digits = (token[2:] if base == 16 else token).lstrip("0") or "0"
    return int(digits, base) if len(digits) <= 20 else PFN_LIMIT + 1


def _pfn(role: str, token: str) -> int:
    """`token` as a pfn: a number no larger than `MAX_PFN`."""
    value = _integer(role, token)
    if value > MAX_PFN:
        raise ValueError(f"{role} {token} is above the largest pfn {MAX_PFN:#x}")
    return value


def line_text(line: str | bytes) -> str:
    """A data-file line without its `#` comment and surrounding blanks ("" for none).

    Raises ValueError when a bytes line is not UTF-8.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("line is not UTF-8 text") from None
    return line.partition("#")[0].strip()


def parse_pfn_range(text: str) -> tuple[int, int]:
    """`PFN`, `START-END` or `START+COUNT` as `(start, end_exclusive)`.

    Raises ValueError saying what is wrong, in words fit for `file:line: ...`.
    """
    match = _ITEM.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected PFN, START-END or START+COUNT, got {text.strip()!r}")
    a, op, b = match.group("a", "op", "b")
    if op is None:
        pfn = _pfn("PFN", a)
        return pfn, pfn + 1
    start = _pfn("START", a)
    if op == "-":
        end = _pfn("END", b)
        if end < start:
            raise ValueError(f"END {b} is below START {a}")
        return start, end + 1
    count = _integer("COUNT", b)
    if count == 0:
        raise ValueError(f"COUNT {b} must be at least 1")
    if start + count > PFN_LIMIT:
        raise ValueError(f"START+COUNT {a}+{b} ends past the largest pfn {MAX_PFN:#x}")
    return start, start + count


def clip(first: int, count: int) -> tuple[int, int, int, int]:
    """Split the window `[first, first+count)` at 0 and 2**64.

    Returns `(below, start, inside, above)`: `below` pfns under 0, then `inside` pfns
    from `start` that can exist, then `above` pfns at 2**64 or beyond (a hook's
    batched form answers those two parts with the error verdict).
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    stop = first + count
    below = max(0, min(stop, 0) - first)
    start = first + below
    above = max(0, stop - max(start, PFN_LIMIT))
    return below, start, count - below - above, above


class PfnFileError(HookConfigError):
    """A line of a plugin's data file is wrong: `PLUGIN: FILE:LINE: reason`."""

    def __init__(self, plugin: str, source: str, line: int, reason: str) -> None:
        super().__init__(f"{plugin}: {source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


def numbered_items(lines: Iterable[str | bytes], source: str,
                   parse_line: Callable[[str | bytes], Item | None],
                   error: Callable[[str, int, str], PfnFileError]) -> Iterator[tuple[int, Item]]:
    """`(line_number, item)` for each line of a data file that `parse_line` finds an item
    in (it returns None for blank and comment lines); its ValueError becomes
    `error(source, line_number, reason)`."""
    for number, line in enumerate(lines, 1):
        try:
            item = parse_line(line)
        except ValueError as e:
            raise error(source, number, str(e)) from None
        if item is not None:
            yield number, item
