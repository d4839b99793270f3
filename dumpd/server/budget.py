"""A per-connection budget of reply bytes, so a client that asks without reading
cannot make the server hold more than the budget in replies."""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    """An asyncio semaphore counted in bytes; waiters are served in arrival order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.available = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, amount: int) -> None:
        amount = min(amount, self.capacity)
        if not self._waiters and amount <= self.available:
            self.available -= amount
            return
        future = asyncio.get_running_loop().create_future()
        entry = (amount, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif future.done() and not future.cancelled():
                self.release(amount)
            raise

    def release(self, amount: int) -> None:
        self.available += min(amount, self.capacity)
        while self._waiters and self._waiters[0][0] <= self.available:
            amount, future = self._waiters.popleft()
            if not future.done():
                self.available -= amount
                future.set_result(None)
