"""The real transport: `HVMOP_get_mem_type` through `ioctl(IOCTL_PRIVCMD_HYPERCALL)`.

The same hypercall Linux's `xen_vmcore_pfn_is_ram()` (arch/x86/xen/mmu_hvm.c)
makes for an HVM guest's /proc/vmcore, made from user space: the argument struct
sits in a `HypercallBuffer`, and `/dev/xen/privcmd` issues the hypercall with
its address. The ioctl returns the hypercall's result: 0 on success, and -1 with
errno set when Xen returned `-errno`. Xen has no batched form, so a window costs
one hypercall per pfn.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable

from dumpd.hooks.pfnrange import MAX_PFN, clip

from .abi import (
    DOMID_SELF,
    GET_MEM_TYPE,
    HVMOP_GET_MEM_TYPE,
    HYPERVISOR_HVM_OP,
    IOCTL_PRIVCMD_HYPERCALL,
    pack_get_mem_type,
    pack_hypercall,
    unpack_get_mem_type,
)
from .buffer import HypercallBuffer
from .transport import MemTypeRun, append_run

PRIVCMD_DEVICE = "/dev/xen/privcmd"
HYPERCALL_DEVICE = "/dev/xen/hypercall"

Ioctl = Callable[[int, int, bytearray], int]
"""`ioctl(fd, request, arg)`: the syscall's result; OSError when it returns -1."""


def system_ioctl(fd: int, request: int, arg: bytearray) -> int:
    """`ioctl(2)` with `arg` passed as a pointer to its bytes (copied back afterwards)."""
    return int(fcntl.ioctl(fd, request, arg, True))


def _failure(result: int) -> OSError:
    """The error for a nonzero hypercall result that the ioctl returned instead of raising."""
    if result < 0:
        code = -result if result < -1 else errno.EIO
        return OSError(code, f"HVMOP_get_mem_type: {os.strerror(code)}")
    return OSError(errno.EPROTO, f"HVMOP_get_mem_type returned {result}")


class PrivcmdTransport:
    """Asks Xen through `/dev/xen/privcmd`; `calls` counts the hypercalls made."""

    def __init__(
        self,
        domid: int = DOMID_SELF,
        privcmd_device: str = PRIVCMD_DEVICE,
        hypercall_device: str | None = HYPERCALL_DEVICE,
        ioctl: Ioctl = system_ioctl,
    ) -> None:
        """Open `privcmd_device` and set up the argument buffer; OSError when either fails.

        `ioctl` stands in for the system call (tests pass a fake hypervisor).
        """
        self.domid = domid
        self.privcmd_device = privcmd_device
        self.calls = 0
        """How many hypercalls were made."""
        self._ioctl = ioctl
        fd = os.open(privcmd_device, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.buffer = HypercallBuffer(hypercall_device)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"{self.buffer.kind} buffer"
        return f"PrivcmdTransport({self.privcmd_device!r}, domid={self.domid:#x}, {state})"

    def mem_type(self, pfn: int) -> int:
        """One `HVMOP_get_mem_type` hypercall for `pfn`; OSError with errno on failure."""
        if not 0 <= pfn <= MAX_PFN:
            raise OSError(errno.EINVAL, f"pfn {pfn} is outside 0..{MAX_PFN:#x}")
        if self._fd is None:
            raise OSError(errno.EBADF, "the privcmd transport is closed")
        self.buffer.write(pack_get_mem_type(self.domid, pfn))
        call = pack_hypercall(HYPERVISOR_HVM_OP, HVMOP_GET_MEM_TYPE, self.buffer.address)
        self.calls += 1
        result = self._ioctl(self._fd, IOCTL_PRIVCMD_HYPERCALL, call)
        if result != 0:
            raise _failure(result)
        _, mem_type, _ = unpack_get_mem_type(self.buffer.read(GET_MEM_TYPE.size))
        return mem_type

    def mem_type_runs(self, first: int, count: int) -> list[MemTypeRun]:
        """One hypercall per pfn of `[first, first+count)`, coalesced into runs."""
        below, start, inside, above = clip(first, count)
        runs: list[MemTypeRun] = [(below, -errno.EINVAL)] if below else []
        for pfn in range(start, start + inside):
            try:
                outcome = self.mem_type(pfn)
            except OSError as e:
                outcome = -(e.errno or errno.EIO)
            append_run(runs, 1, outcome)
        if above:
            append_run(runs, above, -errno.EINVAL)
        return runs

    def reload(self) -> None:
        """Nothing is cached here: every verdict comes from the hypervisor as asked."""

    def close(self) -> None:
        """Close the privcmd device and unmap the buffer; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.buffer.close()
