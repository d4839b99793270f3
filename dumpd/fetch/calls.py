"""The server calls fetch's steps make, as a type: the blocking `Client` has them, and so
has `LoopClient` (`dumpd.fetch.loopclient`), which makes them on an `AsyncClient` from
a worker thread; so the planning, the bitmaps, the record's reasons and verify are
written once for `dumpd fetch` and the asyncio fetch."""

from __future__ import annotations

from typing import Any, Protocol


class Calls(Protocol):
    """A connection to dumpd that answers one call at a time, blocking."""

    @property
    def over_network(self) -> bool: ...

    def info(self) -> dict[str, Any]: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def read_virt(self, vaddr: int, length: int) -> bytes: ...

    def vmcoreinfo(self) -> str: ...

    def extents(self, offset: int, length: int) -> list[tuple[int, int, str]]: ...

    def digest(self, offset: int, length: int, algorithm: str = "sha256"
               ) -> dict[str, Any]: ...

    def hook_explain(self, first_pfn: int, count: int) -> dict[str, Any]: ...

    def fetch_verified(self, fetch_id: str, sha256: str) -> dict[str, Any]: ...
