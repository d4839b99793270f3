"""The `[hook.options]` of the memmap hook: which of makedumpfile's exclusions to add.

`dump_level` is makedumpfile's `-d` bitmask, bit for bit; `exclude` names the same
bits. Bit 1 (zero pages) is accepted and changes no verdict: telling a zero page needs
its content, which a stream's zero option reads, not the page structures. Every mistake
is a HookConfigError with one line that starts with `memmap: `.
"""

from __future__ import annotations

from collections.abc import Mapping

from dumpd.hooks.contract import HookConfigError, check_option_names

ZERO = 1  # DL_EXCLUDE_ZERO: not a verdict (see the module docstring)
CACHE = 2  # DL_EXCLUDE_CACHE: page cache, not private
CACHE_PRIVATE = 4  # DL_EXCLUDE_CACHE_PRI: page cache, private or not
USER = 8  # DL_EXCLUDE_USER_DATA: anonymous and hugetlb pages
FREE = 16  # DL_EXCLUDE_FREE: the buddy allocator's free pages (and unaccepted ones)
MAX_LEVEL = 31

NAMES = {"cache": CACHE, "cache_private": CACHE_PRIVATE, "user": USER, "free": FREE}
"""The `exclude` names and the dump-level bit each stands for."""

OPTIONS = ("exclude", "dump_level")


def _error(text: str) -> HookConfigError:
    return HookConfigError(f"memmap: {text}")


def _names(value: object) -> list[object]:
    """`exclude` as a list: a TOML list, or one string of names split at commas."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",")] if value.strip() else []
    if isinstance(value, list | tuple):
        return list(value)
    raise _error(f"option 'exclude' must be a list of names ({', '.join(NAMES)}), "
                 f"got {value!r}")


def _exclude(value: object) -> int:
    level = 0
    for name in _names(value):
        if not isinstance(name, str) or name not in NAMES:
            raise _error(f"option 'exclude': unknown exclusion {name!r} "
                         f"(known: {', '.join(NAMES)})")
        level |= NAMES[name]
    return level


def _dump_level(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_LEVEL:
        raise _error(f"option 'dump_level' must be an integer 0..{MAX_LEVEL} "
                     f"(makedumpfile's -d), got {value!r}")
    return value


def parse(options: Mapping[str, object]) -> int:
    """The dump level the options ask for (0: offline and hwpoisoned pages only)."""
    check_option_names("memmap", options, OPTIONS)
    if "exclude" in options and "dump_level" in options:
        raise _error("give 'exclude' or 'dump_level', not both (they say the same thing)")
    if "dump_level" in options:
        return _dump_level(options["dump_level"])
    if "exclude" in options:
        return _exclude(options["exclude"])
    return 0


def describe(level: int) -> str:
    """The level's exclusions in words, for messages and `repr`."""
    words = ["offline", "hwpoison"]
    words += [name for name, bit in NAMES.items() if level & bit]
    return ", ".join(words)
