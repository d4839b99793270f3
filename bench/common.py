"""What the bench scenarios share: images, servers, timing, and the result row."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    proc = subprocess.Popen(args, env=env)
    try:
        wait_for_socket(proc, sock, " ".join(args[:4]))
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def wait_for_socket(proc: subprocess.Popen[bytes], sock: Path, what: str,
                    seconds: float = 30) -> None:
    """Wait until `proc` (named `what` in the error) has created `sock`."""
    deadline = time.monotonic() + seconds
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not start")
        time.sleep(0.01)


def timed(args: Sequence[str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed with status {status}")
    return seconds, usage.ru_maxrss


def status_kib(pid: int, key: str) -> int:
    """A `/proc/PID/status` figure in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def fresh(path: Path) -> Path:
    """`path` removed, and the file system synced, so that every run meets the same
    writeback state."""
    if path.exists():
        path.unlink()
    os.sync()
    return path
