"""The contract an is-RAM hook plugin meets: the one place it is written down.

A plugin is an entry point in the group `dumpd.pfn_is_ram` whose object is a
factory: `factory(options: Mapping[str, object]) -> hook`. `options` is the
`[hook.options]` table of the configuration (or the `register` call's map); the
factory raises `HookConfigError` with a one-line reason when they are wrong.

Verdicts, as in the kernel's `pfn_is_ram()`:
- `> 0`: RAM, the page is read from the source;
- `0`: not RAM, the page is served as zeros and never read;
- `< 0`: error, the hook could not tell: the page is read anyway.

Hooks are called from one dedicated worker thread, never concurrently, so a
hook needs no locking of its own. A call that raises, returns a non-int (`bool`
included) or takes longer than the configured timeout counts as an error verdict.

Optional methods: `pfn_range_is_ram` (the batched form), `reload` (re-read the
hook's data on SIGHUP or `hook.reload`) and `close` (on unregister or exit).
They run on the same thread as the verdict calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

ENTRY_POINT_GROUP = "dumpd.pfn_is_ram"

RAM = 1
NOT_RAM = 0
ERROR = -1


class HookConfigError(Exception):
    """The hook's options are wrong; the message says which and why, in one line."""


@runtime_checkable
class PfnIsRam(Protocol):
    """Required: one verdict per page frame number."""

    def pfn_is_ram(self, pfn: int) -> int:
        """> 0 RAM, 0 not RAM, < 0 error (see the module docstring)."""
        ...


@runtime_checkable
class PfnRangeIsRam(Protocol):
    """Optional batched form; the engine prefers it when a hook offers it."""

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> Iterable[tuple[int, int]]:
        """Verdicts for `[first_pfn, first_pfn+count)` as `(run_length, verdict)` runs.

        The run lengths must add up to `count`; pfns a malformed answer leaves
        uncovered count as errors.
        """
        ...


@runtime_checkable
class Reloadable(Protocol):
    """Optional: re-read the hook's data (SIGHUP to the daemon, or `hook.reload`)."""

    def reload(self) -> None:
        """Load the data afresh and swap it in at once.

        Build the new data completely before replacing the old; when it is bad,
        raise (HookConfigError with one line saying what is wrong) and keep
        answering from the old data. After a successful reload dumpd drops the
        verdicts and pages it cached, so every pfn is asked again.
        """
        ...


@runtime_checkable
class Closable(Protocol):
    """Optional: release resources when the hook is unregistered."""

    def close(self) -> None: ...

