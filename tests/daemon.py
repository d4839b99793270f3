"""Running `python -m dumpd` as an operator does: commands and real daemons in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DUMPD = [sys.executable, "-m", "dumpd"]
ROOT = str(Path(__file__).resolve().parent.parent)
# This checkout's dumpd, whatever the working directory (servers run in tmp_path, where
# `python -m dumpd` would otherwise import the copy installed in the environment).
ENV = {**{k: v for k, v in os.environ.items() if k != "DUMPD_SOCKET"},
       "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z dumpd\[(\d+)\]: (.*)")
"""A line of `dumpd serve`'s log on a stderr that is not the journal: UTC time, pid."""


def run(*args: str, timeout: float = 30, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*DUMPD, *args], capture_output=True, timeout=timeout,
                          env=env or ENV, cwd=cwd, stdin=subprocess.DEVNULL, check=False)


def ok(*args: str, **kwargs: Any) -> str:
    """Run a command that must succeed; its stdout as text."""
    result = run(*args, **kwargs)
    assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode()
    return result.stdout.decode()


def one_line_error(result: subprocess.CompletedProcess[bytes], status: int) -> str:
    """The single `dumpd: ...` line of a failed command."""
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert result.returncode == status, stderr
    assert result.stdout == b""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dumpd: "), stderr
    return lines[0]


@contextlib.contextmanager
def served(tmp_path: Path, source: str | None, *extra: str) -> Iterator[str]:
    """`dumpd serve` on tmp_path/run/dumpd.sock until SIGTERM; yields the socket path.

    On the way out: exit status 0, the socket file removed, no traceback in the log,
    every line of it stamped (`log_lines`).
    """
    sock = tmp_path / "run" / "dumpd.sock"
    sock.parent.mkdir(mode=0o700, exist_ok=True)  # dumpd creates only its default's directory
    log_path = tmp_path / "serve.log"
    args = ["serve", "--socket", str(sock), *extra]
    if source is not None:
        args += ["--source", source]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*DUMPD, *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while b": INFO: serving " not in log_path.read_bytes():
            if proc.poll() is not None:
                pytest.fail(f"dumpd serve exited with {proc.returncode}: "
                            f"{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"dumpd serve did not start: {log_path.read_text()}")
            time.sleep(0.02)
        assert sock.is_socket()
        yield str(sock)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    output = log_path.read_text()
    assert status == 0, output
    assert not sock.exists()
    assert "Traceback" not in output, output
    assert "INFO: SIGTERM: shutting down" in log_lines(log_path, proc.pid)


def log_lines(path: Path, pid: int) -> list[str]:
    """The lines of the log at `path` as `LEVEL: message`, each checked to carry a time
    stamp and `pid` first."""
    lines = []
    for line in path.read_text().splitlines():
        match = LOG_LINE.fullmatch(line)
        assert match is not None and int(match[1]) == pid, line
        lines.append(match[2])
    return lines


def source_identity(path: str) -> dict[str, Any]:
    """What `info` reports in `source` about the file at `path` beside kind and path."""
    st = os.stat(path)
    identity: dict[str, Any] = {"device": st.st_dev, "inode": st.st_ino, "rdev": st.st_rdev,
                                "mtime_ns": st.st_mtime_ns}
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot_id:
        identity["boot_id"] = boot_id.read().strip()
    return identity


def info_json(sock: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(ok("info", "--json", "--socket", sock))
    return info


def stats_json(sock: str) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads(ok("stats", "--json", "--socket", sock))
    return stats


def server_pid(sock_path: str) -> int:
    """The pid of the process serving `sock_path`, from its peer credentials."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(sock_path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


SLOW_DISK = """
import sys, time
from dumpd.sources.base import Source
from dumpd.cli import main

read_into, copy = Source.read_into, Source.copy_to

def slow_read_into(self, offset, view):
    time.sleep(0.04)  # a slow disk: 40 ms a read (four reader threads)
    read_into(self, offset, view)

def slow_copy(self, fd, offset, count):
    time.sleep(0.02)  # 20 ms a sendfile call (one stream sends one frame at a time)
    return copy(self, fd, offset, count)

Source.read_into = slow_read_into
Source.read_cached_into = lambda self, offset, view: 0  # nothing is ever cached
Source.copy_to = slow_copy
sys.exit(main(sys.argv[1:]))
"""


def slow_server(tmp_path: Path, image: str, sock: Path, *args: str
                ) -> subprocess.Popen[bytes]:
    """A real `dumpd serve` over a slow source (40 ms a read, 20 ms a sendfile call), so
    a fetch of a few MiB in 64 KiB frames takes seconds; `args` go to `serve`."""
    log = open(tmp_path / f"serve-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DISK, "serve", *args, "--source",
                             image, "--socket", str(sock)], stdout=log, stderr=log,
                            env=ENV, cwd=tmp_path)
    log.close()
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return proc


def state_of(copy: Path) -> dict[str, Any]:
    """The resume state `dumpd fetch` keeps beside `copy`."""
    state: dict[str, Any] = json.loads(Path(f"{copy}.dumpd-fetch").read_text())
    return state
