"""The Xen ABI this hook speaks: numbers, struct layouts and the privcmd ioctl.

From Xen's public headers (`xen.h`, `hvm/hvm_op.h`) and Linux's
`include/uapi/xen/privcmd.h`. Structs are packed in native byte order with
standard sizes and the padding written out, so the layouts hold on every
architecture Xen runs on.

    struct xen_hvm_get_mem_type {     /* 16 bytes */
        domid_t  domid;               /*  0: IN, DOMID_SELF for the caller */
        uint16_t mem_type;            /*  2: OUT, an HVMMEM_* value */
        uint16_t pad[2];              /*  4 */
        uint64_t pfn;                 /*  8: IN */
    };

    struct privcmd_hypercall {        /* 48 bytes */
        __u64 op;                     /*  0: __HYPERVISOR_* */
        __u64 arg[5];                 /*  8 */
    };
"""

from __future__ import annotations

import struct

HYPERVISOR_HVM_OP = 34
"""`__HYPERVISOR_hvm_op`."""

HVMOP_GET_MEM_TYPE = 15
"""`HVMOP_get_mem_type`: the memory type of one pfn of a domain."""

DOMID_SELF = 0x7FF0
"""`DOMID_SELF`: the calling domain (the crashed guest, seen from its capture kernel)."""

DOMID_MAX = 0xFFFF
"""`domid_t` is 16 bits."""

HVMMEM_RAM_RW = 0
HVMMEM_RAM_RO = 1
HVMMEM_MMIO_DM = 2
"""Emulated by the device model: not RAM (a ballooned page reads as this)."""
HVMMEM_UNUSED = 3
"""`HVMMEM_unused`; `HVMMEM_mmio_write_dm` before Xen 4.7."""
HVMMEM_IOREQ_SERVER = 4

MEM_TYPE_MAX = 0xFFFF
"""`mem_type` is 16 bits."""

MEM_TYPES: dict[str, int] = {
    "ram_rw": HVMMEM_RAM_RW,
    "ram_ro": HVMMEM_RAM_RO,
    "mmio_dm": HVMMEM_MMIO_DM,
    "unused": HVMMEM_UNUSED,
    "ioreq_server": HVMMEM_IOREQ_SERVER,
}
"""The `HVMMEM_*` names, without the prefix, and their values."""

# --- struct xen_hvm_get_mem_type ------------------------------------------------------

GET_MEM_TYPE = struct.Struct("=HH2HQ")
"""`struct xen_hvm_get_mem_type`: domid, mem_type, pad[2], pfn."""

GET_MEM_TYPE_OFFSETS = {"domid": 0, "mem_type": 2, "pad": 4, "pfn": 8}
"""Byte offset of each field of `struct xen_hvm_get_mem_type`."""


def pack_get_mem_type(domid: int, pfn: int, mem_type: int = 0) -> bytes:
    """The 16 bytes of a `struct xen_hvm_get_mem_type` asking for `pfn` of `domid`."""
    return GET_MEM_TYPE.pack(domid, mem_type, 0, 0, pfn)


def unpack_get_mem_type(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """`(domid, mem_type, pfn)` from the first 16 bytes of `data`."""
    domid, mem_type, _, _, pfn = GET_MEM_TYPE.unpack_from(data)
    return domid, mem_type, pfn


# --- struct privcmd_hypercall and its ioctl -------------------------------------------

PRIVCMD_HYPERCALL = struct.Struct("=6Q")
"""`struct privcmd_hypercall`: op, arg[5]."""

PRIVCMD_HYPERCALL_OFFSETS = {"op": 0, "arg": 8}
"""Byte offset of each field of `struct privcmd_hypercall`."""

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0


def ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """Linux's generic `_IOC(dir, type, nr, size)` (x86, arm, riscv; not mips/ppc/sparc)."""
    if not (0 <= nr < 1 << _IOC_NRBITS and 0 <= size < 1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl nr {nr} or size {size} out of range")
    return (
        direction << _IOC_DIRSHIFT
        | size << _IOC_SIZESHIFT
        | ord(kind) << _IOC_TYPESHIFT
        | nr << _IOC_NRSHIFT
    )


IOCTL_PRIVCMD_HYPERCALL = ioc(_IOC_NONE, "P", 0, PRIVCMD_HYPERCALL.size)
"""`_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))` = 0x00305000."""


def pack_hypercall(op: int, *args: int) -> bytearray:
    """A mutable `struct privcmd_hypercall` for hypercall `op` with up to five arguments."""
    if len(args) > 5:
        raise ValueError(f"a hypercall takes at most 5 arguments, got {len(args)}")
    return bytearray(PRIVCMD_HYPERCALL.pack(op, *args, *(0,) * (5 - len(args))))


def unpack_hypercall(data: bytes | bytearray | memoryview) -> tuple[int, tuple[int, ...]]:
    """`(op, (arg0, ..., arg4))` from a `struct privcmd_hypercall`."""
    op, *args = PRIVCMD_HYPERCALL.unpack_from(data)
    return op, tuple(args)
