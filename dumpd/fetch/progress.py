"""Progress of a fetch on stderr: one line rewritten in place on a terminal, a quiet
line per tenth otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW = 0.2  # seconds between redraws on a terminal


def size(n: float) -> str:
    """`n` bytes for people: 1.5 GiB, 300.0 MiB, 12 KiB, 512 B."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def rate(n: float, seconds: float) -> str:
    """`n` bytes in `seconds` for people: 2.31 GB/s, 3.2 MB/s, 12 kB/s."""
    per_s = n / seconds if seconds else 0.0
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6)):
        if per_s >= scale:
            return f"{per_s / scale:.{2 if scale == 1e9 else 1}f} {unit}"
    return f"{per_s / 1e3:.0f} kB/s"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts bytes as they are fetched and shows where the copy stands."""

    def __init__(self, total: int, quiet: bool, out: TextIO | None = None) -> None:
        self.total = total
        self.data = self.holes = self.errors = 0
        self._quiet = quiet
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._started = time.monotonic()
        self._shown = 0.0
        self._tenth = 0

    @property
    def done(self) -> int:
        return self.data + self.holes + self.errors

    def add(self, data: int = 0, holes: int = 0, errors: int = 0) -> None:
        self.data += data
        self.holes += holes
        self.errors += errors
        if self._quiet:
            return
        if self._tty:
            now = time.monotonic()
            if now - self._shown >= REDRAW:
                self._shown = now
                self._out.write(f"\r\x1b[K{self.line()}")
                self._out.flush()
        elif self.total and self.done * 10 // self.total > self._tenth:
            self._tenth = self.done * 10 // self.total
            self._out.write(f"{self.line()}\n")
            self._out.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        per_s = self.done / elapsed
        percent = 100 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / per_s if per_s else 0.0
        return (f"fetch: {size(self.done)} of {size(self.total)} ({percent:.0f}%), holes "
                f"{size(self.holes)}, {rate(self.done, elapsed)}, ETA {duration(eta)}")

    def finish(self) -> float:
        """Clear the terminal line; the seconds since the start."""
        if self._tty and not self._quiet:
            self._out.write("\r\x1b[K")
            self._out.flush()
        return time.monotonic() - self._started
