"""The log an operator reads: a real `dumpd serve`, its stderr captured, line by line.

Each line is stamped `2026-12-01T18:30:00.123Z dumpd[PID]: ` (checked by `log_lines`
for every line); the text after it is asserted exactly. Every change of the hook slot
is one line naming who asked; connections and refused requests show at debug.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import msgpack

from tests.daemon import DUMPD, ENV, info_json, log_lines, ok, served, server_pid, stats_json
from tests.dumps import build_raw
from tests.servers import free_port

PAGE = 4096
UID = os.getuid()
BALLOON = f"balloon (dumpd-balloon {version('dumpd-balloon')})"
NONE = f"none (dumpd {version('dumpd')})"
"""How the log names a registered hook: with the distribution that provides it."""


GUESSED_RAW = 'raw physical memory: no ELF or known dump signature, as kind = "raw"'
"""How the start-up line names a raw dump served by `kind = "auto"` (the test dumps)."""
PREAD_WHY = "a file that could be cut short while mapped (SIGBUS): pread and sendfile"
"""Why the test dumps, regular files, are read with pread (the second line)."""


def command(*args: str, cwd: Path | None = None) -> tuple[int, int, str, str]:
    """A `dumpd` command: its pid (which the server's log names), exit status, stdout
    and stderr."""
    proc = subprocess.Popen([*DUMPD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=ENV, cwd=cwd)
    out, err = proc.communicate(timeout=30)
    return proc.pid, proc.returncode, out.decode(), err.decode()


def until_logged(log: Path, pid: int, line: str) -> list[str]:
    """The log's lines once `line` is among them (the server writes it asynchronously)."""
    deadline = time.monotonic() + 10
    while line not in (lines := log_lines(log, pid)):
        assert time.monotonic() < deadline, f"no {line!r} in {lines}"
        time.sleep(0.02)
    return lines


def test_the_empty_slot_reads_the_same_in_the_log_info_and_stats(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    for where, hook in ((tmp_path / "empty", []), (tmp_path / "none", ["--hook", "none"])):
        where.mkdir()
        with served(where, dump.path, *hook) as sock:
            pid = server_pid(sock)
            info, stats = ok("info", "--socket", sock), ok("stats", "--socket", sock)
            wire = (json.loads(ok("info", "--json", "--socket", sock))["hook"],
                    stats_json(sock)["hook"])
        name = "none" if hook else "(none registered)"
        assert log_lines(where / "serve.log", pid)[0] == (
            f"INFO: serving {dump.path} ({GUESSED_RAW}, {dump.size} bytes, page size 4096) "
            f"on {sock}, hook {NONE if hook else name}")
        assert f"hook     {name}" in info.splitlines()
        assert re.search(rf"^hook +{re.escape(name)}$", stats, re.MULTILINE), stats
        assert wire == (("none", "none") if hook else (None, None))


def test_hook_changes_name_who_asked_and_connections_show_at_debug(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    here = tmp_path / "client"  # the commands' directory; the server's is tmp_path
    here.mkdir()
    (here / "good.txt").write_text("3\n")
    good = here / "good.txt"
    log = tmp_path / "serve.log"
    with served(tmp_path, dump.path, "--log-level", "debug") as sock:
        server = server_pid(sock)  # connection 1
        until_logged(log, server, f"DEBUG: connection 1 (uid {UID} pid {os.getpid()}) closed")
        steps = [
            ("hook", "register", "balloon", "--hook-option", "file=good.txt"),
            ("hook", "reload"),
            ("hook", "unregister"),
            ("hook", "unregister"),
            ("hook", "reload"),
            ("hook", "register", "balloon", "--hook-option", "file=missing.txt"),
            ("hook", "register", "none"),
            ("hook", "reload"),
        ]
        ran = []
        for number, step in enumerate(steps, 2):
            ran.append(command(*step, "--socket", sock, cwd=here))
            until_logged(log, server, f"DEBUG: connection {number} "
                                      f"(uid {UID} pid {ran[-1][0]}) closed")
    lines = log_lines(log, server)
    pids = [pid for pid, *_ in ran]
    assert [(status, out, err) for _, status, out, err in ran] == [
        (0, "hook 'balloon' registered\n", ""),
        (0, "hook 'balloon' reloaded its data (generation 2)\n", ""),
        (0, "hook 'balloon' unregistered\n", ""),
        (0, "no hook was registered\n", ""),
        (1, "", "dumpd: EINVAL: no hook is registered\n"),
        (1, "", f"dumpd: EINVAL: balloon: {tmp_path / 'missing.txt'}: cannot read: "
                "No such file or directory\n"),
        (0, "hook 'none' registered\n", ""),
        (1, "", "dumpd: ENOSYS: hook 'none' has no data to reload\n"),
    ]

    def conn(n: int) -> str:
        return f"connection {n + 2} (uid {UID} pid {pids[n]})"

    def asked(n: int) -> str:
        return f"asked by uid {UID} pid {pids[n]}"

    assert lines == [
        f"INFO: serving {dump.path} ({GUESSED_RAW}, {dump.size} bytes, page size 4096) on {sock}, "
        "hook (none registered)",
        f"INFO: reading {dump.path} with pread: {PREAD_WHY}",
        f"DEBUG: connection 1 (uid {UID} pid {os.getpid()}) opened",
        f"DEBUG: connection 1 (uid {UID} pid {os.getpid()}) closed",
        f"DEBUG: {conn(0)} opened",
        f"INFO: hook {BALLOON} registered with options {{'file': '{good}'}}, {asked(0)}",
        f"DEBUG: {conn(0)} closed",
        f"DEBUG: {conn(1)} opened",
        f"INFO: hook balloon reloaded its data (generation 2), {asked(1)}",
        f"DEBUG: {conn(1)} closed",
        f"DEBUG: {conn(2)} opened",
        f"INFO: hook balloon unregistered, {asked(2)}",
        f"DEBUG: {conn(2)} closed",
        f"DEBUG: {conn(3)} opened",
        f"INFO: no hook is registered: nothing to unregister, {asked(3)}",
        f"DEBUG: {conn(3)} closed",
        f"DEBUG: {conn(4)} opened",
        f"INFO: no hook is registered: nothing to reload, {asked(4)}",
        f"DEBUG: {conn(4)}: hook.reload refused: EINVAL: no hook is registered",
        f"DEBUG: {conn(4)} closed",
        f"DEBUG: {conn(5)} opened",
        f"DEBUG: {conn(5)}: hook.register refused: EINVAL: balloon: "
        f"{tmp_path / 'missing.txt'}: cannot read: No such file or directory",
        f"DEBUG: {conn(5)} closed",
        f"DEBUG: {conn(6)} opened",
        f"INFO: hook {NONE} registered with options {{}}, {asked(6)}",
        f"DEBUG: {conn(6)} closed",
        f"DEBUG: {conn(7)} opened",
        f"INFO: hook none has no data to reload, {asked(7)}",
        f"DEBUG: {conn(7)}: hook.reload refused: ENOSYS: hook 'none' has no data to reload",
        f"DEBUG: {conn(7)} closed",
        "INFO: SIGTERM: shutting down",
    ]


def test_a_tcp_peer_is_named_by_its_address(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    port = free_port()
    with served(tmp_path, dump.path, "--log-level", "debug", "--tcp",
                f"127.0.0.1:{port}") as sock:
        server = server_pid(sock)
        _, status, _, err = command("hook", "reload", "--tcp", f"127.0.0.1:{port}")
    tcp = [line for line in log_lines(tmp_path / "serve.log", server) if "(tcp " in line]
    assert (status, err) == (1, "dumpd: EACCES: hook.reload is for administrators only\n")
    peer = r"connection 2 \(tcp 127\.0\.0\.1:\d+\)"
    assert len(tcp) == 3, tcp
    assert re.fullmatch(rf"DEBUG: {peer} opened", tcp[0]), tcp
    assert re.fullmatch(rf"DEBUG: {peer}: hook\.reload refused: EACCES: hook\.reload is for "
                        r"administrators only", tcp[1]), tcp
    assert re.fullmatch(rf"DEBUG: {peer} closed", tcp[2]), tcp


def test_sighup_logs_one_line_for_each_outcome(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    balloon = tmp_path / "balloon.txt"
    balloon.write_text("3\n")
    log = tmp_path / "serve.log"
    with served(tmp_path, dump.path, "--hook", "balloon",
                "--hook-option", f"file={balloon}") as sock:
        server = server_pid(sock)

        def hangup(line: str) -> None:
            os.kill(server, signal.SIGHUP)
            until_logged(log, server, line)

        hangup("INFO: hook balloon reloaded its data (generation 2), asked by SIGHUP")
        balloon.write_text("0x10-0x5\n")
        hangup(f"ERROR: hook balloon: reload failed, old data kept: balloon: {balloon}:1: "
               "END 0x5 is below START 0x10, asked by SIGHUP")
        unregister, *_ = command("hook", "unregister", "--socket", sock)
        hangup("INFO: no hook is registered: nothing to reload, asked by SIGHUP")
        register, *_ = command("hook", "register", "none", "--socket", sock)
        hangup("INFO: hook none has no data to reload, asked by SIGHUP")
        reloads, generation = stats_json(sock)["hook_reloads"], info_json(sock)["hook_generation"]
    assert (reloads, generation) == (1, 4)
    assert log_lines(log, server) == [
        f"INFO: serving {dump.path} ({GUESSED_RAW}, {dump.size} bytes, page size 4096) on {sock}, "
        f"hook {BALLOON}",
        f"INFO: reading {dump.path} with pread: {PREAD_WHY}",
        "INFO: hook balloon reloaded its data (generation 2), asked by SIGHUP",
        f"ERROR: hook balloon: reload failed, old data kept: balloon: {balloon}:1: "
        "END 0x5 is below START 0x10, asked by SIGHUP",
        f"INFO: hook balloon unregistered, asked by uid {UID} pid {unregister}",
        "INFO: no hook is registered: nothing to reload, asked by SIGHUP",
        f"INFO: hook {NONE} registered with options {{}}, asked by uid {UID} pid {register}",
        "INFO: hook none has no data to reload, asked by SIGHUP",
        "INFO: SIGTERM: shutting down",
    ]


def test_an_unknown_method_is_named_briefly_in_the_reply_and_the_log(tmp_path: Path) -> None:
    """A method name may fill a frame: the ENOSYS reply and the debug line show 40
    characters of it, not the 100 KB."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    long = "m" * 100_000
    with served(tmp_path, dump.path, "--log-level", "debug") as sock:
        pid = server_pid(sock)
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(sock)
            conn.sendall(msgpack.packb([0, 7, long, []]))
            unpacker = msgpack.Unpacker()
            while (reply := next(unpacker, None)) is None:
                unpacker.feed(conn.recv(1 << 20))
        shown = "'" + "m" * 17 + "..." + "m" * 18 + "'"
        assert reply == [1, 7, ["ENOSYS", f"no method {shown}"], None]
        refused = [line for line in until_logged(tmp_path / "serve.log", pid, (  # 1: server_pid
            f"DEBUG: connection 2 (uid {UID} pid {os.getpid()}): {shown} refused: "
            f"ENOSYS: no method {shown}")) if "refused" in line]
    assert len(refused) == 1
