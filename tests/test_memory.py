"""Memory-sized limits (`server.memory`): the memory there is, read from fake
/proc/meminfo and cgroup files; the limits derived from it, exactly; the worst case
they state, term by term from the code's constants, and held by a real server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from dumpd.config import Config, ServerConfig, load
from dumpd.errors import StartupError
from dumpd.protocol import encode_request
from dumpd.server.connection import FEED_SLICE, UNREAD_MAX, RpcConnection
from dumpd.server.frames import WRITE_SLICE
from dumpd.server.memory import FLOOR, READ_MAX, available, sized, worst_case
from tests.daemon import ROOT, ok
from tests.dumps import build_raw
from tests.servers import serving, until

KiB, MiB = 1 << 10, 1 << 20


def meminfo(tmp_path: Path, available_kib: int | None) -> str:
    path = tmp_path / "meminfo"
    lines = ["MemTotal:        1048576 kB", "MemFree:          524288 kB"]
    if available_kib is not None:
        lines.append(f"MemAvailable:     {available_kib} kB")
    path.write_text("\n".join([*lines, "Buffers:            1024 kB", ""]))
    return str(path)


def cgroups(tmp_path: Path, limits: dict[str, tuple[str, int]]) -> tuple[str, str]:
    """A cgroup v2 tree with memory.max and memory.current by path; /proc/self/cgroup
    naming system.slice/dumpd.service."""
    root = tmp_path / "cgroup"
    for path, (limit, current) in limits.items():
        here = root / path
        here.mkdir(parents=True, exist_ok=True)
        (here / "memory.max").write_text(f"{limit}\n")
        (here / "memory.current").write_text(f"{current}\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/system.slice/dumpd.service\n")
    return str(proc), str(root)


def test_auto_is_memavailable_less_the_floor(tmp_path: Path) -> None:
    assert available("auto", meminfo(tmp_path, 102400), str(tmp_path / "none"),
                     str(tmp_path)) == (100 * MiB - FLOOR, "MemAvailable less 32 MiB")
    assert FLOOR // MiB == 32
    assert available("auto", meminfo(tmp_path, 16384), str(tmp_path / "none"),
                     str(tmp_path)) == (0, "MemAvailable less 32 MiB")


def test_auto_is_the_tightest_cgroup_above_us(tmp_path: Path) -> None:
    proc, root = cgroups(tmp_path, {
        "system.slice/dumpd.service": (str(48 * MiB), 20 * MiB),  # the unit's MemoryMax=
        "system.slice": ("max", 300 * MiB),
        "": ("max", 0)})
    assert available("auto", meminfo(tmp_path, 102400), proc, root) == (
        28 * MiB, "the cgroup's memory.max less memory.current")
    proc, root = cgroups(tmp_path / "b", {
        "system.slice/dumpd.service": (str(48 * MiB), 20 * MiB),
        "system.slice": (str(310 * MiB), 300 * MiB)})  # the slice has less room left
    assert available("auto", meminfo(tmp_path, 102400), proc, root)[0] == 10 * MiB
    proc, root = cgroups(tmp_path / "c", {
        "system.slice/dumpd.service": (str(4096 * MiB), 20 * MiB)})  # above MemAvailable
    assert available("auto", meminfo(tmp_path, 102400), proc, root) == (
        68 * MiB, "MemAvailable less 32 MiB")


def test_a_figure_is_taken_as_it_is_and_a_missing_line_is_one_error(tmp_path: Path) -> None:
    assert available("96MiB", str(tmp_path / "absent")) == (96 * MiB,
                                                            "server.memory = '96MiB'")
    path = meminfo(tmp_path, None)
    with pytest.raises(StartupError) as err:
        available("auto", path, str(tmp_path / "none"), str(tmp_path))
    assert str(err.value) == f'server.memory = "auto": {path} has no MemAvailable line'


def test_the_default_worst_case_term_by_term() -> None:
    worst = worst_case(Config())
    assert worst.connection_input == 2 * 1024 * KiB + FEED_SLICE + UNREAD_MAX + READ_MAX
    assert [n // KiB for n in (FEED_SLICE, UNREAD_MAX, READ_MAX, WRITE_SLICE)] == [16, 64, 256,
                                                                                256]
    assert worst.connection_output == 1024 * KiB + 2048 * KiB
    assert worst.connection_streams == 0  # sendfile streams read nothing
    assert worst.per_connection == 5456 * KiB
    assert (worst.connections, worst.replies, worst.engine) == (512, 64 * MiB, 33 * MiB)
    assert worst.total == 512 * 5456 * KiB + 97 * MiB == 2825 * MiB
    tls = worst_case(Config(server=ServerConfig(tcp="127.0.0.1:7300", tls_cert="c",
                                                tls_key="k", tls_client_ca="a")))
    assert tls.connection_streams == 4 * (8 + 8) * MiB  # 4 streams x (window + chunk)
    assert tls.total == 2825 * MiB + 512 * 64 * MiB
    assert worst_case(Config(server=ServerConfig(stream_sendfile=False))).total == tls.total


def test_sized_for_68_mib_exactly() -> None:
    config = sized(Config(), 68 * MiB)
    srv, eng = config.server, config.engine
    assert (srv.max_read_mib, srv.reply_budget_mib, srv.reply_budget_total_mib) == (2, 4, 8)
    assert (srv.stream_window_mib, srv.max_frame_kib, srv.write_buffer_kib,
            srv.write_batch_kib) == (2, 272, 272, 544)
    assert (eng.cache_mib, eng.buffer_pool_mib, eng.verdict_cache_kib) == (4.0, 4, 1024)
    worst = worst_case(config)
    assert worst.per_connection == (2 * 272 + 16 + 64 + 256 + 272 + 544) * KiB == 1696 * KiB
    assert srv.max_connections == (68 - 9 - 8) * MiB // worst.per_connection == 30
    assert worst.total == 30 * 1696 * KiB + 8 * MiB + 9 * MiB <= 68 * MiB
    # only lowered: a configuration below the shares keeps its own figures
    small = Config(server=ServerConfig(max_connections=4, max_read_mib=1, reply_budget_mib=1,
                                       reply_budget_total_mib=2))
    kept = sized(small, 68 * MiB).server
    assert (kept.max_connections, kept.max_read_mib, kept.reply_budget_total_mib) == (4, 1, 2)


def test_too_little_memory_is_one_line() -> None:
    with pytest.raises(StartupError) as err:
        sized(Config(), 1 * MiB)
    assert str(err.value) == (
        "server.memory: 1.0 MiB leave no room for one connection (it needs 2.0 MiB): give "
        "dumpd more memory (crashkernel=, MemoryMax=) or lower server.memory's other limits")


def test_a_crash_kernel_s_few_mib_go_to_connections() -> None:
    """At crashkernel=160M the capture kernel leaves "auto" about 6 MiB (the lab): no
    caches, one read's reply at a time, and the rest in connections."""
    config = sized(load(f"{ROOT}/systemd/dumpd-kdump.toml"), 6 * MiB + 200 * KiB)
    srv, eng = config.server, config.engine
    assert (eng.cache_mib, eng.buffer_pool_mib, eng.verdict_cache_kib) == (0.0, 0, 99)
    assert (srv.max_read_mib, srv.reply_budget_mib, srv.reply_budget_total_mib) == (1, 1, 1)
    worst = worst_case(config)
    assert srv.max_connections == (6 * MiB + 200 * KiB - 99 * KiB - MiB) \
        // worst.per_connection == 5
    assert worst.total <= 6 * MiB + 200 * KiB


def test_the_option_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "dumpd.toml"
    path.write_text('[server]\nmemory = "lots"\n')
    with pytest.raises(StartupError) as err:
        load(str(path))
    assert str(err.value) == (f'{path}: server.memory: must be "off", "auto" or MiB like '
                              "\"96MiB\", not 'lots'")


def test_the_shipped_crash_kernel_configuration() -> None:
    """systemd/dumpd-kdump.toml: its own limits' worst case (before "auto" lowers them
    further), as docs/crash-kernel.md states it."""
    config = load(f"{ROOT}/systemd/dumpd-kdump.toml")
    assert config.server.memory == "auto"
    worst = worst_case(config)
    assert worst.per_connection == (2 * 64 + 16 + 64 + 256) * KiB + (256 + 512) * KiB
    assert worst.total == 8 * 1232 * KiB + 4 * MiB + (2 + 2) * MiB + 256 * KiB
    text = ok("serve", "--check", "-c", f"{ROOT}/systemd/dumpd-kdump.toml", "--memory", "off")
    assert text.splitlines()[-1] == f"worst case: {worst.total / MiB:.2f} MiB"
    assert f"`worst case: {worst.total / MiB:.2f} MiB`" in Path(
        f"{ROOT}/docs/crash-kernel.md").read_text()


async def test_a_real_server_holds_to_the_sized_bounds(tmp_path: Path) -> None:
    """Sized for 24 MiB: its connections are refused past the derived count, the
    transports' high-water mark is the derived one, and clients that pipeline reads
    and never read make it hold no more than each term says."""
    dump = build_raw(tmp_path / "oldmem", 16 * MiB)
    config = sized(Config(), 24 * MiB)
    srv = config.server
    worst = worst_case(config)
    keys = ("max_connections", "max_read_mib", "reply_budget_mib", "reply_budget_total_mib",
            "max_frame_kib", "write_buffer_kib", "write_batch_kib", "stream_window_mib")
    async with serving(tmp_path, dump.path, engine=config.engine,
                       **{k: getattr(srv, k) for k in keys}) as server:
        socks = []
        for _ in range(srv.max_connections):
            sock = socket.socket(socket.AF_UNIX)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(server.config.server.socket)
            requests = b"".join(encode_request(i, "read", [(i % 16) * MiB, srv.max_read_mib
                                                           * MiB]) for i in range(32))
            sock.sendall(requests)
            socks.append(sock)
        await until(lambda: len(server.connections) == srv.max_connections)
        reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
        refused = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        budget = server.shared.reply_budget
        await until(lambda: budget.waits > 0 and budget.held == budget.capacity)
        await asyncio.sleep(0.2)  # what can be written has been
        for conn in server.connections:
            assert isinstance(conn, RpcConnection)
            transport = conn._transport
            assert transport is not None
            assert transport.get_write_buffer_limits()[1] == srv.write_buffer_kib * KiB
            assert transport.get_write_buffer_size() <= worst.connection_output
        assert budget.peak <= worst.replies
        for sock in socks:
            sock.close()
    assert b"EBUSY" in refused
