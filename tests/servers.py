"""Servers in the test's own process, on real sockets in temp dirs: starting one, a
client of it, waiting for it, a free TCP port for it, and the faults and slow hooks
the tests give it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from dumpd.client.aio import AsyncClient
from dumpd.config import (
    Config,
    EngineConfig,
    FinishConfig,
    HookConfig,
    ServerConfig,
    SourceConfig,
)
from dumpd.errors import DumpdError
from dumpd.server import Server
from dumpd.server.deadlines import Clock
from dumpd.sources.base import Source


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, source: str | Path, *, hook: str = "",
    hook_options: dict[str, Any] | None = None, kind: str = "auto", page_size: int = 4096,
    engine: EngineConfig | None = None, clock: Clock | None = None,
    mmap: str = "auto", windows: tuple[int, int] = (4096, 8),
    finish: FinishConfig | None = None, vmcoreinfo: str = "", **server: Any,
) -> AsyncIterator[Server]:
    """A started `Server` for `source` on `tmp_path/dumpd.sock`; shut down on exit.
    `clock`: the one its connections' deadlines and finish timers are kept on (None: the
    loop's); `mmap` and `windows` (KiB each, how many): how the source is read;
    `finish`: when it ends by itself."""
    config = Config(
        source=SourceConfig(path=str(source), kind=kind, page_size=page_size, mmap=mmap,
                            mmap_window_kib=windows[0], mmap_windows=windows[1],
                            vmcoreinfo=vmcoreinfo),
        server=ServerConfig(socket=str(tmp_path / "dumpd.sock"), **server),
        engine=engine or EngineConfig(),
        hook=HookConfig(name=hook, options=hook_options or {}),
        finish=finish or FinishConfig(),
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


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


@contextlib.contextmanager
def failing(source: Source, bad: range) -> Iterator[None]:
    """While inside, the source's bytes in `bad` cannot be read, as on a dying disk:
    through the engine's reads and through a stream's sendfile alike."""
    real_read, real_cached = source.read_into, source.read_cached_into
    real_copy = source.copy_to

    def read_into(offset: int, view: memoryview) -> None:
        if offset < bad.stop and bad.start < offset + len(view):
            raise DumpdError("EIO", f"source read failed at {offset:#x}: Input/output error")
        real_read(offset, view)

    def copy(fd: int, offset: int, count: int) -> int:
        if bad.start <= offset < bad.stop:
            raise OSError(errno.EIO, "Input/output error")
        if offset < bad.start < offset + count:
            count = bad.start - offset  # the bytes before the bad ones still go
        return real_copy(fd, offset, count)

    source.read_into = read_into  # type: ignore[method-assign]
    source.read_cached_into = lambda offset, view: 0  # type: ignore[method-assign]
    source.copy_to = copy  # type: ignore[method-assign]
    try:
        yield
    finally:
        source.read_into = real_read  # type: ignore[method-assign]
        source.read_cached_into = real_cached  # type: ignore[method-assign]
        source.copy_to = real_copy  # type: ignore[method-assign]
