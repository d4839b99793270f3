"""The stand-in transport: a fake hypervisor answering from a memory-type map.

For hosts without Xen: tests, benchmarks, and trying the hook out. Every call,
single or batched, is one "hypercall": it is counted in `calls` and waits
`delay_ms` (to model what a real hypercall costs). A batched call answers its
whole window at once from the map, in O(log segments + runs).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable

from dumpd.hooks.pfnrange import MAX_PFN, clip

from .abi import DOMID_SELF
from .memmap import MemTypeMap, read_map
from .transport import MemTypeRun, append_run


class StubTransport:
    """Answers from the map at `map_path` (every pfn ram_rw without one)."""

    def __init__(
        self,
        map_path: str | None = None,
        failing: Iterable[tuple[int, int]] = (),
        delay_ms: float = 0.0,
        domid: int = DOMID_SELF,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`failing` `(start, end_exclusive)` ranges fail with ENOSYS, whatever the map says;
        `sleep(seconds)` takes each call's `delay_ms`.

        HookConfigError when the map is unreadable or malformed.
        """
        if delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, got {delay_ms}")
        self.map_path = map_path
        self.failing = tuple(failing)
        self.delay_ms = delay_ms
        self.sleep = sleep
        self.domid = domid
        """Recorded only: the stub has one domain."""
        self.calls = 0
        """How many calls (single or batched) were made."""
        self.reloads = 0
        """How many times the map was (re)loaded successfully after creation."""
        self.map: MemTypeMap = self._load()

    def __repr__(self) -> str:
        source = self.map_path or "<all ram_rw>"
        return f"StubTransport({source!r}: {len(self.map)} segments, {self.calls} calls)"

    def _load(self) -> MemTypeMap:
        if self.map_path is None:
            return MemTypeMap((), self.failing)
        return read_map(self.map_path, self.failing)

    def _hypercall(self) -> None:
        """Count one call and take `delay_ms` for it."""
        self.calls += 1
        if self.delay_ms:
            self.sleep(self.delay_ms / 1000)

    def mem_type(self, pfn: int) -> int:
        """The map's type for `pfn`; OSError(ENOSYS) where it fails."""
        self._hypercall()
        if not 0 <= pfn <= MAX_PFN:
            raise OSError(errno.EINVAL, f"pfn {pfn} is outside 0..{MAX_PFN:#x}")
        outcome = self.map.outcome(pfn)
        if outcome < 0:
            raise OSError(-outcome, f"HVMOP_get_mem_type: {os.strerror(-outcome)}")
        return outcome

    def mem_type_runs(self, first: int, count: int) -> list[MemTypeRun]:
        """The window's outcomes as maximal runs, in one call."""
        self._hypercall()
        below, start, inside, above = clip(first, count)
        runs: list[MemTypeRun] = [(below, -errno.EINVAL)] if below else []
        for length, outcome in self.map.runs(start, inside):
            append_run(runs, length, outcome)
        if above:
            append_run(runs, above, -errno.EINVAL)
        return runs

    def reload(self) -> None:
        """Re-read the map; a bad one raises HookConfigError and the old map stays."""
        new = self._load()  # built completely before it replaces the old one
        self.map = new
        self.reloads += 1

    def close(self) -> None:
        """Nothing to release."""
