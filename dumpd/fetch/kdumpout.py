"""Where a kdump copy's bytes go: the file at their offsets (`FileSink`), or into a pipe
as the flattened form's records, in the order a file gets them (`FlatSink`); and the
copy's 2nd bitmap read back as the pages are checked against it (`bitmap_in`).

Design rules:
- A sink takes `put(offset, data)`: bytes for that offset of the kdump file. A file
  keeps what it is not given as holes; a pipe gets one record per `put`, never one of
  no bytes (it would end `makedumpfile -R`'s reading).
- The 2nd bitmap is read back from the file itself, or, for a pipe, from a temporary
  file that holds only it (as makedumpfile keeps its bitmaps): never whole in memory.
  Its empty parts are holes and are never read (SEEK_DATA).
"""

from __future__ import annotations

import errno
import os
import tempfile

from dumpd.client.pieces import SinkError
from dumpd.fetch.output import Output, pwrite_all
from dumpd.kdump.bitmap import Rank
from dumpd.kdump.format import FLAT_END_RECORD, flat_header, flat_record
from dumpd.kdump.writer import Plan


class FileSink:
    """The kdump file itself: bytes at their offsets; the 2nd bitmap read back from it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def put(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        pwrite_all(self.fd, data, offset)

    def keep_bits(self, offset: int, data: bytes) -> None:
        """A block of the 2nd bitmap at `offset` of it: in the file already."""

    def bits(self, base: int, plan: Plan) -> Rank:
        return bitmap_in(self.fd, base, plan)

    def close(self) -> None:
        """The file is the output's to close."""


class FlatSink:
    """The flattened form into a pipe: a record per `put`, the 2nd bitmap kept aside."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self._aside, path = tempfile.mkstemp(prefix="dumpd-bitmap-")
        os.unlink(path)  # gone when closed, whatever happens

    def begin(self) -> None:
        """The flattened form's header, first."""
        self.out.write(flat_header())

    def put(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if len(data):  # a record of no bytes would end makedumpfile -R's reading
            self.out.write(flat_record(offset, len(data)))
            self.out.write(data)

    def keep_bits(self, offset: int, data: bytes) -> None:
        try:
            os.pwrite(self._aside, data, offset)
        except OSError as exc:
            raise SinkError(exc.errno, exc.strerror, "the 2nd bitmap's temporary file "
                            f"(in {tempfile.gettempdir()})") from exc

    def bits(self, base: int, plan: Plan) -> Rank:
        return bitmap_in(self._aside, 0, plan)

    def end(self) -> None:
        self.out.write(FLAT_END_RECORD)

    def close(self) -> None:
        os.close(self._aside)


def bitmap_in(fd: int, base: int, plan: Plan) -> Rank:
    """The 2nd bitmap at `base` of the file `fd` (its holes, the bitmap's empty parts,
    never read)."""
    size = plan.layout.bitmap_size

    def skip(offset: int) -> int:
        try:
            return min(size, os.lseek(fd, base + offset, os.SEEK_DATA) - base)
        except OSError as exc:
            return size if exc.errno == errno.ENXIO else offset  # ENXIO: no data after

    return Rank(lambda offset, length: os.pread(fd, length, base + offset), plan.max_mapnr,
                plan.page_size, skip)
