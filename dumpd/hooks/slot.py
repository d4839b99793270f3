"""The hook slot: one registered is-RAM hook at a time, as `register_oldmem_pfn_is_ram`.

Registering while the slot is taken fails with EBUSY; unregistering empties it,
after which every pfn counts as RAM. Every change (a reload of the hook's data
included) bumps `generation`, which is how the engine knows its cached verdicts
(and pages) no longer hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dumpd.errors import DumpdError
from dumpd.hooks.contract import PfnIsRam

NO_HOOK = "(none registered)"
"""How an empty slot reads in the log and in `dumpd info` and `dumpd stats` (JSON: null).
Not "none": that is the name of a plugin, which may be registered."""


def hook_label(name: str | None) -> str:
    """The registered hook's name, or `NO_HOOK` for an empty slot."""
    return NO_HOOK if name is None else name


@dataclass(frozen=True, slots=True)
class Registration:
    """A hook in the slot, under the name it was registered with, and the options it
    was made with (`info` shows them; a fetch's record names them)."""

    name: str
    hook: PfnIsRam
    generation: int
    options: Mapping[str, Any] = field(default_factory=dict)


class HookSlot:
    """Holds at most one `Registration`."""

    def __init__(self) -> None:
        self._current: Registration | None = None
        self._generation = 0

    @property
    def current(self) -> Registration | None:
        return self._current

    @property
    def generation(self) -> int:
        return self._generation

    def register(self, name: str, hook: PfnIsRam,
                 options: Mapping[str, Any] | None = None) -> Registration:
        """Put `hook` in the slot; EBUSY if one is there already."""
        if self._current is not None:
            raise DumpdError(
                "EBUSY", f"hook {self._current.name!r} is registered; unregister it first"
            )
        self._generation += 1
        self._current = Registration(name, hook, self._generation, dict(options or {}))
        return self._current

    def reloaded(self) -> Registration:
        """The registered hook reloaded its data: same hook, new generation."""
        if self._current is None:
            raise DumpdError("EINVAL", "no hook is registered")
        self._generation += 1
        current = self._current
        self._current = Registration(current.name, current.hook, self._generation,
                                     current.options)
        return self._current

    def unregister(self) -> Registration | None:
        """Empty the slot; returns what was there (None if it was empty)."""
        previous = self._current
        if previous is not None:
            self._generation += 1
            self._current = None
        return previous
