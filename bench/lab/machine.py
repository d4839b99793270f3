"""One lab run on the host: boot the guest under QEMU (TCG: nested KVM does not work on
these machines), balloon it through QMP, crash it, and do the host's part while the
capture kernel measures: receive the bare TLS baseline, run `dumpd fetch --verify`;
once `dumpd fetch` has `--wire-compress`, twice: without compression, then with zstd
(`host_fetches`; the capture kernel's dumpd waits for as many verified fetches).
Bytes on the wire are what the host's end of the fetch's connections received (TCP_INFO
bytes_received, as `ss -ti` reports it, polled while the fetch runs: a `--verify`
fetch holds its connection open through the server's digest, after the last page).

The console is the guest's only voice: `LAB <key> <json>` lines (capture.py, init.sh).
The network is QEMU's user networking with `restrict=on`: the guest reaches nothing;
the host reaches its two ports through `hostfwd` on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MiB = 1 << 20
DUMPD_PORT, BARE_PORT = 7300, 7301
BYTES_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


@dataclass
class Options:
    guest_mem: int = 512  # MiB
    crashkernel: str = "160M"
    kaslr: bool = True
    la57: bool = False
    balloon: int = 0  # MiB inflated before the crash
    timeout: float = 1800.0


@dataclass
class Outcome:
    """What one boot gave: the guest's `LAB` records and the host's own figures."""

    records: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def qemu_command(opts: Options, vmlinuz: Path, guest: Path, disk: Path, qmp: Path,
                 ports: tuple[int, int]) -> list[str]:
    kaslr = "" if opts.kaslr else " nokaslr"
    cpu = "max" if opts.la57 else "max,la57=off"
    forward = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-10.0.2.15:{guest_port}"
                       for host, guest_port in zip(ports, (DUMPD_PORT, BARE_PORT), strict=True))
    return ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-cpu", cpu,
            "-m", f"{opts.guest_mem}M", "-smp", "1", "-kernel", str(vmlinuz),
            "-initrd", str(guest), "-append",
            f"console=ttyS0 crashkernel={opts.crashkernel} panic=1 loglevel=6{kaslr}",
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
            "-drive", f"file={disk},format=raw,if=virtio,cache=unsafe",
            "-netdev", f"user,id=n0,restrict=on,{forward}",
            "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-balloon-pci",
            "-qmp", f"unix:{qmp},server=on,wait=off"]


class Qmp:
    """QEMU's machine protocol on a Unix socket: one command at a time."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._reply()  # the greeting
        self.execute("qmp_capabilities")

    def _reply(self) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(self._file.readline())
            if "event" not in message:
                return message

    def execute(self, command: str, **arguments: Any) -> Any:
        self._file.write(json.dumps({"execute": command, "arguments": arguments}).encode()
                         + b"\n")
        self._file.flush()
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def inflate(qmp_path: Path, opts: Options) -> dict[str, Any]:
    """Balloon `opts.balloon` MiB out of the guest and wait until it is out (60 s)."""
    qmp = Qmp(qmp_path)
    try:
        target = (opts.guest_mem - opts.balloon) * MiB
        qmp.execute("balloon", value=target)
        deadline = time.monotonic() + 60
        actual = qmp.execute("query-balloon")["actual"]
        while actual > target and time.monotonic() < deadline:
            time.sleep(0.5)
            actual = qmp.execute("query-balloon")["actual"]
        return {"target": target, "actual": actual}
    finally:
        qmp.close()


def receive_bare(port: int, ca: Path) -> dict[str, Any]:
    """The bare TLS baseline's bytes, received and discarded: how long they took."""
    context = ssl.create_default_context(cafile=str(ca))
    started = time.perf_counter()
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=600) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        buf = bytearray(4 * MiB)
        while n := tls.recv_into(buf):
            got += n
    return {"bytes": got, "seconds": time.perf_counter() - started}


COPIES = {"fetch": "fetched.vmcore", "fetch_compressed": "fetched-compressed.vmcore"}
"""Each host fetch's copy, in the work dir."""


def host_fetches() -> list[tuple[str, list[str]]]:
    """The host's fetches, in order, with their extra options: the plain one, and once
    this `dumpd fetch` has `--wire-compress`, the same without and with compression."""
    text = subprocess.run([sys.executable, "-m", "dumpd", "fetch", "--help"],
                          capture_output=True, text=True, check=False).stdout
    if "--wire-compress" not in text:
        return [("fetch", [])]
    return [("fetch", ["--wire-compress", "none"]),
            ("fetch_compressed", ["--wire-compress", "zstd"])]


@contextmanager
def received(port: int, every: float = 0.2) -> Iterator[dict[str, int]]:
    """Bytes received on each of the host's TCP connections to 127.0.0.1:`port`, by
    local address, from `ss -ti` every `every` seconds while inside."""
    seen: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        listing = subprocess.run(["ss", "-tinH", "dst", f"127.0.0.1:{port}"],
                                 capture_output=True, text=True, check=False).stdout
        local = ""
        for line in listing.splitlines():
            if not line[:1].isspace():
                local = line.split()[3]
            elif (found := BYTES_RECEIVED.search(line)) is not None:
                seen[local] = max(seen.get(local, 0), int(found[1]))

    def poll() -> None:
        while not stop.wait(every):
            sample()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def fetch(port: int, pki: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """`dumpd fetch --tcp --verify EXTRA` of the whole dump from the capture kernel, and
    the bytes it received (`received`)."""
    with received(port) as seen:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "dumpd", "fetch", "--tcp",
                               f"127.0.0.1:{port}", "--tls-cert", str(pki / "client.pem"),
                               "--tls-key", str(pki / "client.key"), "--tls-ca",
                               str(pki / "ca.pem"), "--verify", "-q", *extra, "-o", str(out)],
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "exit": done.returncode, "options": extra,
            "wire_bytes": sum(seen.values()), "stderr": done.stderr.strip().splitlines()}


def boot(opts: Options, vmlinuz: Path, guest: Path, work: Path, pki: Path,
         fetches: list[tuple[str, list[str]]]) -> Outcome:
    """One guest boot, crash and capture; the records and the host's figures. `fetches`:
    `host_fetches()`, which the capture image was made to wait for."""
    disk, qmp = work / "reference.img", work / "qmp.sock"
    for stale in (disk, qmp, *(work / name for name in COPIES.values())):
        stale.unlink(missing_ok=True)
    with open(disk, "wb") as image:
        image.truncate((opts.guest_mem + 64) * MiB)  # sparse: the reference copy lands here
    ports = (free_port(), free_port())
    outcome = Outcome()
    log = open(work / "console.log", "w", encoding="utf-8", errors="replace")  # noqa: SIM115
    proc = subprocess.Popen(qemu_command(opts, vmlinuz, guest, disk, qmp, ports),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + opts.timeout
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            log.write(line + "\n")
            outcome.console.append(line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the lab took more than {opts.timeout:g} s")
            if not line.startswith("LAB "):
                continue
            _, key, *rest = line.split(" ", 2)
            value = rest[0] if rest else ""
            if key == "armed":
                if opts.balloon:
                    outcome.host["balloon"] = inflate(qmp, opts)
                _send(proc.stdin, "crash")
            elif key == "ready" and json.loads(value) == "bare":
                outcome.host["bare_tls"] = receive_bare(ports[1], pki / "ca.pem")
            elif key == "ready" and json.loads(value) == "fetch":
                for name, extra in fetches:
                    outcome.host[name] = fetch(ports[0], pki, work / COPIES[name], extra)
            elif key in ("capture", "reference", "baseline", "dumpd", "bare", "end"):
                outcome.records[key] = json.loads(value)
            elif key in ("failed", "exit"):
                outcome.records[key] = value
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return outcome


def _send(stdin: IO[bytes], word: str) -> None:
    stdin.write(word.encode() + b"\n")
    stdin.flush()
