"""Fixtures: real servers on real Unix sockets in temp dirs, on both event loops; the
reliability figures the fault, fuzz and load tests record, printed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

from dumpd.client import AsyncClient
from dumpd.config import Config, HookConfig, ServerConfig, SourceConfig
from dumpd.engine import EngineConfig
from dumpd.server import Server
from dumpd.server.deadlines import Clock


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the default loop and on uvloop."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Figures:
    """What the reliability tests tried, how many times and what held, one line each,
    printed under "reliability figures" at the end of the run."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, what: str, **figures: object) -> None:
        """One line: `what: name value, name value, ...` (ints with thousands commas)."""
        shown = ", ".join(f"{name.replace('_', ' ')} {_shown(value)}"
                          for name, value in figures.items())
        self.lines.append(f"{what}: {shown}")


def _shown(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's reliability figures (see `pytest_terminal_summary`)."""
    return FIGURES


def memory(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of process `pid`, in bytes (VmHWM: the peak since it started, or
    since `reset_peak`)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak(pid: int) -> None:
    """Have VmHWM start again from the present RSS (/proc/PID/clear_refs, Linux 4.0+)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES.lines:
        terminalreporter.write_sep("=", "reliability figures")
        for line in FIGURES.lines:
            terminalreporter.write_line(line)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, source: str | Path, *, hook: str = "",
    hook_options: dict[str, Any] | None = None, kind: str = "auto", page_size: int = 4096,
    engine: EngineConfig | None = None, clock: Clock | None = None,
    **server: Any,
) -> AsyncIterator[Server]:
    """A started `Server` for `source` on `tmp_path/dumpd.sock`; shut down on exit.
    `clock`: the one its connections' deadlines are kept on (None: the loop's)."""
    config = Config(
        source=SourceConfig(path=str(source), kind=kind, page_size=page_size),
        server=ServerConfig(socket=str(tmp_path / "dumpd.sock"), **server),
        engine=engine or EngineConfig(),
        hook=HookConfig(name=hook, options=hook_options or {}),
    )
    srv = Server(config, clock=clock)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.shutdown(deadline=2.0)


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (without blocking the loop) until `condition()` holds; fail after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def client_of(server: Server) -> AsyncIterator[AsyncClient]:
    async with await AsyncClient.connect(server.config.server.socket) as client:
        yield client


class GatedHook:
    """A hook whose calls block until `release` is set (5 s at most), then answer `verdict`:
    holds a flight open so a test can line up concurrent readers or swap the slot."""

    def __init__(self, verdict: int) -> None:
        self.verdict = verdict
        self.release = threading.Event()
        self.returned = threading.Event()
        self.asked: list[int] = []

    def pfn_is_ram(self, pfn: int) -> int:
        self.asked.append(pfn)
        self.release.wait(5)
        self.returned.set()
        return self.verdict
