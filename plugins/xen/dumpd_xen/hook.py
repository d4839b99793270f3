"""The hook dumpd calls: memory types from a transport, turned into is-RAM verdicts.

As Linux's `xen_vmcore_pfn_is_ram()`: a pfn is not RAM when the hypervisor says
`HVMMEM_mmio_dm` (a ballooned page, or one the device model emulates: reading it
makes Xen ask qemu, slowly, for meaningless data), RAM for every other type. When
the hypercall fails the verdict is an error, so the page is read, and the failure
is logged once per hook, like the kernel's `pr_warn_once`.
"""

from __future__ import annotations

import errno
import logging
import os

from dumpd.hooks.contract import ERROR, NOT_RAM, RAM
from dumpd.hooks.pfnrange import PFN_LIMIT, clip

from .abi import HVMMEM_MMIO_DM
from .transport import Transport, append_run

log = logging.getLogger("dumpd_xen")


def verdict_of(outcome: int) -> int:
    """The verdict for a transport outcome: a memory type, or `-errno` when it failed."""
    if outcome < 0:
        return ERROR
    return NOT_RAM if outcome == HVMMEM_MMIO_DM else RAM


class XenHook:
    """`pfn_is_ram` and its batched form, answered by `transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.failures = 0
        """How many pfns got the error verdict because the hypercall failed."""
        self._warned = False

    def __repr__(self) -> str:
        return f"XenHook({self.transport!r})"

    def pfn_is_ram(self, pfn: int) -> int:
        """0 for `HVMMEM_mmio_dm`, 1 for any other type, -1 when the hypercall fails."""
        if not 0 <= pfn < PFN_LIMIT:
            return ERROR
        try:
            mem_type = self.transport.mem_type(pfn)
        except OSError as e:
            self._failed(pfn, 1, e.errno or errno.EIO)
            return ERROR
        return verdict_of(mem_type)

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> list[tuple[int, int]]:
        """Maximal `(run_length, verdict)` runs covering exactly `count` pfns.

        The part of the window outside [0, 2**64) gets the error verdict.
        """
        below, start, inside, above = clip(first_pfn, count)
        runs: list[tuple[int, int]] = [(below, ERROR)] if below else []
        if inside:
            pos = start
            for length, outcome in self.transport.mem_type_runs(start, inside):
                if outcome < 0:
                    self._failed(pos, length, -outcome)
                append_run(runs, length, verdict_of(outcome))
                pos += length
        if above:
            append_run(runs, above, ERROR)
        return runs

    def reload(self) -> None:
        """Have the transport re-read its data (the stub's map; nothing for privcmd)."""
        self.transport.reload()

    def close(self) -> None:
        """Release the transport's devices and buffers; idempotent."""
        self.transport.close()

    def _failed(self, pfn: int, count: int, code: int) -> None:
        """Count failed pfns; log the first failure of this hook, and only that one."""
        self.failures += count
        if not self._warned:
            self._warned = True
            log.warning(
                "xen: unexpected HVMOP_get_mem_type failure for pfn %#x: %s (errno %d); "
                "pages without a memory type are read anyway (logged once)",
                pfn,
                os.strerror(code),
                code,
            )
