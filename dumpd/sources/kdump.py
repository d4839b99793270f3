"""Saved kdump-compressed dumps (`makedumpfile -c/-l/-p/-z`, and their flattened form,
`-F`) as sources: served as the ELF core of dumpd.kdump.elfview, pages decompressed
as they are read.

Design rules:
- The file view is synthesized: its headers and notes are held in memory (the notes
  are the dump's own, VMCOREINFO among them), its pages come from the dump's page
  descriptors. So `fileno` offsets are not file offsets, and nothing may go from the
  file to a socket as it is: `spliced` is False (no sendfile, no mapping: `open_source`
  maps no windows for it), and `copy_to` writes decompressed bytes.
- Pages the dump left out (not in its 2nd bitmap) are `excluded`: the engine sends
  them as holes and never reads them; read anyway they are zeros.
- Everything a reader relies on is checked on open, in one line naming the file
  (`StartupError`): the headers, the bitmaps inside the file, the notes. What can only
  be found page by page (a descriptor past the end, a page that does not decompress)
  is EIO for that page (`ReadError`), and the server goes on.
- Reads on the event loop (`read_cached_into`) decompress at most `INLINE_MAX` bytes,
  only what the OS page cache holds, and only when the bitmap's ranks are at hand
  (`Rank.peek`: no read, no wait); the rest goes to the engine's workers. `excluded`,
  which the engine asks on the loop when it sorts a range into read and zero pieces,
  reads at most the 2nd bitmap's blocks it needs (4 KiB for 32768 pages), once: they
  stay in a small LRU.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from typing import NoReturn

from dumpd import codecs
from dumpd.errors import DumpdError, StartupError
from dumpd.kdump.bitmap import Runs, TooManyRuns, clear_runs, set_runs
from dumpd.kdump.elfview import MACHINES, MAX_LOADS, ElfView, elf_view, note, note_names
from dumpd.kdump.format import (
    HEADER_VERSION,
    INCOMPLETE,
    MAIN_SIZE,
    SUB_SIZE,
    FormatError,
    Layout,
    MainHeader,
    SubHeader,
)
from dumpd.kernel.vmcoreinfo import parse_lines
from dumpd.sources.base import COPY_MAX, ReadError, Segment, Source
from dumpd.sources.elf import ARCHES, ELF_MAGIC, VMCOREINFO_MAX, vmcoreinfo_text
from dumpd.sources.flattened import FlatFile
from dumpd.sources.kdumpfile import KdumpBytes, PlainFile, WouldBlock
from dumpd.sources.kdumppages import BadPage, Pages

INLINE_MAX = 16 * 1024  # bytes of pages decompressed on the event loop per read at most
NOTES_MAX = 64 << 20  # bytes of ELF notes held in memory at most
SCAN = 4 << 20  # bytes of the 1st bitmap looked at a time on open


class KdumpSource(Source):
    """A kdump-compressed file served as an ELF core (`view`), `pages` its pages."""

    spliced = False
    excludes = True

    def __init__(self, path: str, fd: int, file: KdumpBytes, pages: Pages, view: ElfView,
                 metadata: bytes, sub: SubHeader) -> None:
        ps = pages.page_size
        segments = [Segment(load.first_pfn * ps, load.offset, load.pages * ps,
                            load.pages * ps) for load in view.loads]
        super().__init__("kdump", path, fd, view.size, ps, segments)
        self.pages = pages
        self.dump_level = sub.dump_level
        self._view = view
        self._metadata = metadata  # the view's bytes before its first page
        self._starts = [load.offset for load in view.loads]
        form = (f"a flattened kdump-compressed file ({file.records} records indexed)"
                if file.records else "a kdump-compressed file")
        self.read_path_why = f"{form}: pages decompressed as they are read, no sendfile"

    def holes(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """None: the pages the dump has no data for are `excluded`."""
        return []

    def excluded(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The view bytes of `[lo, hi)` in pages the dump left out, as sorted ranges."""
        ps, loads = self.page_size, self._view.loads
        out: list[tuple[int, int]] = []
        lo = max(lo, self._view.data)
        i = bisect_right(self._starts, lo) - 1
        while lo < hi and 0 <= i < len(loads) and loads[i].offset < hi:
            load = loads[i]
            a, b = max(lo, load.offset), min(hi, load.offset + load.pages * ps)
            first = load.first_pfn + (a - load.offset) // ps
            end = load.first_pfn + (b - 1 - load.offset) // ps + 1
            for start, stop in clear_runs(self.pages.runs(first, end), first, end):
                s = max(a, load.offset + (start - load.first_pfn) * ps)
                e = min(b, load.offset + (stop - load.first_pfn) * ps)
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((s, e))
            i += 1
        return out

    def copy_to(self, fd: int, offset: int, count: int) -> int:
        """Write up to `count` view bytes at `offset` to `fd`, decompressed (at most
        COPY_MAX a call; 0 at the end of the view)."""
        count = min(count, COPY_MAX, self.size - offset)
        if count <= 0:
            return 0
        buffer = memoryview(bytearray(count))
        self.read_into(offset, buffer)
        return os.write(fd, buffer)

    def read_cached_into(self, offset: int, view: memoryview) -> int:
        """All of `view` when it is small and what it needs is in the OS page cache,
        else 0 (the engine's workers read it)."""
        if len(view) > INLINE_MAX:
            return 0
        try:
            self._fill(offset, view, nowait=True)
        except WouldBlock:
            return 0
        return len(view)

    def read_into(self, offset: int, view: memoryview) -> None:
        self._fill(offset, view, nowait=False)

    def _fill(self, offset: int, view: memoryview, nowait: bool) -> None:
        end = offset + len(view)
        if end > self.size:
            raise ReadError(offset, len(view), f"past the end of the view ({self.size:#x})")
        pos = offset
        if pos < self._view.data:
            stop = min(end, self._view.data)
            view[: stop - pos] = self._metadata[pos:stop]
            pos = stop
        i = bisect_right(self._starts, pos) - 1
        while pos < end:  # the loads follow each other to the end of the view
            load = self._view.loads[i]
            stop = min(end, load.offset + load.pages * self.page_size)
            self._pages_into(i, pos, stop, view[pos - offset : stop - offset], nowait)
            pos = stop
            i += 1

    def _pages_into(self, index: int, lo: int, hi: int, out: memoryview, nowait: bool) -> None:
        """View bytes `[lo, hi)` of load `index` into `out`."""
        ps, load = self.page_size, self._view.loads[index]
        first = (lo - load.offset) // ps
        stop = (hi - 1 - load.offset) // ps + 1
        at = load.offset + first * ps
        whole = at == lo and load.offset + stop * ps == hi
        buffer = out if whole else memoryview(bytearray((stop - first) * ps))
        try:
            self.pages.read(load.first_pfn + first, stop - first, buffer, nowait)
        except BadPage as exc:
            page = load.offset + (exc.pfn - load.first_pfn) * ps
            raise ReadError(page, ps, f"{self.path}: {exc}") from None
        except OSError as exc:
            raise ReadError(at, (stop - first) * ps, exc.strerror or str(exc)) from exc
        if not whole:
            out[:] = buffer[lo - at : hi - at]


def _fail(path: str, why: str) -> NoReturn:
    raise StartupError(f"{path}: {why}")


def _headers(path: str, file: KdumpBytes) -> tuple[MainHeader, SubHeader, Layout]:
    """The headers of the dump, checked against each other and the file's size."""
    try:
        main = MainHeader.unpack(file.pread(0, MAIN_SIZE))
        if main.header_version > HEADER_VERSION:
            _fail(path, f"kdump-compressed header_version {main.header_version}: newer than "
                  f"the versions dumpd reads (1 to {HEADER_VERSION})")
        if file.size < main.block_size + SUB_SIZE:
            _fail(path, f"cut short: {file.size:#x} bytes, no room for the kdump sub header "
                  f"at {main.block_size:#x}")
        sub = SubHeader.unpack(file.pread(main.block_size, SUB_SIZE), main)
        layout = Layout.of(main, sub)
    except FormatError as exc:
        _fail(path, f"not a kdump-compressed dump dumpd reads: {exc}")
    if sub.split:
        _fail(path, "one part of a dump split with makedumpfile --split: join the parts "
              "first (makedumpfile --reassemble) and serve the result")
    if layout.descriptors > file.size:
        _fail(path, f"cut short: its bitmaps end at {layout.descriptors:#x}, past the end "
              f"of the file ({file.size:#x} bytes)")
    for what, offset, size, most in (("notes", sub.offset_note, sub.size_note, NOTES_MAX),
                                     ("VMCOREINFO", sub.offset_vmcoreinfo,
                                      sub.size_vmcoreinfo, VMCOREINFO_MAX)):
        if size > most:
            _fail(path, f"its {what} are {size:#x} bytes, more than {most:#x}")
        if size and (offset < 0 or offset + size > file.size):
            _fail(path, f"its {what} at {offset:#x}+{size:#x} run past the end of the file "
                  f"({file.size:#x} bytes)")
    for flag in (codecs.ZLIB, codecs.LZO, codecs.SNAPPY, codecs.ZSTD):
        if main.status & flag:
            try:
                codecs.by_flag(flag)
            except DumpdError as exc:
                _fail(path, f"its pages are compressed with {exc.message}")
    return main, sub, layout


def _memory(path: str, file: KdumpBytes, layout: Layout) -> Runs:
    """The runs of pfns of the 1st bitmap (the dump's memory), holes of the file not read."""
    runs: Runs = []
    size, base = -(-layout.max_mapnr // 8), layout.bitmap1
    pos = 0
    while pos < size:
        pos = max(pos, file.data_at(base + pos) - base)
        if pos >= size:
            break
        data = file.pread(base + pos, min(SCAN, size - pos))
        if not data:
            _fail(path, f"cannot read its 1st bitmap at {base + pos:#x}")
        try:
            for first, end in set_runs(data, 8 * pos, MAX_LOADS + 1):
                if runs and runs[-1][1] == first:
                    runs[-1] = (runs[-1][0], end)
                else:
                    runs.append((first, end))
            if len(runs) > MAX_LOADS:
                raise TooManyRuns
        except TooManyRuns:
            _fail(path, f"its 1st bitmap has more than {MAX_LOADS} runs of memory, more than "
                  "an ELF core's program headers hold")
        pos += len(data)
    runs = [(first, min(end, layout.max_mapnr)) for first, end in runs
            if first < layout.max_mapnr]
    if not runs:
        _fail(path, "its 1st bitmap is empty: the dump holds no memory")
    return runs


def open_kdump(path: str, fd: int, file_size: int, flattened: bool) -> KdumpSource:
    """Serve the kdump-compressed file (or its flattened form) open on `fd`, of
    `file_size` bytes; on failure the caller still owns `fd`."""
    try:
        file: KdumpBytes = (FlatFile(path, fd, file_size) if flattened
                            else PlainFile(fd, file_size))
        if flattened and file.pread(0, len(ELF_MAGIC)) == ELF_MAGIC:
            _fail(path, "a flattened ELF core (makedumpfile -E -F output): rearrange it "
                  f"(makedumpfile -R OUTPUT < {path}) and serve OUTPUT")
        main, sub, layout = _headers(path, file)
        notes = file.pread(sub.offset_note, sub.size_note) if sub.size_note else b""
        info = (file.pread(sub.offset_vmcoreinfo, sub.size_vmcoreinfo)
                if sub.size_vmcoreinfo else b"")
        runs = _memory(path, file, layout)
    except OSError as exc:
        _fail(path, f"cannot read: {exc.strerror or exc}")
    text = vmcoreinfo_text(info) if info else None
    said = parse_lines(text).get("PAGESIZE", str(main.block_size)) if text else ""
    if said and said != str(main.block_size):
        _fail(path, f"its VMCOREINFO says PAGESIZE={said}, its header block_size "
              f"{main.block_size}")
    if info and b"VMCOREINFO" not in note_names(notes):
        notes += note(b"VMCOREINFO", 0, info)  # so that tools reading the view find it
    machine_name = main.utsname[4].decode("ascii", "replace")
    machine = MACHINES.get(machine_name, 0)
    view = elf_view(main.block_size, machine, runs, len(notes))
    metadata = view.header.ljust(view.notes, b"\0") + notes
    source = KdumpSource(path, fd, file, Pages(file, layout, bool(main.status & INCOMPLETE)),
                         view, metadata.ljust(view.data, b"\0"), sub)
    source.arch = ARCHES.get(machine, "") or machine_name
    if text is not None:
        source.vmcoreinfo_text, source.vmcoreinfo_from = text, "the kdump-compressed file"
    return source

