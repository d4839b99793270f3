"""A bounded LRU of file pages (page index -> bytes)."""

from __future__ import annotations

from collections import OrderedDict


class PageCache:
    """Holds at most `capacity` pages; the least recently used goes first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pages: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    def holds_any(self, indices: range) -> bool:
        """Whether any page of `indices` is cached (at C speed, without touching the LRU)."""
        return any(map(self._pages.__contains__, indices))

    def get(self, index: int) -> bytes | None:
        page = self._pages.get(index)
        if page is not None:
            self._pages.move_to_end(index)
        return page

    def put(self, index: int, page: bytes) -> None:
        if self.capacity <= 0:
            return
        pages = self._pages
        if index in pages:
            pages.move_to_end(index)
        pages[index] = page
        if len(pages) > self.capacity:
            pages.popitem(last=False)
