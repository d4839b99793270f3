"""What the hook needs from a way of asking the hypervisor: the `Transport` protocol.

Two transports implement it: `PrivcmdTransport` (the real hypercall, through
`/dev/xen/privcmd`) and `StubTransport` (a stand-in hypervisor answering from a
memory-type map). Both are called from one thread, never concurrently.

A batched answer is a list of `(run_length, outcome)` runs. An outcome is the
`HVMMEM_*` memory type (0..65535) the hypervisor gave for every pfn of the run,
or, when the hypercall failed for them, the negative errno it failed with.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

MemTypeRun = tuple[int, int]
"""`(run_length, outcome)`: outcome >= 0 is a memory type, < 0 is `-errno`."""


@runtime_checkable
class Transport(Protocol):
    """Asks the memory type of pfns of one domain."""

    def mem_type(self, pfn: int) -> int:
        """The `HVMMEM_*` type of `pfn`; OSError (with `errno` set) when the call fails."""
        ...

    def mem_type_runs(self, first: int, count: int) -> list[MemTypeRun]:
        """Outcomes for `[first, first+count)` as runs covering exactly `count` pfns.

        Adjacent runs have different outcomes; failures are `-errno` runs, never raised.
        """
        ...

    def reload(self) -> None:
        """Re-read whatever the transport caches; HookConfigError keeps the old data."""
        ...

    def close(self) -> None:
        """Release devices and buffers; idempotent."""
        ...


def append_run(runs: list[MemTypeRun], length: int, outcome: int) -> None:
    """Add `length` pfns of `outcome` to `runs`, joining the last run when it agrees."""
    if runs and runs[-1][1] == outcome:
        runs[-1] = (runs[-1][0] + length, outcome)
    else:
        runs.append((length, outcome))
