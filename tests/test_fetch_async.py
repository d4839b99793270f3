"""The asyncio fetch (`dumpd.fetch.aio`) against a real server on a real socket: its
copies byte for byte those of `dumpd fetch` (ELF and kdump, each codec here), sparse,
cancelled at a chosen write and resumed (by itself and by the CLI's fetch, either way
round), refused as the CLI refuses, verified; and its loop kept running while its file
work is held up (a gated executor: deterministic, no clocks)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dumpd import codecs
from dumpd.errors import StartupError
from dumpd.fetch import FetchRequest, fetch
from dumpd.fetch.aio import BATCH, AsyncFetchClient, fetch_async
from tests.daemon import state_of
from tests.dumps import SegSpec, build_elf, file_bytes
from tests.pki import Pki
from tests.servers import failing, free_port, serving
from tests.views import PAGE, balloon_file, expected_view

MiB = 1 << 20
CHUNK = 64 << 10
FORMATS = [("elf", None), *(("kdump", name) for name in ("zlib", "lzo", "snappy", "zstd"))]


class Gated(ThreadPoolExecutor):
    """An executor whose every job waits, in its worker, until the event loop has run a
    tick for it: if the loop were blocked meanwhile the job would never end (it fails
    after 20 s). From job `hold_at` on, jobs wait for `release()` instead, `held` set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hold_at: int = 0) -> None:
        super().__init__(2)
        self.loop, self.hold_at = loop, hold_at
        self.jobs = self.ticks = 0
        self.held = asyncio.Event()
        self._open = threading.Event()
        self._gates: asyncio.Queue[threading.Event] = asyncio.Queue()
        self._ticker = loop.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            gate = await self._gates.get()
            self.ticks += 1
            gate.set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1
        held = self.hold_at and self.jobs >= self.hold_at

        def gated() -> Any:
            if held:
                self.loop.call_soon_threadsafe(self.held.set)
                assert self._open.wait(20), "never released"
            else:
                gate = threading.Event()
                self.loop.call_soon_threadsafe(self._gates.put_nowait, gate)
                assert gate.wait(20), "the event loop did not run while a file job waited"
            return fn(*args, **kwargs)

        return super().submit(gated)

    def release(self) -> None:
        self.hold_at = 0
        self._open.set()

    def close(self) -> None:
        self._ticker.cancel()
        self.shutdown(wait=True)


def ballooned_dump(tmp_path: Path) -> tuple[str, str, bytes]:
    """An 8 MiB ELF core, every other run of 8 pages ballooned out: (dump, balloon list,
    the view as a copy must hold it)."""
    loads = [SegSpec(paddr=0x100000, memsz=4 * MiB), SegSpec(paddr=0x1000000, memsz=4 * MiB)]
    dump = build_elf(tmp_path / "vmcore", loads, page_size_note=PAGE, cpus=2)
    runs = [(first, first + 7) for first in range(0, 0x2000000 // PAGE, 16)]
    balloon = balloon_file(tmp_path / "balloon.txt", runs)
    holes = {p for a, b in runs for p in range(a, b + 1)}
    return dump.path, balloon, expected_view(dump.path, dump.segments, holes)


def request(sock: str, out: Path, fmt: str, codec: str | None, **options: Any) -> FetchRequest:
    return FetchRequest(sock, str(out), format=fmt, codec=codec, chunk=CHUNK, quiet=True,
                        **options)


def needs(codec: str | None) -> None:
    if codec is not None and codec not in codecs.available():
        pytest.skip(f"{codec}: its library is not installed here")


@pytest.mark.parametrize(("fmt", "codec"), FORMATS)
async def test_the_async_copy_is_the_cli_s_byte_for_byte_and_sparse(
        tmp_path: Path, fmt: str, codec: str | None) -> None:
    needs(codec)
    dump, balloon, view = ballooned_dump(tmp_path)
    mine, cli = tmp_path / "mine", tmp_path / "cli"
    async with serving(tmp_path, dump, hook="balloon",
                       hook_options={"file": balloon}) as server:
        sock = server.config.server.socket
        async with await AsyncFetchClient.connect(sock) as client:
            status = await client.fetch(str(mine), format=fmt, codec=codec, chunk=CHUNK,
                                        quiet=True, verify=True)
        assert await asyncio.to_thread(fetch, request(sock, cli, fmt, codec)) == 0
    assert status == 0
    assert mine.read_bytes() == cli.read_bytes()
    assert Path(f"{mine}.dumpd-holes").read_text() == Path(f"{cli}.dumpd-holes").read_text(
        ).replace('"copy": "cli"', '"copy": "mine"')
    assert not Path(f"{mine}.dumpd-fetch").exists()
    assert mine.stat().st_mode & 0o777 == 0o600
    if fmt == "elf":
        assert mine.read_bytes() == view
        assert mine.stat().st_blocks * 512 <= len(view) * 0.6  # the holes are not written


@pytest.mark.parametrize(("fmt", "codec", "hold_at"), [("elf", None, 4), ("kdump", "zlib", 40)])
async def test_a_cancelled_copy_resumes_by_either_fetch_to_the_same_bytes(
        tmp_path: Path, fmt: str, codec: str | None, hold_at: int) -> None:
    """Cancelled while a write is held up (the ELF copy's second batch; a piece well into
    the kdump copy's pages), then resumed."""
    dump, balloon, _ = ballooned_dump(tmp_path)
    whole, copy, other = tmp_path / "whole", tmp_path / "copy", tmp_path / "other"
    loop = asyncio.get_running_loop()
    async with serving(tmp_path, dump, hook="balloon",
                       hook_options={"file": balloon}) as server:
        sock = server.config.server.socket
        assert await asyncio.to_thread(fetch, request(sock, whole, fmt, codec)) == 0
        async with await AsyncFetchClient.connect(sock) as client:
            for out in (copy, other):
                gated = Gated(loop, hold_at=hold_at)
                task = asyncio.create_task(fetch_async(client, request(sock, out, fmt, codec),
                                                       executor=gated))
                await asyncio.wait_for(gated.held.wait(), 20)
                task.cancel()
                gated.release()
                with pytest.raises(asyncio.CancelledError):
                    await task
                gated.close()
            state = state_of(copy)
            done = state["kdump"]["next_pfn"] * PAGE if fmt == "kdump" else state["done"]
            assert 0 < done < os.path.getsize(dump)
            # Resumed by the async fetch, and the other by the CLI's.
            assert await fetch_async(client, request(sock, copy, fmt, codec, resume=True)) == 0
        assert await asyncio.to_thread(fetch, request(sock, other, fmt, codec,
                                                      resume=True)) == 0
    assert copy.read_bytes() == other.read_bytes() == whole.read_bytes()
    assert not Path(f"{copy}.dumpd-fetch").exists()


async def test_a_copy_the_cli_left_incomplete_is_finished_by_the_async_fetch(
        tmp_path: Path) -> None:
    dump, _, _ = ballooned_dump(tmp_path)
    copy = tmp_path / "copy"
    bad = range(0x80 * PAGE, 0x82 * PAGE)
    async with serving(tmp_path, dump) as server:
        assert server.source is not None
        sock = server.config.server.socket
        with failing(server.source, bad):
            first = await asyncio.to_thread(fetch, request(sock, copy, "elf", None))
        owed = state_of(copy)["errors"]
        async with await AsyncFetchClient.connect(sock) as client:
            second = await client.fetch(str(copy), chunk=CHUNK, quiet=True, resume=True,
                                        verify=True)
    assert (first, second) == (1, 0)
    assert [e[:3] for e in owed] == [[bad.start, 0x2000, "EIO"]]
    assert copy.read_bytes() == file_bytes(dump)
    assert not Path(f"{copy}.dumpd-fetch").exists()


async def test_what_the_cli_refuses_the_async_fetch_refuses_in_the_same_words(
        tmp_path: Path) -> None:
    dump, _, _ = ballooned_dump(tmp_path)
    there = tmp_path / "there"
    there.write_bytes(b"keep me")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    async with serving(tmp_path, dump) as server:
        sock = server.config.server.socket
        async with await AsyncFetchClient.connect(sock) as client:
            for ask in (request(sock, there, "elf", None),
                        request(sock, Path(dump), "elf", None, force=True),
                        FetchRequest(sock, str(there), chunk=PAGE + 1)):
                with pytest.raises(StartupError) as cli:
                    await asyncio.to_thread(fetch, ask)
                with pytest.raises(StartupError) as mine:
                    await fetch_async(client, ask)
                assert str(mine.value) == str(cli.value)
            with pytest.raises(StartupError) as piped:
                await client.fetch(str(fifo))
    assert there.read_bytes() == b"keep me"
    assert str(piped.value) == (f"fetch: {fifo} is a pipe: the asyncio fetch writes a file "
                                "(dumpd fetch -o - sends the flattened kdump form)")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("there")) == [
        "there"]


async def test_verify_reports_the_match_as_the_cli_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump, _, _ = ballooned_dump(tmp_path)
    async with serving(tmp_path, dump) as server, \
            await AsyncFetchClient.connect(server.config.server.socket) as client:
        status = await client.fetch(str(tmp_path / "copy"), verify=True)
    lines = capsys.readouterr().err.splitlines()
    assert status == 0
    assert lines[-1].startswith("verify: sha256 ") and lines[-1].endswith(" matches")
    assert lines[-2].startswith(f"fetched 8.0 MiB of {tmp_path / 'copy'} in ")


@pytest.fixture
def loop_writes() -> Iterator[list[str]]:
    """The names of the os calls that write or sync made on the event loop's thread."""
    seen: list[str] = []
    main = threading.get_ident()
    originals = {name: getattr(os, name) for name in
                 ("pwrite", "write", "fdatasync", "fsync", "ftruncate", "replace")}

    def watched(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == main:
                seen.append(name)
            return real(*args, **kwargs)
        return call

    for name, real in originals.items():
        setattr(os, name, watched(name, real))
    try:
        yield seen
    finally:
        for name, real in originals.items():
            setattr(os, name, real)


@pytest.mark.parametrize(("fmt", "codec"), [("elf", None), ("kdump", "zlib")])
async def test_the_loop_runs_while_every_file_job_waits_for_it(
        tmp_path: Path, fmt: str, codec: str | None, loop_writes: list[str]) -> None:
    dump, balloon, _ = ballooned_dump(tmp_path)
    copy = tmp_path / "copy"
    gated = Gated(asyncio.get_running_loop())
    async with serving(tmp_path, dump, hook="balloon",
                       hook_options={"file": balloon}) as server:
        sock = server.config.server.socket
        async with await AsyncFetchClient.connect(sock) as client:
            status = await fetch_async(client, request(sock, copy, fmt, codec, fsync=True,
                                                       verify=True), executor=gated)
        gated.close()
        assert await asyncio.to_thread(fetch, request(sock, tmp_path / "cli", fmt, codec)) == 0
    assert status == 0
    assert copy.read_bytes() == (tmp_path / "cli").read_bytes()
    # Every batch of the 4 MiB of data written and the syncs went through the gate, each
    # job let through by a tick of the loop; none of it on the loop's own thread.
    assert gated.ticks == gated.jobs > 4 * MiB // BATCH + 1
    assert loop_writes == []


@pytest.mark.parametrize(("fmt", "codec"), [("elf", None), ("kdump", "zlib")])
async def test_over_tls_the_server_compresses_and_the_copy_is_the_same(
        tmp_path: Path, pki: Pki, fmt: str, codec: str | None) -> None:
    """Over TCP `wire_compress` auto has the server compress the stream (`stream.pages`,
    decompressed off the loop for an ELF copy, stored as they come for a kdump one)."""
    dump, balloon, _ = ballooned_dump(tmp_path)
    port = free_port()
    mine, cli = tmp_path / "mine", tmp_path / "cli"
    async with serving(tmp_path, dump, hook="balloon", hook_options={"file": balloon},
                       tcp=f"127.0.0.1:{port}", **pki.server_options()) as server:
        async with await AsyncFetchClient.connect_tcp("127.0.0.1", port,
                                                      tls=pki.client()) as client:
            assert client.over_network
            status = await client.fetch(str(mine), format=fmt, codec=codec, quiet=True,
                                        verify=True)
        compressed = server.shared.stats()["compressed_streams"]
        sock = server.config.server.socket
        assert await asyncio.to_thread(fetch, request(sock, cli, fmt, codec)) == 0
    assert (status, compressed) == (0, 1 if fmt == "elf" else 2)  # kdump: a stream a run
    assert mine.read_bytes() == cli.read_bytes()
