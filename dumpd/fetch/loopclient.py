"""`LoopClient`: fetch's blocking steps (`calls.Calls`) run on a worker thread against an
`AsyncClient`, each call made on the client's event loop and waited for in the thread.

Design rules:
- The steps that interleave a few calls with file work (the identity of the dump, the
  kdump plan and bitmaps, the record's reasons, verify reading the copy back) are the
  blocking fetch's own code, run unchanged off the loop; the loop goes on serving the
  client (and the program that embeds it) meanwhile.
- A call from the loop's own thread would wait for itself: it is refused.
- A step cancelled is waited for still (`off_loop`): it may be writing to files the
  cancel goes on to checkpoint and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Self, TypeVar

from dumpd.client.aio import AsyncClient

T = TypeVar("T")


class LoopClient:
    """`client`'s calls, blocking, for a thread other than that of `loop` (its loop)."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop

    def _wait(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            call.close()
            raise RuntimeError("LoopClient called on its event loop's thread: it would "
                               "wait for itself")
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    @property
    def over_network(self) -> bool:
        return self._client.over_network

    def info(self) -> dict[str, Any]:
        return self._wait(self._client.info())

    def read(self, offset: int, length: int) -> bytes:
        return self._wait(self._client.read(offset, length))

    def read_virt(self, vaddr: int, length: int) -> bytes:
        return self._wait(self._client.read_virt(vaddr, length))

    def vmcoreinfo(self) -> str:
        return self._wait(self._client.vmcoreinfo())

    def extents(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        return self._wait(self._client.extents(offset, length))

    def digest(self, offset: int, length: int, algorithm: str = "sha256") -> dict[str, Any]:
        return self._wait(self._client.digest(offset, length, algorithm))

    def hook_explain(self, first_pfn: int, count: int) -> dict[str, Any]:
        return self._wait(self._client.hook_explain(first_pfn, count))

    def fetch_verified(self, fetch_id: str, sha256: str) -> dict[str, Any]:
        return self._wait(self._client.fetch_verified(fetch_id, sha256))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """The connection is the caller's: left open."""


async def off_loop(executor: Executor | None, fn: Callable[..., T], *args: Any,
                   undo: Callable[[T], None] | None = None) -> T:
    """`fn(*args)` on a worker thread of `executor` (None: the loop's default). If the
    caller is cancelled meanwhile, the call is still waited for (it may be writing to
    the files the cancel then checkpoints and closes), `undo` given what it returned,
    and the cancel goes on."""
    future = asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            result = await future
            if undo is not None:
                undo(result)
        raise
