"""Running the server in an event loop: uvloop when available, signals, exit status."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from dumpd.config import Config
from dumpd.errors import StartupError

log = logging.getLogger("dumpd")

EXIT_FINISHED = 3
"""`serve`'s status when a finish condition ended the job (`done`, `[finish]`): the one
status the unit's drop-in reboots on (systemd/dumpd.service.d/finish.conf). A signal's
stop is 0, a start-up error 2: neither reboots, so a stop never loses the dump."""


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """`uvloop` when asked or (for "auto") importable, else the default loop."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError as exc:
            if choice == "uvloop":
                raise StartupError("server.loop is uvloop, but uvloop is not installed") from exc
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def serve(config: Config, given_page_size: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT (exit 0; a second one forces the exit, 1) or a finish
    condition (`done`, `[finish]`: logged as `finished: REASON`, exit `EXIT_FINISHED`);
    SIGHUP reloads the hook.
    `given_page_size`: the page size the operator named (`--page-size`), which the dump
    must not contradict."""
    with asyncio.Runner(loop_factory=loop_factory(config.server.loop)) as runner:
        return runner.run(_serve(config, given_page_size))


async def _serve(config: Config, given_page_size: int | None) -> int:
    from dumpd.server import Server

    server = Server(config, given_page_size)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int, *_: Any) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.stop()

    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        task = loop.create_task(server.reload_hook())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await server.start()
        await server.serve_until_stopped()
    finally:
        await server.shutdown()
    return 0 if server.finished is None else EXIT_FINISHED
