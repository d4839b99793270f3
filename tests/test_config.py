"""`dumpd.config.load` on real TOML files, and `Config.with_overrides` (the CLI's flags)."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from dumpd.config import (
    DEFAULT_SOCKET,
    Config,
    EngineConfig,
    HookConfig,
    ServerConfig,
    SourceConfig,
    load,
)
from dumpd.errors import StartupError


def toml(tmp_path: Path, text: str, name: str = "dumpd.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


NOT_LOOPBACK = ("is not a loopback address: anyone who reaches it could read the dump; set "
                "server.tls_cert, server.tls_key and server.tls_client_ca (TLS with required "
                "client certificates) or use a loopback address")


def load_error(path: str) -> str:
    with pytest.raises(StartupError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message


FULL = """
log_level = "debug"

[source]
path = "/dumps/vmcore"
kind = "elf"
page_size = 16384
size = 123456

[server]
socket = "/tmp/x/dumpd.sock"
tcp = "127.0.0.1:7300"
allow_uids = [1000, 1001]
admin_uids = [1002]
max_frame_kib = 64
max_read_mib = 4
max_inflight = 7
reply_budget_mib = 12
loop = "asyncio"

[engine]
cache_mib = 3
verdict_cache_kib = 8
hook_timeout = 5
hook_reload_timeout = 9
read_threads = 2
buffer_pool_mib = 32

[hook]
name = "balloon"

[hook.options]
file = "/etc/dumpd/balloon.txt"
"""


def test_no_file_gives_the_defaults() -> None:
    config = load(None)
    assert config == Config()
    assert config.source == SourceConfig(path="/proc/vmcore", kind="auto", page_size=4096, size=0)
    assert config.server == ServerConfig(
        socket="/run/dumpd/dumpd.sock", tcp="", allow_uids=(), admin_uids=(), max_frame_kib=1024,
        max_read_mib=8, max_inflight=64, reply_budget_mib=16, loop="auto")
    assert DEFAULT_SOCKET == "/run/dumpd/dumpd.sock"
    assert config.engine == EngineConfig(cache_mib=16, verdict_cache_kib=1024, hook_timeout=2.0,
                                         hook_reload_timeout=60.0, read_threads=4,
                                         buffer_pool_mib=16)
    assert config.hook == HookConfig(name="", options={})
    assert config.log_level == "info"


def test_empty_file_and_empty_sections_give_the_defaults(tmp_path: Path) -> None:
    assert load(toml(tmp_path, "")) == Config()
    assert load(toml(tmp_path, "[source]\n[server]\n[engine]\n[hook]\n", "b.toml")) == Config()


def test_every_section_and_key(tmp_path: Path) -> None:
    config = load(toml(tmp_path, FULL))
    assert config == Config(
        source=SourceConfig(path="/dumps/vmcore", kind="elf", page_size=16384, size=123456),
        server=ServerConfig(socket="/tmp/x/dumpd.sock", tcp="127.0.0.1:7300",
                            allow_uids=(1000, 1001), admin_uids=(1002,), max_frame_kib=64,
                            max_read_mib=4,
                            max_inflight=7, reply_budget_mib=12, loop="asyncio"),
        engine=EngineConfig(cache_mib=3.0, verdict_cache_kib=8, hook_timeout=5.0,
                            hook_reload_timeout=9.0, read_threads=2, buffer_pool_mib=32),
        hook=HookConfig(name="balloon", options={"file": "/etc/dumpd/balloon.txt"}),
        log_level="debug",
    )
    # integers given for float options become floats; lists become tuples
    assert type(config.engine.cache_mib) is float
    assert type(config.engine.hook_timeout) is float
    assert type(config.server.allow_uids) is tuple
    assert type(config.source.page_size) is int


def test_only_some_keys_keep_the_other_defaults(tmp_path: Path) -> None:
    config = load(toml(tmp_path, '[server]\nmax_read_mib = 2\n[source]\npath = "/x"\n'))
    assert config == Config(source=SourceConfig(path="/x"), server=ServerConfig(max_read_mib=2))


def test_float_literals_for_float_options(tmp_path: Path) -> None:
    config = load(toml(tmp_path, "[engine]\ncache_mib = 0.5\nhook_timeout = 2.0\n"))
    assert config.engine == EngineConfig(cache_mib=0.5, hook_timeout=2.0)


def test_hook_options_are_passed_through(tmp_path: Path) -> None:
    text = """
[hook]
name = "custom"

[hook.options]
file = "/a/b"
count = 3
ratio = 0.25
flag = true
list = [1, "two"]

[hook.options.nested]
key = "value"
"""
    config = load(toml(tmp_path, text))
    assert config.hook == HookConfig(name="custom", options={
        "file": "/a/b", "count": 3, "ratio": 0.25, "flag": True, "list": [1, "two"],
        "nested": {"key": "value"},
    })


SERVER_KEYS = ("admin_uids, allow_gids, allow_uids, idle_timeout, loop, max_connections, "
               "max_frame_kib, max_inflight, max_read_mib, max_streams, memory, "
               "reply_budget_mib, reply_budget_total_mib, send_timeout, shutdown_timeout, "
               "socket, stream_sendfile, stream_window_mib, tcp, tls_cert, tls_client_ca, "
               "tls_key, write_batch_kib, write_buffer_kib")


@pytest.mark.parametrize("text,why", [
    ("bogus = 1\n", "unknown section or key 'bogus'"),
    ("[bogus]\nx = 1\n", "unknown section or key 'bogus'"),
    ("[source]\nfoo = 1\n", "[source] unknown key 'foo' (known: kind, mmap, mmap_window_kib, "
                            "mmap_windows, page_size, path, size, vmcoreinfo)"),
    ("[server]\nsockett = 'x'\n", f"[server] unknown key 'sockett' (known: {SERVER_KEYS})"),
    ("[engine]\ncache = 1\n", "[engine] unknown key 'cache' (known: buffer_pool_mib, "
     "cache_mib, hook_reload_timeout, hook_timeout, read_threads, verdict_cache_kib)"),
    ("[hook]\noption = {}\n", "[hook] unknown key 'option' (known: distribution, name, options)"),
    ("source = 5\n", "[source] must be a table"),
], ids=["top-key", "section", "source-key", "server-key", "engine-key", "hook-key", "not-table"])
def test_unknown_sections_and_keys(tmp_path: Path, text: str, why: str) -> None:
    path = toml(tmp_path, text)
    assert load_error(path) == f"{path}: {why}"


@pytest.mark.parametrize("text,key,got", [
    ('[source]\npage_size = "4096"\n', "source.page_size",
     'expected a whole number of bytes, got "4096"'),
    ("[source]\npage_size = true\n", "source.page_size",
     "expected a whole number of bytes, got true"),
    ("[source]\npath = 5\n", "source.path", "expected a string, got 5"),
    ("[server]\nmax_read_mib = 8.0\n", "server.max_read_mib",
     "expected a whole number of MiB, got 8.0"),
    ('[server]\nallow_uids = [1, "2"]\n', "server.allow_uids",
     'expected a list of uids (integers), got [1, "2"]'),
    ('[server]\nallow_uids = ["bob"]\n', "server.allow_uids",
     'expected a list of uids (integers), got ["bob"]'),
    ("[server]\nallow_gids = [true]\n", "server.allow_gids",
     "expected a list of gids (integers), got [true]"),
    ("[server]\nadmin_uids = 1000\n", "server.admin_uids",
     "expected a list of uids (integers), got 1000"),
    ('[server]\nmax_inflight = {a = 1, "b c" = [1.5]}\n', "server.max_inflight",
     'expected an integer, got {a = 1, "b c" = [1.5]}'),
    ('[server]\nidle_timeout = "1m"\n', "server.idle_timeout",
     'expected a number of seconds, got "1m"'),
    ("[server]\nstream_sendfile = 1\n", "server.stream_sendfile",
     "expected true or false, got 1"),
    ('[engine]\nread_threads = "4"\n', "engine.read_threads", 'expected an integer, got "4"'),
    ('[engine]\ncache_mib = "x"\n', "engine.cache_mib", 'expected a number of MiB, got "x"'),
    ("[engine]\ncache_mib = true\n", "engine.cache_mib", "expected a number of MiB, got true"),
    ("[engine]\nverdict_cache_kib = 1.5\n", "engine.verdict_cache_kib",
     "expected a whole number of KiB, got 1.5"),
    ("[hook]\nname = 3\n", "hook.name", "expected a string, got 3"),
    ("[hook]\noptions = 5\n", "hook.options", "expected a table, got 5"),
    ("log_level = 1979-05-27\n", "log_level", "expected a string, got 1979-05-27"),
])
def test_wrong_types(tmp_path: Path, text: str, key: str, got: str) -> None:
    path = toml(tmp_path, text)
    assert load_error(path) == f"{path}: {key}: {got}"


@pytest.mark.parametrize("text,key,why", [
    ("[source]\npage_size = 3000\n", "source.page_size", "must be a power of two >= 512, not 3000"),
    ("[source]\npage_size = 256\n", "source.page_size", "must be a power of two >= 512, not 256"),
    ('[source]\nkind = "zip"\n', "source.kind", "must be auto, elf, raw or kdump, not 'zip'"),
    ('[source]\nmmap = "yes"\n', "source.mmap", "must be auto, on or off, not 'yes'"),
    ("[source]\nmmap_window_kib = 100\n", "source.mmap_window_kib",
     "must be a positive multiple of 64, not 100"),
    ("[source]\nmmap_window_kib = 0\n", "source.mmap_window_kib",
     "must be a positive multiple of 64, not 0"),
    ("[source]\nmmap_windows = 0\n", "source.mmap_windows", "must be positive, not 0"),
    ("[server]\nreply_budget_mib = 4\n", "server.reply_budget_mib",
     "must be at least server.max_read_mib"),
    ("[server]\nmax_read_mib = 32\n", "server.reply_budget_mib",
     "must be at least server.max_read_mib"),
    ("[server]\nmax_inflight = 0\n", "server.max_inflight", "must be positive"),
    ("[server]\nmax_frame_kib = -1\n", "server.max_frame_kib", "must be positive"),
    ('[server]\ntcp = "0.0.0.0:7300"\n', "server.tcp", f"'0.0.0.0' {NOT_LOOPBACK}"),
    ('[server]\ntcp = "10.1.2.3:7300"\n', "server.tcp", f"'10.1.2.3' {NOT_LOOPBACK}"),
    ('[server]\ntcp = "127.0.0.1:7300"\ntls_cert = "c"\ntls_key = "k"\n', "server.tls_client_ca",
     "TLS needs server.tls_cert, server.tls_key and server.tls_client_ca together"),
    ('[server]\ntls_cert = "c"\ntls_key = "k"\ntls_client_ca = "ca"\n', "server.tls_cert",
     "TLS applies to the TCP listener: server.tcp is not set"),
    ('[server]\nidle_timeout = -1\n', "server.idle_timeout", "must not be negative, not -1.0"),
    ('[server]\nmax_connections = 0\n', "server.max_connections", "must be positive"),
    ('[server]\nreply_budget_total_mib = 8\n', "server.reply_budget_total_mib",
     "must be at least server.reply_budget_mib"),
    ('[server]\ntcp = "127.0.0.1"\n', "server.tcp", "must be HOST:PORT, not '127.0.0.1'"),
    ('[server]\ntcp = "127.0.0.1:70000"\n', "server.tcp",
     "must be HOST:PORT, not '127.0.0.1:70000'"),
    ('[server]\ntcp = "localhost:0"\n', "server.tcp", "must be HOST:PORT, not 'localhost:0'"),
    ('[server]\nloop = "trio"\n', "server.loop", "must be auto, uvloop or asyncio, not 'trio'"),
    ("[engine]\nhook_timeout = 0\n", "engine.hook_timeout", "must be positive, not 0.0"),
    ('log_level = "verbose"\n', "log_level",
     "must be debug, info, warning or error, not 'verbose'"),
    ("[engine]\ncache_mib = -1\n", "engine.cache_mib", "must not be negative, not -1.0"),
    ("[engine]\nverdict_cache_kib = 0\n", "engine.verdict_cache_kib",
     "must be positive, not 0"),
    ("[engine]\nread_threads = 0\n", "engine.read_threads", "must be positive, not 0"),
])
def test_invalid_values(tmp_path: Path, text: str, key: str, why: str) -> None:
    path = toml(tmp_path, text)
    assert load_error(path) == f"{path}: {key}: {why}"


@pytest.mark.parametrize("text,config", [
    ('[server]\ntcp = "[::1]:7300"\n', Config(server=ServerConfig(tcp="[::1]:7300"))),
    ('[server]\ntcp = "localhost:65535"\n', Config(server=ServerConfig(tcp="localhost:65535"))),
    ("[engine]\ncache_mib = 0\n", Config(engine=EngineConfig(cache_mib=0.0))),
    ("[source]\npage_size = 512\n", Config(source=SourceConfig(page_size=512))),
])
def test_edge_values_that_are_valid(tmp_path: Path, text: str, config: Config) -> None:
    assert load(toml(tmp_path, text)) == config


def toml_error(text: str) -> str:
    """What tomllib says about `text`, which it must refuse."""
    with pytest.raises(tomllib.TOMLDecodeError) as err:
        tomllib.loads(text)
    return str(err.value)


def test_syntax_error_and_unreadable_file(tmp_path: Path) -> None:
    for name, text in (("bad.toml", "[source\npath = 1\n"),
                       ("dup.toml", 'log_level = "info"\nlog_level = "debug"\n')):
        path = toml(tmp_path, text, name)
        assert load_error(path) == f"{path}: not valid TOML: {toml_error(text)}"
    missing = str(tmp_path / "missing.toml")
    assert load_error(missing) == f"{missing}: cannot read: No such file or directory"
    assert load_error(str(tmp_path)) == f"{tmp_path}: cannot read: Is a directory"


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    config = load(toml(tmp_path, FULL))
    updated = config.with_overrides(
        source_path="/other", source_kind=None, source_page_size=None,
        server_socket="/run/other.sock", server_tcp=None, server_loop="uvloop",
        engine_cache_mib=2.5, hook_name="none", hook_options={}, log_level="warning",
    )
    assert updated == Config(
        source=SourceConfig(path="/other", kind="elf", page_size=16384, size=123456),
        server=ServerConfig(socket="/run/other.sock", tcp="127.0.0.1:7300",
                            allow_uids=(1000, 1001), admin_uids=(1002,), max_frame_kib=64,
                            max_read_mib=4,
                            max_inflight=7, reply_budget_mib=12, loop="uvloop"),
        engine=EngineConfig(cache_mib=2.5, verdict_cache_kib=8, hook_timeout=5.0,
                            hook_reload_timeout=9.0, read_threads=2, buffer_pool_mib=32),
        hook=HookConfig(name="none", options={}),
        log_level="warning",
    )
    assert config == load(toml(tmp_path, FULL, "again.toml"))  # the original is untouched


def test_overrides_none_means_not_given(tmp_path: Path) -> None:
    config = load(toml(tmp_path, FULL))
    flags = {"source_path": None, "source_kind": None, "source_page_size": None,
             "server_socket": None, "server_tcp": None, "hook_name": None,
             "engine_cache_mib": None, "server_loop": None, "log_level": None}
    assert config.with_overrides(**flags) == config
    assert config.with_overrides() == config
    # falsy values that are given do override
    no_tcp = config.with_overrides(server_tcp="", hook_name="", hook_options={})
    assert no_tcp == replace(config, server=replace(config.server, tcp=""), hook=HookConfig())
    assert config.with_overrides(hook_name="", hook_options={}) == replace(config,
                                                                           hook=HookConfig())
    with pytest.raises(StartupError) as caught:  # options for no hook: said, not ignored
        config.with_overrides(hook_name="")
    assert str(caught.value) == ("command line: hook.options: given, but no hook is named "
                                 "to take them (--hook NAME or hook.name)")


def test_overrides_are_validated(tmp_path: Path) -> None:
    config = load(None)
    with pytest.raises(StartupError) as err:
        config.with_overrides(source_page_size=1000)
    assert str(err.value) == ("command line: source.page_size: "
                              "must be a power of two >= 512, not 1000")
    with pytest.raises(StartupError) as err:
        config.with_overrides(server_tcp="192.168.0.1:7300")
    assert str(err.value) == f"command line: server.tcp: '192.168.0.1' {NOT_LOOPBACK}"
    with pytest.raises(StartupError) as err:
        config.with_overrides(log_level="loud")
    assert str(err.value) == ("command line: log_level: must be debug, info, warning or error, "
                              "not 'loud'")
