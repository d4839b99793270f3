"""dumpd-xen: an is-RAM hook for dumpd that asks the Xen hypervisor each pfn's memory type.

What Linux does for an HVM guest's /proc/vmcore (`xen_vmcore_pfn_is_ram`,
arch/x86/xen/mmu_hvm.c): the `HVMOP_get_mem_type` hypercall for the pfn, and
`HVMMEM_mmio_dm` (a ballooned or emulated page) means not RAM, verdict 0; any
other type means RAM, verdict 1; a failed hypercall is an error, verdict -1 (the
page is read), logged once. The entry point `xen` in the group
`dumpd.pfn_is_ram` loads `create`.

Transports: `privcmd` (the real hypercall through /dev/xen/privcmd) and `stub`
(a stand-in hypervisor answering from a memory-type map file).
"""

from __future__ import annotations

from collections.abc import Mapping

from .abi import (
    DOMID_SELF,
    HVMMEM_IOREQ_SERVER,
    HVMMEM_MMIO_DM,
    HVMMEM_RAM_RO,
    HVMMEM_RAM_RW,
    HVMMEM_UNUSED,
    IOCTL_PRIVCMD_HYPERCALL,
    MEM_TYPES,
)
from .buffer import HypercallBuffer
from .hook import XenHook, verdict_of
from .memmap import FAILED, MapFormatError, MemTypeMap, parse_line, read_map
from .options import OPTIONS, XenOptions, open_transport, parse_options
from .privcmd import PrivcmdTransport
from .stub import StubTransport
from .transport import MemTypeRun, Transport

__all__ = [
    "DOMID_SELF",
    "FAILED",
    "HVMMEM_IOREQ_SERVER",
    "HVMMEM_MMIO_DM",
    "HVMMEM_RAM_RO",
    "HVMMEM_RAM_RW",
    "HVMMEM_UNUSED",
    "IOCTL_PRIVCMD_HYPERCALL",
    "MEM_TYPES",
    "OPTIONS",
    "HypercallBuffer",
    "MapFormatError",
    "MemTypeMap",
    "MemTypeRun",
    "PrivcmdTransport",
    "StubTransport",
    "Transport",
    "XenHook",
    "XenOptions",
    "create",
    "open_transport",
    "parse_line",
    "parse_options",
    "read_map",
    "verdict_of",
]


def create(options: Mapping[str, object]) -> XenHook:
    """The `dumpd.pfn_is_ram` factory; HookConfigError (one line, `xen: ...`) on bad options."""
    return XenHook(open_transport(parse_options(options)))
