"""The crash-kernel side of the lab: run by /init in the capture kernel, with the
payload's own interpreter (only the modules `dumpd payload` put there), so it uses the
standard library, dumpd's client and bench.echo, nothing else.

Every figure is measured here, side by side in this one boot, and sent to the host as
`LAB <key> <json>` lines on the console; the host (bench/lab/guest.py) waits for
`LAB ready ...` lines to do its part (a bare TLS receive, a `dumpd fetch`).
"""

from __future__ import annotations

import json
import mmap
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dumpd.client import Client, StreamData

VMCORE = "/proc/vmcore"
SOCK = "/run/dumpd.sock"
ECHO = "/run/echo.sock"
ADDR = "10.0.2.15"
DUMPD_PORT, BARE_PORT = 7300, 7301
WINDOW = 4 << 20
MiB = 1 << 20


def say(key: str, value: Any) -> None:
    print(f"LAB {key} {json.dumps(value)}", flush=True)


def meminfo(field: str = "MemAvailable") -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


@contextmanager
def lowest_available() -> Iterator[list[int]]:
    """Sample MemAvailable every 20 ms while inside; the list holds the lowest seen."""
    low = [meminfo()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            low[0] = min(low[0], meminfo())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield low
    finally:
        stop.set()
        thread.join()
        low[0] = min(low[0], meminfo())


def best(runs: int, measure: Callable[[], float]) -> float:
    """The shortest of `runs` timings (seconds)."""
    return min(float(patient(measure)) for _ in range(runs))


def patient(measure: Callable[[], Any]) -> Any:
    """`measure()`, again while the server refuses the connection: sized for a crash
    kernel it may take one client at a time, and the last one's close may not have
    reached it yet (or, just started, it has bound its socket but not listened yet)."""
    for _ in range(50):
        try:
            return measure()
        except ConnectionError:  # ServerUnreachable too
            time.sleep(0.1)
    return measure()


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def mmap_copy() -> float:
    out = subprocess.run(["/lab/mmapcopy", VMCORE], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[1])


def stream_discard(size: int, offset: int = 0, chunk: int | None = None) -> float:
    """Stream `size` bytes from `offset` in `chunk`-byte frames (the server's default:
    1 MiB), counting and dropping them; the seconds it took."""
    started = time.perf_counter()
    got = 0
    with Client.connect(SOCK, timeout=600) as client:
        for piece in client.stream(offset, size, chunk):
            if isinstance(piece, StreamData):
                got += len(piece.data)
    took = time.perf_counter() - started
    assert got <= size
    return took


def read_pieces(size: int, piece: int) -> float:
    started = time.perf_counter()
    with Client.connect(SOCK, timeout=600) as client:
        for offset in range(0, size, piece):
            client.read(offset, piece)
    return time.perf_counter() - started


def dependent_reads(sock: str, paddrs: list[int]) -> list[float]:
    """Round trips of dependent 8-byte `read_phys` calls, in seconds, one after another."""
    times = []
    with Client.connect(sock, timeout=60) as client:
        for paddr in paddrs:
            started = time.perf_counter()
            client.read_phys(paddr, 8)
            times.append(time.perf_counter() - started)
    return times


def _info(sock: str) -> dict[str, Any]:
    with Client.connect(sock, timeout=60) as client:
        return client.info()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def ram_addresses(segments: list[list[int]], count: int) -> list[int]:
    rng = random.Random(14)
    loads = [(paddr, filesz) for paddr, _, filesz, _ in segments if filesz >= 4096]
    weights = [filesz for _, filesz in loads]
    out = []
    for _ in range(count):
        paddr, filesz = rng.choices(loads, weights)[0]
        out.append(paddr + rng.randrange(filesz // 8) * 8)
    return out


def many_streams(size: int, clients: int) -> list[str]:
    """`clients` streams of 32 MiB each at once; how each ended ("ok" or the error:
    a server sized for little memory refuses connections past its limit)."""
    ends: list[str] = []

    def one(offset: int) -> None:
        try:
            stream_discard(min(32 * MiB, size - offset), offset)
            ends.append("ok")
        except Exception as exc:
            ends.append(f"{type(exc).__name__}: {exc}")

    step = max(0, size - 32 * MiB) // clients
    threads = [threading.Thread(target=one, args=(n * step,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ends


def bare_tls_sender(size: int) -> None:
    """The TLS baseline: one connection, the dump sent with `sendall` from mmap windows."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("/lab/pki/server.pem", "/lab/pki/server.key")
    unmapped: list[int] = []
    with socket.create_server((ADDR, BARE_PORT)) as listener:
        say("ready", "bare")
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            fd = os.open(VMCORE, os.O_RDONLY)
            try:
                for offset in range(0, size, WINDOW):
                    send_window(tls, fd, offset, min(WINDOW, size - offset), unmapped)
            finally:
                os.close(fd)
    say("bare", {"unmapped_windows": unmapped})


def send_window(tls: ssl.SSLSocket, fd: int, offset: int, length: int,
                unmapped: list[int]) -> None:
    """One window of the dump from a mapping, or with pread where the kernel will not
    map it (/proc/vmcore answers EAGAIN when a remap fails: dumpd does the same)."""
    try:
        window = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset)
    except OSError:
        unmapped.append(offset)
        tls.sendall(os.pread(fd, length, offset))
        return
    with window, memoryview(window) as view:
        tls.sendall(view)


def start_dumpd() -> tuple[subprocess.Popen[bytes], float]:
    """dumpd, finishing after the host's verified fetches (/lab/host-fetches: how many).
    With more than one, also after 10 idle minutes: a later fetch that fails to start
    must not leave the lab waiting for its timeout (the gaps before and between the
    host's fetches are a minute at most)."""
    with open("/lab/host-fetches", encoding="ascii") as f:
        fetches = int(f.read())
    idle = ["--finish-idle", "600"] if fetches > 1 else []
    started = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/dumpd", "serve", "-c", "/lab/dumpd.toml",
                             "--socket", SOCK, "--finish-fetches", str(fetches), *idle])
    while not os.path.exists(SOCK):
        if proc.poll() is not None:
            raise SystemExit(f"dumpd serve exited {proc.returncode}")
        time.sleep(0.01)
    return proc, time.perf_counter() - started


def main() -> int:
    size = os.stat(VMCORE).st_size
    say("capture", {"kernel": os.uname().release, "size": size,
                    "mem_total": meminfo("MemTotal"), "mem_available": meminfo()})
    took = timed(["dd", f"if={VMCORE}", "of=/dev/vda", "bs=1M", "conv=fsync"])
    say("reference", {"seconds": took})
    say("baseline", {"dd_1m": best(2, lambda: timed(["dd", f"if={VMCORE}", "of=/dev/null",
                                                     "bs=1M"])),
                     "mmap": best(2, mmap_copy),
                     "pread_4k": best(1, lambda: timed(["dd", f"if={VMCORE}",
                                                        "of=/dev/null", "bs=4k"]))})

    available_before = meminfo()
    proc, to_socket = start_dumpd()
    time.sleep(1)  # settled: what it holds serving nobody
    idle_rss = status(proc.pid, "VmRSS")
    info = patient(lambda: _info(SOCK))
    with lowest_available() as low:
        stream = best(2, lambda: stream_discard(size, chunk=info["max_read"]))
    stream_low = low[0]
    peak_rss = status(proc.pid, "VmHWM")
    piece = min(8 * MiB, info["max_read"])
    reads = best(1, lambda: read_pieces(size, piece))
    paddrs = ram_addresses(info["segments"], 400)
    dumpd_rt = median(patient(lambda: dependent_reads(SOCK, paddrs)))
    echo = subprocess.Popen([sys.executable, "-m", "bench.echo", ECHO], cwd="/lab")
    while not os.path.exists(ECHO):
        time.sleep(0.01)
    echo_rt = median(patient(lambda: dependent_reads(ECHO, paddrs)))
    echo.terminate()
    echo.wait()
    with lowest_available() as low:
        ends = many_streams(size, 8)
    many_low = low[0]
    say("dumpd", {"exec_to_socket": to_socket, "stream_chunk": info["max_read"],
                  "idle_rss": idle_rss, "peak_rss": peak_rss,
                  "read_path": info["source"]["read_path"], "stream": stream,
                  "read": reads, "read_piece": piece, "read_phys_p50": dumpd_rt,
                  "echo_p50": echo_rt, "available_before": available_before,
                  "available_low_stream": stream_low, "many_clients": len(ends),
                  "many_ends": ends, "available_low_many": many_low,
                  "peak_rss_many": status(proc.pid, "VmHWM")})

    bare_tls_sender(size)
    say("ready", "fetch")
    status_code = proc.wait()
    kernel_log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    say("end", {"dumpd_exit": status_code,
                "oom": [line for line in kernel_log.splitlines()
                        if "Out of memory" in line or "oom-kill" in line]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
