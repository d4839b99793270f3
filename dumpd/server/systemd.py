"""systemd glue, from the standard library alone: socket activation and sd_notify.

`listen_fds()` takes the listening sockets systemd passed (`LISTEN_PID`,
`LISTEN_FDS`, `LISTEN_FDNAMES`; fds from 3 on). `Notifier` sends sd_notify
datagrams (`READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`) to `NOTIFY_SOCKET`,
a path or an abstract socket (`@name`), and knows the watchdog interval
(`WATCHDOG_USEC`, for this process when `WATCHDOG_PID` says so). Outside systemd
both do nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("dumpd.systemd")

LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(env: MutableMapping[str, str] | None = None) -> list[tuple[int, str]]:
    """`(fd, name)` of each socket systemd passed to this process; [] when none.

    The variables are removed, so processes started later do not take the fds too.
    """
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for key in _LISTEN_VARS:
        env.pop(key, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    fds = []
    for i in range(int(count)):
        fd = LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        fds.append((fd, names[i] if i < len(names) and names[i] else "unknown"))
    return fds


class Notifier:
    """Sends sd_notify states to the service manager, if there is one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address if address[:1] in ("/", "\0") else ""
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or (watchdog_pid.isdigit() and int(watchdog_pid) == os.getpid())
        self.watchdog: float | None = (
            int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None)
        """Seconds within which the manager wants `WATCHDOG=1`, or None."""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *states: str) -> None:
        """Send `states` (e.g. "READY=1", "STATUS=serving") in one datagram."""
        if not self._address:
            return
        message = "\n".join(state.replace("\n", " ") for state in states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:  # the manager went away: nothing to tell
            log.debug("sd_notify to %r failed: %s", self._address, exc)
