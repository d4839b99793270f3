"""The dead kernel as the engine sees it: kernel virtual reads and the crash context
`info` shows.

Design rule: `read_virt` translates through the dead kernel's page tables, read
straight from the source (they are metadata, as what hooks read through
`sources.physical`), then reads each physical piece through the engine like
`read_phys`: verdicts, cache and single-flight hold for the data.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from dumpd.errors import DumpdError
from dumpd.kernel.vmcoreinfo import VmcoreInfo
from dumpd.kernel.x86_64 import PageTables
from dumpd.sources.base import Source


def no_vmcoreinfo(source: Source) -> DumpdError:
    """ENOSYS for a dump whose kernel dumpd knows nothing of."""
    given = "as a file (source.vmcoreinfo, --vmcoreinfo FILE)"
    how = {"raw": f"give its VMCOREINFO {given}",
           "kdump": f"its kdump-compressed file has none; give one {given}"}.get(
        source.kind, f"its ELF core has no VMCOREINFO note; give one {given}")
    return DumpdError("ENOSYS", f"{source.path}: no VMCOREINFO: {how}")


class KernelView:
    """Kernel virtual reads and the crash context of one source."""

    def __init__(self, source: Source) -> None:
        self._source = source
        text = source.vmcoreinfo_text
        self.info = None if text is None else VmcoreInfo(text)
        self._tables: PageTables | None = None
        self._lock = threading.Lock()  # translations run on worker threads

    def context(self) -> dict[str, Any]:
        """What `info` shows of the crash: None fields where VMCOREINFO says nothing."""
        info = self.info
        return {
            "vmcoreinfo": self._source.vmcoreinfo_from or None,
            "osrelease": info.osrelease if info else None,
            "arch": self._source.arch or None,
            "crashtime": info.crashtime if info else None,
            "page_size": self._source.page_size,
            "kernel_offset": info.kernel_offset if info else None,
        }

    def vmcoreinfo(self) -> str:
        """The raw VMCOREINFO text; ENOSYS when there is none."""
        if self.info is None:
            raise no_vmcoreinfo(self._source)
        return self.info.text

    def _page_tables(self) -> PageTables:
        if self._tables is None:
            if self.info is None:
                raise no_vmcoreinfo(self._source)
            if self._source.arch != "x86_64":
                arch = self._source.arch or "of an unknown architecture"
                raise DumpdError("ENOSYS", "kernel virtual addresses are translated for "
                                 f"x86_64 only; this dump is {arch}")
            self._tables = PageTables(self.info, self._source.read_phys)
        return self._tables

    def _translate(self, vaddr: int, length: int) -> list[tuple[int, int]]:
        with self._lock:
            return self._page_tables().pieces(vaddr, length)

    async def read_virt(self, vaddr: int, length: int,
                        read_phys: Callable[[int, int], Awaitable[bytes]]) -> bytes:
        """The bytes at kernel virtual `[vaddr, vaddr+length)`; ERANGE naming the first
        address the page tables do not map, ENOSYS without VMCOREINFO or off x86_64."""
        pieces = await asyncio.to_thread(self._translate, vaddr, length)
        parts = [await read_phys(paddr, size) for paddr, size in pieces]
        return parts[0] if len(parts) == 1 else b"".join(parts)
