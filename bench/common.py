"""What the bench scenarios share: images, servers, timing, and the result row."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
PAGE = 4096
DUMPD = [sys.executable, "-m", "dumpd"]


@dataclass
class Row:
    """One line of the results table; `values` holds the raw numbers for the JSON file."""

    scenario: str
    measure: str
    dumpd: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    values: dict[str, Any] = field(default_factory=dict)


Emit = Callable[[Row], None]


def held(ok: bool, target: str) -> str:
    """`target` marked as met or missed; a missed target is said, never hidden."""
    return f"{target}: met" if ok else f"{target}: MISSED"


def make_image(path: Path, size: int) -> None:
    """`size` bytes of incompressible data (a rotated random MiB, no two MiB alike)."""
    block = random.Random(1).randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(block[i % 251 :] + block[: i % 251])
        f.write(block[: size % MiB])


def warm(path: Path) -> None:
    """Bring `path` into the OS page cache."""
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


@contextmanager
def dumpd_server(sock: Path, serve_args: Sequence[str], argv: Sequence[str] = DUMPD,
                 env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`dumpd serve --socket SOCK SERVE_ARGS` (or `argv serve ...`: a wrapped server),
    running until the block ends; then SIGTERM and a wait."""
    args = [*argv, "serve", "--socket", str(sock), "--log-level", "warning", *serve_args]
    sock.unlink(missing_ok=True)  # else an old socket would pass for the new one
    proc = subprocess.Popen(args, env=env)
    try:
        wait_for_socket(proc, sock, " ".join(args[:4]))
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def wait_for_socket(proc: subprocess.Popen[bytes], sock: Path, what: str,
                    seconds: float = 30) -> None:
    """Wait until `proc` (named `what` in the error) accepts connections on `sock`: the
    file appears at bind(), a moment before listen(), and a connection in between is
    refused."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not start")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(sock))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        time.sleep(0.005)


def timed(args: Sequence[str]) -> float:
    """Wall seconds of a command (its output discarded)."""
    start = time.perf_counter()
    status = subprocess.call(args, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed with status {status}")
    return seconds


def peak_kib(args: Sequence[str]) -> int:
    """Peak RSS (KiB) of a command: its VmHWM, polled until it exits. Not wait4's
    ru_maxrss: exec carries the forking process's high-water mark into the child's, so
    that would report this process's peak whenever it is the larger."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        with suppress(KeyError, OSError):  # exiting: no memory left to report
            peak = max(peak, status_kib(proc.pid, "VmHWM"))
        time.sleep(0.01)
    if proc.returncode:
        raise SystemExit(f"bench: {' '.join(args)} failed with status {proc.returncode}")
    return peak


def status_kib(pid: int, key: str) -> int:
    """A `/proc/PID/status` figure in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


# Servers on one CPU, the client on the other: where a process wakes up decides a
# round trip's cost on a VM more than the code does, so it is fixed for every server.
SERVER_CPU, CLIENT_CPU = 1, 0
PINNED = len(os.sched_getaffinity(0)) >= 2  # CPUs enough to keep servers and client apart
WHERE = (f"servers on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}" if PINNED
         else "one CPU shared")


def pin_server(pid: int) -> None:
    """Every thread of process `pid` onto SERVER_CPU (threads it starts later follow)."""
    if not PINNED:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {SERVER_CPU})


@contextmanager
def client_pinned() -> Iterator[None]:
    """This process on CLIENT_CPU for the block (when PINNED); its affinity is restored
    after. Servers started meanwhile inherit it until `pin_server` moves them."""
    if not PINNED:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def fresh(path: Path) -> Path:
    """`path` removed (with the record `dumpd fetch` keeps beside a copy that left pages
    out, `PATH.dumpd-holes`), and the file system synced, so that every run meets the
    same writeback state."""
    for stale in (path, path.with_name(f"{path.name}.dumpd-holes")):
        stale.unlink(missing_ok=True)
    os.sync()
    return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True)
class TlsServer:
    """A `dumpd serve` on a Unix socket and on TCP+TLS (loopback), from `serve_tls`."""

    proc: subprocess.Popen[bytes]
    port: int
    sock: Path


def serve_tls(work: Path, source: Path, pki: Path) -> TlsServer:
    """`dumpd serve` of `source` on `work`/dumpd.sock and with TLS on a free loopback
    port, with the certificates in `pki` (bench.lab.images.certificates); the caller
    waits for its socket and terminates it."""
    port = free_port()
    config = work / "dumpd.toml"
    config.write_text(f'[server]\ntcp = "127.0.0.1:{port}"\ntls_cert = "{pki}/server.pem"\n'
                      f'tls_key = "{pki}/server.key"\ntls_client_ca = "{pki}/ca.pem"\n')
    sock = work / "dumpd.sock"
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen([*DUMPD, "serve", "-c", str(config), "--socket", str(sock),
                             "--log-level", "warning", "--source", str(source)])
    return TlsServer(proc, port, sock)
