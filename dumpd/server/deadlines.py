"""The idle and send deadlines of one connection, on one timer of an injected clock.

Design rules:
- One timer per connection checks both deadlines when it fires; activity (bytes
  in, a request finished) only records a time, it never re-arms a timer that is
  due sooner anyway.
- A connection with nothing running, nothing left to write and nothing received
  for `idle_timeout` is idle. One whose output has not moved for `send_timeout`
  is stalled; the timer of a busy connection looks every `check_period` (a quarter
  of the send timeout), so a stall is caught within 1.5x of it.
- Timers may fire a hair early (uvloop counts whole milliseconds): a timer that
  fires acts as if its due time had come.
- Time is read from a `Clock`: the running loop in the server, a fake one in tests.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the deadlines need of time: `asyncio.AbstractEventLoop` has both."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer: ...


class LoopClock:
    """The running event loop's clock (`loop.time`, `loop.call_at`)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        return self._loop.call_at(when, callback)


class Watched(Protocol):
    """What the deadlines look at and act on: a connection."""

    @property
    def busy(self) -> bool:
        """Requests are running, waiting to run, or not yet decoded."""

    def output(self) -> tuple[int, int] | None:
        """(bytes handed to the transport, bytes it still holds); None once closing."""

    def idle_out(self) -> None: ...

    def send_timed_out(self) -> None: ...


class Deadlines:
    """The idle and send deadlines of one connection (timeouts in seconds, 0: never)."""

    def __init__(self, watched: Watched, clock: Clock, idle_timeout: float,
                 send_timeout: float) -> None:
        self._watched: Watched | None = watched  # None once closed (no cycle left behind)
        self._clock = clock
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        # How often the timer of a busy connection looks at it (0: never).
        self.check_period = send_timeout / 4 if send_timeout else idle_timeout
        self._timer: Timer | None = None
        self._timer_at = math.inf
        self._active_at = 0.0  # last time bytes came in or a request finished
        self._moved = -1  # bytes the transport had sent at the timer's last look (-1: none)
        self._stalled_at = 0.0  # when the timer last saw them move

    def opened(self) -> None:
        """The connection is served from now on."""
        self._active_at = self._clock.time()
        if self.idle_timeout:
            self._arm(self._active_at + self.idle_timeout)

    def received(self) -> None:
        """Bytes came in: work may start, so look within `check_period`."""
        self._active_at = now = self._clock.time()
        period = self.check_period
        if period and self._timer_at > now + period:
            self._arm(now + period)

    def finished(self) -> None:
        """A request finished."""
        self._active_at = self._clock.time()

    def close(self) -> None:
        """The connection is gone: no more looks at it."""
        self._watched = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._clock.call_at(when, self._tick)
        self._timer_at = when

    def _tick(self) -> None:
        """Abort the connection when its output has not moved for `send_timeout`, close
        it when idle for `idle_timeout`, else look again later."""
        due, self._timer, self._timer_at = self._timer_at, None, math.inf
        watched = self._watched
        output = None if watched is None else watched.output()
        if watched is None or output is None:
            return
        written, pending = output
        now = max(self._clock.time(), due)  # timers may fire a hair early (uvloop: ms)
        if pending and self.send_timeout:
            if self._stalled(now, written - pending):
                watched.send_timed_out()
            else:
                self._arm(now + self.check_period)
            return
        self._moved = -1
        if pending or watched.busy:
            self._arm(now + self.check_period)
        elif self.idle_timeout:
            deadline = self._active_at + self.idle_timeout
            if now >= deadline:
                watched.idle_out()
            else:
                self._arm(deadline)
        # else: nothing to watch until bytes come in (`received` arms the timer)

    def _stalled(self, now: float, moved: int) -> bool:
        """The transport has sent nothing for `send_timeout`, as far as the timer saw."""
        if moved != self._moved:
            self._moved, self._stalled_at = moved, now
            return False
        return now - self._stalled_at >= self.send_timeout
