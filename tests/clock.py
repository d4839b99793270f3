"""A clock the test moves by hand, for the servers' idle and send deadlines
(`dumpd.server.deadlines.Clock`): time stands still until `advance_to`, which runs
the timers due by then, in order, each at its own time."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """`time()` is `now` (read from any thread); `call_at` timers run on the caller of
    `advance_to`, the event loop's thread."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()
        self.fired: list[float] = []  # the time of each timer that ran, in order
        self.reads = 0  # `time()` calls
        self.off_loop_reads = 0  # `time()` calls from other threads (a sendfile worker's)
        self._loop_thread = threading.get_ident()

    def time(self) -> float:
        self.reads += 1
        if threading.get_ident() != self._loop_thread:
            self.off_loop_reads += 1
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def advance_to(self, when: float, early: float = 0.0) -> None:
        """Move time to `when`, running every timer due by then at its own time; with
        `early`, timers fire that much before they are due, as uvloop's may (it counts
        whole milliseconds)."""
        for _ in range(100_000):  # a timer that re-arms itself at once fails, not hangs
            if not (self._timers and self._timers[0][0] - early <= when):
                break
            due, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = max(self.now, due - early)
                self.fired.append(self.now)
                timer.callback()
        else:
            raise AssertionError(f"timers keep firing before {when}")
        self.now = max(self.now, when)
