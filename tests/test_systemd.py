"""dumpd under systemd's protocols, for real: sd_notify datagrams on a real socket set as
NOTIFY_SOCKET, socket activation through `systemd-socket-activate`, graceful stop on
SIGTERM during a stream, syslog priorities when stderr is the journal."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dumpd.client import Client
from dumpd.server.systemd import Notifier, listen_fds
from tests.daemon import DUMPD, ENV, ok, run, server_pid, slow_server, state_of
from tests.dumps import build_raw, file_bytes

PAGE = 4096
MiB = 1 << 20


@contextmanager
def notify_socket(tmp_path: Path, abstract: bool) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket the way systemd listens for sd_notify, and its NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"dumpd-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(10)
    try:
        yield sock, address
    finally:
        sock.close()


def datagrams_until(sock: socket.socket, want: str, seconds: float = 10) -> list[str]:
    """Every datagram received until one holding the line `want`."""
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = sock.recv(4096).decode()
        got.append(message)
        if want in message.split("\n"):
            return got
    raise AssertionError(f"no {want!r} in {got}")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_status_watchdog_stopping(tmp_path: Path, abstract: bool) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    sock_path = tmp_path / "dumpd.sock"
    with notify_socket(tmp_path, abstract) as (listener, address):
        env = {**ENV, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
        proc = subprocess.Popen([*DUMPD, "serve", "--source", dump.path, "--socket",
                                 str(sock_path)], env=env, stderr=subprocess.PIPE)
        try:
            ready = datagrams_until(listener, "READY=1")
            assert sock_path.is_socket()  # READY only once it listens
            ok("read", "0", "8", "--socket", str(sock_path))
            pings = datagrams_until(listener, "WATCHDOG=1")
            pings += datagrams_until(listener, "WATCHDOG=1")
            pings += datagrams_until(listener, "WATCHDOG=1")
        finally:
            proc.send_signal(signal.SIGTERM)
        stopping = datagrams_until(listener, "STOPPING=1")
        assert proc.wait(10) == 0
    lines = ready[-1].split("\n")
    assert lines[0] == "READY=1"
    assert lines[1] == (f"STATUS=serving {dump.path}: 0 clients, 0 bytes served, "
                        "hook (none registered)")
    assert lines[2] == f"MAINPID={proc.pid}"
    statuses = [line for message in pings for line in message.split("\n")
                if line.startswith("STATUS=")]
    assert (f"STATUS=serving {dump.path}: 0 clients, 8 bytes served, "
            "hook (none registered)") in statuses
    assert stopping[-1] == "STOPPING=1\nSTATUS=stopping: finishing running requests"


def test_no_watchdog_pings_for_another_process(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "200000",
                         "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.enabled and notifier.watchdog is None
    assert Notifier({"WATCHDOG_USEC": "5000000"}).watchdog == 5.0
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_listen_fds_only_for_this_process() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "dumpd"}
    assert listen_fds(env) == []
    assert env == {}  # taken out either way, so children do not see them


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_socket_activation(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    activated = tmp_path / "activated.sock"
    own = tmp_path / "own.sock"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        activator = subprocess.Popen(
            ["systemd-socket-activate", "-l", str(activated), "--fdname=dumpd",
             *DUMPD, "serve", "--source", dump.path, "--socket", str(own)],
            stdout=out, stderr=out, env=ENV)
    try:
        deadline = time.monotonic() + 10
        while not activated.exists():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        with Client.connect(str(activated), timeout=20) as client:  # starts dumpd
            data = client.read(PAGE, 16)
            size = client.info()["size"]
        pid = server_pid(str(activated))
        assert not own.exists()  # it served the socket it was given, bound none
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while b"SIGTERM: shutting down" not in log.read_bytes():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(10)
    assert data == file_bytes(dump.path, PAGE, 16) and size == dump.size
    assert f"on {activated}, hook (none registered)" in log.read_text()


@pytest.mark.parametrize(("timeout", "finished"), [(30.0, True), (0.3, False)],
                         ids=["within-deadline", "past-deadline"])
def test_sigterm_lets_a_stream_finish_within_the_deadline(tmp_path: Path, timeout: float,
                                                          finished: bool) -> None:
    """SIGTERM once the stream runs (its first bytes in the copy, not after a fixed sleep):
    within the deadline it finishes; past it (the slow source needs seconds more), the
    server stops with the copy cut short and resumable."""
    dump = build_raw(tmp_path / "oldmem", 6 * MiB)
    sock, copy = tmp_path / "dumpd.sock", tmp_path / "copy"
    config = tmp_path / "dumpd.toml"
    config.write_text(f"[server]\nshutdown_timeout = {timeout}\n")
    server = slow_server(tmp_path, dump.path, sock, "-c", str(config))
    fetcher = subprocess.Popen([*DUMPD, "fetch", "-q", "-o", str(copy), "--chunk", "65536",
                                "--socket", str(sock)], stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 10
    # Until the copy holds data: bytes the server sent may still be in flight (and an
    # abort would drop them), bytes on disk are the fetch's own.
    while not (copy.exists() and copy.stat().st_blocks):
        assert time.monotonic() < deadline, "the stream never started"
        time.sleep(0.02)
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout + 10) == 0
    _, err = fetcher.communicate(timeout=30)
    if finished:
        assert fetcher.returncode == 0, err.decode()
        assert copy.read_bytes() == file_bytes(dump.path)
    else:
        assert fetcher.returncode == 1
        assert "run the same command with --resume to continue" in err.decode()
        assert 0 < state_of(copy)["done"] < dump.size  # cut by the deadline, not finished


def test_log_lines_carry_syslog_priorities_for_the_journal(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    log = tmp_path / "journal.log"
    with open(log, "wb") as out:
        st = os.fstat(out.fileno())
        env = {**ENV, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen([*DUMPD, "serve", "--source", dump.path, "--socket",
                                 str(tmp_path / "dumpd.sock")], stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + 10
        while b"serving" not in log.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith(f"<6>serving {dump.path} (raw physical memory: no ELF or known "
                               f'dump signature, as kind = "raw", {dump.size} bytes')
    assert "<6>SIGTERM: shutting down" in lines
    plain = run("serve", "--source", str(tmp_path / "missing"), "--socket",
                str(tmp_path / "x.sock"))
    assert plain.stderr.decode().startswith("dumpd: ")


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_an_activated_tcp_socket_must_be_loopback(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    with socket.socket() as probe:  # a free port
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        activator = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"0.0.0.0:{port}", *DUMPD, "serve",
             "--source", dump.path, "--socket", str(tmp_path / "own.sock")],
            stdout=out, stderr=out, env=ENV)
    try:
        deadline = time.monotonic() + 10
        while True:  # connect (which starts dumpd) until dumpd has refused to start
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2):
                pass
            if b"socket activation" in log.read_bytes():
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(10)
    assert (f"dumpd: socket activation: fd 3 (unknown) listens on 0.0.0.0:{port}: a "
            "non-loopback address needs TLS (server.tls_cert, server.tls_key, "
            "server.tls_client_ca): anyone who reaches the port could read the dump"
            ) in log.read_text().splitlines()
