"""Every `dumpd` command against what goes wrong around it: no server, a socket path that
is a file, a directory, too long or not permitted, a server that hangs up, bad
arguments, a closed stdout, an unwritable output, a missing or bad config file.

Whatever it is: no traceback, one `dumpd: ...` line that blames the right thing (its
exact text), a non-zero exit status. A closed stdout alone ends quietly, with the status
of a tool killed by SIGPIPE (141), as `cmd | head` expects; a closed stdout descriptor
(`>&-`) is a failed write (`dumpd: stdout: Bad file descriptor`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dumpd import DEFAULT_SOCKET
from dumpd.cli import main
from tests.daemon import DUMPD, ENV, one_line_error, run, served
from tests.dumps import build_raw

PAGE = 4096
NOBODY = 65534
SIGPIPE_STATUS = 128 + signal.SIGPIPE
HINT = "or point elsewhere with --socket or $DUMPD_SOCKET)"

# Every command that talks to a server, as the operator types it (fetch writes into the
# current directory, here the test's own).
CLIENTS = {
    "info": ["info"],
    "stats": ["stats", "--json"],
    "read": ["read", "0", "16"],
    "fetch": ["fetch", "-q", "-o", "copy"],
    "hook-register": ["hook", "register", "none"],
    "hook-unregister": ["hook", "unregister"],
    "hook-reload": ["hook", "reload"],
}


def no_server(path: Path) -> str:
    return (f"dumpd: no server is listening at {path} (start one with "
            f"`dumpd serve --source /proc/vmcore --socket {path}`, {HINT}")


def _stale(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # a socket file nothing listens on


def _long(tmp_path: Path) -> Path:
    return tmp_path / ("x" * (120 - len(str(tmp_path)) - 1))


# name: (make the socket path under tmp_path, the one line every client command prints)
SOCKETS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], str]]] = {
    "missing": (lambda t: t / "none.sock", no_server),
    "missing-directory": (lambda t: t / "nodir" / "dumpd.sock", no_server),
    "stale": (lambda t: (p := t / "stale.sock", _stale(p))[0], no_server),
    "regular-file": (lambda t: (p := t / "file", p.write_text("x"))[0],
                     lambda p: f"dumpd: cannot connect to {p}: not a socket"),
    "directory": (lambda t: (p := t / "dir", p.mkdir())[0],
                  lambda p: f"dumpd: cannot connect to {p}: not a socket"),
    "parent-is-a-file": (lambda t: ((t / "f").write_text(""), t / "f" / "dumpd.sock")[1],
                         lambda p: f"dumpd: cannot connect to {p}: Not a directory"),
    "too-long": (_long, lambda p: f"dumpd: cannot connect to {p}: socket path is 120 bytes, "
                                  "the limit is 107"),
}


@pytest.mark.parametrize("kind", SOCKETS)
@pytest.mark.parametrize("command", CLIENTS)
def test_clients_blame_the_socket(tmp_path: Path, command: str, kind: str) -> None:
    make, expect = SOCKETS[kind]
    path = make(tmp_path)
    result = run(*CLIENTS[command], "--socket", str(path), cwd=tmp_path)
    assert one_line_error(result, 1) == expect(path)
    assert not (tmp_path / "copy").exists()  # nothing made for a server never reached


@pytest.mark.parametrize("command", CLIENTS)
def test_an_empty_socket_path(tmp_path: Path, command: str) -> None:
    """`$DUMPD_SOCKET` set but empty (a script's unset variable): said, not EINVAL."""
    given = run(*CLIENTS[command], "--socket", "", cwd=tmp_path)
    from_env = run(*CLIENTS[command], cwd=tmp_path, env={**ENV, "DUMPD_SOCKET": ""})
    for result in (given, from_env):
        assert one_line_error(result, 1) == "dumpd: cannot connect to : the socket path is empty"
    assert list(tmp_path.iterdir()) == []


def test_serve_with_nothing_to_listen_on(tmp_path: Path) -> None:
    """An empty socket means TCP only; without --tcp it served on nothing, for ever."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    result = run("serve", "--source", dump.path, "--socket", "", timeout=10)
    assert one_line_error(result, 2) == ("dumpd: nothing to listen on: server.socket "
                                         "(--socket) is empty and server.tcp (--tcp) is not set")


def test_the_default_socket_hint() -> None:
    with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
        probe.connect(DEFAULT_SOCKET)
        pytest.skip(f"a server listens at {DEFAULT_SOCKET}")
    assert one_line_error(run("info"), 1) == (
        f"dumpd: no server is listening at {DEFAULT_SOCKET} (start one with "
        f"`dumpd serve --source /proc/vmcore`, {HINT}")


@contextlib.contextmanager
def hanging_up(path: Path, answer: bytes = b"") -> Iterator[None]:
    """A listener at `path` that closes each connection once its first request came
    (read first, so the close is an EOF, not a reset), after sending `answer`."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def loop() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn = listener.accept()[0]
                conn.recv(1 << 16)
                conn.sendall(answer)
                conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("command", CLIENTS)
def test_a_server_that_hangs_up(tmp_path: Path, command: str) -> None:
    path = tmp_path / "rude.sock"
    with hanging_up(path):
        result = run(*CLIENTS[command], "--socket", str(path), cwd=tmp_path)
    line = one_line_error(result, 1)
    if command == "fetch":  # fetch may be told before or after it opened its copy
        assert line.startswith("dumpd: ") and f"{path}" in line, line
    else:
        assert line == f"dumpd: lost the connection to {path}: the server closed it"


@pytest.mark.parametrize("command", CLIENTS)
def test_something_that_is_not_dumpd(tmp_path: Path, command: str) -> None:
    """An HTTP server at the address (a wrong --tcp port): it is blamed, not the request
    (this was `dumpd: EINVAL: a message must be ...`, as if dumpd had refused it)."""
    path = tmp_path / "http.sock"
    with hanging_up(path, b"HTTP/1.0 400 Bad Request\r\n\r\n"):
        result = run(*CLIENTS[command], "--socket", str(path), cwd=tmp_path)
    assert one_line_error(result, 1) == (
        f"dumpd: lost the connection to {path}: what answers there does not speak dumpd's "
        "protocol (EINVAL: a message must be a non-empty array, got 72)")
    assert sorted(os.listdir(tmp_path)) == ["http.sock"]


# -- serve: where it is told to listen --------------------------------------------------


@pytest.mark.parametrize("kind,expect", [
    ("regular-file", "{p}: exists and is not a socket; refusing to replace it"),
    ("directory", "{p}: exists and is not a socket; refusing to replace it"),
    ("parent-is-a-file", "{p}: Not a directory"),
    ("too-long", "{p}: socket path is 120 bytes, the limit is 107"),
    ("missing-directory", "{p}: directory {p.parent} does not exist (dumpd creates only "
                          "/run/dumpd, for its default socket)"),
])
def test_serve_blames_the_socket_path(tmp_path: Path, kind: str, expect: str) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    path = SOCKETS[kind][0](tmp_path)
    before = sorted(tmp_path.rglob("*"))
    line = one_line_error(run("serve", "--source", dump.path, "--socket", str(path)), 2)
    assert line == "dumpd: " + expect.format(p=path)
    assert sorted(tmp_path.rglob("*")) == before  # no directory made, nothing replaced


@pytest.mark.parametrize("text,expect", [
    (None, "{c}: cannot read: No such file or directory"),
    ('[server]\nallow_uids = ["bob"]\n',
     '{c}: server.allow_uids: expected a list of uids (integers), got ["bob"]'),
    ('[engine]\ncache_mib = "x"\n', '{c}: engine.cache_mib: expected a number of MiB, got "x"'),
    ("[server\n", "{c}: not valid TOML: Expected ']' at the end of a table declaration "
                  "(at line 1, column 8)"),
], ids=["missing", "uids", "mib", "syntax"])
def test_serve_blames_the_config_file(tmp_path: Path, text: str | None, expect: str) -> None:
    config = tmp_path / "dumpd.toml"
    if text is not None:
        config.write_text(text)
    assert one_line_error(run("serve", "-c", str(config)), 2) == "dumpd: " + expect.format(
        c=config)


# -- as a user the socket does not admit -------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse, so only the socket's own mode decides."""
    with tempfile.TemporaryDirectory(prefix="dumpd-failures-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def main_as_nobody(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """`dumpd ARGV` run by `cli.main` in a forked child that became nobody (the venv's
    interpreter may be where nobody cannot execute it)."""
    if os.getuid() != 0:
        pytest.skip("needs root to become nobody")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 70
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            status = main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        stdout, stderr = out.read(), err.read()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return subprocess.CompletedProcess(argv, status, stdout, stderr)


@pytest.mark.parametrize("command", CLIENTS)
def test_permission_denied(shared_dir: Path, command: str) -> None:
    path = shared_dir / "root.sock"
    _stale(path)
    os.chmod(path, 0o600)
    os.chmod(shared_dir, 0o777)  # fetch may write its copy here
    result = main_as_nobody([*CLIENTS[command], "--socket", str(path)], shared_dir)
    assert one_line_error(result, 1) == (
        f"dumpd: {path}: permission denied (connecting needs write permission on the "
        "socket; dumpd creates it mode 0600, for its own user)")


@pytest.mark.parametrize("command", CLIENTS)
def test_refused_by_the_server(shared_dir: Path, command: str) -> None:
    """The socket lets nobody connect, the server does not: the client says why (the
    server's EACCES notification, read after the failed send), not `Broken pipe`."""
    dump = build_raw(shared_dir / "oldmem", 4 * PAGE)
    with served(shared_dir, dump.path) as sock:
        os.chmod(shared_dir / "run", 0o755)
        os.chmod(sock, 0o666)
        os.chmod(shared_dir, 0o777)  # fetch may write its copy here
        result = main_as_nobody([*CLIENTS[command], "--socket", sock], shared_dir)
    assert one_line_error(result, 1) == (
        f"dumpd: lost the connection to {sock}: the server closed it: "
        f"EACCES: uid {NOBODY} is not allowed to read this dump")
    assert not (shared_dir / "copy").exists()


def test_serve_where_it_may_not_bind(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4 * PAGE)
    os.chmod(dump.path, 0o644)
    path = shared_dir / "dumpd.sock"
    result = main_as_nobody(["serve", "--source", dump.path, "--socket", str(path)],
                            shared_dir)
    assert one_line_error(result, 2) == f"dumpd: {path}: cannot bind: Permission denied"


# -- against a real server: closed stdout, unwritable output ----------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="dumpd-failures-") as tmp:
        base = Path(tmp)
        dump = build_raw(base / "oldmem", 64 * PAGE)
        with served(base, dump.path) as sock:
            yield sock


def closed_stdout(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """`dumpd ARGS` with stdout a pipe whose reader is gone (`dumpd ... | head -c0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*DUMPD, *args], stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=env or ENV, timeout=timeout,
                              check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [
    ["info"], ["info", "--json"], ["stats"], ["read", "0", str(64 * PAGE)],
    ["hook", "unregister"],
], ids=["info", "info-json", "stats", "read", "hook-unregister"])
def test_closed_stdout_ends_quietly(server: str, args: list[str]) -> None:
    result = closed_stdout(*args, "--socket", server)
    assert (result.returncode, result.stderr) == (SIGPIPE_STATUS, b"")


def test_closed_stdout_without_a_server(tmp_path: Path) -> None:
    for args in (["plugins"], ["hook", "check", "none", "--pfn-limit", "4096"]):
        result = closed_stdout(*args)
        assert (result.returncode, result.stderr) == (SIGPIPE_STATUS, b""), args
    work = tmp_path / "tmp"
    work.mkdir()
    result = closed_stdout("demo", "--size-mib", "24", env={**ENV, "TMPDIR": str(work)},
                           timeout=60)
    assert (result.returncode, result.stderr) == (SIGPIPE_STATUS, b"")
    assert list(work.iterdir()) == []  # its temporary directory is gone


WRITES_TO = "name a regular file, a block device (with --force), a pipe or - (stdout)"


def closed_fds(*args: str, fds: str = ">&-") -> subprocess.CompletedProcess[bytes]:
    """`dumpd ARGS >&-`: standard descriptors closed (`fds`: shell redirections)."""
    return subprocess.run(["sh", "-c", f'exec "$@" {fds}', "sh", *DUMPD, *args],
                          capture_output=True, env=ENV, timeout=30, check=False)


@pytest.mark.parametrize("args", [
    ["info"], ["stats", "--json"], ["read", "0", "16"], ["hook", "unregister"], ["plugins"],
    ["--version"], ["--help"],
], ids=["info", "stats", "read", "hook-unregister", "plugins", "version", "help"])
def test_a_closed_stdout_descriptor_is_a_failed_write(server: str, args: list[str]) -> None:
    """Not a pipe whose reader left: stdout is no descriptor at all (it used to be a
    traceback, or the next file opened: the connection)."""
    result = closed_fds(*args, "--socket", server) if args[0] not in (
        "plugins", "--version", "--help") else closed_fds(*args)
    assert (result.returncode, result.stderr) == (1, b"dumpd: stdout: Bad file descriptor\n")


def test_fetch_with_closed_standard_descriptors(server: str, tmp_path: Path) -> None:
    to_stdout = closed_fds("fetch", "-q", "-o", "-", "--socket", server)
    assert one_line_error(to_stdout, 1) == ("dumpd: fetch: stdout: Bad file descriptor; fetch "
                                            "again for a complete copy")
    copy = tmp_path / "copy"
    for fds in (">&-", "2>&-", "<&- >&- 2>&-"):
        result = closed_fds("fetch", "-o", str(copy), "--verify", "--socket", server, fds=fds)
        assert (result.returncode, result.stdout) == (0, b""), result.stderr
        assert copy.read_bytes() == run("read", "0", str(64 * PAGE), "--socket",
                                        server).stdout
        copy.unlink()


@pytest.mark.parametrize("output,status,reason", [
    ("{tmp}", 2, f"{{tmp}} is a directory; {WRITES_TO}"),
    ("/proc/nonexistent/x", 1, "/proc/nonexistent/x: cannot create it: No such file or "
                               "directory"),
    ("{tmp}/no/such/dir/x", 1, "{tmp}/no/such/dir/x: cannot create it: No such file or "
                               "directory"),
    ("/dev/full", 2, f"/dev/full is a character device (a terminal?); {WRITES_TO}"),
])
def test_read_blames_its_output(server: str, tmp_path: Path, output: str, status: int,
                                reason: str) -> None:
    output = output.format(tmp=tmp_path)
    result = run("read", "0", "16", "-o", output, "--socket", server)
    assert one_line_error(result, status) == f"dumpd: read: {reason.format(tmp=tmp_path)}"


def test_read_output_is_private_and_only_made_once_the_server_answers(
        server: str, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    one_line_error(run("read", "0", "16", "-o", str(out), "--socket", str(tmp_path / "no")), 1)
    assert not out.exists()
    assert run("read", "0", "16", "-o", str(out), "--socket", server).returncode == 0
    assert (out.stat().st_mode & 0o777, out.stat().st_size) == (0o600, 16)
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"old contents, longer than 16 bytes")
    mine.chmod(0o644)
    refused = run("read", "0", "16", "-o", str(mine), "--socket", server)
    assert one_line_error(refused, 2) == f"dumpd: read: {mine} exists; --force writes over it"
    assert mine.read_bytes() == b"old contents, longer than 16 bytes"
    assert run("read", "0", "16", "-o", str(mine), "--force", "--socket", server
               ).returncode == 0
    assert (mine.stat().st_mode & 0o777, mine.read_bytes()) == (0o600, out.read_bytes())


def test_a_refused_read_leaves_no_output_behind(server: str, tmp_path: Path) -> None:
    """Else the same command, retried with a good address, meets `exists`."""
    out = tmp_path / "page.bin"
    refused = run("read", "--phys", "0x90000000", "16", "-o", str(out), "--socket", server)
    assert one_line_error(refused, 1) == ("dumpd: ERANGE: physical address 0x90000000 is not "
                                          "in any segment")
    assert list(tmp_path.iterdir()) == []
    assert run("read", "--phys", "0", "16", "-o", str(out), "--socket", server).returncode == 0
    assert out.stat().st_size == 16


def test_fetch_blames_its_output(server: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "vmcore"
    line = one_line_error(run("fetch", "-q", "-o", str(missing), "--socket", server), 1)
    assert line == f"dumpd: fetch: {missing}: cannot create it: No such file or directory"
    assert list(tmp_path.iterdir()) == []


# -- bad arguments and impossible demos --------------------------------------------------


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["serve", "--page-size", "x"], ["serve", "--kind", "zip"],
    ["info", "--tcp", "nohost"], ["stats", "extra"], ["read", "x", "16"], ["read", "0"],
    ["read", "0", "-1"], ["fetch", "--range", "5"], ["fetch", "--chunk", "x"],
    ["plugins", "extra"], ["hook"], ["hook", "register"], ["hook", "check", "none",
    "--pfn-limit", "-1"], ["demo", "--size-mib", "x"], ["demo", "--balloon-percent", "-5"],
], ids=lambda args: "-".join(args) or "nothing")
def test_bad_arguments(args: list[str]) -> None:
    result = run(*args)
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert (result.returncode, result.stdout) == (2, b"")
    assert stderr.startswith("usage: dumpd")
    assert ": error: " in stderr.splitlines()[-1], stderr


@pytest.mark.parametrize("args,expect", [
    (["--size-mib", "0"], "a guest of 0 MiB is too small: the model needs at least 24 MiB "
                          "(its kernel text is at 16-24 MiB)"),
    (["--size-mib", "23"], "a guest of 23 MiB is too small: the model needs at least 24 MiB "
                           "(its kernel text is at 16-24 MiB)"),
    (["--balloon-percent", "150"], "a balloon of 150% is impossible: it takes 0 to 100% of "
                                   "the guest's RAM outside the crash kernel's reservation"),
], ids=["size-0", "size-23", "balloon-150"])
def test_impossible_demos(tmp_path: Path, args: list[str], expect: str) -> None:
    result = run("demo", *args, timeout=10, env={**ENV, "TMPDIR": str(tmp_path)})
    assert one_line_error(result, 2) == f"dumpd: demo: {expect}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["vmcore", "balloon.txt"])
def test_a_demo_writes_over_nothing_in_its_dir(tmp_path: Path, name: str) -> None:
    """`demo --dir` where a real dump was fetched used to replace it with the demo's."""
    mine = tmp_path / name
    mine.write_bytes(b"a real dump")
    result = run("demo", "--size-mib", "24", "--dir", str(tmp_path), timeout=60)
    assert one_line_error(result, 2) == (f"dumpd: demo: {mine} exists; the demo writes over "
                                         "nothing (remove it, or name another --dir)")
    assert (os.listdir(tmp_path), mine.read_bytes()) == ([name], b"a real dump")


def test_a_demo_too_large_for_the_disk(tmp_path: Path) -> None:
    result = run("demo", "--size-mib", str(1 << 40), timeout=10,
                 env={**ENV, "TMPDIR": str(tmp_path)})
    line = one_line_error(result, 2)
    assert line.startswith(f"dumpd: demo: {tmp_path}: ")
    assert line.endswith(f" MiB free, the vmcore of a {1 << 40} MiB guest needs up to "
                         f"{1 << 40} MiB (--size-mib, --dir)")
    assert list(tmp_path.iterdir()) == []
