"""`dumpd payload`: the tree it builds runs dumpd alone (in a chroot, as root), it fits the
crash kernel's 20 MiB, `--list` names exactly what `--into` makes, and it never overwrites."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.daemon import ok, one_line_error, run
from tests.dumps import IRREGULAR, build_elf, file_bytes
from tests.servers import free_port

LIMIT = 20 << 20
"""The crash kernel's budget for the unpacked payload (issue 14: 20 MB, read as MiB)."""


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[tuple[str, str]]]:
    """(the tree, what `--into` printed, the `--list` lines as (SOURCE, DEST))."""
    tree = tmp_path_factory.mktemp("payload") / "root"
    printed = ok("payload", "--into", str(tree), timeout=300)
    listed = [tuple(line.split("\t")) for line in ok("payload", "--list",
                                                     timeout=300).splitlines()]
    assert all(len(pair) == 2 for pair in listed)
    return tree, printed, [(s, d) for s, d in listed]


def _tree_files(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() or p.is_symlink()}


def test_list_and_into_agree(payload: tuple[Path, str, list[tuple[str, str]]]) -> None:
    tree, _, listed = payload
    files = {dest.partition(".zip/")[0] + ".zip" if ".zip/" in dest else dest
             for _, dest in listed}
    assert _tree_files(tree) == files
    with zipfile.ZipFile(tree / "usr/lib/python311.zip") as archive:
        members = set(archive.namelist())
    assert members == {dest.partition(".zip/")[2] for _, dest in listed if ".zip/" in dest}
    for source, dest in listed:
        assert os.path.isfile(source), source
        if ".zip/" in dest or dest.endswith(".pyc"):
            continue
        if (tree / dest).is_symlink():  # a second name of a file the tree holds once
            target = (tree / dest).resolve().relative_to(tree.resolve())
            assert (source, str(target)) in listed, dest
            continue
        copy = (tree / dest).read_bytes()
        original = Path(source).read_bytes()
        if original[:4] == b"\x7fELF":
            assert len(copy) <= len(original) and copy[:4] == b"\x7fELF"  # stripped copy
        else:
            assert copy == original, dest
    dests = [dest for _, dest in listed]
    assert len(dests) == len(set(dests))
    assert {"usr/bin/dumpd", "usr/bin/python3", "lib64/ld-linux-x86-64.so.2"} <= set(dests)
    # lazily imported modules are found: ssl and hashlib in functions, email.parser by
    # importlib.metadata's, the hooks' code, the codecs looked up by name
    for wanted in ("ssl.pyc", "hashlib.pyc", "parser.pyc", "tomllib", "idna.pyc", "cp437.pyc"):
        assert any(wanted in d for d in dests), wanted
    assert "usr/lib/python311.zip/dumpd_balloon/__init__.pyc" in dests
    assert "usr/lib/python311.zip/dumpd_balloon-0.1.0.dist-info/entry_points.txt" in dests
    assert not any(d.split("/")[-2:-1] == ["tests"] or "pytest" in d for d in dests)
    # originals untouched: the interpreter's own file still has its symbols
    interpreter = next(s for s, d in listed if d == "usr/bin/python3")
    assert Path(interpreter).exists()


def test_size_fits_and_is_printed(payload: tuple[Path, str, list[tuple[str, str]]]) -> None:
    tree, printed, _ = payload
    total = sum((tree / f).lstat().st_size for f in _tree_files(tree))
    files = len(_tree_files(tree))
    assert printed == (f"{tree}: {files} files, {total:,} bytes "
                       f"({total / (1 << 20):.1f} MiB)\n")
    assert total <= LIMIT, f"{total:,} bytes"


def test_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "root"
    target.mkdir()
    (target / "keep").write_text("mine")
    line = one_line_error(run("payload", "--into", str(target), timeout=300), 2)
    assert line == (f"dumpd: payload: {target}: File exists (EEXIST): a payload goes into an "
                    "absent or empty directory, never over files")
    assert [p.name for p in target.iterdir()] == ["keep"]
    afile = tmp_path / "file"
    afile.write_text("mine")
    line = one_line_error(run("payload", "--into", str(afile), timeout=300), 2)
    assert line == f"dumpd: payload: {afile}: File exists (EEXIST) and is not a directory"
    assert afile.read_text() == "mine"


def test_needs_into_or_list() -> None:
    result = run("payload")
    assert result.returncode == 2
    assert b"one of the arguments --into --list is required" in result.stderr


CHROOT = shutil.which("chroot") or "chroot"
root_only = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chroot") is None,
                               reason="chroot needs root (and coreutils' chroot)")


@pytest.fixture
def jail(payload: tuple[Path, str, list[tuple[str, str]]], tmp_path: Path) -> Iterator[Path]:
    """A copy of the payload with a dump, a balloon list and TLS files in it."""
    root = tmp_path / "root"
    shutil.copytree(payload[0], root, symlinks=True)
    yield root


def _start(root: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([CHROOT, str(root), "/usr/bin/dumpd", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={"PATH": "/usr/bin"})
    deadline = time.monotonic() + 30
    while b": INFO: serving " not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dumpd serve in the payload did not start: {log.read_text()}")
        time.sleep(0.05)
    return proc, log


@root_only
def test_chroot_version(jail: Path) -> None:
    result = subprocess.run([CHROOT, str(jail), "/usr/bin/dumpd", "--version"],
                            capture_output=True, env={}, check=False)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.startswith(b"dumpd ")


@root_only
def test_chroot_serves_unix_tls_digest_and_hook(jail: Path) -> None:
    dump = build_elf(jail / "vmcore", IRREGULAR, page_size_note=4096)
    (jail / "balloon.txt").write_text("0x41\n")  # pfn 0x41: inside the last PT_LOAD
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(jail / "ca.pem"))
    server = ca.issue_cert("127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(jail / "server.pem"))
    client = ca.issue_cert("client@dumpd")
    client.private_key_and_cert_chain_pem.write_to_path(str(jail / "client.pem"))
    port = free_port()
    (jail / "dumpd.toml").write_text(
        f'[source]\npath = "/vmcore"\n[server]\nsocket = "/run/dumpd.sock"\n'
        f'tcp = "127.0.0.1:{port}"\ntls_cert = "/server.pem"\ntls_key = "/server.pem"\n'
        f'tls_client_ca = "/ca.pem"\n[hook]\nname = "balloon"\n'
        f'[hook.options]\nfile = "/balloon.txt"\n')
    (jail / "run").mkdir(mode=0o700)
    proc, log = _start(jail, "serve", "-c", "/dumpd.toml")
    try:
        sock = str(jail / "run/dumpd.sock")
        info = ok("info", "--socket", sock)
        assert "balloon" in info, info
        ok("read", "--phys", "0x41000", "4096", "-o", str(jail / "page"), "--socket", sock)
        assert (jail / "page").read_bytes() == bytes(4096)  # ballooned: zeros, never read
        seg = dump.segments[0]
        got = run("read", hex(seg.file_offset), "4096", "-o", str(jail / "one"), "--socket", sock)
        assert got.returncode == 0, got.stderr
        assert (jail / "one").read_bytes() == file_bytes(dump.path, seg.file_offset, 4096)
        copy = jail / "copy"
        tls = ["--tcp", f"127.0.0.1:{port}", "--tls-cert", str(jail / "client.pem"),
               "--tls-key", str(jail / "client.pem"), "--tls-ca", str(jail / "ca.pem")]
        fetched = run("fetch", "-o", str(copy), "--verify", "-q", *tls)
        assert fetched.returncode == 0, fetched.stderr
        expected = bytearray(file_bytes(dump.path))
        last = dump.segments[-1]
        start = last.file_offset + (0x41000 - last.paddr)
        expected[start : start + 4096] = bytes(4096)
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(expected).digest()
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(15)
    text = log.read_text()
    assert status == 0, text
    assert "Traceback" not in text, text
