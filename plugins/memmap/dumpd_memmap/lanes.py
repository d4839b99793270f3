"""Many struct pages at once: one member of every page as one big integer, 64 bits a page.

The per-page tests (a flag bit, `_mapcount == value`, `private < n`) are then a few
integer operations over all the pages of a run, done in C by Python's big integers,
instead of a Python loop over the pages. A test's answer is a *mask*: bit 0 of each
page's 64-bit lane is 1 where the test holds; lanes never carry into one another,
because every sum below stays under 2**64 within its lane.
"""

from __future__ import annotations

from functools import lru_cache

LANE = 64


class Lanes:
    """Constants and tests for `count` lanes."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.ones = int.from_bytes(b"\x01\0\0\0\0\0\0\0" * count, "little")
        self.u32 = self.ones * 0xFFFF_FFFF
        self._repeated: dict[int, int] = {}

    def repeat(self, value: int) -> int:
        """`value` (< 2**64) in every lane (the few constants a layout uses, kept)."""
        found = self._repeated.get(value)
        if found is None:
            found = self._repeated[value] = self.ones * value
        return found

    def nonzero(self, lanes: int) -> int:
        """The mask of lanes that are not 0 (any 64-bit lane values)."""
        low = (lanes & self.u32) + self.u32  # bit 32 set iff the low half is not 0
        high = ((lanes >> 32) & self.u32) + self.u32
        return ((low | high) >> 32) & self.ones

    def bits(self, lanes: int, mask: int) -> int:
        """The mask of lanes with any bit of `mask` set (`(lane & mask) != 0`)."""
        if mask & (mask - 1) == 0:
            return (lanes >> (mask.bit_length() - 1)) & self.ones if mask else 0
        return self.nonzero(lanes & self.repeat(mask))

    def equal(self, lanes: int, value: int, width: int = 32) -> int:
        """The mask of lanes equal to `value`, for lanes below 2**width (width <= 32)."""
        fill = self.repeat((1 << width) - 1)
        differ = ((lanes ^ self.repeat(value)) + fill) >> width
        return (differ & self.ones) ^ self.ones

    def below(self, lanes: int, limit: int) -> int:
        """The mask of lanes below `limit` (0 < limit <= 2**32; 64-bit lanes)."""
        high = self.nonzero(lanes >> 32 & self.u32)
        at_least = ((lanes & self.u32) + self.repeat((1 << 32) - limit)) >> 32
        return self.ones ^ ((high | at_least) & self.ones)

    def low_bytes(self, lanes: int) -> bytes:
        """Each lane's low byte, one byte a lane."""
        return lanes.to_bytes(self.count * 8, "little")[::8]


@lru_cache(maxsize=8)
def lanes(count: int) -> Lanes:
    """The shared `Lanes` for `count` pages (runs mostly have a chunk's length)."""
    return Lanes(count)


class Members:
    """The struct pages of consecutive pfns (`data`: `page_bytes` each) read as lanes."""

    def __init__(self, data: bytes, page_bytes: int) -> None:
        self.count = len(data) // page_bytes
        self.lanes = lanes(self.count)
        self.data = data
        self.words = memoryview(data).cast("Q")
        self.stride = page_bytes // 8

    def member(self, offset: int, width: int, next_page: bool = False) -> int:
        """Member `[offset, offset+width)` of every page (of the page after it, with
        `next_page`: the last page's next is 0). Members lie within one 8-byte word."""
        word = self.words[offset // 8::self.stride].tobytes()
        column = int.from_bytes(word, "little")
        if next_page:
            column >>= LANE
        shift = offset % 8 * 8
        if shift == 0 and width == 8:
            return column
        return (column >> shift) & self.lanes.repeat((1 << width * 8) - 1)

    def word(self, index: int, offset: int) -> int:
        """The 8-byte member at `offset` of page `index`."""
        return int(self.words[index * self.stride + offset // 8])

    def byte_member(self, index: int, offset: int, width: int) -> int:
        """The `width`-byte member at `offset` of page `index` (0 past the last page)."""
        if index >= self.count:
            return 0
        start = index * self.stride * 8 + offset
        return int.from_bytes(self.data[start:start + width], "little")
