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

Optional methods: `pfn_range_is_ram` (the batched form), `explain` (why pages are
not RAM, for the record a copy keeps), `reload` (re-read the hook's data on SIGHUP or
`hook.reload`) and `close` (on unregister or exit). They run on the same thread as the
verdict calls.

A hook whose verdicts come from the dump itself (the dead kernel's page structures)
has `attach(dump)`: called once, after the factory and before any verdict, with a
`DumpMemory`: the dump's VMCOREINFO and its physical memory read directly, no hook
asked (no recursion, no verdicts for the pages the hook reads). Raising
HookConfigError (or a `DumpdError` with its own code, ENOSYS for what the dump lacks)
refuses the registration with that one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

ENTRY_POINT_GROUP = "dumpd.pfn_is_ram"

RAM = 1
NOT_RAM = 0
ERROR = -1


class HookConfigError(Exception):
    """The hook's options are wrong; the message says which and why, in one line."""


def check_option_names(hook: str, options: Mapping[str, object],
                       known: Iterable[str]) -> None:
    """HookConfigError naming the options `hook`'s factory does not know, and those it
    does: `xen: unknown option 'mpa' (known: transport, map, ...)`."""
    known = tuple(known)
    unknown = sorted(map(str, set(options) - set(known)))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise HookConfigError(f"{hook}: unknown option{plural} {names} "
                              f"(known: {', '.join(known)})")


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


def close_hook(hook: object) -> None:
    """`hook.close()`, for a hook that has it (a hook that will never be used)."""
    closer = getattr(hook, "close", None)
    if callable(closer):
        closer()



@runtime_checkable
class Explains(Protocol):
    """Optional: why pages are not RAM, in words a copy's record keeps."""

    def explain(self, first_pfn: int, count: int) -> Iterable[tuple[int, str]]:
        """`(run_length, reason)` runs covering `[first_pfn, first_pfn+count)`: reason ""
        for pages the hook calls RAM, else a short stable word of the hook's ("offline",
        "hwpoison", "free", "cache", "ballooned", ...)."""
        ...


class DumpMemory(Protocol):
    """What a hook attached to the dump may read of it."""

    @property
    def page_size(self) -> int: ...

    @property
    def vmcoreinfo(self) -> str | None:
        """The dead kernel's VMCOREINFO text (None: the dump has none and none was given)."""
        ...

    @property
    def arch(self) -> str:
        """The dead kernel's architecture ("x86_64", "aarch64"; "" when unknown)."""
        ...

    @property
    def pfn_ranges(self) -> Sequence[tuple[int, int]]:
        """`[first, end)` pfn ranges the dump holds, sorted."""
        ...

    def read_phys(self, paddr: int, length: int) -> bytes:
        """The dump's bytes at physical `paddr`, read directly (no verdict asked);
        DumpdError ERANGE for bytes the dump does not hold, EIO when unreadable."""
        ...


@runtime_checkable
class Attachable(Protocol):
    """Optional: a hook that reads the dump it judges (see the module docstring)."""

    def attach(self, dump: DumpMemory) -> None: ...
