"""Scenario 8, compression in streams: `dumpd fetch` over TCP+TLS on loopback without
and with `--wire-compress` (zstd, zlib), bytes on the wire and time side by side.

`dumpd serve` in its own process on 127.0.0.1 with TLS and client certificates (a
throwaway CA made with openssl, as the lab makes its own), page cache warm, the server
on one CPU and the fetch on the other (`bench.common`: a compressing server has one
CPU for its loop and its compression threads, as a crash kernel with `nr_cpus=1`).
Two 1 GiB ELF cores (`--quick`: 64 MiB), every page RAM:
- bench.bulk's dense core: incompressible bytes, the worst case (every page is tried,
  none shrinks: each is sent as it is);
- a compressible one: of every 8 pages, 4 of random bytes (user data, page cache of
  compressed files), 2 of text, 1 of sparse structures (a few words set in each 64
  bytes), 1 of a repeated byte, which zstd at level 1 brings to about half its size.

Each fetch runs in this process (`dumpd.fetch.fetch`, as the CLI calls it, `-q`) so
that its socket can be asked, before it closes, how many bytes TCP delivered to it
(`TCP_INFO`'s `tcpi_bytes_received`: TLS records, headers and all); the server's
counters give the view bytes compressed and the payload they became. Alternating
runs, best of `RUNS` with the median beside it.
"""

from __future__ import annotations

import functools
import random
import socket
import statistics
import struct
import time
from pathlib import Path
from typing import Any

from bench.bulk import make_core
from bench.common import (
    PAGE,
    Emit,
    MiB,
    Row,
    client_pinned,
    fresh,
    pin_server,
    serve_tls,
    wait_for_socket,
    warm,
)
from bench.lab.images import certificates
from dumpd.client import Client
from dumpd.fetch import FetchRequest, fetch
from dumpd.testing.elfwriter import LoadSpec, vmcoreinfo_note, write_elf_core
from dumpd.tls import client_context

TITLE = "Compression in streams: `dumpd fetch` over TLS on loopback, none / zstd / zlib"
SIZE, QUICK_SIZE = 1024 * MiB, 64 * MiB
RUNS = 3
WAYS = ("none", "zstd", "zlib")
TCPI_BYTES_RECEIVED = 128  # offset of the u64 in struct tcp_info (linux/tcp.h, >= 4.1)


class Counted(Client):
    """A client that notes the bytes TCP delivered to its socket when it closes."""

    received = 0

    def close(self) -> None:
        info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        Counted.received = struct.unpack_from("Q", info, TCPI_BYTES_RECEIVED)[0]
        super().close()


def compressible(paddr: int, length: int) -> bytes:
    """The compressible core's bytes: 8 page kinds in turn, cut from blocks made once."""
    noise, words, sparse = _blocks()
    out = bytearray()
    first = paddr - paddr % PAGE
    for page in range(first, paddr + length, PAGE):
        pfn = page // PAGE
        kind, at = pfn % 8, pfn * 0x9E5 % (1 << 20)
        if kind < 4:
            out += noise[at * 4 % (len(noise) - PAGE) :][:PAGE]
        elif kind < 6:
            out += words[at % (len(words) - PAGE) :][:PAGE]
        elif kind == 6:
            out += sparse[at * 64 % (len(sparse) - PAGE) :][:PAGE]
        else:
            out += bytes([pfn % 251]) * PAGE
    return bytes(out[paddr - first : paddr - first + length])


@functools.cache
def _blocks() -> tuple[bytes, bytes, bytes]:
    """Random bytes, text (words and numbers), sparse structures (a pointer and a small
    int in each 64 bytes)."""
    rng = random.Random(2)
    noise = rng.randbytes(8 * MiB)
    names = [b"task_struct", b"mm", b"inode", b"dentry", b"0x", b"ext4", b"kmalloc-64",
             b"sched", b"irq", b"nf_conntrack"]
    words = b" ".join(rng.choice(names) + str(rng.randrange(1 << 20)).encode()
                      for _ in range(1 << 16))
    sparse = bytearray(2 * MiB)
    for pos in range(0, len(sparse), 64):
        sparse[pos : pos + 8] = struct.pack("<Q", 0xFFFF888000000000 + rng.randrange(1 << 30))
        sparse[pos + 16 : pos + 20] = struct.pack("<I", rng.randrange(4))
    return noise, words, bytes(sparse)


def fetch_once(work: Path, port: int, pki: Path, way: str) -> tuple[float, int]:
    """Seconds of one fetch of the whole view over TLS, and the bytes TCP delivered."""
    copy = fresh(work / "copy")
    context = client_context(str(pki / "client.pem"), str(pki / "client.key"),
                             str(pki / "ca.pem"))
    request = FetchRequest("", str(copy), quiet=True, wire_compress=way)
    start = time.perf_counter()
    status = fetch(request, lambda: Counted.connect_tcp("127.0.0.1", port, tls=context))
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"bench: fetch --wire-compress {way} failed with status {status}")
    fresh(copy)
    return seconds, Counted.received


def server_stats(port: int, pki: Path) -> dict[str, Any]:
    context = client_context(str(pki / "client.pem"), str(pki / "client.key"),
                             str(pki / "ca.pem"))
    with Client.connect_tcp("127.0.0.1", port, tls=context) as client:
        return client.stats()


def measure(work: Path, image: Path, pki: Path, runs: int
            ) -> tuple[dict[str, list[float]], dict[str, int], dict[str, float]]:
    """Seconds per run and bytes received by the fetch of each way, and the payload over
    view ratio of each compressed way (the server's counters)."""
    server = serve_tls(work, image, pki)
    proc, port, sock = server.proc, server.port, server.sock
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    received: dict[str, int] = {}
    ratio: dict[str, float] = {}
    try:
        wait_for_socket(proc, sock, "dumpd serve")
        pin_server(proc.pid)
        with client_pinned():
            for _ in range(runs):
                for way in WAYS:
                    before = server_stats(port, pki)
                    took, got = fetch_once(work, port, pki, way)
                    after = server_stats(port, pki)
                    seconds[way].append(took)
                    received[way] = got
                    view = after["compressed_view_bytes"] - before["compressed_view_bytes"]
                    if view:
                        ratio[way] = (after["compressed_wire_bytes"]
                                      - before["compressed_wire_bytes"]) / view
    finally:
        proc.terminate()
        proc.wait()
    return seconds, received, ratio


def report(label: str, view: int, seconds: dict[str, list[float]], received: dict[str, int],
           ratio: dict[str, float], emit: Emit) -> None:
    """One row per compressed way beside the uncompressed fetch."""
    def rate(runs: list[float]) -> str:
        return (f"{view / min(runs) / 1e6:.0f} MB/s ({view / statistics.median(runs) / 1e6:.0f})"
                f", {min(runs):.2f} s")

    plain = f"none: {received['none'] / MiB:.0f} MiB on the wire, {rate(seconds['none'])}"
    for way in WAYS[1:]:
        wire = received[way] / MiB
        emit(Row("8. compression", f"`dumpd fetch --tcp` (TLS, loopback) --wire-compress "
                 f"{way}, {label}: bytes on the wire, time",
                 f"{wire:.0f} MiB on the wire ({received[way] / view:.2f} of the view; "
                 f"payload {ratio.get(way, 0):.2f}), {rate(seconds[way])}", plain,
                 f"none / {way}: wire {received['none'] / received[way]:.2f}x, time "
                 f"{min(seconds['none']) / min(seconds[way]):.2f}x", "",
                 {"view": view, "received": dict(received), "payload_ratio": ratio,
                  "seconds": {w: [round(s, 3) for s in seconds[w]] for w in WAYS}}))


def run(work: Path, quick: bool, emit: Emit) -> None:
    size, runs = (QUICK_SIZE, 1) if quick else (SIZE, RUNS)
    pki = work / "pki"
    certificates(pki)
    image = work / "core.elf"
    for label, fill in (("dense, incompressible (bench.bulk's core)", None),
                        ("dense, compressible (half random, half text and structures)",
                         compressible)):
        if fill is None:
            make_core(image, size, 0)
        else:
            write_elf_core(image, [LoadSpec(0, size)], notes=[vmcoreinfo_note()], fill=fill)
        warm(image)
        seconds, received, ratio = measure(work, image, pki, runs)
        report(label, image.stat().st_size, seconds, received, ratio, emit)
        fresh(image)
