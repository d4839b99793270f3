"""The flattened form of a kdump-compressed file (`makedumpfile -F`), indexed on open
and read in place.

Indexed rather than refused: a dump sent through a pipe (`makedumpfile -F ... | ssh
host 'cat > vmcore.flat'`) is served where it landed, without writing all of it once
more with `makedumpfile -R` first.

Design rules:
- Open reads the heads of the records (`(offset, size)`, format.py), never their data,
  in 64 KiB reads from head to head. The index is compact arrays, never an object per
  record: the records' offsets in the kdump file sorted (8 bytes each), their order (4),
  where each one's data is in this file (8): 20 bytes a record, at most `MAX_RECORDS`
  of them (40 MiB). makedumpfile writes a record per 15 page descriptors and one per
  60 KiB of page data, so that is about 30 million dumped pages (120 GiB of 4 KiB
  pages); a larger file is refused, saying to run `makedumpfile -R` first.
- Sorting never holds a Python object per record either: records are dealt, in the
  order they come, into at most `MAX_LANES` lanes whose offsets rise (makedumpfile
  writes two: headers, bitmaps and descriptors; page data), then merged. Records that
  need more lanes, or that overlap (`makedumpfile -R` would let the later win), are
  refused with the same advice; a file that ends before its end record is cut short.
- Bytes that no record holds read as zeros, as in the file `makedumpfile -R` writes
  (it seeks over them).
"""

from __future__ import annotations

import heapq
import os
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import NoReturn

from dumpd.errors import StartupError
from dumpd.kdump.format import FLAT_HEADER_SIZE, FLAT_RECORD, FormatError, check_flat_header
from dumpd.sources.kdumpfile import Reader

MAX_RECORDS = 1 << 21
MAX_LANES = 16
SCAN = 64 * 1024  # bytes read at a time while walking the heads
_HEAD = FLAT_RECORD.size


class FlatFile:
    """The kdump-compressed file a flattened one on `fd` stands for (`KdumpBytes`)."""

    def __init__(self, path: str, fd: int, file_size: int) -> None:
        self._path = path
        self._reader = Reader(fd, file_size)
        try:
            check_flat_header(os.pread(fd, FLAT_HEADER_SIZE, 0))
        except FormatError as exc:
            self._refuse(f"not a flattened kdump-compressed file: {exc}")
        starts, self._data = self._scan(fd, file_size)
        self.records = len(starts)
        self._order = array("I", self._sorted(starts))
        self._starts = array("q", (starts[i] for i in self._order))
        self.size = 0
        previous_end = 0
        for k, index in enumerate(self._order):
            start = self._starts[k]
            if start < previous_end:
                self._refuse(f"its records overlap at offset {start:#x} of the dump: "
                             f"rearrange it first (makedumpfile -R OUTPUT < {path}) and "
                             "serve OUTPUT")
            previous_end = start + self._size(index)
            self.size = max(self.size, previous_end)

    def _refuse(self, why: str) -> NoReturn:
        raise StartupError(f"{self._path}: {why}")

    def _scan(self, fd: int, file_size: int) -> tuple[array[int], array[int]]:
        """The records' offsets in the dump, and where their data is in this file (one
        more entry, after the end record), in the order they come."""
        starts, data = array("q"), array("q")
        pos, buffer, buffer_at = FLAT_HEADER_SIZE, b"", FLAT_HEADER_SIZE
        while True:
            if pos + _HEAD > buffer_at + len(buffer):
                buffer, buffer_at = os.pread(fd, SCAN, pos), pos
                if len(buffer) < _HEAD:
                    self._refuse(f"cut short: it ends at {file_size:#x}, before its end "
                                 f"record ({len(starts)} records)")
            offset, size = FLAT_RECORD.unpack_from(buffer, pos - buffer_at)
            if offset == size == -1:
                data.append(pos + _HEAD)  # as if a record began there: sizes come out right
                return starts, data
            if offset < 0 or size < 0:
                self._refuse(f"the record head at {pos:#x} says offset {offset}, size "
                             f"{size}: not a flattened record")
            if pos + _HEAD + size > file_size:
                self._refuse(f"cut short: the record at {pos:#x} ({size:#x} bytes) runs "
                             f"past the end of the file ({file_size:#x} bytes)")
            if len(starts) == MAX_RECORDS:
                self._refuse(f"more than {MAX_RECORDS} records, more than dumpd indexes: "
                             f"rearrange it first (makedumpfile -R OUTPUT < {self._path}) "
                             "and serve OUTPUT")
            starts.append(offset)
            data.append(pos + _HEAD)
            pos += _HEAD + size

    def _sorted(self, starts: array[int]) -> Iterator[int]:
        """The records' indexes by offset: dealt into rising lanes, then merged."""
        lanes: list[array[int]] = []
        lasts: list[int] = []  # each lane's last offset
        for index, start in enumerate(starts):
            best = -1
            for lane, last in enumerate(lasts):  # the lane whose last offset is nearest
                if last <= start and (best < 0 or last > lasts[best]):
                    best = lane
            if best < 0:
                if len(lanes) == MAX_LANES:
                    self._refuse(f"its records come in an order makedumpfile does not "
                                 f"write: rearrange it first (makedumpfile -R OUTPUT < "
                                 f"{self._path}) and serve OUTPUT")
                lanes.append(array("I"))
                lasts.append(start)
                best = len(lanes) - 1
            lanes[best].append(index)
            lasts[best] = start
        merged = heapq.merge(*[((starts[i], i) for i in lane) for lane in lanes])
        return (index for _, index in merged)

    def _size(self, index: int) -> int:
        return self._data[index + 1] - self._data[index] - _HEAD

    def pread(self, offset: int, length: int, nowait: bool = False) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        k = max(0, bisect_right(self._starts, offset) - 1)
        while k < len(self._starts) and self._starts[k] < end:
            index = self._order[k]
            start = self._starts[k]
            lo, hi = max(offset, start), min(end, start + self._size(index))
            if lo < hi:
                piece = self._reader.pread(self._data[index] + lo - start, hi - lo, nowait)
                out[lo - offset : lo - offset + len(piece)] = piece
                if len(piece) < hi - lo:  # the flattened file shrank
                    return bytes(out[: lo - offset + len(piece)])
            k += 1
        return bytes(out)

    def data_at(self, offset: int) -> int:
        k = bisect_right(self._starts, offset) - 1
        if k >= 0 and offset < self._starts[k] + self._size(self._order[k]):
            return offset
        return self._starts[k + 1] if k + 1 < len(self._starts) else self.size
