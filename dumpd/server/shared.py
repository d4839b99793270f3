"""What bounds one connection (`ConnectionLimits`) and what the connections of one
server share (`Shared`): the set of those served, the server-wide reply budget and
the counts of connections a limit refused or dropped."""

from __future__ import annotations

import itertools
import logging
import reprlib
from typing import Protocol

from dumpd.protocol import Notification
from dumpd.ratelog import RateLimitedLog
from dumpd.server.budget import ByteBudget
from dumpd.server.deadlines import Clock
from dumpd.server.dispatch import Peer
from dumpd.server.finish import Finish
from dumpd.server.pages import Compression

log = logging.getLogger("dumpd.server")


class ConnectionLimits:
    """Per-connection bounds, from the server configuration (timeouts in seconds,
    0 for never), and the clock their deadlines are kept on (None: the running loop)."""

    __slots__ = ("clock", "idle_timeout", "max_frame", "max_inflight", "max_streams",
                 "reply_budget", "send_timeout", "sendfile", "write_batch", "write_buffer")

    def __init__(self, max_frame: int, max_inflight: int, reply_budget: int,
                 max_streams: int = 4, sendfile: bool = True, idle_timeout: float = 0.0,
                 send_timeout: float = 0.0, clock: Clock | None = None,
                 write_buffer: int = 1 << 20, write_batch: int = 2 << 20) -> None:
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.reply_budget = reply_budget
        self.max_streams = max_streams
        self.sendfile = sendfile
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.clock = clock
        self.write_buffer = write_buffer  # the transport's high-water mark
        self.write_batch = write_batch  # small frames written in one vectored call


class Served(Protocol):
    """A connection as the server sees it."""

    id: int
    peer: Peer | None

    def close_when_idle(self) -> None: ...

    def abort(self) -> None: ...


class Shared:
    """What the connections of one server share: the set of those served (at most
    `max_connections`), the server-wide reply budget, and counts of the connections
    a limit refused or dropped. `finish` hears of each connection served and closed,
    and refuses new ones once the server finishes."""

    def __init__(self, max_connections: int, reply_budget_total: int, finish: Finish) -> None:
        self.open: set[Served] = set()
        self.finish = finish
        self.max_connections = max_connections
        self.reply_budget = ByteBudget(reply_budget_total)
        self.busy_refused = 0
        self.finishing_refused = 0
        self.idle_timeouts = 0
        self.send_timeouts = 0
        self.notifications_ignored = 0
        self.compression = Compression()  # what compressed streams sent
        self.log = RateLimitedLog(log)
        self.ids = itertools.count(1)  # connection ids, for the log

    def admit(self, conn: Served, who: str) -> tuple[str, str] | None:
        """Serve `conn` (of `who`) if a slot is free and the server is not finishing;
        else the `(code, message)` it is refused with (counted, logged)."""
        if self.finish.refusal is not None:
            self.finishing_refused += 1
            self.log.log(logging.INFO, "finishing", f"refused connection {conn.id} ({who}): "
                         "the server is finishing")
            return self.finish.refusal
        if len(self.open) >= self.max_connections:
            self.busy_refused += 1
            self.log.warning("busy", f"refused connection {conn.id} ({who}): too many "
                             f"connections (limit {self.max_connections})")
            return "EBUSY", f"too many connections (limit {self.max_connections})"
        self.open.add(conn)
        self.finish.opened(len(self.open))
        return None

    def closed(self, conn: Served) -> None:
        """`conn` is gone (served or not)."""
        if conn in self.open:
            self.open.discard(conn)
            self.finish.closed(len(self.open))

    def ignore(self, conn: Served, notification: Notification) -> None:
        """A notification from a client on `conn`: none is answered (msgpack-RPC) and
        none is acted on, so it is counted and logged (at debug level, at most once a
        minute)."""
        assert conn.peer is not None  # notifications are read from served connections only
        self.notifications_ignored += 1
        self.log.debug("notification", f"connection {conn.id} ({conn.peer.who}): ignored a "
                       f"notification: {reprlib.repr(notification.method)}")

    def stats(self) -> dict[str, int | float]:
        budget = self.reply_budget
        return {"busy_refused_connections": self.busy_refused,
                "finishing_refused_connections": self.finishing_refused,
                "idle_timeouts": self.idle_timeouts, "send_timeouts": self.send_timeouts,
                "notifications_ignored": self.notifications_ignored,
                "reply_bytes_held": budget.held, "reply_bytes_held_peak": budget.peak,
                "reply_budget_waits": budget.waits, **self.compression.stats()}
