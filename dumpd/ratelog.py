"""Logging that does not flood: one line per kind of event per interval."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Logs the first event of each `key`, then at most one line per `interval` seconds
    saying how many similar events were suppressed in between."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str) -> None:
        self.log(logging.WARNING, key, message)

    def debug(self, key: str, message: str) -> None:
        self.log(logging.DEBUG, key, message)

    def log(self, level: int, key: str, message: str) -> None:
        """`message` at `level`, unless a line of `key` went out less than `interval` ago
        (then it is counted for the next one). Nothing is done when `level` is off."""
        if not self._logger.isEnabledFor(level):
            return
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} similar suppressed)"
        self._logger.log(level, "%s", message)
