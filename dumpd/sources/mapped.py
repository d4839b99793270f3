"""Reading a source through a bounded set of read-only mmap windows.

Why: /proc/vmcore's `read()` copies page by page through a temporary mapping of each
old-memory page; its `mmap` (Linux 3.11 on) maps the old memory once and a copy out of
the mapping runs at memory speed, about ten times faster. makedumpfile reads the same way.

Design rules:
- Windows are `window` bytes, aligned to their size, and at most `count` are mapped at
  once (least recently used unmapped first): the kernel builds page tables for a whole
  window when it is mapped, so one mapping of a 1 TiB dump would cost 2 GiB of them.
- A window may span pages the hook calls non-RAM: mapping touches no page, and only
  the bytes asked for are ever copied out (`piece`). The engine asks only for RAM
  pages, so a non-RAM page is never touched through a mapping either. (The kernel's
  own /proc/vmcore mmap maps such pages to the zero page where its hook says so.)
- Mapping a window is not free (the kernel builds its page tables: under TCG about
  5 ms for 4 MiB), so a small read whose window is not mapped is read with pread
  instead (`SMALL_READ`); runs of reads, streams and digests map windows.
- Copies out of a mapping never block (old memory is not paged), so the engine does
  them inline; a worker thread would only hold the GIL for the same memcpy.
- Windows are shared by the event loop and the threads that send streams; a window
  in use is never unmapped, and a thread that finds every window in use waits the
  moment it takes one holder to finish its copy (holders never wait while holding).
- Only for files that cannot shrink (/proc/vmcore, devices): a regular file cut short
  while mapped kills the process with SIGBUS on the next touch of the lost pages.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

MiB = 1 << 20
SMALL_READ = 64 * 1024  # a read this small maps no window (pread is cheaper than a map)


class MapFailed(OSError):
    """A window could not be mapped (/proc/vmcore answers EAGAIN for any remap failure):
    the caller reads those bytes another way."""


class _Window:
    __slots__ = ("length", "map", "start", "users", "view")

    def __init__(self, fd: int, start: int, length: int) -> None:
        self.map = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=start)
        self.view = memoryview(self.map)
        self.start = start
        self.length = length
        self.users = 0

    def unmap(self) -> None:
        self.view.release()
        self.map.close()


class Windows:
    """At most `count` read-only mappings of `window` bytes each over `fd`'s first
    `size` bytes; thread-safe."""

    def __init__(self, fd: int, size: int, window: int, count: int) -> None:
        if window <= 0 or window % mmap.ALLOCATIONGRANULARITY or count <= 0:
            raise ValueError(f"window {window} must be a positive multiple of "
                             f"{mmap.ALLOCATIONGRANULARITY} and count {count} positive")
        self._fd = fd
        self.size = size
        self.window = window
        self.count = count
        self._mapped: OrderedDict[int, _Window] = OrderedDict()  # by index, LRU first
        self._changed = threading.Condition()
        self.maps_made = 0  # windows mapped so far (a window mapped again counts again)
        self.map_failures = 0  # windows the kernel would not map

    @property
    def mapped_bytes(self) -> int:
        """Bytes mapped now (at most `count * window`)."""
        with self._changed:
            return sum(w.length for w in self._mapped.values())

    @contextmanager
    def piece(self, offset: int, count: int) -> Iterator[memoryview]:
        """The file bytes `[offset, offset + n)` as a view of a mapping, n the most of
        `count` that one window holds (to its end or the file's); valid inside the
        `with` only. MapFailed when the window cannot be mapped."""
        if not 0 <= offset < self.size or count <= 0:
            raise ValueError(f"piece {offset:#x}+{count:#x} is outside [0, {self.size:#x})")
        win = self._acquire(offset // self.window)
        try:
            lo = offset - win.start
            with win.view[lo : lo + min(count, win.length - lo)] as view:
                yield view
        finally:
            with self._changed:
                win.users -= 1
                self._changed.notify()

    def _acquire(self, index: int) -> _Window:
        with self._changed:
            while True:
                win = self._mapped.get(index)
                if win is not None:
                    self._mapped.move_to_end(index)
                    win.users += 1
                    return win
                if len(self._mapped) < self.count or self._evict_one():
                    break
                self._changed.wait()
            start = index * self.window
            try:
                win = _Window(self._fd, start, min(self.window, self.size - start))
            except OSError as exc:
                self.map_failures += 1
                raise MapFailed(exc.errno, f"mmap of {start:#x}+{self.window:#x}: "
                                f"{exc.strerror}") from exc
            self.maps_made += 1
            win.users = 1
            self._mapped[index] = win
            return win

    def _evict_one(self) -> bool:
        """Unmap the least recently used window nobody holds; False if all are held."""
        for index, win in self._mapped.items():
            if win.users == 0:
                del self._mapped[index]
                win.unmap()
                return True
        return False

    def holds(self, offset: int) -> bool:
        """Whether the window of `offset` is mapped now."""
        with self._changed:
            return offset // self.window in self._mapped

    def copy_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the file bytes from `offset` (one memcpy per window)."""
        done, want = 0, len(view)
        while done < want:
            with self.piece(offset + done, want - done) as src:
                n = len(src)
                view[done : done + n] = src
            done += n

    def write_to(self, fd: int, offset: int, count: int) -> int:
        """`os.write` to `fd` of up to `count` file bytes from `offset` (at most one
        window's worth) straight from the mapping; the bytes written."""
        with self.piece(offset, count) as src:
            return os.write(fd, src)

    def close(self) -> None:
        with self._changed:
            for win in self._mapped.values():
                win.unmap()
            self._mapped.clear()


def procfs_device() -> int | None:
    """The st_dev of /proc (where /proc/vmcore lives), None without one."""
    try:
        return os.stat("/proc").st_dev
    except OSError:
        return None
