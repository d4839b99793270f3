"""Server memory stays bounded whatever a client does: measured as the RSS of a real
`dumpd serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dumpd.client import Client
from dumpd.protocol import encode_request
from tests.dumps import build_raw, file_bytes

MiB = 1 << 20


@contextmanager
def dumpd_serve(tmp_path: Path, source: str, *flags: str) -> Iterator[tuple[int, str]]:
    sock = str(tmp_path / "dumpd.sock")
    proc = subprocess.Popen([sys.executable, "-m", "dumpd", "serve", "--source", source,
                             "--socket", sock, "--log-level", "warning", *flags])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, "dumpd did not start"
            time.sleep(0.01)
        yield proc.pid, sock
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_client_that_never_reads_costs_bounded_memory(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * MiB)
    with (dumpd_serve(tmp_path, dump.path, "--cache-mib", "16") as (pid, sock),
          Client.connect(sock) as warm):  # threads, buffers and caches in place
        for offset in range(0, 64 * MiB, 8 * MiB):
            warm.read(offset, 8 * MiB)
        before = rss(pid)
        flood = socket.socket(socket.AF_UNIX)
        flood.connect(sock)
        flood.setblocking(False)
        # 4 MB of requests (1.6 TB of replies if nothing held back): more than the server
        # may buffer undecoded (2 x max_frame_kib) plus the socket buffers.
        frames = b"".join(encode_request(i % 2**32, "read", [(i % 8) * 8 * MiB, 8 * MiB])
                          for i in range(200_000))
        sent, peak = 0, before
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += flood.send(frames[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
            peak = max(peak, rss(pid))
        # The server still answers others, byte-exact, while the flood sits there.
        assert warm.read(12345, 100) == file_bytes(dump.path, 12345, 100)
        flood.close()
        time.sleep(0.5)
        assert warm.stats()["connections"] == 1
    # Reply budget (16 MiB) + transport high water (1 MiB) + decoder (2 MiB), and slack
    # for the allocator; an unbounded server would have grown by gigabytes.
    assert 0 < sent < len(frames), "the server should stop reading the flood"
    assert peak - before < 40 * MiB, (before, peak)
