"""The dump's physical memory as a hook's `attach` reads it (`DumpMemory` of
dumpd.hooks.contract, met by shape: the sources know no hooks).

Design rule: straight from the source, never through the engine, so no verdict is
asked for the pages a hook reads to give its verdicts (no recursion).
"""

from __future__ import annotations

from dumpd.sources.base import Source


class SourceMemory:
    """The `DumpMemory` a hook's `attach` gets (dumpd.hooks.contract)."""

    def __init__(self, source: Source) -> None:
        self._source = source
        page = source.page_size
        whole = ((-(-run.start // page), run.end // page) for run in source.phys_map)
        self.pfn_ranges = tuple((first, end) for first, end in whole if end > first)

    @property
    def page_size(self) -> int:
        return self._source.page_size

    @property
    def vmcoreinfo(self) -> str | None:
        return self._source.vmcoreinfo_text

    @property
    def arch(self) -> str:
        return self._source.arch

    def read_phys(self, paddr: int, length: int) -> bytes:
        return self._source.read_phys(paddr, length)
