"""When the server ends by itself: `done`, verified fetches, idle, a deadline.

Design rules:
- Two ways to end. *Drain* (`done --now`, `finish.deadline`): as on SIGTERM, running
  requests and streams get `server.shutdown_timeout`, then what is left is closed.
  *Wait* (`done`, the last of `finish.fetches` verified fetches): each new connection
  is refused with `ESHUTDOWN`, the open ones are served as before, streams included,
  until their clients close them; then the server stops. So a running fetch is never
  cut: neither its next stream (a retry of a failed range, then the rest) nor its
  `--verify`, which come one after another on its connection.
- Idle (`finish.idle_timeout`) counts only while no connection is open, from the
  moment the last one closed; a connection that is served stops the count, a refused
  one does not. It is not armed before the first client came: what ends a server
  nobody came to is the deadline.
- A verified fetch counts when the sha256 its client reports equals the server's own
  digest of the whole view: the last one a `digest` request computed (that fetch's
  `--verify` made one just before; no second pass over the dump), if made under the
  hook generation and source mtime served now. Each fetch id counts once.
- Every time is read from the injected `Clock`. A timer that fires acts as if its time
  had come (uvloop's may fire up to a millisecond early).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dumpd.config import MAX_FETCHES, FinishConfig
from dumpd.errors import DumpdError
from dumpd.server.deadlines import Clock, Timer

log = logging.getLogger("dumpd.server")

View = tuple[int, int]
"""What a digest of the view holds for: (hook generation, source mtime_ns)."""


class Finish:
    """The finish conditions of one server, how far along they are, and the end.

    `stop(reason)` is called once, when the server is to stop now (shut down as on
    SIGTERM); the connection counts come from `opened` and `closed`."""

    def __init__(self, config: FinishConfig, stop: Callable[[str], None]) -> None:
        self.config = config
        self._stop = stop
        self._clock: Clock | None = None
        self._started = 0.0
        self._timers: dict[str, Timer] = {}
        self._open = 0
        self.reason: str | None = None  # why the server finishes, once it does
        self.stopping = False  # `stop` was called
        self.refusal: tuple[str, str] | None = None  # what a new connection gets
        self.fetch_ids: set[str] = set()
        self._digest: tuple[View, str] | None = None  # the last sha256 of the whole view

    def start(self, clock: Clock) -> None:
        """The server serves from now on: the deadline counts."""
        self._clock = clock
        self._started = clock.time()
        if self.config.deadline:
            self._arm("deadline", self.config.deadline, self._deadline)

    # -- connections ---------------------------------------------------------------------

    def opened(self, count: int) -> None:
        """A connection is served; `count` are open now."""
        self._open = count
        self._cancel("idle")

    def closed(self, count: int) -> None:
        """A served connection closed; `count` are left."""
        self._open = count
        if count or self.stopping:
            return
        if self.reason is not None:  # waiting for the last connection: it is gone
            self._end()
        elif self.config.idle_timeout:
            self._arm("idle", self.config.idle_timeout, self._idle)

    # -- the conditions ------------------------------------------------------------------

    def done(self, who: str, now: bool) -> dict[str, Any]:
        """The `done` method: finish when the open connections are closed, or `now`."""
        self._begin(f"done{' --now' if now else ''}, asked by {who}", drain=now)
        return {"reason": self.reason, "stopping": self.stopping, "connections": self._open}

    def digested(self, view: View, whole: bool, algorithm: str, value: str) -> None:
        """A `digest` request was answered; `whole`: it covered the whole view."""
        if whole and algorithm == "sha256":
            self._digest = (view, value)

    def verified(self, fetch_id: str, sha256: str, view: View, who: str) -> dict[str, Any]:
        """The `fetch.verified` method: count fetch `fetch_id` if `sha256` is the server's
        digest of the whole view as served now; EINVAL when it is not."""
        if self._digest is None or self._digest[0] != view:
            raise DumpdError("EINVAL", "no sha256 digest of the whole view as served now "
                             "was asked: digest [0, size, \"sha256\"] first (fetch --verify "
                             "does), then report it")
        if sha256 != self._digest[1]:
            raise DumpdError("EINVAL", f"sha256 {sha256} is not the server's digest of the "
                             "whole view: the copy differs (not counted)")
        counted = fetch_id not in self.fetch_ids and len(self.fetch_ids) < MAX_FETCHES
        needed = self.config.fetches
        if counted:
            self.fetch_ids.add(fetch_id)
            of = f" of {needed}" if needed else ""
            log.info("verified fetch %d%s of the whole view: %s, by %s", len(self.fetch_ids),
                     of, fetch_id, who)
            if needed and len(self.fetch_ids) >= needed:
                self._begin(f"{needed} verified fetches of the whole view "
                            f"(finish.fetches = {needed})", drain=False)
        return {"counted": counted, "fetches": len(self.fetch_ids), "needed": needed}

    def status(self) -> dict[str, Any]:
        """What `info` shows: each condition (0: off) and how far along it is."""
        cfg = self.config
        left = None
        if cfg.deadline and self._clock is not None:
            left = round(max(0.0, self._started + cfg.deadline - self._clock.time()), 3)
        return {"fetches": cfg.fetches, "verified_fetches": len(self.fetch_ids),
                "idle_timeout": cfg.idle_timeout, "deadline": cfg.deadline,
                "deadline_left": left, "finishing": self.reason}

    def _idle(self) -> None:
        if not self._open and self.reason is None:
            self._begin(f"idle: no client for {self.config.idle_timeout:g} s "
                        "(finish.idle_timeout)", drain=False)

    def _deadline(self) -> None:
        self._begin(f"deadline: {self.config.deadline:g} s after start (finish.deadline)",
                    drain=True)

    # -- the end ---------------------------------------------------------------------------

    def _begin(self, reason: str, drain: bool) -> None:
        """Finish for `reason`: wait for the open connections, or (`drain`) stop now. A
        wait already begun keeps its reason unless this one drains."""
        if self.stopping or (self.reason is not None and not drain):
            return
        self.reason = reason
        self.refusal = ("ESHUTDOWN", f"the server is finishing ({reason}): it serves no "
                        "new connection")
        self._cancel("idle")
        if drain or not self._open:
            self._end()
        else:
            log.info("finishing: %s; serving the %d open connections until they close",
                     reason, self._open)

    def halt(self) -> None:
        """The server stops (a signal, or the end): no condition fires from now on. So a
        wait cut short by SIGTERM, or the deadline falling in its drain, is no finish."""
        self.stopping = True
        for name in list(self._timers):
            self._cancel(name)

    def _end(self) -> None:
        self.halt()
        assert self.reason is not None
        self._stop(self.reason)

    def _arm(self, name: str, seconds: float, callback: Callable[[], None]) -> None:
        """Call `callback` `seconds` from now (replacing the timer `name`)."""
        assert self._clock is not None  # connections and the deadline come after start
        self._cancel(name)

        def fire() -> None:
            self._timers.pop(name, None)
            callback()

        self._timers[name] = self._clock.call_at(self._clock.time() + seconds, fire)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
