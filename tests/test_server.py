"""The core through the real socket: byte-exact reads, coalescing counters, the hook
slot, error codes and bounded memory. Every server here is real, on a Unix socket."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import stat
import threading
from itertools import pairwise
from pathlib import Path

import msgpack
import pytest

from dumpd.client import RemoteError
from dumpd.client.aio import AsyncClient
from dumpd.config import Config, EngineConfig, ServerConfig, SourceConfig
from dumpd.errors import StartupError
from dumpd.protocol import (
    FrameDecoder,
    Limits,
    Response,
    encode_bin_response_head,
    encode_notification,
    encode_request,
)
from dumpd.server import Server
from tests.clock import FakeClock
from tests.daemon import source_identity
from tests.dumps import IRREGULAR, SegSpec, build_elf, build_raw, file_bytes, pattern
from tests.servers import GatedHook, client_of, serving, until
from tests.views import balloon_file, expected_view, pfns_read, read_all, record_reads

PAGE = 4096

async def read_replies(reader: asyncio.StreamReader, count: int) -> dict[int, bytes]:
    """`count` successful replies from a raw connection, by msgid."""
    decoder = FrameDecoder("client", Limits(16 << 20))
    replies: dict[int, bytes] = {}
    while len(replies) < count:
        data = await reader.read(1 << 20)
        assert data, "connection closed early"
        for event in decoder.feed(data):
            assert isinstance(event, Response) and event.error is None, event
            replies[event.msgid] = event.result
    return replies


@pytest.mark.parametrize("elf_class,endian", [(32, "little"), (32, "big"), (64, "little"),
                                              (64, "big")])
async def test_elf_view_is_byte_exact(tmp_path: Path, elf_class: int, endian: str) -> None:
    dump = build_elf(tmp_path / "vmcore", IRREGULAR, elf_class=elf_class, endian=endian,
                     page_size_note=PAGE, data_align=8, cpus=2)
    want = file_bytes(dump.path)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        assert await read_all(client, dump.size, 3 * PAGE + 17) == want
        rng = random.Random(elf_class)
        for _ in range(200):
            off = rng.randrange(dump.size + 100)
            n = rng.randrange(1, 3 * PAGE)
            assert await client.read(off, n) == want[off : off + n]
        info = await client.info()
    assert info["source"] == {"kind": "elf", "path": dump.path, "read_path": "pread",
                              **source_identity(dump.path)}
    assert info["size"] == dump.size
    assert info["segments"] == [[s.paddr, s.file_offset, s.filesz, s.memsz]
                                for s in dump.segments]
    assert info["hook"] is None


async def test_raw_view_is_byte_exact(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 300 * PAGE + 123)
    want = file_bytes(dump.path)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        assert await read_all(client, dump.size, 64 * PAGE) == want
        assert await client.read(dump.size - 10, 100) == want[-10:]
        assert await client.read(dump.size, 100) == b""
        assert await client.read(dump.size + 5000, 1) == b""
        assert await client.read_phys(0x1234, 99) == want[0x1234 : 0x1234 + 99]
        assert (await client.info())["source"]["kind"] == "raw"


async def test_read_phys_follows_segments(tmp_path: Path) -> None:
    dump = build_elf(tmp_path / "vmcore", IRREGULAR, data_align=8)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        assert await client.read_phys(0x1000, 0x5000) == pattern(0x1000, 0x5000)
        # p_filesz < p_memsz: the rest of the segment reads as zeros
        assert await client.read_phys(0x10000, 0x3000) == pattern(0x10000, 0x1800) + bytes(0x1800)
        assert await client.read_phys(0x30000, 0x2000) == bytes(0x2000)
        assert await client.read_phys(0x20123, 0x2345) == pattern(0x20123, 0x2345)
        for paddr, length in ((0, 1), (0x5fff, 2), (0x6000, 1), (0x20000, 0x200)):
            with pytest.raises(RemoteError) as err:
                await client.read_phys(paddr, length)
            assert err.value.code == "ERANGE"


async def test_overlapping_segments_first_wins(tmp_path: Path) -> None:
    """Kernel text inside the direct map, as in /proc/vmcore: each file copy is served
    as it is, and read_phys takes the first PT_LOAD in program-header order."""
    segs = [SegSpec(paddr=0x4000, memsz=0x2000), SegSpec(paddr=0x0, memsz=0x10000)]
    dump = build_elf(tmp_path / "vmcore", segs,
                     fill=lambda paddr, n: bytes([paddr >> 12 & 0xFF]) * n)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        assert await read_all(client, dump.size, 5 * PAGE) == file_bytes(dump.path)
        text = dump.segments[0]
        assert await client.read_phys(0x4000, 0x2000) == file_bytes(
            dump.path, text.file_offset, 0x2000)


async def test_512_small_reads_cost_one_verdict_and_one_source_read(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    hook_file = balloon_file(tmp_path / "balloon.txt", [(10, 19)])
    want = file_bytes(dump.path, 5 * PAGE, PAGE)
    async with serving(tmp_path, dump.path, hook="balloon",
                       hook_options={"file": hook_file}) as server, client_of(server) as client:
        for i in range(512):
            assert await client.read(5 * PAGE + 8 * i, 8) == want[8 * i : 8 * i + 8]
        stats = await client.stats()
        for i in range(512):  # a non-RAM page: one verdict, no source read, zeros
            assert await client.read(12 * PAGE + 8 * i, 8) == bytes(8)
        stats2 = await client.stats()
    assert stats["hook"] == "balloon"
    assert (stats["pfns_asked"], stats["hook_calls"]) == (1, 1)
    assert (stats["source_read_calls"], stats["source_pages_read"]) == (1, 1)
    assert stats["source_bytes_read"] == PAGE
    assert (stats["cache_misses"], stats["cache_hits"]) == (1, 511)
    assert stats["bytes_served"] == 512 * 8
    assert (stats2["pfns_asked"], stats2["hook_calls"]) == (2, 2)
    assert (stats2["source_read_calls"], stats2["source_bytes_read"]) == (1, PAGE)
    assert stats2["zero_pages_served"] == 512


async def test_whole_dump_asks_each_pfn_once_and_never_reads_non_ram(tmp_path: Path) -> None:
    segs = [SegSpec(paddr=0x1000, memsz=0x9E000), SegSpec(paddr=0x20000, memsz=0x8000),
            SegSpec(paddr=0x200000, memsz=0x300000, filesz=0x2FF800)]
    dump = build_elf(tmp_path / "vmcore", segs, page_size_note=PAGE, data_align=0x200)
    ballooned = [(0x30, 0x3F), (0x21, 0x22), (0x250, 0x3FF), (0x4F0, 0x4FF)]
    zero_pfns = {p for a, b in ballooned for p in range(a, b + 1)}
    hook_file = balloon_file(tmp_path / "balloon.txt", ballooned)
    async with serving(tmp_path, dump.path, hook="balloon",
                       hook_options={"file": hook_file}) as server, client_of(server) as client:
        assert server.source is not None
        reads = record_reads(server.source)
        got = await read_all(client, dump.size, 256 * 1024)
        stats = await client.stats()
        extents = await client.extents(0, dump.size)
    assert got == expected_view(dump.path, dump.segments, zero_pfns)
    distinct = {p for s in dump.segments for p in range(s.paddr // PAGE,
                                                         (s.paddr + s.filesz - 1) // PAGE + 1)}
    assert stats["pfns_asked"] == len(distinct)
    assert not pfns_read(reads, dump.segments) & zero_pfns
    assert stats["source_bytes_read"] == sum(n for _, n in reads)
    zero_bytes = sum(n for _, n, kind in extents if kind == "zero")
    assert stats["source_bytes_read"] == dump.size - zero_bytes
    assert all(a[0] + a[1] == b[0] and a[2] != b[2] for a, b in pairwise(extents))


async def test_concurrent_readers_share_one_flight(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    gate = GatedHook(1)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        engine = server.engine
        assert engine is not None
        engine.register_hook("gate", gate)
        tasks = [asyncio.ensure_future(client.read(3 * PAGE + i, 100)) for i in range(50)]
        await until(lambda: engine.counters.singleflight_waits >= 49)
        gate.release.set()
        results = await asyncio.gather(*tasks)
        stats = await client.stats()
    want = file_bytes(dump.path)
    assert results == [want[3 * PAGE + i : 3 * PAGE + i + 100] for i in range(50)]
    assert (stats["singleflight_waits"], stats["cache_misses"]) == (49, 1)
    assert (stats["pfns_asked"], stats["source_read_calls"]) == (1, 1)


async def test_hook_slot_ebusy_and_unregister(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    hook_file = balloon_file(tmp_path / "balloon.txt", [(2, 2)])
    async with serving(tmp_path, dump.path, hook="balloon",
                       hook_options={"file": hook_file}) as server, client_of(server) as client:
        assert await client.read(2 * PAGE, 16) == bytes(16)
        with pytest.raises(RemoteError) as err:
            await client.hook_register("none", {})
        assert err.value.code == "EBUSY"
        assert (await client.info())["hook"] == "balloon"
        assert await client.hook_unregister() == {"hook": "balloon"}
        assert (await client.info())["hook"] is None
        assert await client.read(2 * PAGE, 16) == file_bytes(dump.path, 2 * PAGE, 16)
        assert await client.hook_register("balloon", {"file": hook_file}) == {"hook": "balloon"}
        assert await client.read(2 * PAGE, 16) == bytes(16)
        with pytest.raises(RemoteError) as err:
            await client.hook_register("balloon", {"file": hook_file})
        assert err.value.code == "EBUSY"
        await client.hook_unregister()
        with pytest.raises(RemoteError) as err:
            await client.hook_register("no-such-hook", {})
        assert err.value.code == "EINVAL" and "installed:" in err.value.message


async def test_swap_during_a_read_keeps_the_old_verdicts(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    slow_not_ram = GatedHook(0)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        engine = server.engine
        assert engine is not None
        engine.register_hook("slow", slow_not_ram)
        pending = asyncio.ensure_future(client.read(4 * PAGE, 64))
        await until(lambda: engine.counters.cache_misses >= 1)
        await client.hook_unregister()
        await client.hook_register("none", {})
        slow_not_ram.release.set()
        assert await pending == bytes(64)  # the verdicts it started with
        assert await client.read(4 * PAGE, 64) == file_bytes(dump.path, 4 * PAGE, 64)


class Faulty:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def pfn_is_ram(self, pfn: int) -> object:
        if self.mode == "raise":
            raise RuntimeError("backend gone")
        if self.mode == "str":
            return "yes"
        if self.mode == "negative":
            return -22
        threading.Event().wait(0.3)
        return 0


@pytest.mark.parametrize("mode,counter", [("raise", "hook_exceptions"),
                                          ("str", "hook_bad_results"),
                                          ("negative", "hook_errors"),
                                          ("slow", "hook_timeouts")])
async def test_hook_failures_read_the_page(tmp_path: Path, mode: str, counter: str) -> None:
    dump = build_raw(tmp_path / "oldmem", 8 * PAGE)
    async with serving(tmp_path, dump.path, engine=EngineConfig(hook_timeout=0.1)) as server:
        assert server.engine is not None
        server.engine.register_hook(mode, Faulty(mode))  # type: ignore[arg-type]
        async with client_of(server) as client:
            assert await client.read(PAGE, 32) == file_bytes(dump.path, PAGE, 32)
            stats = await client.stats()
    assert stats[counter] == 1
    assert stats["source_read_calls"] == 1


async def test_error_codes(tmp_path: Path) -> None:
    dump = build_elf(tmp_path / "vmcore", IRREGULAR)
    async with serving(tmp_path, dump.path, max_read_mib=1) as server, client_of(server) as c:
        cases = [
            (("read", -1, 8), "EINVAL"), (("read", "0", 8), "EINVAL"),
            (("read", 0, 1.5), "EINVAL"), (("read", True, 8), "EINVAL"),
            (("read", 0), "EINVAL"), (("read", -(2**63), 1), "EINVAL"),
            (("read", 0, (1 << 20) + 1), "E2BIG"), (("read_phys", 0, 8), "ERANGE"),
            (("extents", 0, 1 << 40), "E2BIG"), (("frobnicate",), "ENOSYS"),
            (("hook.register", 1, {}), "EINVAL"),
        ]
        for call, code in cases:
            with pytest.raises(RemoteError) as err:
                await c.call(*call)
            assert err.value.code == code, call
        assert await c.read(dump.size, 1 << 20) == b""  # exactly the maximum is fine
        os.truncate(dump.path, dump.size // 2)  # the source fails under the server
        with pytest.raises(RemoteError) as err:
            await c.read(dump.size - PAGE, 16)
        assert err.value.code == "EIO"
        assert await c.read(0, 4) == b"\x7fELF"  # and it carries on


async def test_bad_frames_close_only_their_connection(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    async with serving(tmp_path, dump.path) as server, client_of(server) as honest:
        path = server.config.server.socket
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(encode_request(7, "read", ["x", 1]))  # decodes: EINVAL for msgid 7
        writer.write(b"\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
        reply = await reader.read()  # the error reply, an error notification, then EOF
        writer.close()
        assert b"EINVAL" in reply and reply.endswith(b"bytes are not msgpack")
        assert await honest.read(0, 8) == file_bytes(dump.path, 0, 8)


async def test_client_notifications_are_counted_never_answered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Any notification from a client (a stream.cancel sent as one too) gets no reply
    and is counted; one debug line a minute names it. A malformed one still closes."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    caplog.set_level(logging.DEBUG, logger="dumpd.server")
    async with serving(tmp_path, dump.path) as server, client_of(server) as honest:
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        writer.write(b"".join([
            encode_notification("hello", [1]), encode_request(1, "read", [0, 4]),
            encode_notification("stream.cancel", [1]),
            msgpack.packb([2, b"nvim_set_client_info", []]),
            encode_request(2, "read", [4, 4]),
        ]))
        writer.write_eof()
        reply = await reader.read()
        writer.close()
        assert reply == b"".join(encode_bin_response_head(msgid, 4) + file_bytes(
            dump.path, offset, 4) for msgid, offset in ((1, 0), (2, 4)))
        assert (await honest.stats())["notifications_ignored"] == 3
        ignored = [r.getMessage() for r in caplog.records if "ignored a" in r.getMessage()]
        assert len(ignored) == 1
        assert re.fullmatch(r"connection \d+ \(uid \d+ pid \d+\): ignored a notification: "
                            r"'hello'", ignored[0]), ignored
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        writer.write(msgpack.packb([2, b"\xff", []]))  # bin, not UTF-8: malformed
        reply = await reader.read()
        writer.close()
        assert msgpack.unpackb(reply) == [2, "error", ["EINVAL", "malformed notification "
                                                       "[2, b'\\xff', []]"]]
        assert (await honest.stats())["notifications_ignored"] == 3


async def test_flood_without_reading_stays_bounded(tmp_path: Path) -> None:
    """A client that sends 8 MiB reads and never reads a reply costs at most the reply
    budget, the in-flight limit and the transport's buffers."""
    dump = build_raw(tmp_path / "oldmem", 8 << 20)
    async with serving(tmp_path, dump.path, reply_budget_mib=16, max_inflight=8) as server:
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        frames = b"".join(encode_request(i, "read", [0, 8 << 20]) for i in range(2000))
        writer.write(frames)  # 2000 x 8 MiB of replies = 16 GB if nothing held it back
        await asyncio.sleep(1.0)
        (conn,) = server.connections
        held = conn._transport.get_write_buffer_size()  # type: ignore[union-attr]
        assert conn._budget.available <= conn._budget.capacity
        assert len(conn._tasks) <= 8
        assert len(conn._queue) + len(conn._unread) // 20 <= 2000
        assert held <= 16 << 20 + 256 << 10
        async with client_of(server) as honest:  # the server still serves others
            assert await honest.read(100, 4) == file_bytes(dump.path, 100, 4)
        got = 0
        while got < 3 * (8 << 20):
            got += len(await reader.read(1 << 20))
        writer.close()


async def test_socket_is_0600_and_stale_files_are_replaced(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", PAGE)
    sock = tmp_path / "dumpd.sock"
    import socket as socket_mod
    stale = socket_mod.socket(socket_mod.AF_UNIX)
    stale.bind(str(sock))
    stale.close()  # a socket file nobody listens on
    async with serving(tmp_path, dump.path) as server:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        with pytest.raises(StartupError, match="another server is listening"):
            async with serving(tmp_path, dump.path):
                pass
        assert server.connections == set()
    assert not sock.exists()


async def test_refused_peer_gets_eacces(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", PAGE)
    async with serving(tmp_path, dump.path) as server:
        server._allowed_uids = set()
        async with client_of(server) as client:
            with pytest.raises((RemoteError, ConnectionError)) as err:
                await client.read(0, 8)
        assert server.refused == 1
    if isinstance(err.value, RemoteError):
        assert err.value.code == "EACCES"


async def test_large_replies_to_a_slow_reader_arrive_whole(tmp_path: Path) -> None:
    """Replies written while the client is not reading (the transport pauses mid-reply)
    must still go out one after another, never interleaved."""
    dump = build_raw(tmp_path / "oldmem", 24 << 20)
    want = file_bytes(dump.path)
    offsets = [0, 8 << 20, 16 << 20, 3, 5 << 20]
    async with serving(tmp_path, dump.path, reply_budget_mib=64) as server:
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        writer.write(b"".join(encode_request(i, "read", [o, 8 << 20])
                              for i, o in enumerate(offsets)))
        await asyncio.sleep(0.5)  # let every reply start and stall on a full socket
        replies = await read_replies(reader, len(offsets))
        writer.close()
    assert [replies[i] for i in range(len(offsets))] == [want[o : o + (8 << 20)]
                                                          for o in offsets]


async def test_large_reads_over_cached_pages_arrive_whole(tmp_path: Path) -> None:
    # A read over cached pages goes out as thousands of page-sized parts, some joined
    # in slices, some in one vectored write: the bytes must come out in order.
    dump = build_raw(tmp_path / "oldmem", 1024 * PAGE)
    want = file_bytes(dump.path)
    async with serving(tmp_path, dump.path, engine=EngineConfig(cache_mib=8)) as server, \
            client_of(server) as client:
        for at in range(8, 1024 * PAGE, 2 * PAGE):
            assert await client.read(at, 8) == want[at : at + 8]
        for off, n in ((0, 1024 * PAGE), (PAGE + 3, 500 * PAGE), (7, 300 * PAGE - 7),
                       (100 * PAGE - 1, 2 * PAGE + 2)):
            got = await asyncio.gather(*(client.read(off, n) for _ in range(3)))
            assert got == [want[off : off + n]] * 3
        stats = await client.stats()
    # the even pages once; the odd ones by the whole read (above a quarter of the
    # cache: not kept) and pages 1..501 again by the second (kept: the rest hit them)
    assert stats["source_pages_read"] == 512 + 512 + 251


async def test_a_burst_of_pipelined_reads_is_answered_in_full(tmp_path: Path) -> None:
    """One write of 3000 requests (cached pages, answered at once and written together,
    beyond the write slice so the transport pauses midway): every reply arrives, right."""
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    want = file_bytes(dump.path)
    async with serving(tmp_path, dump.path) as server, client_of(server) as client:
        await client.read(0, 64 * PAGE)  # fills the page cache (a quarter of it at most)
        for page in range(64):
            await client.read(page * PAGE, 1)
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        requests = [((i * 7919) % (64 * PAGE - PAGE), PAGE if i % 3 else 8) for i in range(3000)]
        writer.write(b"".join(encode_request(i, "read", [off, n])
                              for i, (off, n) in enumerate(requests)))
        replies = await read_replies(reader, len(requests))
        writer.close()
    assert all(replies[i] == want[off : off + n] for i, (off, n) in enumerate(requests))


async def test_tcp_listener_on_loopback_when_configured(tmp_path: Path) -> None:
    import socket as socket_mod

    with socket_mod.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    async with serving(tmp_path, dump.path, tcp=f"127.0.0.1:{port}") as server:
        async with await AsyncClient.connect_tcp("127.0.0.1", port) as client:
            assert await client.read(PAGE, 16) == file_bytes(dump.path, PAGE, 16)
            with pytest.raises(RemoteError) as err:  # no peer credentials: never admin
                await client.hook_register("none", {})
            assert err.value.code == "EACCES"
        assert server.engine is not None and server.engine.hook_name is None


async def test_shutdown_waits_for_running_requests_until_its_deadline_then_aborts(
        tmp_path: Path) -> None:
    """On a fake clock: a read held by a hook keeps shutdown waiting at 0.299 s (it
    looked at the time again and waits on); at 0.3 s its connection is aborted."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    clock = FakeClock()
    gate = GatedHook(1)
    server = Server(Config(source=SourceConfig(path=dump.path),
                           server=ServerConfig(socket=str(tmp_path / "dumpd.sock"))),
                    clock=clock)
    await server.start()
    assert server.engine is not None
    server.engine.register_hook("gate", gate)
    client = await AsyncClient.connect(server.config.server.socket)
    read = asyncio.ensure_future(client.read(PAGE, 8))
    await until(lambda: bool(gate.asked))
    reads = clock.reads
    stopping = asyncio.ensure_future(server.shutdown(deadline=0.3))
    await until(lambda: clock.reads > reads)  # shutdown began at 0 s
    clock.advance_to(0.299)
    reads = clock.reads
    await until(lambda: clock.reads >= reads + 2)  # shutdown looked at the time, again
    waiting = (len(server.connections), stopping.done())
    clock.advance_to(0.3)
    await until(lambda: not server.connections)
    gate.release.set()
    await stopping
    with pytest.raises(ConnectionError):
        await read
    await client.close()
    assert waiting == (1, False)
