"""What a kdump-compressed copy of the served dump is made of, asked of the server:
the headers' facts, the pfns of both bitmaps, and the runs its pages are streamed by.

Design rules:
- The facts are the dead kernel's, as makedumpfile takes them: the ELF notes of the
  view copied whole (a VMCOREINFO note made from the server's `vmcoreinfo` when the view
  has none: a raw source served with its VMCOREINFO file), `utsname` read at
  SYMBOL(init_uts_ns) + OFFSET(uts_namespace.name) through the dead kernel's page
  tables (`read_virt`; failing that, OSRELEASE and the architecture), the crash time
  from CRASHTIME, phys_base from NUMBER(phys_base).
- Pages go in pfn order: the first-wins physical map of the PT_LOADs (`runs`), each
  run a range of the file view, so a pfn two PT_LOADs hold (the kernel text of
  /proc/vmcore) is dumped once, from the first.
- The 1st bitmap is the PT_LOADs' whole pages, as makedumpfile sets it; the 2nd is
  the pages of the runs the server calls RAM (`extents`): pages past p_filesz are in
  the 1st only, a page cut by p_filesz is dumped (as makedumpfile does since 1.7.6).
  Both are made as sorted pfn runs, never held whole.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dumpd.client import RemoteError
from dumpd.fetch.calls import Calls
from dumpd.fetch.space import EXTENTS_STEP
from dumpd.kdump.bitmap import Runs, normal
from dumpd.kdump.format import UTS_FIELD, UTS_NAMES, FormatError
from dumpd.kdump.notes import EHDR_SIZE, NoteFacts, elf_notes, vmcoreinfo_note
from dumpd.kdump.writer import Plan
from dumpd.kernel.vmcoreinfo import VmcoreInfo
from dumpd.sources.base import Segment, build_phys_map

UTS_SIZE = UTS_FIELD * len(UTS_NAMES)


@dataclass(frozen=True, slots=True)
class Run:
    """Physical `[start, end)` is the file view's bytes from `offset` on."""

    start: int
    end: int
    offset: int

    def view(self, paddr: int) -> int:
        return self.offset + paddr - self.start

    def paddr(self, offset: int) -> int:
        return self.start + offset - self.offset


def segments(info: dict[str, Any]) -> list[Segment]:
    return [Segment(*seg) for seg in info["segments"]]


def max_mapnr(info: dict[str, Any]) -> int:
    """makedumpfile's max_mapnr: the pfns below the highest PT_LOAD end, rounded up."""
    ps = info["page_size"]
    return max((-(-(s.paddr + s.memsz) // ps) for s in segments(info)), default=0)


def present(info: dict[str, Any]) -> Runs:
    """The 1st bitmap: each PT_LOAD's pages but a partial last one, as makedumpfile's
    cyclic mode sets it. (Its other mode, which it takes only when both bitmaps fit its
    buffer exactly, max_mapnr a multiple of 4 below 16 Mi pfns, sets that page too.)"""
    ps = info["page_size"]
    return normal((s.paddr // ps, (s.paddr + s.memsz) // ps) for s in segments(info))


def runs(info: dict[str, Any]) -> list[Run]:
    """The physical ranges the file view holds data for, in address order (first
    PT_LOAD wins), within the 1st bitmap's pages (a partial last page is not dumped),
    joined where both the addresses and the view offsets meet."""
    ps, whole = info["page_size"], present(info)
    starts = [first for first, _ in whole]
    out: list[Run] = []
    for piece in build_phys_map(segments(info)):
        if piece.file_offset is None:
            continue
        i = max(0, bisect_right(starts, piece.start // ps) - 1)
        for first, end in whole[i:]:
            lo, hi = max(piece.start, first * ps), min(piece.end, end * ps)
            if first * ps >= piece.end:
                break
            if lo >= hi:
                continue
            offset = piece.file_offset + lo - piece.start
            if out and out[-1].end == lo and out[-1].view(lo) == offset:
                out[-1] = Run(out[-1].start, hi, out[-1].offset)
            else:
                out.append(Run(lo, hi, offset))
    return out


def dumped(client: Calls, info: dict[str, Any]) -> Iterator[tuple[int, int]]:
    """The 2nd bitmap as pfn runs in order: the pages of `runs` the server calls RAM
    (consecutive runs may share a partial page)."""
    ps = info["page_size"]
    for run in runs(info):
        end = run.view(run.end)
        for pos in range(run.offset, end, EXTENTS_STEP):
            for offset, length, kind in client.extents(pos, min(EXTENTS_STEP, end - pos)):
                if kind == "data":
                    yield run.paddr(offset) // ps, -(-run.paddr(offset + length) // ps)


def read_view(client: Calls, info: dict[str, Any], offset: int, length: int) -> bytes:
    """`length` bytes of the file view from `offset`, in reads the server takes."""
    parts, most = [], info["max_read"]
    for pos in range(offset, offset + length, most):
        parts.append(client.read(pos, min(most, offset + length - pos)))
    data = b"".join(parts)
    if len(data) < length:
        raise FormatError(f"the view ends inside its notes ({offset:#x}+{length:#x})")
    return data


def notes_of(client: Calls, info: dict[str, Any]) -> tuple[list[tuple[int, int]], bytes]:
    """The PT_NOTEs of the view (`(offset, size)`, none for a raw source) and their
    bytes, a VMCOREINFO note added when they have none and the server has its text."""
    ranges: list[tuple[int, int]] = []
    if info["source"]["kind"] == "elf":
        head = client.read(0, EHDR_SIZE)
        ranges = elf_notes(head, lambda offset, length: read_view(client, info, offset,
                                                                   length))
    notes = b"".join(read_view(client, info, offset, size) for offset, size in ranges)
    if NoteFacts.scan(notes).vmcoreinfo is None:
        try:
            text = client.vmcoreinfo()
        except RemoteError as exc:
            if exc.code != "ENOSYS":
                raise
        else:
            notes += vmcoreinfo_note(text)
    return ranges, notes


def utsname(client: Calls, info: dict[str, Any], vmcoreinfo: VmcoreInfo) -> tuple[bytes, ...]:
    """The dead kernel's `new_utsname`, read where makedumpfile reads it."""
    symbol = vmcoreinfo.symbol("init_uts_ns")
    if symbol is not None:
        offset = vmcoreinfo.offset("uts_namespace.name")
        at = symbol + (4 if offset is None else offset)  # after `struct kref` before 4.x
        try:
            raw = client.read_virt(at, UTS_SIZE)
        except RemoteError:
            pass
        else:
            return tuple(raw[i : i + UTS_FIELD].split(b"\0", 1)[0]
                         for i in range(0, UTS_SIZE, UTS_FIELD))
    if not vmcoreinfo.text:
        return (b"",) * len(UTS_NAMES)  # as makedumpfile leaves it
    release = (vmcoreinfo.osrelease or "").encode()
    machine = (info["kernel"].get("arch") or "").encode()
    return (b"Linux", b"", release, b"", machine, b"")


def dump_level(info: dict[str, Any], zeros: bool) -> int:
    """The level the pages were chosen at: the hook's `dump_level` option (the memmap
    hook's: makedumpfile's -d) without bit 1, which is the stream's (`zeros`)."""
    level = (info.get("hook_options") or {}).get("dump_level")
    hook = level & ~1 if type(level) is int and 0 <= level <= 31 else 0
    return hook | (1 if zeros else 0)


def make_plan(client: Calls, info: dict[str, Any], codec_flag: int, zeros: bool
              ) -> tuple[Plan, list[tuple[int, int]]]:
    """The plan of the copy and the PT_NOTEs of the view it copies."""
    ranges, notes = notes_of(client, info)
    facts = NoteFacts.scan(notes)
    vmcoreinfo = VmcoreInfo(facts.vmcoreinfo_text or "")
    plan = Plan(info["page_size"], max_mapnr(info), notes, facts,
                utsname(client, info, vmcoreinfo), vmcoreinfo.crashtime or 0, codec_flag,
                vmcoreinfo.number("phys_base") or 0, dump_level(info, zeros))
    return plan, ranges
