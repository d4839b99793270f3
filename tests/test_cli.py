"""The `dumpd` command as an operator uses it: real subprocesses, real servers, real files.

Every server here is `python -m dumpd serve` in its own process, stopped with SIGTERM;
start-up errors must be one `dumpd: ...` line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from dumpd import PROTOCOL_VERSION, __version__
from dumpd.cli.commands import hexdump
from dumpd.codecs import available
from tests.daemon import (
    DUMPD,
    ENV,
    info_json,
    log_lines,
    ok,
    one_line_error,
    run,
    served,
    server_pid,
    source_identity,
    stats_json,
)
from tests.dumps import SegSpec, build_elf, build_raw, file_bytes, pattern

PAGE = 4096
MiB = 1 << 20
def serve_error(*args: str) -> str:
    return one_line_error(run("serve", *args), 2)


# -- start-up errors -------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "missing.vmcore"
    sock = tmp_path / "run" / "dumpd.sock"
    line = serve_error("--source", str(missing), "--socket", str(sock))
    assert line == f"dumpd: {missing}: cannot open: No such file or directory"
    assert not sock.exists()


def test_truncated_elf(tmp_path: Path) -> None:
    dump = build_elf(tmp_path / "vmcore", [SegSpec(paddr=0x1000, memsz=0x3000)],
                     page_size_note=PAGE)
    assert dump.layout is not None
    phoff, phnum = dump.layout.phoff, dump.layout.phnum
    assert (phoff, phnum) == (64, 2)
    os.truncate(dump.path, phoff + 56 + 20)  # inside the second program header
    line = serve_error("--source", dump.path, "--socket", str(tmp_path / "dumpd.sock"))
    assert line == (f"dumpd: {dump.path}: program header table (2 entries) at file offset "
                    f"0x40+0x70 runs past the end of the file (0x8c bytes)")


def test_unknown_hook_lists_the_installed_ones(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    line = serve_error("--source", dump.path, "--socket", str(tmp_path / "dumpd.sock"),
                       "--hook", "bogus")
    assert line == "dumpd: [hook] unknown hook 'bogus'; installed: balloon, memmap, none, xen"


@pytest.mark.parametrize("options,problem", [
    ([], "balloon: missing required option 'file' (path to the balloon list)"),
    (["--hook-option", "color=red", "--hook-option", "file=x"],
     "balloon: unknown option 'color' (known: file)"),
    (["--hook-option", "file="], "balloon: option 'file' must be a non-empty path, got ''"),
    (["--hook-option", "file={missing}"], "balloon: {missing}: cannot read: "
                                            "No such file or directory"),
], ids=["no-file", "unknown-option", "empty-file", "missing-file"])
def test_bad_hook_options(tmp_path: Path, options: list[str], problem: str) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    missing = str(tmp_path / "missing.txt")
    options = [o.format(missing=missing) for o in options]
    line = serve_error("--source", dump.path, "--socket", str(tmp_path / "dumpd.sock"),
                       "--hook", "balloon", *options)
    assert line == "dumpd: [hook] " + problem.format(missing=missing)


def test_hook_option_without_equals(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    line = serve_error("--source", dump.path, "--hook", "balloon", "--hook-option", "file")
    assert line == "dumpd: --hook-option 'file': expected KEY=VALUE"


@pytest.mark.parametrize("command", [
    ["serve", "--hook", "balloon"],
    ["hook", "register", "balloon", "--socket", "/nonexistent"],  # found before connecting
    ["hook", "check", "balloon"],
], ids=["serve", "register", "check"])
def test_a_hook_option_given_twice(command: list[str]) -> None:
    result = run(*command, "--hook-option", "file=a.txt", "--hook-option", "file=b.txt")
    assert one_line_error(result, 2) == (
        "dumpd: --hook-option 'file' is given twice: give each key once")


def test_hook_options_without_a_hook(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    config = tmp_path / "dumpd.toml"
    config.write_text('[hook.options]\nfile = "x"\n')
    assert serve_error("--source", dump.path, "--hook-option", "file=x") == (
        "dumpd: command line: hook.options: given, but no hook is named to take them "
        "(--hook NAME or hook.name)")
    assert serve_error("-c", str(config), "--source", dump.path) == (
        f"dumpd: {config}: hook.options: given, but no hook is named to take them "
        "(--hook NAME or hook.name)")
    named = tmp_path / "named.toml"
    named.write_text('[hook]\nname = "balloon"\n[hook.options]\nfile = "/no/such/file"\n')
    with served(tmp_path, dump.path, "-c", str(named), "--hook", "") as sock:
        hook = info_json(sock)["hook"]  # `--hook ""`: no hook, and the file's options go
    assert hook is None


def test_another_hook_on_the_command_line_runs_without_the_files_options(
        tmp_path: Path) -> None:
    """`[hook]` names balloon with its file; `--hook xen` must not get `file` (xen would
    refuse it as unknown and the server would not start) nor balloon's distribution."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    memtypes = tmp_path / "memtypes.txt"
    memtypes.write_text("1 mmio_dm\n")
    config = tmp_path / "dumpd.toml"
    config.write_text('[hook]\nname = "balloon"\ndistribution = "dumpd-balloon"\n'
                      '[hook.options]\nfile = "/no/such/file"\n')
    with served(tmp_path, dump.path, "-c", str(config), "--hook", "xen", "--hook-option",
                "transport=stub", "--hook-option", f"map={memtypes}") as sock:
        hook = info_json(sock)["hook"]
        pid = server_pid(sock)
        page_1 = ok("read", "0x1000", "8", "--socket", sock)
    # pfn 1 is mmio_dm in the stub's map: served as zeros where the file has data
    assert (hook, page_1, file_bytes(dump.path, 0x1000, 8) != bytes(8)) == ("xen", "\0" * 8,
                                                                             True)
    assert log_lines(tmp_path / "serve.log", pid)[0] == (
        "WARNING: --hook xen: the configuration's [hook] options and distribution are for "
        "hook 'balloon'; xen runs without them")


def test_page_size_must_agree_with_vmcoreinfo(tmp_path: Path) -> None:
    dump = build_elf(tmp_path / "vmcore", [SegSpec(paddr=0x10000, memsz=0x10000)],
                     page_size_note=8192)
    raw = build_raw(tmp_path / "oldmem", 4 * PAGE)
    sock = tmp_path / "dumpd.sock"
    assert serve_error("--source", dump.path, "--socket", str(sock), "--page-size", "4096") == (
        f"dumpd: {dump.path}: --page-size 4096, but its VMCOREINFO says PAGESIZE=8192: "
        "give --page-size 8192 or none")
    assert not sock.exists()
    with served(tmp_path, dump.path, "--page-size", "8192") as path:
        agreed = info_json(path)["page_size"]
    (tmp_path / "raw").mkdir()
    with served(tmp_path / "raw", raw.path, "--page-size", "8192") as path:
        chosen = info_json(path)["page_size"]
    assert (agreed, chosen) == (8192, 8192)


@pytest.mark.parametrize("text,problem", [
    ("[source\npath = 'x'\n", "not valid TOML: "),
    ("[source]\npath = 'x'\ncolour = 1\n", "[source] unknown key 'colour' (known: "),
    ("[server]\nmax_inflight = 'many'\n", 'server.max_inflight: expected an integer, got "many"'),
    ("[server]\nloop = 'trio'\n", "server.loop: must be auto, uvloop or asyncio, not 'trio'"),
], ids=["syntax", "unknown-key", "wrong-type", "bad-value"])
def test_bad_config_file(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "dumpd.toml"
    config.write_text(text)
    line = serve_error("-c", str(config))
    assert line.startswith(f"dumpd: {config}: {problem}")


def test_missing_config_file_and_bad_flag_values(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert serve_error("-c", str(missing)) == (
        f"dumpd: {missing}: cannot read: No such file or directory")
    assert serve_error("--page-size", "1000") == (
        "dumpd: command line: source.page_size: must be a power of two >= 512, not 1000")
    assert serve_error("--tcp", "0.0.0.0:7300") == (
        "dumpd: command line: server.tcp: '0.0.0.0' is not a loopback address: anyone who "
        "reaches it could read the dump; set server.tls_cert, server.tls_key and "
        "server.tls_client_ca (TLS with required client certificates) or use a loopback "
        "address")


def test_socket_path_taken_by_a_regular_file(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    taken = tmp_path / "taken"
    taken.write_text("not a socket")
    line = serve_error("--source", dump.path, "--socket", str(taken))
    assert line == f"dumpd: {taken}: exists and is not a socket; refusing to replace it"
    assert taken.read_text() == "not a socket"


def test_socket_parent_is_a_regular_file(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    parent = tmp_path / "file"
    parent.write_text("")
    sock = parent / "dumpd.sock"
    line = serve_error("--source", dump.path, "--socket", str(sock))
    assert line.startswith(f"dumpd: {sock}: ")
    assert "Not a directory" in line


def test_failed_start_leaves_no_socket_file(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    sock = tmp_path / "run" / "dumpd.sock"
    sock.parent.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = serve_error("--source", dump.path, "--socket", str(sock),
                           "--tcp", f"127.0.0.1:{port}")
    assert line == f"dumpd: tcp 127.0.0.1:{port}: cannot bind: Address already in use"
    assert not sock.exists()


# -- a served dump -----------------------------------------------------------------------


def test_info_human_and_json(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 20 * MiB)
    with served(tmp_path, dump.path) as sock:
        human = ok("info", "--socket", sock)
        info = info_json(sock)
    assert human.splitlines() == [
        f"dumpd {__version__} (protocol {PROTOCOL_VERSION})",
        f"source   {dump.path} (raw)",
        "size     20971520 bytes, page size 4096",
        "kernel   unknown: no VMCOREINFO (serve a raw dump with --vmcoreinfo FILE)",
        "hook     (none registered)",
        "finish   on `dumpd done` or SIGTERM only",
        f"codecs   {', '.join(available())} (pages sent compressed)",
        "segments 1",
        "  paddr 0x000000000000  offset 0x0000000000  filesz 0x1400000  memsz 0x1400000",
    ]
    assert info == {
        "version": __version__, "protocol": PROTOCOL_VERSION,
        "source": {"kind": "raw", "path": dump.path, "read_path": "pread",
                   **source_identity(dump.path)},
        "size": 20 * MiB, "page_size": PAGE, "segments": [[0, 0, 20 * MiB, 20 * MiB]],
        "hook": None, "hook_options": None, "hook_generation": 0, "max_read": 8 * MiB,
        "finish": {"fetches": 0, "verified_fetches": 0, "idle_timeout": 0.0, "deadline": 0.0,
                   "deadline_left": None, "finishing": None},
        "kernel": {"vmcoreinfo": None, "osrelease": None, "arch": None, "crashtime": None,
                   "page_size": PAGE, "kernel_offset": None},
        "codecs": available(),
    }


def test_read_to_file_pipe_and_phys(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 20 * MiB)
    out = tmp_path / "out.bin"
    offset, length = 3 * MiB + 12345, 9 * MiB + 7  # two chunks, unaligned
    with served(tmp_path, dump.path) as sock:
        assert ok("read", str(offset), str(length), "-o", str(out), "--socket", sock) == ""
        piped = run("read", "0xfff", "100", "--socket", sock)
        phys = run("read", "--phys", "0x1234", "99", "--socket", sock)
        tail = run("read", str(20 * MiB - 10), "100", "--socket", sock)
        past = run("read", str(20 * MiB), "100", "--socket", sock)
        stats = stats_json(sock)
    assert out.read_bytes() == file_bytes(dump.path, offset, length)
    assert (piped.returncode, piped.stderr) == (0, b"")
    assert piped.stdout == file_bytes(dump.path, 0xFFF, 100)
    assert (phys.returncode, phys.stdout) == (0, file_bytes(dump.path, 0x1234, 99))
    assert (tail.returncode, tail.stdout) == (0, file_bytes(dump.path, 20 * MiB - 10))
    assert (past.returncode, past.stdout, past.stderr) == (0, b"", b"")
    assert stats["bytes_served"] == length + 100 + 99 + 10


def test_read_splits_to_the_servers_max_read(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 6 * MiB)
    config = tmp_path / "dumpd.toml"
    config.write_text("[server]\nmax_read_mib = 4\n")
    out = tmp_path / "out.bin"
    with served(tmp_path, dump.path, "-c", str(config)) as sock:
        result = run("read", "1", str(5 * MiB), "-o", str(out), "--socket", sock)
    assert (result.returncode, result.stderr) == (0, b"")
    assert out.read_bytes() == file_bytes(dump.path, 1, 5 * MiB)


def test_read_elf_and_erange_on_the_cli(tmp_path: Path) -> None:
    segs = [SegSpec(paddr=0x1000, memsz=0x5000), SegSpec(paddr=0x10000, memsz=0x3000,
                                                         filesz=0x1800)]
    dump = build_elf(tmp_path / "vmcore", segs, page_size_note=PAGE)
    out = tmp_path / "all.bin"
    with served(tmp_path, dump.path) as sock:
        info = info_json(sock)
        ok("read", "0", str(dump.size + 100), "-o", str(out), "--socket", sock)
        phys = run("read", "--phys", "0x1ff0", "0x20", "--socket", sock)
        tail = run("read", "--phys", "0x11000", "0x1000", "--socket", sock)
        bad = run("read", "--phys", "0", "16", "--socket", sock)
        gap = run("read", "--phys", "0x5ff0", "0x20", "--socket", sock)
    assert info["source"] == {"kind": "elf", "path": dump.path, "read_path": "pread",
                              **source_identity(dump.path)}
    assert (info["size"], info["page_size"]) == (dump.size, PAGE)
    assert info["segments"] == [[s.paddr, s.file_offset, s.filesz, s.memsz]
                                for s in dump.segments]
    assert out.read_bytes() == file_bytes(dump.path)
    assert (phys.returncode, phys.stdout) == (0, pattern(0x1FF0, 0x20))
    assert (tail.returncode, tail.stdout) == (0, pattern(0x11000, 0x800) + bytes(0x800))
    assert one_line_error(bad, 1) == "dumpd: ERANGE: physical address 0x0 is not in any segment"
    assert one_line_error(gap, 1) == (
        "dumpd: ERANGE: physical address 0x6000 is not in any segment")


def test_stats_counters(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    with served(tmp_path, dump.path) as sock:
        before = stats_json(sock)
        ok("read", "0", "4096", "-o", str(tmp_path / "a"), "--socket", sock)
        assert run("read", "100", "10", "--socket", sock).stdout == file_bytes(dump.path, 100, 10)
        ok("read", str(2 * PAGE), str(3 * PAGE), "-o", str(tmp_path / "b"), "--socket", sock)
        ok("read", str(2 * PAGE + 1), "8", "-o", str(tmp_path / "c"), "--socket", sock)
        stats = stats_json(sock)
        human = ok("stats", "--socket", sock)
    zeros = {k: 0 for k in ("hook_calls", "pfns_asked", "hook_errors", "hook_exceptions",
                            "hook_bad_results", "hook_timeouts", "source_pages_read",
                            "source_read_calls", "source_bytes_read", "cache_hits",
                            "cache_misses", "singleflight_waits", "zero_pages_served",
                            "bytes_served", "refused_connections")}
    assert {k: before[k] for k in zeros} == zeros
    assert before["hook"] is None
    assert {k: stats[k] for k in zeros} == {
        **zeros, "source_pages_read": 4, "source_read_calls": 2, "source_bytes_read": 4 * PAGE,
        "cache_misses": 4, "cache_hits": 2, "bytes_served": PAGE + 10 + 3 * PAGE + 8}
    assert 0 <= stats["source_reads_inline"] <= 2
    assert stats["hook"] is None
    assert isinstance(stats["uptime"], float)
    assert stats["uptime"] > before["uptime"] >= 0
    lines = human.splitlines()
    width = max(map(len, stats))
    assert f"{'cache_misses':<{width}}  4" in lines
    assert f"{'hook':<{width}}  (none registered)" in lines
    assert len(lines) == len(stats)


def test_finished_clients_are_released(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    with served(tmp_path, dump.path) as sock:
        for _ in range(3):
            ok("info", "--socket", sock)
        time.sleep(0.3)
        stats = stats_json(sock)
    assert stats["connections"] == 1  # the `stats` command's own


def test_hexdump_on_a_terminal(tmp_path: Path) -> None:
    if shutil.which("script") is None:
        pytest.skip("script(1) is not installed")
    dump = build_raw(tmp_path / "oldmem", 2 * PAGE,
                     fill=lambda paddr, n: bytes((paddr + i) & 0xFF for i in range(n)))
    with served(tmp_path, dump.path) as sock:
        command = shlex.join([*DUMPD, "read", "0x3e", "20", "--socket", sock])
        result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                                timeout=30, env=ENV, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout
    assert result.stdout.decode().replace("\r\n", "\n").splitlines() == [
        "00000000003e  3e 3f 40 41 42 43 44 45  46 47 48 49 4a 4b 4c 4d  |>?@ABCDEFGHIJKLM|",
        "00000000004e  4e 4f 50 51                                       |NOPQ|",
    ]


CLIENT_COMMANDS = """
import sys
from dumpd.cli import main
sock, out = sys.argv[1:]
status = [main(["info", "--socket", sock]), main(["stats", "--json", "--socket", sock]),
          main(["read", "0", "64", "-o", out, "--socket", sock]),
          main(["fetch", "-o", out + ".copy", "--quiet", "--socket", sock]),
          main(["hook", "reload", "--socket", sock])]
print(status, sorted(m for m in ("asyncio", "dumpd.engine", "dumpd.server") if m in sys.modules))
"""


def test_client_commands_import_no_asyncio(tmp_path: Path) -> None:
    """The blocking CLI's client commands run without asyncio, the engine or the server."""
    dump = build_raw(tmp_path / "oldmem", 2 * PAGE)
    with served(tmp_path, dump.path) as sock:
        result = subprocess.run([sys.executable, "-c", CLIENT_COMMANDS, sock,
                                 str(tmp_path / "out")], capture_output=True, timeout=30,
                                env=ENV, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines()[-1] == "[0, 0, 0, 0, 1] []"
    assert (tmp_path / "out").read_bytes() == file_bytes(dump.path, 0, 64)
    assert (tmp_path / "out.copy").read_bytes() == file_bytes(dump.path)


def test_hexdump_format(capsys: pytest.CaptureFixture[str]) -> None:
    hexdump(b"", 0x10)
    assert capsys.readouterr().out == ""
    hexdump(bytes(range(0x1C, 0x2C)) + b"\x7e\x7f\x80\xff ", 0xFFF0)
    assert capsys.readouterr().out.splitlines() == [
        "00000000fff0  1c 1d 1e 1f 20 21 22 23  24 25 26 27 28 29 2a 2b  |.... !\"#$%&'()*+|",
        "000000010000  7e 7f 80 ff 20                                    |~... |",
    ]
    hexdump(b"A" * 8, 5)
    assert capsys.readouterr().out == (
        "000000000005  41 41 41 41 41 41 41 41                           |AAAAAAAA|\n")


def test_server_unreachable(tmp_path: Path) -> None:
    hint = "or point elsewhere with --socket or $DUMPD_SOCKET)"
    assert one_line_error(run("info", "--socket", "/nonexistent"), 1) == (
        "dumpd: no server is listening at /nonexistent (start one with "
        f"`dumpd serve --source /proc/vmcore --socket /nonexistent`, {hint}")
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    assert one_line_error(run("read", "0", "16", "--socket", str(stale)), 1) == (
        f"dumpd: no server is listening at {stale} (start one with "
        f"`dumpd serve --source /proc/vmcore --socket {stale}`, {hint}")
    env = {**ENV, "DUMPD_SOCKET": str(tmp_path / "env.sock")}
    assert one_line_error(run("stats", env=env), 1).startswith(
        f"dumpd: no server is listening at {tmp_path / 'env.sock'} (")


# -- plugins and the hook --------------------------------------------------------------


def test_plugins_lists_installed_hooks() -> None:
    assert ok("plugins").splitlines() == [
        f"balloon      dumpd-balloon {version('dumpd-balloon')}  (dumpd_balloon:create)",
        f"memmap       dumpd-memmap {version('dumpd-memmap')}  (dumpd_memmap:create)",
        f"none         dumpd {__version__}  (dumpd.hooks.none:create)",
        f"xen          dumpd-xen {version('dumpd-xen')}  (dumpd_xen:create)",
    ]


def test_serve_with_the_balloon_hook(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * PAGE)
    balloon = tmp_path / "balloon.txt"
    balloon.write_text("# ballooned\n3\n10-12\n0x20+2\n")
    zero_pfns = {3, 10, 11, 12, 32, 33}
    out = tmp_path / "out.bin"
    with served(tmp_path, dump.path, "--hook", "balloon",
                "--hook-option", f"file={balloon}") as sock:
        info = info_json(sock)
        human = ok("info", "--socket", sock)
        ok("read", "0", str(dump.size), "-o", str(out), "--socket", sock)
        page_10 = run("read", str(10 * PAGE + 5), "16", "--socket", sock).stdout
        stats = stats_json(sock)
    assert info["hook"] == "balloon"
    assert "hook     balloon" in human.splitlines()
    expect = bytearray(file_bytes(dump.path))
    for pfn in zero_pfns:
        expect[pfn * PAGE : (pfn + 1) * PAGE] = bytes(PAGE)
    assert out.read_bytes() == bytes(expect)
    assert page_10 == bytes(16)
    assert stats["hook"] == "balloon"
    assert (stats["hook_calls"], stats["pfns_asked"]) == (1, 64)
    assert stats["zero_pages_served"] == 6 + 1
    assert (stats["source_pages_read"], stats["source_read_calls"]) == (58, 4)
    assert stats["source_bytes_read"] == 58 * PAGE


def test_serve_from_a_config_file_with_flag_overrides(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    balloon = tmp_path / "balloon.txt"
    balloon.write_text("2-3\n")
    config = tmp_path / "dumpd.toml"
    config.write_text(f'log_level = "info"\n[source]\npath = "{dump.path}"\n'
                      f'[server]\nsocket = "{tmp_path / "elsewhere.sock"}"\n'
                      '[hook]\nname = "balloon"\n[hook.options]\nfile = "/no/such/file"\n')
    with served(tmp_path, None, "-c", str(config), "--hook-option", f"file={balloon}") as sock:
        info = info_json(sock)
        data = run("read", "0", str(4 * PAGE), "--socket", sock).stdout
    assert not (tmp_path / "elsewhere.sock").exists()
    assert (info["hook"], info["source"]["path"]) == ("balloon", dump.path)
    assert data == file_bytes(dump.path, 0, 2 * PAGE) + bytes(2 * PAGE)


def test_register_sends_relative_paths_made_absolute(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 16 * PAGE)
    here = tmp_path / "client"  # the command's directory; the server's is tmp_path
    here.mkdir()
    (here / "good.txt").write_text("2-3\n")
    with served(tmp_path, dump.path) as sock:
        registered = run("hook", "register", "balloon", "--hook-option", "file=good.txt",
                         "--socket", sock, cwd=here)
        data = run("read", "0", str(4 * PAGE), "--socket", sock).stdout
        ok("hook", "unregister", "--socket", sock)
        missing = run("hook", "register", "balloon", "--hook-option", "file=gone.txt",
                      "--socket", sock, cwd=here)
    assert (registered.returncode, registered.stderr) == (0, b"")
    assert data == file_bytes(dump.path, 0, 2 * PAGE) + bytes(2 * PAGE)
    log = (tmp_path / "serve.log").read_text()
    assert (f": INFO: hook balloon (dumpd-balloon {version('dumpd-balloon')}) registered with "
            f"options {{'file': '{here / 'good.txt'}'}}") in log
    assert one_line_error(missing, 1) == (  # not here: sent as given, tried by the server
        f"dumpd: EINVAL: balloon: {tmp_path / 'gone.txt'}: cannot read: "
        "No such file or directory")


@pytest.mark.parametrize("hook", ["balloon", "xen"])
def test_a_relative_path_at_start_up_names_the_absolute_path_tried(tmp_path: Path,
                                                                   hook: str) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    options = ["file=gone.txt"] if hook == "balloon" else ["transport=stub", "map=gone.txt"]
    result = run("serve", "--source", dump.path, "--socket", str(tmp_path / "dumpd.sock"),
                 "--hook", hook, *[f"--hook-option={o}" for o in options], cwd=tmp_path)
    assert one_line_error(result, 2) == (
        f"dumpd: [hook] {hook}: {tmp_path / 'gone.txt'}: cannot read: No such file or directory")


def test_demo(tmp_path: Path) -> None:
    result = run("demo", "--size-mib", "64", timeout=120, env={**ENV, "TMPDIR": str(tmp_path)})
    output = result.stdout.decode()
    assert (result.returncode, result.stderr) == (0, b""), output
    lines = output.splitlines()
    assert "64 MiB ELF core, 4 PT_LOADs, 3559 ballooned pages in 93 runs (" in lines[0]
    row = next(line.split() for line in lines if line.startswith("ballooned pages read"))
    assert row[-3:] == ["3,559", "3,559", "0"]  # naive, none, balloon
    assert lines[-2].startswith("none:    byte-exact: yes; source bytes read ")
    assert lines[-2].endswith(" == all bytes: True; ballooned pages read: 3,559")
    assert lines[-1].startswith("balloon: byte-exact: yes; source bytes read ")
    assert lines[-1].endswith(" == RAM bytes: True; ballooned pages read: 0")
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone


@pytest.mark.parametrize("options,problem", [
    ([], 'xen: transport "auto" found no /dev/xen/privcmd (not a Xen guest, or xen-privcmd '
         'not loaded); set transport = "stub" for a stand-in hypervisor, or use another hook '
         'such as "balloon"'),
    (["--hook-option", "transport=stub", "--hook-option", "map={bad}"],
     "xen: {bad}:2: unknown memory type 'mmoi_dm' (want ram_rw, ram_ro, mmio_dm, unused, "
     "ioreq_server, a number 0..65535 or fail)"),
], ids=["auto-without-xen", "bad-map-line"])
def test_xen_start_up_errors_are_one_line(tmp_path: Path, options: list[str],
                                          problem: str) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    bad = tmp_path / "memtypes.txt"
    bad.write_text("0x10-0x1f mmio_dm\n0x20 mmoi_dm\n")
    line = serve_error("--source", dump.path, "--socket", str(tmp_path / "dumpd.sock"),
                       "--hook", "xen", *[o.format(bad=bad) for o in options])
    assert line == "dumpd: [hook] " + problem.format(bad=bad)
