"""A bounded LRU of file pages, kept in blocks: runs of pages in the buffer that holds them.

A flight's pages stay in the one buffer they were read into (one block), instead of a
copy per page: caching a 1 MiB read costs a few dict updates at C speed, not 256
allocations and copies. The LRU orders blocks; the least recently used block goes
first, whole, so the cache never pins a buffer it does not charge: `capacity` counts
every page of every block held, including pages of it that are not entered (failed).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

Data = bytes | memoryview


class Block:
    """`count` pages from page `first`, in `data` (`page_size` bytes each, the last
    possibly short). `whole`: every one of them is entered in the cache as this block's."""

    __slots__ = ("count", "data", "first", "whole")

    def __init__(self, first: int, count: int, data: Data, whole: bool) -> None:
        self.first = first
        self.count = count
        self.data = data
        self.whole = whole


class PageCache:
    """Holds at most `capacity` pages of `page_size` bytes, in blocks."""

    def __init__(self, capacity: int, page_size: int) -> None:
        self.capacity = capacity
        self.page_size = page_size
        self._blocks: OrderedDict[int, Block] = OrderedDict()  # by id(): the LRU order
        self._where: dict[int, Block] = {}  # page index -> the block holding it
        self._held = 0  # pages of the blocks held

    def __len__(self) -> int:
        return len(self._where)

    def holds_any(self, indices: range) -> bool:
        """Whether any page of `indices` is cached (at C speed, without touching the LRU)."""
        return any(map(self._where.__contains__, indices))

    def get(self, index: int) -> Data | None:
        """Page `index`, or None."""
        found = self.run(index, index + 1)
        return None if found is None else found[0]

    def run(self, index: int, stop: int) -> tuple[Data, int] | None:
        """The cached pages from `index` on, up to `stop`, that one block holds: their
        bytes (the block's own object when that is all of it) and how many; None when
        page `index` is not cached."""
        block = self._where.get(index)
        if block is None:
            return None
        self._blocks.move_to_end(id(block))
        end = min(stop, block.first + block.count)
        if not block.whole:
            where, end, last = self._where, index + 1, end
            while end < last and where.get(end) is block:
                end += 1
        ps = self.page_size
        if index == block.first and end == block.first + block.count:
            return block.data, end - index
        lo = (index - block.first) * ps
        return block.data[lo : lo + (end - index) * ps], end - index

    def put(self, index: int, page: Data) -> None:
        """Cache one page."""
        self.put_block(index, 1, page)

    def put_block(self, first: int, count: int, data: Data, skip: Iterable[int] = ()) -> None:
        """Cache pages `[first, first + count)` held in `data`, but those in `skip`."""
        if self.capacity < count:
            return
        skip = tuple(skip)
        block = Block(first, count, data, not skip)
        where = self._where
        pages = range(first, first + count)
        if any(map(where.__contains__, pages)):  # pages of older blocks: now this one's
            for index in pages:
                older = where.get(index)
                if older is not None:
                    older.whole = False
        where.update(dict.fromkeys(pages, block))
        for index in skip:
            del where[index]
        self._blocks[id(block)] = block
        self._held += count
        while self._held > self.capacity:
            self._drop(self._blocks.popitem(last=False)[1])

    def _drop(self, block: Block) -> None:
        where = self._where
        pages = range(block.first, block.first + block.count)
        if block.whole:  # every page is this block's: deleted at C speed
            deque(map(where.__delitem__, pages), maxlen=0)
        else:
            for index in pages:
                if where.get(index) is block:
                    del where[index]
        self._held -= block.count
