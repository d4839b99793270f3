"""The built-in `none` hook: every pfn is RAM (dumpd's behaviour with no hook at all).

Shipped through dumpd's own entry point, the same way third-party hooks are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dumpd.hooks.contract import RAM, HookConfigError


class AlwaysRam:
    """Says RAM for every pfn, in one run for any range."""

    def pfn_is_ram(self, pfn: int) -> int:
        return RAM

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> Iterable[tuple[int, int]]:
        return [(count, RAM)] if count > 0 else []


def create(options: Mapping[str, object]) -> AlwaysRam:
    if options:
        raise HookConfigError(f"none: takes no options, got {', '.join(sorted(options))}")
    return AlwaysRam()
