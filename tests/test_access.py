"""Who may read the dump, for real: the socket's mode and the peer's credentials tried as
other users and groups from forked children; TCP with TLS and client certificates
(trustme's CAs) through both clients and the command line; and hostile parameters
sent to a real `dumpd serve` whose file system calls are watched."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dumpd.client import Client, RemoteError, StreamData, StreamWritten
from dumpd.client.aio import AsyncClient
from dumpd.config import Config, EngineConfig, FinishConfig, ServerConfig, SourceConfig
from dumpd.engine import Engine
from dumpd.errors import StartupError
from dumpd.protocol import FrameDecoder, Limits, Notification, Response, encode_request
from dumpd.server import Server
from dumpd.server import tls as server_tls
from dumpd.server.dispatch import Dispatcher
from dumpd.server.finish import Finish
from dumpd.server.listeners import Credentials, supplementary_groups
from dumpd.sources import open_source
from tests.daemon import DUMPD, ENV, one_line_error, run, served, server_pid
from tests.docblocks import code_blocks
from tests.dumps import build_raw, file_bytes
from tests.figures import Figures
from tests.pki import Pki, non_loopback_address
from tests.servers import client_of, free_port, serving, until

NOBODY = 65534
GROUP = 4242  # a group no test user has unless given it
STRANGER = 4343  # a uid no test allows
PAGE = 4096
MiB = 1 << 20
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse, so only the socket's own mode decides."""
    with tempfile.TemporaryDirectory(prefix="dumpd-access-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


# -- Unix socket peers: uid, primary and supplementary groups ---------------------------


def _child(path: str, frames: bytes, out: int, uid: int, gid: int, groups: list[int],
           replies: int | None) -> None:
    """In the forked child: become uid/gid/groups, send `frames`, report what came back
    until `replies` responses came, or (None) until the server closed the connection
    (EOF, or a reset once our requests were left unread: the server refused us); exit
    status 0 only then."""
    status = 1
    try:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            try:
                sock.connect(path)
            except PermissionError:
                os.write(out, b"connect: EACCES")
                status = 0
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(frames)  # a refused peer may find the server gone already
                sock.shutdown(socket.SHUT_WR)
            decoder = FrameDecoder("client", Limits(1 << 20))
            answered = 0
            with contextlib.suppress(ConnectionResetError):
                while answered != replies and (data := sock.recv(65536)):
                    os.write(out, data)
                    answered += sum(isinstance(e, Response) for e in decoder.feed(data))
            status = 0
    finally:
        os._exit(status)


async def as_user(path: str, *requests: tuple[str, list[object]], uid: int = NOBODY,
                  gid: int = NOBODY, groups: tuple[int, ...] = (),
                  replies: int | None = None) -> bytes:
    """What a client running as `uid`, `gid` and `groups` receives for `requests`, up to
    the server's close (asserted), or up to `replies` responses."""
    frames = b"".join(encode_request(i, m, p) for i, (m, p) in enumerate(requests))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(path, frames, write_end, uid, gid, list(groups), replies)
    os.close(write_end)
    loop = asyncio.get_running_loop()

    def collect() -> tuple[bytes, int]:
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        return b"".join(chunks), os.waitpid(pid, 0)[1]

    data, status = await loop.run_in_executor(None, collect)
    assert os.waitstatus_to_exitcode(status) == 0, "no close, or too few replies"
    return data


def events(data: bytes) -> list[Response | Notification]:
    return [e for e in FrameDecoder("client", Limits(1 << 20)).feed(data)
            if isinstance(e, Response | Notification)]


def refusal(uid: int = NOBODY) -> list[Response | Notification]:
    return [Notification("error", ["EACCES", f"uid {uid} is not allowed to read this dump"])]


@needs_root
async def test_socket_mode_0600_keeps_other_users_out(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    async with serving(shared_dir, dump.path) as server:
        got = await as_user(server.config.server.socket, ("info", []))
        assert server.refused == 0
    assert got == b"connect: EACCES"


@needs_root
async def test_peer_credentials_refuse_other_uids(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    async with serving(shared_dir, dump.path) as server:
        os.chmod(server.config.server.socket, 0o666)  # as if an operator widened the mode
        got = await as_user(server.config.server.socket, ("read", [0, 8]))
        assert server.refused == 1
    assert events(got) == refusal()


@needs_root
async def test_allowed_uid_reads_but_may_not_change_the_hook(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    async with serving(shared_dir, dump.path, allow_uids=(NOBODY,)) as server:
        os.chmod(server.config.server.socket, 0o666)
        got = await as_user(server.config.server.socket, ("read", [0, 8]),
                            ("hook.register", ["none", {}]), ("hook.unregister", []),
                            ("hook.reload", []))
        assert server.refused == 0
        assert server.engine is not None and server.engine.hook_name is None
    replies = {e.msgid: e for e in events(got) if isinstance(e, Response)}
    assert replies[0].error is None and replies[0].result == file_bytes(dump.path, 0, 8)
    assert replies[1].error == ("EACCES", "hook.register is for administrators only")
    assert replies[2].error == ("EACCES", "hook.unregister is for administrators only")
    assert replies[3].error == ("EACCES", "hook.reload is for administrators only")


@needs_root
async def test_admin_uids_may_change_the_hook(shared_dir: Path) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    replies = []
    async with serving(shared_dir, dump.path, admin_uids=(NOBODY,)) as server:
        os.chmod(server.config.server.socket, 0o666)
        for request in (("hook.register", ["none", {}]), ("hook.reload", []),
                        ("hook.unregister", [])):  # one at a time: requests run concurrently
            got = events(await as_user(server.config.server.socket, request))
            assert len(got) == 1 and isinstance(got[0], Response)
            replies.append((got[0].error, got[0].result))
        assert server.refused == 0
        assert server.engine is not None and server.engine.slot.generation == 2
    assert replies == [(None, {"hook": "none"}),
                       (("ENOSYS", "hook 'none' has no data to reload"), None),
                       (None, {"hook": "none"})]


@needs_root
async def test_allow_gids_refuses_other_groups_and_logs_once(
        shared_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    dump = build_raw(shared_dir / "oldmem", 4096)
    async with serving(shared_dir, dump.path, allow_gids=(GROUP,)) as server:
        path = server.config.server.socket
        os.chmod(path, 0o666)
        first = await as_user(path, ("read", [0, 8]), groups=(GROUP + 1,))
        second = await as_user(path, ("info", []))
        assert server.refused == 2
        async with client_of(server) as client:  # root, still served
            stats = await client.stats()
    assert events(first) == events(second) == refusal()
    assert stats["refused_connections"] == 2
    logged = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(logged) == 1, logged  # the second refusal within a minute is not logged
    assert re.fullmatch(rf"refused connection from uid {NOBODY} \(gid {NOBODY}, pid \d+\)",
                        logged[0])


@needs_root
@pytest.mark.parametrize(("gid", "groups"), [(GROUP, ()), (NOBODY, (100, GROUP))],
                         ids=["primary", "supplementary"])
async def test_allow_gids_admits_a_member_who_is_no_admin(
        shared_dir: Path, gid: int, groups: tuple[int, ...]) -> None:
    dump = build_raw(shared_dir / "oldmem", 4 * PAGE)
    async with serving(shared_dir, dump.path, allow_gids=(GROUP,)) as server:
        os.chmod(server.config.server.socket, 0o666)
        got = await as_user(server.config.server.socket, ("read", [PAGE, 64]),
                            ("hook.register", ["none", {}]), gid=gid, groups=groups)
        assert server.refused == 0
    replies = {e.msgid: e for e in events(got) if isinstance(e, Response)}
    assert (replies[0].error, replies[0].result) == (None, file_bytes(dump.path, PAGE, 64))
    assert replies[1].error == ("EACCES", "hook.register is for administrators only")


def test_supplementary_groups_come_from_the_peer_process_only() -> None:
    me = Credentials(os.getpid(), os.geteuid(), os.getegid())
    assert supplementary_groups(me) == frozenset(os.getgroups())
    # the pid now runs as another uid (reused), or is gone: only the primary group counts
    assert supplementary_groups(Credentials(os.getpid(), os.geteuid() + 1, 0)) == frozenset()
    child = subprocess.Popen(["true"])
    child.wait()
    assert supplementary_groups(Credentials(child.pid, os.geteuid(), 0)) == frozenset()


# -- TCP with TLS -----------------------------------------------------------------------


def async_stream(client: AsyncClient, pieces: list[Any]) -> None:
    """Collect `stream.*` notifications of `client` into `pieces`."""
    client.on_notification = lambda event: pieces.append((event.method, *event.params[1:]))


async def test_read_and_stream_over_tls_with_both_clients(tmp_path: Path, pki: Pki) -> None:
    dump = build_raw(tmp_path / "oldmem", 0x600 * PAGE)  # streams send RAM with sendfile...
    whole = file_bytes(dump.path)
    port = free_port()
    async with serving(tmp_path, dump.path, tcp=f"127.0.0.1:{port}",
                       **pki.server_options()) as server:
        assert server.config.server.stream_sendfile  # ...where the socket is plain
        async with await AsyncClient.connect_tcp("127.0.0.1", port, tls=pki.client()) as client:
            assert await client.read(3 * PAGE + 5, 3 * PAGE) == whole[3 * PAGE + 5 : 6 * PAGE + 5]
            pieces: list[Any] = []
            async_stream(client, pieces)
            summary = await client.call("stream", 0, dump.size, {})
        assert summary == {"bytes": dump.size, "data_bytes": dump.size, "hole_bytes": 0,
                           "error_bytes": 0, "cancelled": False}
        assert b"".join(data for method, _, data in pieces) == whole
        assert [offset for _, offset, _ in pieces] == list(range(0, dump.size, MiB))
        blocking = await asyncio.to_thread(blocking_tls_stream, port, pki, tmp_path)
        assert server.refused == 0
    head, view, written, copy = blocking
    assert (head, view, copy) == (whole[:100], whole, whole)
    assert written == [(offset, 2 * MiB) for offset in range(0, dump.size, 2 * MiB)]


def blocking_tls_stream(port: int, pki: Pki, tmp_path: Path
                        ) -> tuple[bytes, bytes, list[tuple[int, int]], bytes]:
    """The blocking client over TLS: a read, a stream received into memory, and one
    written straight to a file (which must not splice encrypted bytes)."""
    with Client.connect_tcp("127.0.0.1", port, tls=pki.client(), timeout=30) as client:
        head = client.read(0, 100)
        size = client.info()["size"]
        view = bytearray(size)
        for piece in client.stream(0, size):
            assert isinstance(piece, StreamData)
            view[piece.offset : piece.offset + len(piece.data)] = piece.data
        copy = tmp_path / "copy"
        fd = os.open(copy, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            stream = client.stream(0, size, 2 * MiB, sink=fd)
            written = [(p.offset, p.length) for p in stream if isinstance(p, StreamWritten)]
        finally:
            os.close(fd)
        assert stream.summary is not None and stream.summary["data_bytes"] == size
    return head, bytes(view), written, copy.read_bytes()


async def test_tls_peers_are_never_admins(tmp_path: Path, pki: Pki) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    port = free_port()
    async with serving(tmp_path, dump.path, tcp=f"127.0.0.1:{port}", admin_uids=(0,),
                       **pki.server_options()) as server:
        async with await AsyncClient.connect_tcp("127.0.0.1", port, tls=pki.client()) as client:
            for method, params in (("hook.register", ["none", {}]), ("hook.unregister", []),
                                   ("hook.reload", [])):
                with pytest.raises(RemoteError) as err:
                    await client.call(method, *params)
                assert (err.value.code, err.value.message) == (
                    "EACCES", f"{method} is for administrators only")
        assert server.engine is not None and server.engine.slot.generation == 0


def stranger_context(pki: Pki, with_cert: bool) -> ssl.SSLContext:
    """A client that trusts our server but shows no certificate, or one of another CA."""
    context = ssl.create_default_context(cafile=pki.ca)
    if with_cert:
        context.load_cert_chain(pki.stranger_cert, pki.stranger_key)
    return context


@pytest.mark.parametrize(("with_cert", "why"), [
    (False, "peer did not return a certificate"),
    (True, "certificate verify failed: unable to get local issuer certificate"),
], ids=["no-certificate", "another-ca"])
async def test_clients_without_a_good_certificate_are_refused_in_the_handshake(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture, with_cert: bool,
        why: str) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    port = free_port()
    async with (serving(tmp_path, dump.path, tcp=f"127.0.0.1:{port}",
                        **pki.server_options()) as server,
                await AsyncClient.connect_tcp("127.0.0.1", port, tls=pki.client()) as good):
        for _ in range(2):
            with pytest.raises((ConnectionError, ssl.SSLError)):
                # TLS 1.3: the client's side of the handshake ends first; the server's
                # refusal arrives as an alert or a close on the first call
                async with await AsyncClient.connect_tcp(
                        "127.0.0.1", port, tls=stranger_context(pki, with_cert)) as bad:
                    await bad.info()
        await until(lambda: server.refused == 2)
        assert await good.read(PAGE, 8) == file_bytes(dump.path, PAGE, 8)
        stats = await good.stats()
    assert (stats["refused_connections"], stats["connections"]) == (2, 1)
    logged = [r.getMessage() for r in caplog.records if "refused TLS" in r.getMessage()]
    assert len(logged) == 1, logged  # the second within a minute is counted, not logged
    assert re.fullmatch(rf"refused TLS connection from 127\.0\.0\.1:\d+: {why}", logged[0])


async def test_silent_and_surplus_tcp_clients_do_not_hold_the_listener(
        tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    port = free_port()
    async with serving(tmp_path, dump.path, tcp=f"127.0.0.1:{port}", max_connections=2,
                       **pki.server_options()) as server:
        assert server._tls is not None
        tls = server._tls
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        await until(lambda: tls.pending == 2)  # handshakes up to max_connections...
        with socket.create_connection(("127.0.0.1", port)) as surplus:
            surplus.settimeout(5)
            assert await asyncio.to_thread(surplus.recv, 1) == b""  # ...then closed at once
        assert tls.pending == 2
        for sock in silent:
            sock.close()
        await until(lambda: tls.pending == 0)
        monkeypatch.setattr(server_tls, "HANDSHAKE_TIMEOUT", 0.2)
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.settimeout(5)
            assert await asyncio.to_thread(slow.recv, 1) == b""  # closed by the timeout
        await until(lambda: tls.pending == 0)
        async with await AsyncClient.connect_tcp("127.0.0.1", port, tls=pki.client()) as client:
            assert await client.read(0, 8) == file_bytes(dump.path, 0, 8)
        assert server.refused == 0  # leaving or saying nothing is not a refusal


async def test_a_non_loopback_address_serves_with_tls(tmp_path: Path, pki: Pki) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    port = free_port("0.0.0.0")
    host = non_loopback_address() or "127.0.0.1"
    async with serving(tmp_path, dump.path, tcp=f"0.0.0.0:{port}",
                       **pki.server_options()) as server:
        async with await AsyncClient.connect_tcp(host, port, tls=pki.client()) as client:
            assert await client.read(5 * PAGE, PAGE) == file_bytes(dump.path, 5 * PAGE, PAGE)
        with socket.create_connection((host, port)) as plain:  # TLS is not optional
            plain.sendall(encode_request(0, "read", [0, 8]))
            plain.settimeout(5)
            assert await asyncio.to_thread(closed, plain)
        await until(lambda: server.refused == 1)


def closed(sock: socket.socket) -> bool:
    """The server closed `sock` without sending anything (a reset counts: it had unread
    bytes of ours)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


# -- start-up: one line naming the option, the file and what is wrong ---------------------


async def start_error(tmp_path: Path, pki: Pki, **files: str) -> str:
    """The StartupError of a server whose TLS options are `pki`'s with `files` instead."""
    dump = build_raw(tmp_path / "oldmem", PAGE)
    sock = tmp_path / "run" / "dumpd.sock"
    server = Server(Config(source=SourceConfig(path=dump.path), server=ServerConfig(
        socket=str(sock), tcp=f"127.0.0.1:{free_port()}", **{**pki.server_options(), **files})))
    try:
        with pytest.raises(StartupError) as err:
            await server.start()
    finally:
        await server.shutdown(deadline=0)
    assert not sock.exists()  # refused before binding anything
    return str(err.value)


def test_tls_file_mistakes_are_one_line_naming_the_file(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    text = tmp_path / "text.pem"
    text.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", pki.server_key, "-aes256", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True)
    missing = tmp_path / "missing.pem"
    cases = [
        ({"tls_cert": str(missing)}, f"server.tls_cert: {missing}: cannot read: No such file "
         "or directory"),
        ({"tls_client_ca": str(tmp_path)}, f"server.tls_client_ca: {tmp_path}: cannot read: "
         "Is a directory"),
        ({"tls_cert": str(text)}, f"server.tls_cert: {text}: not a PEM certificate"),
        ({"tls_key": pki.server_cert}, f"server.tls_key: {pki.server_cert}: not a PEM "
         "private key"),
        ({"tls_client_ca": pki.server_key}, f"server.tls_client_ca: {pki.server_key}: not a "
         "PEM certificate"),
        ({"tls_key": pki.client_key}, f"server.tls_key: {pki.client_key}: does not match "
         f"the certificate in {pki.server_cert}"),
        ({"tls_key": str(encrypted)}, f"server.tls_key: {encrypted}: is encrypted; use an "
         "unencrypted key, readable by its owner only"),
        ({"tls_cert": str(junk)}, f"server.tls_cert: {junk}: cannot load with "
         f"{pki.server_key}: not valid PEM"),
        ({"tls_client_ca": str(junk)}, f"server.tls_client_ca: {junk}: cannot load: not "
         "valid PEM"),
    ]
    for files, message in cases:
        assert asyncio.run(start_error(tmp_path, pki, **files)) == message


def serve_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dumpd.toml"
    path.write_text(text)
    return str(path)


def test_cli_start_up_errors_for_tcp_and_tls(tmp_path: Path, pki: Pki) -> None:
    dump = build_raw(tmp_path / "oldmem", PAGE)
    sock = tmp_path / "run" / "dumpd.sock"
    bare = serve_config(tmp_path, '[server]\ntcp = "0.0.0.0:7300"\n')
    line = one_line_error(run("serve", "-c", bare, "--source", dump.path,
                              "--socket", str(sock)), 2)
    assert line == (f"dumpd: {bare}: server.tcp: '0.0.0.0' is not a loopback address: anyone "
                    "who reaches it could read the dump; set server.tls_cert, server.tls_key "
                    "and server.tls_client_ca (TLS with required client certificates) or use "
                    "a loopback address")
    mismatched = serve_config(tmp_path, f'[server]\ntcp = "0.0.0.0:{free_port()}"\n'
                              f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.client_key}"\n'
                              f'tls_client_ca = "{pki.ca}"\n')
    line = one_line_error(run("serve", "-c", mismatched, "--source", dump.path,
                              "--socket", str(sock)), 2)
    assert line == (f"dumpd: server.tls_key: {pki.client_key}: does not match the certificate "
                    f"in {pki.server_cert}")
    assert not sock.exists()


# -- the command line over TLS, against a real `dumpd serve` -----------------------------


def test_cli_reads_and_fetches_over_tls(tmp_path: Path, pki: Pki) -> None:
    dump = build_raw(tmp_path / "oldmem", 0x300 * PAGE)
    port = free_port()
    config = serve_config(tmp_path, f'[server]\ntcp = "127.0.0.1:{port}"\n'
                          f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
                          f'tls_client_ca = "{pki.ca}"\n')
    tcp = ["--tcp", f"127.0.0.1:{port}"]
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path, "-c", config) as sock:
        info = json.loads(ok_run("info", "--json", *tcp, *pki.client_args()))
        raw = run("read", "0x2000", "300", *tcp, *pki.client_args())
        fetched = run("fetch", "-o", str(copy), "--verify", "-q", *tcp, *pki.client_args())
        refused = run("info", *tcp)  # plain TCP to a TLS listener
        strange = run("info", *tcp, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key,
                      "--tls-ca", pki.stranger_cert)  # the server's CA is not this
        mixed = run("info", "--tls-cert", pki.client_cert, "--socket", sock)
        stats = json.loads(ok_run("stats", "--json", "--socket", sock))
    assert info["size"] == dump.size
    assert (raw.returncode, raw.stderr, raw.stdout) == (0, b"", file_bytes(dump.path, 0x2000, 300))
    assert (fetched.returncode, fetched.stderr) == (0, b""), fetched.stderr
    assert copy.read_bytes() == file_bytes(dump.path)
    assert one_line_error(refused, 1) == (f"dumpd: lost the connection to 127.0.0.1:{port}: "
                                          "the server closed it")
    assert one_line_error(strange, 1) == (f"dumpd: cannot connect to 127.0.0.1:{port}: TLS: "
                                          "certificate verify failed: self-signed "
                                          "certificate in certificate chain")
    assert one_line_error(mixed, 2) == ("dumpd: TLS needs --tcp and all of --tls-cert, "
                                        "--tls-key and --tls-ca")
    assert stats["refused_connections"] == 2  # failed handshakes: plain TCP, a strange CA


def sha256(path: str) -> str:
    return hashlib.sha256(file_bytes(path)).hexdigest()


def ok_run(*args: str, cwd: Path | None = None) -> str:
    result = run(*args, cwd=cwd)
    assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_tls_guide_works_as_written(tmp_path: Path) -> None:
    """Its openssl commands, its configuration and its client commands, with 127.0.0.1
    and a free port for the guide's address, and files here for /etc/dumpd/tls."""
    certs, commands = code_blocks("tls.md", "sh")
    (config,) = code_blocks("tls.md", "toml")
    address = f"127.0.0.1:{free_port()}"
    subprocess.run(["sh", "-e", "-c", certs.replace("192.0.2.10", "127.0.0.1")],
                   cwd=tmp_path, check=True, capture_output=True)
    assert all(os.stat(tmp_path / f).st_mode & 0o077 == 0 for f in ("server.key", "client.key"))
    config = config.replace("/etc/dumpd/tls", str(tmp_path)).replace("192.0.2.10:7300", address)
    dump = build_raw(tmp_path / "oldmem", 0x100 * PAGE)
    with served(tmp_path, dump.path, "-c", serve_config(tmp_path, config)):
        results = [run(*shlex.split(line.replace("192.0.2.10:7300", address))[1:],
                       cwd=tmp_path) for line in commands.splitlines()]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert f"size     {dump.size} bytes, page size {PAGE}" in results[0].stdout.decode()
    assert results[1].stderr.decode().endswith(f"sha256 {sha256(dump.path)} matches\n")
    assert (tmp_path / "vmcore").read_bytes() == file_bytes(dump.path)


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_an_activated_non_loopback_socket_serves_with_tls(tmp_path: Path, pki: Pki) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    port = free_port("0.0.0.0")
    config = serve_config(tmp_path, f'[server]\ntcp = "0.0.0.0:{port}"\n'
                          f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
                          f'tls_client_ca = "{pki.ca}"\n')
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        activator = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"0.0.0.0:{port}", *DUMPD, "serve", "-c", config,
             "--source", dump.path, "--socket", str(tmp_path / "own.sock")],
            stdout=out, stderr=out, env=ENV)
    try:
        deadline = time.monotonic() + 20
        while True:  # the first connection starts dumpd, which then does the handshake
            with contextlib.suppress(OSError), Client.connect_tcp(
                    "127.0.0.1", port, tls=pki.client(), timeout=20) as client:
                data = client.read(PAGE, 32)
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(10)
    assert data == file_bytes(dump.path, PAGE, 32)
    assert f"on 0.0.0.0:{port} (TLS), hook (none registered)" in log.read_text()
    assert not (tmp_path / "own.sock").exists()


# -- no client reaches the file system ---------------------------------------------------


MARK = "dumpd-hostile"
ARITY = {"info": 0, "read": 2, "read_phys": 2, "read_virt": 2, "vmcoreinfo": 0,
         "extents": 2, "digest": 3, "stats": 0,
         "hook.register": 2, "hook.unregister": 0, "hook.reload": 0, "hook.explain": 2,
         "stream": 3, "stream.cancel": 1, "done": 0, "fetch.verified": 2}  # the table


def hostile_strings(base: Path) -> list[str]:
    return [str(base / MARK / "a"), "../" * 12 + f"tmp/{MARK}/b", f"{MARK}-c", f"./{MARK}/d",
            f"file://{base}/{MARK}/e", f"/proc/self/cwd/{MARK}/f", f"{MARK}\0/etc/passwd"]


def hostile_requests(base: Path, admin: bool) -> list[tuple[str, list[object]]]:
    """Every method with a path in each parameter in turn, path-like maps, and paths for
    method names; hook names no plugin has; for a non-admin, the plugins' names too (an
    admin registering a plugin with a file chooses the file it reads)."""
    strings = hostile_strings(base)
    options = {key: strings[0] for key in ("file", "map", "path", "transport", "chunk")}
    requests: list[tuple[str, list[object]]] = []
    for method, arity in ARITY.items():
        for text in strings:
            requests.append((method, [text] * max(arity, 1)))
            for i in range(arity):
                params: list[object] = [0] * arity
                params[i] = text
                requests.append((method, params))
        requests.append((method, [0, PAGE, options][-arity:] if arity else [options]))
    requests += [(text, [text]) for text in strings]
    requests += [("hook.register", [text, options]) for text in strings]
    requests += [("hook.register", ["none", {}, text]) for text in strings]  # distribution
    if not admin:
        requests += [("hook.register", [name, options]) for name in ("balloon", "xen")]
    return requests


def test_hostile_parameters_cover_the_dispatch_table(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", PAGE)
    engine = Engine(open_source(dump.path, "raw", PAGE, None), EngineConfig())
    try:
        finish = Finish(FinishConfig(), lambda reason: None)
        table = Dispatcher(engine, MiB, dict, finish=finish).methods  # a new one joins ARITY
    finally:
        engine.close()
    assert {name: method.arity for name, method in table.items()} == ARITY


WRITING_CALLS = {"creat", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename",
                 "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "truncate",
                 "chmod", "fchmodat", "chown", "lchown", "fchownat", "mknod", "mknodat",
                 "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr",
                 "removexattr", "lremovexattr"}


def file_calls(trace: str) -> list[str]:
    """strace lines of calls that create, change or open for writing."""
    found = []
    for line in trace.splitlines():
        call = re.match(r"(?:\[pid +\d+\] )?(?:\d+ +)?(\w+)\(", line)
        if call is None:
            continue
        if call.group(1) in WRITING_CALLS or (
                call.group(1) in ("open", "openat", "openat2")
                and re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", line)):
            found.append(line)
    return found


@contextlib.contextmanager
def hostile_server(shared_dir: Path) -> Iterator[tuple[str, int]]:
    """A real `dumpd serve` that nobody may use (not administer), cwd `shared_dir`."""
    dump = build_raw(shared_dir / "oldmem", 64 * PAGE)
    config = serve_config(shared_dir, f"[server]\nallow_uids = [{NOBODY}]\n"
                          f"allow_gids = [{GROUP}]\n")
    (shared_dir / "run").mkdir(mode=0o755)
    with served(shared_dir, dump.path, "-c", config) as sock:
        os.chmod(sock, 0o666)
        yield sock, server_pid(sock)


def snapshot(pid: int, *dirs: Path) -> tuple[set[str], set[str]]:
    """Files under `dirs`, and the files `pid` has open."""
    names = {str(p) for d in dirs for p in d.rglob("*") if p.name != "serve.log"}
    fd_dir = Path(f"/proc/{pid}/fd")
    opened = set()
    for fd in fd_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.startswith("/"):
                opened.add(target)
    return names, opened


async def send_hostile(sock: str, base: Path) -> dict[str, int]:
    """The hostile requests as nobody (no admin) and as root (an admin), one connection
    each, and one connection of a user who may not connect (the trace's control: its
    groups are read from /proc); how many replies came with each error code. Every
    request must get an error reply. (Whether the server closes a connection after a
    refused `stream` is test_fuzz.py's business.)"""
    codes: dict[str, int] = {}
    sent = 0
    for admin, uid in ((False, NOBODY), (True, 0)):
        requests = hostile_requests(base, admin)
        sent += len(requests)
        got = await as_user(sock, *requests, uid=uid, gid=uid, replies=len(requests))
        for reply in events(got):
            assert isinstance(reply, Response) and reply.error is not None, reply
            codes[reply.error[0]] = codes.get(reply.error[0], 0) + 1
    assert sum(codes.values()) == sent
    assert events(await as_user(sock, ("info", []), uid=STRANGER, gid=STRANGER)) == refusal(
        STRANGER)
    return codes


@needs_root
def test_hostile_parameters_create_and_open_no_file(shared_dir: Path, figures: Figures
                                                    ) -> None:
    with hostile_server(shared_dir) as (sock, pid):
        before = snapshot(pid, shared_dir)
        codes = asyncio.run(send_hostile(sock, shared_dir))
        after = snapshot(pid, shared_dir)
    # 298 requests as nobody, 296 as root (no plugin names); EACCES: hook.* but
    # hook.explain (anyone may ask: EINVAL) and done as nobody (done as root: EINVAL,
    # none of them is a map of known options)
    assert codes == {"EINVAL": 534, "EACCES": 46, "ENOSYS": 14}
    assert after[0] == before[0]  # no file made in its working directory
    assert after[1] <= before[1]  # no file left open
    assert not Path(f"/tmp/{MARK}").exists()
    figures.add("hostile parameters, every method (files, fds)", requests=sum(codes.values()),
                **{code.lower(): n for code, n in sorted(codes.items())},
                files_made=len(after[0] - before[0]), files_left_open=len(after[1] - before[1]))


@needs_root
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_hostile_parameters_make_no_file_system_call_that_writes(shared_dir: Path,
                                                                 figures: Figures) -> None:
    with hostile_server(shared_dir) as (sock, pid):
        trace = shared_dir / "strace.txt"
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(pid), "-e", "trace=%file",
                                   "-o", str(trace)], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not attached(pid, tracer.pid):
                assert tracer.poll() is None, tracer.stderr.read() if tracer.stderr else ""
                assert time.monotonic() < deadline, "strace did not attach"
                time.sleep(0.02)
            codes = asyncio.run(send_hostile(sock, shared_dir))
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
    text = trace.read_text()
    assert re.search(r'openat\(AT_FDCWD, "/proc/\d+/status", O_RDONLY', text), text  # traced
    assert file_calls(text) == []
    assert MARK not in text
    figures.add("hostile parameters, every method (strace)", requests=sum(codes.values()),
                file_system_calls=len(re.findall(r"^\d+ +\w+\(", text, re.MULTILINE)),
                calls_that_write=len(file_calls(text)), naming_a_client_path=text.count(MARK))


def attached(pid: int, tracer: int) -> bool:
    """Every thread of `pid` is traced by `tracer`."""
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    return all(f"TracerPid:\t{tracer}\n" in (task / "status").read_text() for task in tasks)
