"""Budgets of reply bytes: one per connection, so a client that asks without reading
cannot make the server hold more than its budget in replies, and one for the whole
server, so many connections together cannot either."""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    """An asyncio semaphore counted in bytes; waiters are served in arrival order.
    `peak` is the most ever held at once, `waits` the acquisitions that had to wait."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.available = capacity
        self.peak = 0
        self.waits = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def held(self) -> int:
        return self.capacity - self.available

    async def acquire(self, amount: int) -> None:
        amount = min(amount, self.capacity)
        if not self._waiters and amount <= self.available:
            self._take(amount)
            return
        self.waits += 1
        future = asyncio.get_running_loop().create_future()
        entry = (amount, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()  # a smaller waiter behind this one may fit now
            elif future.done() and not future.cancelled():
                self.release(amount)
            raise

    def release(self, amount: int) -> None:
        self.available += min(amount, self.capacity)
        self._wake()

    def _take(self, amount: int) -> None:
        self.available -= amount
        self.peak = max(self.peak, self.capacity - self.available)

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.available:
            amount, future = self._waiters.popleft()
            if not future.done():
                self._take(amount)
                future.set_result(None)
