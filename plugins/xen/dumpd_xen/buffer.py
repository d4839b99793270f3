"""A page for hypercall arguments that the hypervisor can always reach, as libxencall makes.

Xen reads and writes a hypercall's argument struct through the caller's virtual
address, so the page must be present and must not move while the call runs: no
swapping, no copy-on-write after a `fork()`. Like libxencall, map a page of
`/dev/xen/hypercall` (kernel memory made for this) when that device exists; on
older kernels without it, map an anonymous private page, exclude it from forks
(`MADV_DONTFORK`), touch it and lock it in memory (`mlock`).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Literal

PAGE_SIZE = mmap.PAGESIZE

_libc: ctypes.CDLL | None = None


def _mlock(address: int, length: int) -> None:
    """`mlock(2)` on `[address, address+length)`; OSError on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mlock.restype = ctypes.c_int
    if _libc.mlock(address, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mlock: {os.strerror(code)}")


def _address(page: mmap.mmap) -> int:
    """The virtual address of the first byte of `page`."""
    view = ctypes.c_char.from_buffer(page)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # release the buffer export so the mapping can be closed


def _map_device(path: str) -> mmap.mmap | None:
    """One shared page of the hypercall buffer device; None when `path` does not exist."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # an older kernel: libxencall falls back the same way
    try:
        return mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except ValueError as e:  # a regular file shorter than a page
        raise OSError(errno.EINVAL, f"cannot map a page of {path}: {e}") from e
    finally:
        os.close(fd)  # the mapping stays valid


def _map_locked() -> mmap.mmap:
    """One anonymous private page, kept out of forks, touched and locked in memory."""
    page = mmap.mmap(
        -1,
        PAGE_SIZE,
        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        mmap.PROT_READ | mmap.PROT_WRITE,
    )
    try:
        page.madvise(mmap.MADV_DONTFORK)
        page[0] = 0  # un-share it, in case another thread forked before the madvise
        _mlock(_address(page), PAGE_SIZE)
    except BaseException:
        page.close()
        raise
    return page


class HypercallBuffer:
    """One page at a fixed virtual address `address`, reachable by the hypervisor."""

    def __init__(self, device: str | None) -> None:
        """Map a page of `device` (e.g. `/dev/xen/hypercall`), or a locked anonymous page
        when `device` is None or does not exist. OSError when neither can be had."""
        page = _map_device(device) if device is not None else None
        self.kind: Literal["device", "locked"] = "device" if page is not None else "locked"
        """Where the page came from: the hypercall device or a locked anonymous mapping."""
        self._page: mmap.mmap | None = page if page is not None else _map_locked()
        self.address: int = _address(self._page)
        """The page's virtual address, as the hypervisor is given it."""

    @property
    def closed(self) -> bool:
        """Whether the page is unmapped."""
        return self._page is None

    def write(self, data: bytes) -> None:
        """Put `data` at the start of the page."""
        self._open_page()[: len(data)] = data

    def read(self, size: int) -> bytes:
        """The first `size` bytes of the page."""
        return self._open_page()[:size]

    def close(self) -> None:
        """Unmap the page (unlocking it); idempotent."""
        page, self._page = self._page, None
        if page is not None:
            page.close()

    def _open_page(self) -> mmap.mmap:
        if self._page is None:
            raise OSError(errno.EBADF, "the hypercall buffer is closed")
        return self._page
