"""What every source of oldmem offers the engine.

Design rules:
- A source is a read-only *file view*: `size` bytes, read positionally, never written.
- `file_map` says which file bytes hold physical memory (and from which address);
  it is sorted, non-overlapping and covers `[0, size)` exactly. Bytes with
  `paddr is None` (ELF headers, notes, padding) are served as they are, with no verdict.
- Where PT_LOADs overlap, the first one in program-header order wins, for file
  offsets and physical addresses alike (as the kernel's vmcore list does).
- A source whose view is not its file's bytes (a kdump-compressed file's) is not
  `spliced`: nothing is sent or mapped from its descriptor as it is. A source may
  know pages it has no data for (`excludes`: a kdump file's pages left out), which
  the engine never reads and sends as holes.
- Sources know nothing of hooks, caches or sockets; `read_into` blocks and is
  called from worker threads, unless the source reads through mmap windows
  (`map_windows`, sources/mapped.py): then every read is a copy out of a mapping
  that never blocks (`never_blocks`), and is done inline.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import stat
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from dumpd.errors import DumpdError
from dumpd.sources.mapped import SMALL_READ, MapFailed, Windows

log = logging.getLogger("dumpd.source")

COPY_MAX = 256 * 1024  # bytes read at a time where a file cannot be spliced
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


@dataclass(frozen=True, slots=True)
class Segment:
    """One PT_LOAD: physical `[paddr, paddr+memsz)`, of which `filesz` bytes are in the file."""

    paddr: int
    file_offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True, slots=True)
class MappedRun:
    """File bytes `[file_start, file_end)` hold memory from `paddr` on (None: not memory)."""

    file_start: int
    file_end: int
    paddr: int | None


@dataclass(frozen=True, slots=True)
class PhysPiece:
    """Part of a physical range: `length` bytes at `file_offset` (None: beyond p_filesz, zeros)."""

    length: int
    file_offset: int | None


@dataclass(frozen=True, slots=True)
class PhysRun:
    """Physical `[start, end)` is served from `file_offset` on (None: zeros past p_filesz)."""

    start: int
    end: int
    file_offset: int | None


def first_wins(segments: Sequence[Segment], key: str) -> list[tuple[int, int, Segment]]:
    """Flatten the segments' `[start, end)` intervals (`key` "phys" or "file") by priority.

    Returns sorted, non-overlapping `(start, end, segment)` pieces in which every point
    belongs to the first segment, in program-header order, that contains it. A sweep
    with a heap of the open segments: O(n log n), as PN_XNUM files hold 65535+ PT_LOADs.
    """
    spans = []
    for index, seg in enumerate(segments):
        if key == "phys":
            start, end = seg.paddr, seg.paddr + seg.memsz
        else:
            start, end = seg.file_offset, seg.file_offset + seg.filesz
        if start < end:
            spans.append((start, end, index))
    spans.sort()
    points = sorted({p for start, end, _ in spans for p in (start, end)})
    open_spans: list[tuple[int, int]] = []  # (index, end), lowest index on top
    pieces: list[tuple[int, int, Segment]] = []
    j = 0
    for here, there in pairwise(points):
        while j < len(spans) and spans[j][0] <= here:
            heapq.heappush(open_spans, (spans[j][2], spans[j][1]))
            j += 1
        while open_spans and open_spans[0][1] <= here:
            heapq.heappop(open_spans)
        if not open_spans:
            continue
        owner = segments[open_spans[0][0]]
        if pieces and pieces[-1][1] == here and pieces[-1][2] is owner:
            pieces[-1] = (pieces[-1][0], there, owner)
        else:
            pieces.append((here, there, owner))
    return pieces


def build_phys_map(segments: Sequence[Segment]) -> tuple[PhysRun, ...]:
    """Physical address -> file offset, first PT_LOAD in program-header order winning."""
    out: list[PhysRun] = []
    for start, end, seg in first_wins(segments, "phys"):
        in_file_end = max(start, min(end, seg.paddr + seg.filesz))
        if start < in_file_end:
            out.append(PhysRun(start, in_file_end, seg.file_offset + (start - seg.paddr)))
        if in_file_end < end:
            out.append(PhysRun(in_file_end, end, None))
    return tuple(out)


def build_file_map(segments: Sequence[Segment], size: int) -> tuple[MappedRun, ...]:
    """File offset -> physical address over `[0, size)`, first PT_LOAD winning."""
    out: list[MappedRun] = []
    pos = 0
    for start, end, seg in first_wins(segments, "file"):
        if pos < start:
            out.append(MappedRun(pos, start, None))
        out.append(MappedRun(start, end, seg.paddr + (start - seg.file_offset)))
        pos = end
    if pos < size:
        out.append(MappedRun(pos, size, None))
    return tuple(out)


class ReadError(DumpdError):
    """EIO: the source could not read `length` bytes at file offset `offset`; `reason`
    says why (the OS's words), so the engine can name a wider or narrower range."""

    def __init__(self, offset: int, length: int, reason: str) -> None:
        super().__init__("EIO", f"source read failed at {offset:#x}+{length:#x}: {reason}")
        self.offset = offset
        self.length = length
        self.reason = reason


class Source:
    """A positional reader over one open file descriptor (read-only)."""

    spliced = True  # the view's bytes are the file's: `copy_to` may send them from it
    excludes = False  # `excluded` may find pages the dump left out

    def __init__(
        self, kind: str, path: str, fd: int, size: int, page_size: int,
        segments: Sequence[Segment],
    ) -> None:
        self.kind = kind
        self.path = path
        self._fd = fd
        self.size = size
        self.page_size = page_size
        self.segments = tuple(segments)
        self.guess: str | None = None  # why `kind = "auto"` took it as raw, on no evidence
        self.file_map = build_file_map(self.segments, size)
        self.phys_map = build_phys_map(self.segments)
        self._phys_starts = [run.start for run in self.phys_map]
        # Regular files can be asked to answer from the page cache or not at all.
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self._nowait = hasattr(os, "RWF_NOWAIT") and regular
        self._seeks_holes = regular  # SEEK_HOLE can say where the file has no data
        self._splice = True  # `copy_to` may use sendfile (until the file system says no)
        self.windows: Windows | None = None  # reads go through these mappings when set
        self.read_path = "pread"  # how the bytes are read: "pread" or "mmap"
        self.read_path_why = "reads and sendfile"  # one line on why (for the log and info)
        self.vmcoreinfo_text: str | None = None  # the dead kernel's VMCOREINFO, if known
        self.vmcoreinfo_from = ""  # where it came from: "the ELF note", a file's path
        self.arch = ""  # the dead kernel's architecture ("x86_64"), "" when unknown

    def map_windows(self, window: int, count: int, why: str) -> bool:
        """Read through at most `count` mmap windows of `window` bytes from now on, if
        the file can be mapped (the first window is mapped to find out). False, with
        `read_path_why` saying why, when it cannot: reads stay as they were."""
        windows = Windows(self._fd, self.size, window, count)
        try:
            with windows.piece(0, 1):
                pass
        except (OSError, ValueError) as exc:  # ValueError: a file whose st_size is 0
            windows.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.read_path_why = f"mmap failed ({reason}), {why}: pread instead"
            return False
        self.windows = windows
        self.read_path = "mmap"
        self.read_path_why = f"{why}: mmap windows of {window // 1024} KiB, {count} at most"
        return True

    @property
    def never_blocks(self) -> bool:
        """Whether reads are copies out of mappings (no worker thread is worth a hop)."""
        return self.windows is not None

    def stat(self) -> os.stat_result:
        """`fstat` of the open source: which file it is (st_dev, st_ino, st_rdev) and
        whether it changed (st_mtime_ns), whatever path it is known by now."""
        return os.fstat(self._fd)

    def fileno(self) -> int:
        """The source's descriptor (file-view offsets are file offsets); it is only
        ever read from."""
        return self._fd

    def holes(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The `[start, end)` ranges of file bytes `[lo, hi)` the file holds no data for
        (a sparse file's holes: they read as zeros), as SEEK_DATA/SEEK_HOLE say;
        none where the file cannot say (devices, /proc/vmcore)."""
        found: list[tuple[int, int]] = []
        pos = lo
        while self._seeks_holes and pos < hi:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
                end = hi if data >= hi else os.lseek(self._fd, data, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                    self._seeks_holes = False  # this file system cannot say
                    return []
                data = end = hi
            if data > pos:
                found.append((pos, min(data, hi)))
            pos = end
        return found

    def excluded(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The sorted `[start, end)` ranges of view bytes `[lo, hi)` in pages the dump
        left out (zeros, never read): none here, only where `excludes`."""
        return []

    def copy_to(self, fd: int, offset: int, count: int) -> int:
        """Copy up to `count` file bytes at `offset` to `fd` (a non-blocking socket)
        without them passing through Python: `os.sendfile` from the source's own
        descriptor; where the file cannot be spliced, read and written instead.

        Returns the bytes copied (0: the file ends at `offset`). BlockingIOError when
        `fd` takes no more for now (nothing copied); other OSErrors from either end.
        Called from worker threads. Through mmap windows, the bytes are written from
        the mapping (at most one window's worth a call).
        """
        if self.windows is not None:
            try:
                return self.windows.write_to(fd, offset, count)
            except MapFailed as exc:
                self._map_failed(exc)  # these bytes go by sendfile instead
        if self._splice:
            try:
                return os.sendfile(fd, self._fd, offset, count)
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:
                    raise
                self._splice = False  # this file cannot be spliced: read and write
        data = os.pread(self._fd, min(count, COPY_MAX), offset)
        return os.write(fd, data) if data else 0

    def read_cached_into(self, offset: int, view: memoryview) -> int:
        """Read what the OS page cache already holds, never blocking (RWF_NOWAIT).

        Returns the bytes read: fewer than asked (down to 0) when the rest would need
        the disk, or always 0 where the file cannot say (devices, /proc/vmcore read
        with pread). Through mmap windows, all of it.
        """
        if self.windows is not None:
            self.read_into(offset, view)
            return len(view)
        if not self._nowait:
            return 0
        try:
            return os.preadv(self._fd, [view], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # this file system cannot: use the workers
                return 0
            raise ReadError(offset, len(view), exc.strerror or str(exc)) from exc

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with file bytes from `offset`; a short read is EIO (the file shrank)."""
        want = len(view)
        windows = self.windows
        if windows is not None and (want >= SMALL_READ or windows.holds(offset)):
            if offset + want > self.size:
                raise DumpdError("EIO", f"source ended early at {self.size:#x}")
            try:
                windows.copy_into(offset, view)
                return
            except MapFailed as exc:
                self._map_failed(exc)  # these bytes are read with pread instead
        self._pread_into(offset, view)

    def _pread_into(self, offset: int, view: memoryview) -> None:
        done = 0
        want = len(view)
        while done < want:
            try:
                n = os.preadv(self._fd, [view[done:]], offset + done)
            except OSError as exc:
                raise ReadError(offset + done, want - done, exc.strerror or str(exc)) from exc
            if n == 0:
                raise DumpdError(
                    "EIO", f"source ended early at {offset + done:#x} (file truncated?)"
                )
            done += n

    def phys_to_file(self, paddr: int, length: int) -> list[PhysPiece]:
        """Translate a physical range to file pieces, first PT_LOAD winning; ERANGE on gaps."""
        pieces: list[PhysPiece] = []
        pos, end = paddr, paddr + length
        i = bisect_right(self._phys_starts, pos) - 1
        while pos < end:
            run_ok = 0 <= i < len(self.phys_map) and self.phys_map[i].start <= pos
            if not run_ok or self.phys_map[i].end <= pos:
                raise DumpdError(
                    "ERANGE", f"physical address {pos:#x} is not in any segment"
                )
            run = self.phys_map[i]
            stop = min(end, run.end)
            offset = None if run.file_offset is None else run.file_offset + (pos - run.start)
            pieces.append(PhysPiece(stop - pos, offset))
            pos = stop
            i += 1
        return pieces

    def read_phys(self, paddr: int, length: int) -> bytes:
        """The dump's bytes at physical `[paddr, paddr+length)`, no hook asked (page
        tables and struct pages for `dumpd.kernel` and hooks); ERANGE outside the
        dump, EIO when the file cannot be read."""
        out = bytearray(length)
        view, at = memoryview(out), 0
        for piece in self.phys_to_file(paddr, length):
            if piece.file_offset is not None:
                self.read_into(piece.file_offset, view[at:at + piece.length])
            at += piece.length
        return bytes(out)

    def feed(self, offset: int, length: int, consume: Callable[[memoryview], object]) -> None:
        """Hand file bytes `[offset, offset+length)` to `consume` as views of the
        mappings, without copying them (digests). Only through mmap windows."""
        windows = self.windows
        if windows is None:
            raise ValueError("feed needs a source read through mmap windows")
        end = offset + length
        while offset < end:  # window by window: one that cannot be mapped is read
            stop = min(end, (offset // windows.window + 1) * windows.window)
            try:
                with windows.piece(offset, stop - offset) as view:
                    consume(view)
            except MapFailed as exc:  # raised before any of this window was consumed
                self._map_failed(exc)
                buffer = memoryview(bytearray(stop - offset))
                self._pread_into(offset, buffer)
                consume(buffer)
            offset = stop

    def _map_failed(self, exc: MapFailed) -> None:
        """Say once that a window could not be mapped; the bytes are read otherwise."""
        assert self.windows is not None
        if self.windows.map_failures == 1:
            log.warning("%s: %s; the bytes of a window that cannot be mapped are read "
                        "with pread (said once)", self.path, exc)

    def close(self) -> None:
        if self.windows is not None:
            self.windows.close()
            self.windows = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
