"""dumpd-memmap: an is-RAM hook whose verdicts come from the dead kernel's own struct pages.

Pages the kernel marked offline (taken by a balloon driver, unplugged by virtio-mem)
or hwpoisoned are not RAM, verdict 0, as makedumpfile always leaves them out; with the
options, so are the pages makedumpfile's dump levels leave out (free, cache, cache
private, user), bit for bit. The hook reads the dump through `attach(dump)`: its
VMCOREINFO, the x86_64 page tables and the mem_map (`dumpd.kernel`), never through
dumpd's verdicts. The entry point `memmap` in the group `dumpd.pfn_is_ram` loads
`create`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

from dumpd.errors import DumpdError
from dumpd.hooks.contract import ERROR, NOT_RAM, RAM, DumpMemory, HookConfigError
from dumpd.hooks.pfnrange import clip
from dumpd.kernel.sparsemem import MemMap
from dumpd.kernel.vmcoreinfo import MissingInfo, VmcoreInfo
from dumpd.kernel.x86_64 import PageTables

from .chunks import CACHED_CHUNKS, CHUNK_PAGES, Chunks, Piece
from .classify import COUNTED, REASONS, Classifier
from .classify import ERROR as ERROR_CODE
from .layout import PageLayout
from .options import describe, parse

__all__ = ["CACHED_CHUNKS", "CHUNK_PAGES", "COUNTED", "MemmapHook", "create"]

_RUNS = re.compile(rb"(.)\1*", re.S)
_VERDICTS = {0: NOT_RAM, 1: RAM, 2: ERROR}
_TO_VERDICT = bytes(1 if code == 0 else 2 if code == ERROR_CODE else 0 for code in range(256))


class MemmapHook:
    """Verdicts from the struct pages of the dump it is attached to; before `attach`,
    every pfn is an error (the page is read: the hook cannot tell)."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.kernel = ""  # the attached dump's OSRELEASE
        self._chunks: Chunks | None = None

    def __repr__(self) -> str:
        where = f"attached to {self.kernel or 'a kernel'}" if self._chunks else "not attached"
        return f"MemmapHook(dump_level={self.level}: {describe(self.level)}; {where})"

    @property
    def chunks(self) -> Chunks | None:
        """The classified chunks (None before `attach`)."""
        return self._chunks

    def attach(self, dump: DumpMemory) -> None:
        """Read the dump's VMCOREINFO and find its mem_map; refuse, in one line, a dump
        without VMCOREINFO (HookConfigError), of another architecture, or whose
        VMCOREINFO lacks a key the asked exclusions need (ENOSYS)."""
        text = dump.vmcoreinfo
        if text is None:
            raise HookConfigError("memmap: the dump has no VMCOREINFO (no ELF note, and none "
                                  "given with the source), so its struct pages cannot be found")
        if dump.arch != "x86_64":
            raise DumpdError("ENOSYS", "memmap: reads x86_64 page tables only; this dump's "
                             f"architecture is {dump.arch or 'unknown'}")
        info = VmcoreInfo(text)
        try:
            layout = PageLayout.read(info, self.level)
            memmap = MemMap(info, PageTables(info, dump.read_phys))
            for first, _ in dump.pfn_ranges[:1]:
                memmap.coded_map(first >> memmap.section_bits)
        except MissingInfo as exc:
            message = exc.message if exc.message.startswith("memmap: ") else \
                f"memmap: {exc.message}"
            raise MissingInfo(message) from None
        except DumpdError as exc:
            raise DumpdError(exc.code, f"memmap: cannot read the mem_map: {exc.message}"
                             ) from None
        self.kernel = info.osrelease or ""
        self._chunks = Chunks(Classifier(layout), memmap, dump.read_phys, dump.pfn_ranges,
                              layout.max_order)

    def _codes(self, first: int, count: int) -> Iterator[Piece]:
        """Per-pfn codes of `[first, first+count)` (pfns that cannot exist: ERROR)."""
        below, start, inside, above = clip(first, count)
        if below:
            yield below, ERROR_CODE
        if inside and self._chunks is None:
            yield inside, ERROR_CODE
        elif inside:
            assert self._chunks is not None
            yield from self._chunks.pieces(start, inside)
        if above:
            yield above, ERROR_CODE

    def pfn_is_ram(self, pfn: int) -> int:
        """1 RAM, 0 offline, hwpoisoned or excluded by the dump level, -1 unknown."""
        (piece,) = self._codes(pfn, 1)
        return _VERDICTS[_TO_VERDICT[piece[1] if isinstance(piece, tuple) else piece[0]]]

    def pfn_range_is_ram(self, first_pfn: int, count: int) -> list[tuple[int, int]]:
        """`(run_length, verdict)` runs covering `[first_pfn, first_pfn+count)`."""
        return [(length, _VERDICTS[value]) for length, value in
                _runs(self._codes(first_pfn, count), _TO_VERDICT)]

    def explain(self, first_pfn: int, count: int) -> list[tuple[int, str]]:
        """`(run_length, reason)` runs: "" for pages read, else "offline", "hwpoison",
        "free", "cache", "cache_private" or "user"."""
        return [(length, REASONS[code]) for length, code in
                _runs(self._codes(first_pfn, count), _TO_REASON)]

    def close(self) -> None:
        """Drop the classified chunks and the dump; verdicts are errors again."""
        self._chunks = None


_TO_REASON = bytes(0 if code == ERROR_CODE else code for code in range(256))


def _runs(pieces: Iterable[Piece], table: bytes) -> list[tuple[int, int]]:
    """Maximal `(length, value)` runs of the codes of `pieces` mapped through `table`."""
    runs: list[tuple[int, int]] = []

    def add(length: int, value: int) -> None:
        if runs and runs[-1][1] == value:
            runs[-1] = (runs[-1][0] + length, value)
        else:
            runs.append((length, value))

    for piece in pieces:
        if isinstance(piece, tuple):
            add(piece[0], table[piece[1]])
            continue
        mapped = piece.translate(table)
        for match in _RUNS.finditer(mapped):
            add(match.end() - match.start(), mapped[match.start()])
    return runs


def create(options: Mapping[str, object]) -> MemmapHook:
    """The `dumpd.pfn_is_ram` factory: `exclude` (names) or `dump_level` (makedumpfile's
    -d); the hook reads the dump when attached."""
    return MemmapHook(parse(options))
