"""The end of the job (`dumpd/server/finish.py`): `done`, verified fetches, idle and the
deadline end a real server on a fake clock at exact times with exact reasons, and never
cut a running fetch unless told to (`--now`, the deadline); `dumpd serve` ended by a real
`dumpd fetch --verify` and by `dumpd done` exits 3 (EXIT_FINISHED) and says why, one
stopped by SIGTERM exits 0 even while a finish waits; the systemd drop-in reboots on
exit 3 (and 2) only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from dumpd.client import Client, RemoteError
from dumpd.client.aio import AsyncClient
from dumpd.config import Config, FinishConfig, ServerConfig, SourceConfig, load
from dumpd.errors import StartupError
from dumpd.fetch import FetchRequest, fetch
from dumpd.fetch.state import SUFFIX, FetchState
from dumpd.runner import EXIT_FINISHED
from dumpd.server import Server
from dumpd.sources.base import Source
from tests.clock import FakeClock
from tests.daemon import DUMPD, ENV, log_lines, run
from tests.dumps import build_raw, file_bytes
from tests.servers import client_of, failing, free_port, serving, until
from tests.units import unit

PAGE = 4096
MiB = 1 << 20


def me() -> str:
    """How the server names this process, a peer on its Unix socket."""
    return f"uid {os.geteuid()} pid {os.getpid()}"


async def refusal(server: Server) -> list[object]:
    """What a connection made now receives before EOF, decoded."""
    reader, writer = await asyncio.open_unix_connection(server.config.server.socket)
    data = await reader.read()
    writer.close()
    message: list[object] = msgpack.unpackb(data, raw=False)
    return message


def stopped(server: Server) -> asyncio.Future[None]:
    """`serve_until_stopped`, running: done once the server is to stop."""
    return asyncio.ensure_future(server.serve_until_stopped())


async def settled() -> None:
    """Let the loop run what became ready (a stop, a close)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Held:
    """A stream's kernel-side copy of the bytes from `at` waits for `release`; `reached`
    is set when one waits, `returned` when it went on."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.reached, self.release, self.returned = (threading.Event() for _ in range(3))


@contextlib.contextmanager
def held(source: Source, at: int) -> Iterator[Held]:
    """While inside, copies of the source's bytes from `at` wait (`Held`); released on
    the way out at the latest."""
    copy, hold = source.copy_to, Held(at)

    def waiting(fd: int, offset: int, count: int) -> int:
        if offset + count <= at:
            return copy(fd, offset, count)
        hold.reached.set()
        hold.release.wait(30)
        try:
            return copy(fd, offset, count)
        finally:
            hold.returned.set()

    source.copy_to = waiting  # type: ignore[method-assign]
    try:
        yield hold
    finally:
        hold.release.set()
        source.copy_to = copy  # type: ignore[method-assign]


def fetched(sock: str, out: Path, resume: bool = False) -> int:
    """`dumpd fetch --verify` of the whole view into `out` (run in a thread)."""
    return fetch(FetchRequest(sock, str(out), resume=resume, verify=True, quiet=True))


# -- idle ---------------------------------------------------------------------------------

async def test_idle_counts_from_the_last_close_and_a_connection_resets_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not armed before the first client; two clients, the idle time counts from the
    second one's close; a client back at 39.999 (a fetch's reconnect) resets it; then
    not finished at 79.999, finished at 80 exactly, with the reason, logged once."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    clock = FakeClock()
    caplog.set_level(logging.INFO, "dumpd.server")
    async with serving(tmp_path, dump.path, clock=clock,
                       finish=FinishConfig(idle_timeout=30)) as server:
        serving_ = stopped(server)
        clock.advance_to(1000)  # nobody came yet: idle is not armed
        await settled()
        assert not serving_.done()
        first = await AsyncClient.connect(server.config.server.socket)
        second = await AsyncClient.connect(server.config.server.socket)
        assert (await first.info())["finish"] == {
            "fetches": 0, "verified_fetches": 0, "idle_timeout": 30.0, "deadline": 0.0,
            "deadline_left": None, "finishing": None}
        await first.close()
        clock.advance_to(1009)
        await second.read(0, 8)
        await second.close()
        await until(lambda: not server.connections)  # closed at 1009
        clock.advance_to(1038.999)
        async with client_of(server) as back:  # the reconnect, just in time
            assert await back.read(PAGE, 8) == file_bytes(dump.path, PAGE, 8)
            clock.advance_to(1050)
        await until(lambda: not server.connections)  # closed at 1050
        clock.advance_to(1079.999)
        await settled()
        before = (serving_.done(), server.finished)
        clock.advance_to(1080)
        await settled()
        assert before == (False, None)
        assert serving_.done()
        reason = "idle: no client for 30 s (finish.idle_timeout)"
        assert server.finished == reason
        assert await refusal(server) == [2, "error", [
            "ESHUTDOWN", f"the server is finishing ({reason}): it serves no new connection"]]
    finished = [r.getMessage() for r in caplog.records if r.getMessage().startswith("finished")]
    assert finished == [f"finished: {reason}"]


async def test_idle_never_fires_while_a_stream_runs(tmp_path: Path) -> None:
    """A fetch whose stream is held (its copy waits) for 10 000 s of an idle time of 5:
    not cut, byte-exact and verified; idle counts from its close."""
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    clock = FakeClock()
    async with serving(tmp_path, dump.path, clock=clock, idle_timeout=0.0,
                       finish=FinishConfig(idle_timeout=5)) as server:
        assert server.source is not None
        serving_ = stopped(server)
        out = tmp_path / "copy"
        with held(server.source, MiB + PAGE) as hold:
            copying = asyncio.ensure_future(asyncio.to_thread(
                fetched, server.config.server.socket, out))
            await until(hold.reached.is_set)
            clock.advance_to(10_000)
            await settled()
            cut = (serving_.done(), len(server.connections))
            hold.release.set()
            assert await copying == 0
        assert cut == (False, 1)
        assert out.read_bytes() == file_bytes(dump.path)
        await until(lambda: not server.connections)
        clock.advance_to(10_004.999)
        await settled()
        assert not serving_.done()
        clock.advance_to(10_005)
        await settled()
        assert serving_.done() and server.finished == (
            "idle: no client for 5 s (finish.idle_timeout)")


async def test_a_fetch_resumed_within_the_idle_time_completes(tmp_path: Path) -> None:
    """A fetch that ended incomplete (a range the source could not read) leaves no
    connection; resumed 29.999 s later, within an idle time of 30, it completes and
    verifies; idle then counts from the resumed fetch's close."""
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    clock = FakeClock()
    async with serving(tmp_path, dump.path, clock=clock,
                       finish=FinishConfig(idle_timeout=30)) as server:
        assert server.source is not None
        serving_ = stopped(server)
        sock, out = server.config.server.socket, tmp_path / "copy"
        with failing(server.source, range(7 * PAGE, 9 * PAGE)):
            assert await asyncio.to_thread(fetched, sock, out) == 1
        await until(lambda: not server.connections)
        clock.advance_to(29.999)
        await settled()
        assert not serving_.done()
        assert await asyncio.to_thread(fetched, sock, out, True) == 0
        assert out.read_bytes() == file_bytes(dump.path)
        await until(lambda: not server.connections)
        clock.advance_to(59.998)
        await settled()
        assert not serving_.done()
        clock.advance_to(59.999)
        await settled()
        assert serving_.done() and server.finished == (
            "idle: no client for 30 s (finish.idle_timeout)")


# -- done ---------------------------------------------------------------------------------

async def test_done_lets_a_running_fetch_finish_and_refuses_new_connections(
        tmp_path: Path) -> None:
    """`done` while a fetch's stream runs: the fetch completes (its --verify digest and
    report come after `done`), a new connection gets ESHUTDOWN, and the server stops when
    the last connection closes, with the reason."""
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    async with serving(tmp_path, dump.path) as server:
        assert server.source is not None
        serving_ = stopped(server)
        out = tmp_path / "copy"
        with held(server.source, MiB) as hold:
            copying = asyncio.ensure_future(asyncio.to_thread(
                fetched, server.config.server.socket, out))
            await until(hold.reached.is_set)
            admin = await AsyncClient.connect(server.config.server.socket)
            reply = await admin.done()
            reason = f"done, asked by {me()}"
            assert reply == {"reason": reason, "stopping": False, "connections": 2}
            assert await admin.done() == reply  # asked again: the same, still waiting
            assert await refusal(server) == [2, "error", [
                "ESHUTDOWN", f"the server is finishing ({reason}): it serves no new "
                "connection"]]
            hold.release.set()
            assert await copying == 0
        assert out.read_bytes() == file_bytes(dump.path)
        assert (await admin.info())["finish"]["finishing"] == reason
        assert not serving_.done()  # the admin's connection is still open
        await admin.close()
        await until(serving_.done)
        assert server.finished == reason
        stats = server.shared.stats()
        assert stats["finishing_refused_connections"] == 1


async def test_done_now_drains_within_shutdown_timeout(tmp_path: Path) -> None:
    """`done --now`: the server stops at once; an idle connection closes, the held
    stream gets shutdown_timeout (on the fake clock: still served at 0.299 s of 0.3)
    and is then cut."""
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    clock = FakeClock()
    config = Config(source=SourceConfig(path=dump.path),
                    server=ServerConfig(socket=str(tmp_path / "dumpd.sock"),
                                        shutdown_timeout=0.3))
    server = Server(config, clock=clock)
    await server.start()
    assert server.source is not None
    serving_ = stopped(server)
    with held(server.source, MiB) as hold:
        idle = await AsyncClient.connect(config.server.socket)
        assert await idle.read(0, 8) == file_bytes(dump.path, 0, 8)
        copying = asyncio.ensure_future(asyncio.to_thread(
            fetched, config.server.socket, tmp_path / "copy"))
        await until(hold.reached.is_set)
        async with client_of(server) as admin:
            reply = await admin.done(now=True)
        reason = f"done --now, asked by {me()}"
        assert reply == {"reason": reason, "stopping": True, "connections": 3}
        await until(serving_.done)
        shutdown = asyncio.ensure_future(server.shutdown())
        await until(lambda: len(server.connections) == 1)  # the idle ones closed
        clock.advance_to(0.299)
        await settled()
        cut_early = shutdown.done()
        clock.advance_to(0.3)
        await until(lambda: not server.connections)
        hold.release.set()
        await until(hold.returned.is_set)
        await shutdown
        assert await copying == 1  # cut: `fetch --resume` continues it
        await idle.close()
    assert not cut_early
    assert server.finished == reason


async def test_a_stop_while_done_waits_is_no_finish(tmp_path: Path) -> None:
    """`stop()` (what SIGTERM calls) while `done` waits for a connection and a deadline is
    armed: neither that connection's close in the shutdown nor the deadline passing in it
    makes the stop a finish (`finished` stays None: exit 0, no reboot)."""
    dump = build_raw(tmp_path / "oldmem", MiB)
    clock = FakeClock()
    config = Config(source=SourceConfig(path=dump.path),
                    server=ServerConfig(socket=str(tmp_path / "dumpd.sock")),
                    finish=FinishConfig(deadline=60.0))
    server = Server(config, clock=clock)
    await server.start()
    serving_ = stopped(server)
    other = await AsyncClient.connect(config.server.socket)
    assert await other.read(0, 8) == file_bytes(dump.path, 0, 8)
    async with client_of(server) as admin:
        assert (await admin.done())["connections"] == 2
    await settled()
    assert not serving_.done() and server.finish.reason is not None  # it waits for `other`
    server.stop()
    await until(serving_.done)
    shutdown = asyncio.ensure_future(server.shutdown())
    await until(lambda: not server.connections)  # `other`, idle, closed: the last one
    clock.advance_to(60.0)
    await shutdown
    await other.close()
    assert server.finished is None
    assert clock.fired == []  # the deadline's timer was cancelled by the stop


async def test_done_is_for_administrators_only(tmp_path: Path) -> None:
    """A TCP peer is never an administrator: EACCES, and the server goes on."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    port = free_port()
    async with serving(tmp_path, dump.path, tcp=f"127.0.0.1:{port}") as server:
        async with await AsyncClient.connect_tcp("127.0.0.1", port) as tcp:
            with pytest.raises(RemoteError) as err:
                await tcp.done()
            assert (err.value.code, err.value.message) == (
                "EACCES", "done is for administrators only")
            with pytest.raises(RemoteError) as err:
                await tcp.call("done", {"now": 1})
            assert err.value.code == "EACCES"  # access is checked before the options
            assert (await tcp.info())["finish"]["finishing"] is None
        async with client_of(server) as admin:
            for params, message in (([{"soon": True}], "unknown done option 'soon' "
                                     "(known: now)"), ([{"now": 1}], "now must be true or "
                                     "false, got 1"), ([[]], "options must be a map with "
                                     "str keys")):
                with pytest.raises(RemoteError) as err:
                    await admin.call("done", *params)
                assert (err.value.code, err.value.message) == ("EINVAL", message)
        assert server.finished is None and server.finish.refusal is None


# -- verified fetches ------------------------------------------------------------------------

async def test_verified_fetches_count_once_each_and_only_with_the_servers_digest(
        tmp_path: Path) -> None:
    """finish.fetches = 2: a real fetch --verify counts 1; its report again, and a
    wrong digest, do not count; a report after the hook changed the view needs a new
    digest; a fetch cut by a read error and resumed keeps its id and counts as one, the
    second: the server finishes once the connections close."""
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    async with serving(tmp_path, dump.path, finish=FinishConfig(fetches=2)) as server:
        assert server.source is not None
        serving_ = stopped(server)
        sock = server.config.server.socket
        first = tmp_path / "first"
        assert await asyncio.to_thread(fetched, sock, first) == 0
        assert len(server.finish.fetch_ids) == 1
        (first_id,) = server.finish.fetch_ids
        whole = hashlib.sha256(file_bytes(dump.path)).hexdigest()
        async with client_of(server) as client:
            assert (await client.info())["finish"]["verified_fetches"] == 1
            assert await client.fetch_verified(first_id, whole) == {
                "counted": False, "fetches": 1, "needed": 2}
            with pytest.raises(RemoteError) as err:
                await client.fetch_verified("another", hashlib.sha256(b"x").hexdigest())
            assert err.value.code == "EINVAL" and "the copy differs (not counted)" in str(
                err.value)
            await client.hook_register("none", {})  # a new generation: a new view
            with pytest.raises(RemoteError) as err:
                await client.fetch_verified("another", whole)
            assert err.value.code == "EINVAL" and "no sha256 digest of the whole view" in str(
                err.value)
            partial = await client.digest(0, dump.size - PAGE)  # not the whole view
            with pytest.raises(RemoteError):
                await client.fetch_verified("another", partial["digest"])
            assert server.finish.fetch_ids == {first_id}
            second = tmp_path / "second"
            with failing(server.source, range(5 * PAGE, 6 * PAGE)):
                assert await asyncio.to_thread(fetched, sock, second) == 1  # incomplete
            second_id = FetchState.load(f"{second}{SUFFIX}").fetch_id
            assert server.finish.fetch_ids == {first_id} and second_id != first_id
            assert await asyncio.to_thread(fetched, sock, second, True) == 0
            assert server.finish.fetch_ids == {first_id, second_id}
            reason = "2 verified fetches of the whole view (finish.fetches = 2)"
            assert (await client.info())["finish"]["finishing"] == reason
            assert not serving_.done()
        await until(serving_.done)
        assert server.finished == reason
        assert second.read_bytes() == file_bytes(dump.path)


# -- the deadline ------------------------------------------------------------------------------

async def test_the_deadline_stops_at_its_time(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    clock = FakeClock(100.0)
    async with serving(tmp_path, dump.path, clock=clock,
                       finish=FinishConfig(deadline=50, idle_timeout=10)) as server:
        serving_ = stopped(server)
        async with client_of(server) as client:
            clock.advance_to(140)
            assert (await client.info())["finish"]["deadline_left"] == 10.0
            clock.advance_to(149.999)
            await settled()
            early = serving_.done()
            clock.advance_to(150)
            await until(serving_.done)
        assert not early
        assert server.finished == "deadline: 50 s after start (finish.deadline)"


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("fetches = -1", "finish.fetches: must be in [0, 1024], not -1"),
    ("fetches = 1025", "finish.fetches: must be in [0, 1024], not 1025"),
    ("fetches = 1.5", "finish.fetches: expected a whole number of fetches, got 1.5"),
    ("idle_timeout = -1", "finish.idle_timeout: must not be negative, not -1.0"),
    ('deadline = "1h"', 'finish.deadline: expected a number of seconds, got "1h"'),
    ("after = 3", "[finish] unknown key 'after' (known: deadline, fetches, idle_timeout)"),
])
def test_finish_options_are_checked(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "dumpd.toml"
    path.write_text(f"[finish]\n{text}\n")
    with pytest.raises(StartupError) as err:
        load(str(path))
    assert str(err.value) == f"{path}: {message}"


def test_finish_options_load(tmp_path: Path) -> None:
    path = tmp_path / "dumpd.toml"
    path.write_text("[finish]\nfetches = 2\nidle_timeout = 300\ndeadline = 3600.5\n")
    assert load(str(path)).finish == FinishConfig(fetches=2, idle_timeout=300.0,
                                                  deadline=3600.5)


# -- the daemon --------------------------------------------------------------------------------

def start(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path, str]:
    """`dumpd serve` of `name`'s socket in tmp_path; the process, its log, its socket."""
    sock = tmp_path / f"{name}.sock"
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*DUMPD, "serve", "--socket", str(sock), *args],
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    deadline = time.monotonic() + 15
    while b": INFO: serving " not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    return proc, log, str(sock)


def test_dumpd_serve_ends_after_a_verified_fetch_and_on_dumpd_done(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 3 * MiB + PAGE)
    proc, log, sock = start(tmp_path, "fetched", "--source", dump.path,
                            "--finish-fetches", "1")
    try:
        info = run("info", "--socket", sock).stdout.decode()
        assert "finish   after 1 verified fetches (0 so far)\n" in info
        result = run("fetch", "--verify", "-o", str(tmp_path / "copy"), "--socket", sock)
        assert result.returncode == 0, result.stderr.decode()
        assert b"fetch: verified fetch 1 of the 1 the server waits for" in result.stderr
        status = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == EXIT_FINISHED
    assert (tmp_path / "copy").read_bytes() == file_bytes(dump.path)
    lines = log_lines(log, proc.pid)
    assert lines[-1] == ("INFO: finished: 1 verified fetches of the whole view "
                         "(finish.fetches = 1)")
    assert not Path(sock).exists()

    proc, log, sock = start(tmp_path, "done", "--source", dump.path)
    try:
        result = run("done", "--socket", sock)
        status = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (result.returncode, result.stderr) == (0, b"")
    reason_start = "done, asked by uid "
    printed = result.stdout.decode()
    assert printed.startswith(f"dumpd finishes ({reason_start}")
    assert printed.endswith(") once 0 other connections close; it serves no new one\n")
    assert status == EXIT_FINISHED
    last = log_lines(log, proc.pid)[-1]
    assert last.startswith(f"INFO: finished: {reason_start}{os.geteuid()} pid "), last


def test_sigterm_while_done_waits_is_a_stop_not_a_finish(tmp_path: Path) -> None:
    """`dumpd done` waits for an open connection; SIGTERM then (`systemctl stop`) closes
    it, and that last close does not make it a finish: exit 0, no `finished:`, so the
    drop-in does not reboot."""
    dump = build_raw(tmp_path / "oldmem", MiB)
    proc, log, sock = start(tmp_path, "stopped", "--source", dump.path)
    try:
        with Client.connect(sock) as other:
            assert other.info()["size"] == MiB  # served: a connection `done` waits for
            result = run("done", "--socket", sock)
            assert result.stdout.decode().endswith(
                ") once 1 other connections close; it serves no new one\n")
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == 0
    lines = log_lines(log, proc.pid)
    assert "INFO: SIGTERM: shutting down" in lines
    assert not [line for line in lines if "finished" in line], lines


# -- the way back: systemd ------------------------------------------------------------------

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
DROP_IN = SYSTEMD / "dumpd.service.d" / "finish.conf"


def test_the_drop_in_reboots_only_after_a_finish_or_a_start_up_error() -> None:
    """No SuccessAction= (a stop exits 0 too) and no FailureAction= (a stop that times
    out, or a second signal, fails the unit): the reboots are the ExecStopPost= commands,
    which look at dumpd's status, and the start limit."""
    settings = unit(DROP_IN)
    assert settings.keys() == {"Service", "Unit"}
    assert settings["Unit"] == {"StartLimitAction": ["reboot"]}
    assert settings["Service"].keys() == {"ExecStopPost"}
    assert [value.startswith("+/bin/sh -c ") for value in settings["Service"]["ExecStopPost"]] \
        == [True, True]  # "+": outside the sandbox, whose empty bounding set systemctl lacks


@pytest.mark.parametrize("path", [SYSTEMD / "dumpd.service", SYSTEMD.parent / "packaging"
                                  / "dracut" / "99dumpd" / "dumpd-kdump.service"])
def test_every_unit_running_dumpd_serve_counts_finished_a_success(path: Path) -> None:
    """Exit 3 is no failure: not restarted, no failed unit (the dracut unit is a oneshot
    kdump waits for)."""
    service = unit(path)["Service"]
    assert " serve " in service["ExecStart"][0]
    assert service["SuccessExitStatus"] == [str(EXIT_FINISHED)]


def stop_post(tmp_path: Path, code: str, status: str) -> list[str]:
    """Run the drop-in's ExecStopPost= commands as systemd does after dumpd ended with
    EXIT_CODE=`code`, EXIT_STATUS=`status` (in order, each to succeed), with a fake
    `systemctl` first on PATH; the command lines it was called with."""
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "systemctl.calls"
    if not bin_dir.exists():
        bin_dir.mkdir()
        fake = bin_dir / "systemctl"
        fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
        fake.chmod(0o755)
    calls.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "EXIT_CODE": code, "EXIT_STATUS": status}
    for line in unit(DROP_IN)["Service"]["ExecStopPost"]:
        # systemd splits it as the shell does here: no backslash, no "$$" or "${" of its own
        assert "\\" not in line and "$$" not in line and "${" not in line, line
        done = subprocess.run(shlex.split(line.removeprefix("+")), env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), (line, done)
    return calls.read_text().splitlines()


@pytest.mark.parametrize(("code", "status", "reboots"), [
    ("exited", str(EXIT_FINISHED), True),  # finished: `dumpd done`, [finish]
    ("exited", "2", True),  # a start-up error: the dump cannot be served
    ("exited", "0", False),  # SIGTERM: `systemctl stop`, `systemctl restart`
    ("exited", "1", False),  # a second signal, or dumpd failed (restarted)
    ("killed", "KILL", False),  # a stop past TimeoutStopSec=, `systemctl kill -s KILL`
    ("killed", "TERM", False),
    ("dumped", "ABRT", False),  # the watchdog (restarted)
    ("exited", "203", False),  # systemd could not run dumpd (restarted)
])
def test_the_stop_post_commands_reboot_on_exit_3_and_2_only(
        tmp_path: Path, code: str, status: str, reboots: bool) -> None:
    assert stop_post(tmp_path, code, status) == (["--no-block reboot"] if reboots else [])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
@pytest.mark.parametrize(("mistake", "complaint"), [
    (None, None),
    (("StartLimitAction=reboot", "StartLimitAction=rebooot"),
     r"{units}/dumpd\.service\.d/finish\.conf:\d+: Failed to parse StartLimitAction=, "
     "ignoring: rebooot"),
    (("+/bin/sh -c", "+/bin/shh -c"),
     r"dumpd\.service: Command /bin/shh is not executable: No such file or directory"),
])
def test_systemd_analyze_verify_reads_the_drop_in(
        tmp_path: Path, mistake: tuple[str, str] | None, complaint: str | None) -> None:
    """The drop-in beside the unit is read (a mistake in it is reported), and as shipped
    it has none."""
    units = tmp_path / "units"
    (units / "dumpd.service.d").mkdir(parents=True)
    script = Path(sys.executable).parent / "dumpd"
    service = (SYSTEMD / "dumpd.service").read_text()
    (units / "dumpd.service").write_text(service.replace(
        "ExecStart=/usr/local/bin/dumpd ", f"ExecStart={script} "))
    shutil.copy(SYSTEMD / "dumpd.socket", units / "dumpd.socket")
    drop_in = DROP_IN.read_text()
    if mistake is not None:
        assert mistake[0] in drop_in
        drop_in = drop_in.replace(*mistake, 1)
    (units / "dumpd.service.d" / "finish.conf").write_text(drop_in)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "dumpd.service"),
                           str(units / "dumpd.socket")], capture_output=True, text=True,
                          timeout=120, check=False)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "dumpd" in line]
    if complaint is None:
        assert ours == []
    else:
        assert len(ours) == 1 and re.fullmatch(
            complaint.format(units=re.escape(str(units))), ours[0]), ours
