"""`dumpd fetch` beside `cp --sparse=always` of the same file, in one run.

    python -m bench.fetch [--size-mib 1024] [--rss-size-mib 4096] [--runs 3]

1. Dense: a `--size-mib` raw image of random data, page cache warm; `dumpd serve`
   (its own process, no hook) and `dumpd fetch -q` to a new file, beside
   `cp --sparse=always` of the image to a new file; also the raw stream read and
   discarded by a client, beside `cat FILE > /dev/null`; and the limit of any copy
   through a Unix socket on this machine: a bare `sendfile` -> `splice` copy of the
   image between two threads, no protocol, no Python per byte (for the images with
   holes: of their RAM runs only, each to its offset).
2. Half non-RAM: the same image with every other run of `R` pages zeroed in the file
   and named by a `balloon` list, for R = 512 (2 MiB, a balloon driver handing back
   huge pages) and R = 8 (the worst case measured: a hole every 32 KiB); dumpd
   serves it with that hook (so those pages are holes it never reads or sends), and
   cp copies the same file (so it can leave the zero pages as holes too).
3. Footprint: a `--rss-size-mib` image fetched whole; peak RSS (VmHWM) of the server
   and of the fetch process.

Runs alternate (cp, fetch, cp, fetch, ...) after a `sync`, so both meet the same
writeback state. On a shared VM a run now and then stalls for seconds in the file
system (the first large write after a large file was freed), whichever tool it hits,
so each figure is the best of `--runs`, with the median beside it; the ratio is
between the bests.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dumpd.client import Client
from dumpd.receiver import StreamData

MiB = 1 << 20
PAGE = 4096
DUMPD = [sys.executable, "-m", "dumpd"]


def make_image(path: Path, size: int, run: int) -> Path | None:
    """A random-data image; with `run` > 0, every other run of `run` pages zeroed in the
    file and listed in a balloon list (returned)."""
    block = random.Random(1).randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(block[i % 251 :] + block[: i % 251])
    if not run:
        return None
    zero = bytes(run * PAGE)
    with open(path, "r+b") as f:
        for pfn in range(0, size // PAGE, 2 * run):
            f.seek(pfn * PAGE)
            f.write(zero)
    listing = path.with_suffix(".balloon")
    listing.write_text("".join(f"{p:#x}+{run}\n" for p in range(0, size // PAGE, 2 * run)))
    return listing


@contextmanager
def server(image: Path, sock: Path, balloon: Path | None) -> Iterator[int]:
    args = [*DUMPD, "serve", "--source", str(image), "--socket", str(sock), "--log-level",
            "warning"]
    if balloon is not None:
        args += ["--hook", "balloon", "--hook-option", f"file={balloon}"]
    proc = subprocess.Popen(args)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: dumpd serve did not start")
            time.sleep(0.02)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def timed(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a command (its stdout discarded)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed with status {status}")
    return seconds, usage.ru_maxrss


def rate(size: int, seconds: list[float]) -> str:
    """The best rate of the runs, and the median's in brackets."""
    return (f"{size / min(seconds) / 1e9:.2f} GB/s "
            f"({size / statistics.median(seconds) / 1e9:.2f})")


def fresh(path: Path) -> Path:
    if path.exists():
        path.unlink()
    os.sync()
    return path


def socket_copy(image: Path, out: Path, size: int, hole_run: int) -> float:
    """A bare copy through a Unix socket: sendfile in, splice out (the transport's own
    limit, without dumpd); with `hole_run`, only the RAM runs, each at its offset."""
    step = 2 * hole_run * PAGE if hole_run else MiB
    runs = [(pos + hole_run * PAGE, min(hole_run * PAGE, size - pos - hole_run * PAGE))
            if hole_run else (pos, min(MiB, size - pos)) for pos in range(0, size, step)]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    src = os.open(image, os.O_RDONLY)
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, MiB)  # F_SETPIPE_SZ

    def send() -> None:
        for offset, length in runs:
            end = offset + length
            while offset < end:
                offset += os.sendfile(a.fileno(), src, offset, end - offset)
        a.shutdown(socket.SHUT_WR)

    start = time.perf_counter()
    os.ftruncate(dst, size)
    sender = threading.Thread(target=send)
    sender.start()
    for offset, length in runs:
        while length:
            n = os.splice(b.fileno(), write_end, min(length, MiB))
            length -= n
            while n:
                moved = os.splice(read_end, dst, n, offset_dst=offset)
                offset, n = offset + moved, n - moved
    sender.join()
    seconds = time.perf_counter() - start
    for fd in (src, dst, read_end, write_end):
        os.close(fd)
    a.close()
    b.close()
    return seconds


def discard_stream(sock: Path, size: int) -> float:
    start = time.perf_counter()
    with Client.connect(str(sock)) as client:
        got = sum(len(p.data) for p in client.stream(0, size) if isinstance(p, StreamData))
    assert got <= size
    return time.perf_counter() - start


def compare(work: Path, out: Path, size: int, runs: int, hole_run: int) -> list[str]:
    image = work / f"image-{hole_run}.img"
    balloon = make_image(image, size, hole_run)
    subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)  # warm
    sock = work / "dumpd.sock"
    cp_s: list[float] = []
    fetch_s: list[float] = []
    bare_s: list[float] = []
    with server(image, sock, balloon):
        for _ in range(runs):
            cp_s.append(timed(["cp", "--sparse=always", str(image),
                               str(fresh(out / "cp.out"))])[0])
            fetch_s.append(timed([*DUMPD, "fetch", "-q", "-o", str(fresh(out / "fetch.out")),
                                  "--socket", str(sock)])[0])
            bare_s.append(socket_copy(image, fresh(out / "bare.out"), size, hole_run))
        stream_s = [discard_stream(sock, size) for _ in range(runs)]
    cat_s = [timed(["cat", str(image)])[0] for _ in range(runs)]
    label = f"half non-RAM, runs of {hole_run} pages" if hole_run else "dense"
    rows = [f"| {label}: `dumpd fetch` to a file | {rate(size, fetch_s)} | "
            f"`cp --sparse=always`: {rate(size, cp_s)} | {min(cp_s) / min(fetch_s):.2f}x |"]
    rows.append(f"| {label}: bare socket copy of the RAM runs, sendfile -> splice (no dumpd)"
                f" | {rate(size, bare_s)} | `cp --sparse=always`: {rate(size, cp_s)} | "
                f"{min(cp_s) / min(bare_s):.2f}x |")
    if not hole_run:
        rows.append(f"| {label}: `stream`, client discards | {rate(size, stream_s)} | "
                    f"`cat > /dev/null`: {rate(size, cat_s)} | "
                    f"{min(cat_s) / min(stream_s):.2f}x |")
    for name in ("cp.out", "fetch.out", "bare.out"):
        fresh(out / name)
    image.unlink()
    return rows


def footprint(work: Path, out: Path, size: int) -> str:
    image = work / "big.img"
    with open(image, "wb") as f:
        f.truncate(size)  # sparse: reads as zeros at memory speed
    sock = work / "dumpd.sock"
    with server(image, sock, None) as pid:
        _, client_kib = timed([*DUMPD, "fetch", "-q", "-o", str(fresh(out / "fetch.out")),
                               "--socket", str(sock)])
        status = Path(f"/proc/{pid}/status").read_text()
    server_kib = int(next(line.split()[1] for line in status.splitlines()
                          if line.startswith("VmHWM:")))
    fresh(out / "fetch.out")
    image.unlink()
    return (f"| peak RSS fetching {size // MiB} MiB | server {server_kib / 1024:.1f} MiB | "
            f"fetch client {client_kib / 1024:.1f} MiB | target < 64 MiB each |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rss-size-mib", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="work here (default: a temporary directory)")
    parser.add_argument("--out-dir", help="write the copies here (default: beside the "
                        "images), e.g. /dev/shm to leave the disk out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dumpd-bench-fetch-", dir=args.dir) as tmp:
        work = Path(tmp)
        out = Path(args.out_dir) if args.out_dir else work
        size = args.size_mib * MiB
        print("| measure | dumpd | baseline, same run | dumpd vs baseline |")
        print("|---|---|---|---|")
        for hole_run in (0, 512, 8):
            for row in compare(work, out, size, args.runs, hole_run):
                print(row, flush=True)
        print(footprint(work, out, args.rss_size_mib * MiB), flush=True)


if __name__ == "__main__":
    main()
