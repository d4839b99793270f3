"""The configuration: one TOML file, flags that override it, one `load()`.

A leaf: it imports only the standard library and dumpd's leaf modules, so reading the
configuration loads no engine, server or asyncio; the engine and server read its sections.

Every option has a default (see `docs/configuration.md` and `systemd/dumpd.toml`).
Mistakes are `StartupError`s naming the file, the key and what is wrong.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dumpd import DEFAULT_SOCKET
from dumpd.errors import StartupError
from dumpd.hostport import split_host_port

__all__ = ["DEFAULT_SOCKET", "Config", "EngineConfig", "FinishConfig", "HookConfig",
           "ServerConfig", "SourceConfig", "load"]


TLS_KEYS = ("tls_cert", "tls_key", "tls_client_ca")


@dataclass(frozen=True, slots=True)
class SourceConfig:
    path: str = "/proc/vmcore"
    kind: str = "auto"
    page_size: int = 4096
    size: int = 0
    mmap: str = "auto"
    mmap_window_kib: int = 4096
    mmap_windows: int = 8
    vmcoreinfo: str = ""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    socket: str = DEFAULT_SOCKET
    tcp: str = ""
    allow_uids: tuple[int, ...] = ()
    allow_gids: tuple[int, ...] = ()
    admin_uids: tuple[int, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    max_connections: int = 512
    idle_timeout: float = 600.0
    send_timeout: float = 60.0
    reply_budget_total_mib: int = 64
    max_frame_kib: int = 1024
    max_read_mib: int = 8
    max_inflight: int = 64
    reply_budget_mib: int = 16
    max_streams: int = 4
    stream_window_mib: int = 4
    stream_sendfile: bool = True
    shutdown_timeout: float = 10.0
    loop: str = "auto"
    write_buffer_kib: int = 1024
    write_batch_kib: int = 2048
    memory: str = "off"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Sizes and timeouts of the engine; every cache is bounded by one of these."""

    cache_mib: float = 16
    verdict_cache_kib: int = 1024
    hook_timeout: float = 2.0
    hook_reload_timeout: float = 60.0
    read_threads: int = 4
    buffer_pool_mib: int = 16


@dataclass(frozen=True, slots=True)
class HookConfig:
    name: str = ""
    distribution: str = ""
    options: dict[str, Any] = field(default_factory=dict)


MAX_FETCHES = 1024  # the most verified fetches `finish.fetches` may wait for


@dataclass(frozen=True, slots=True)
class FinishConfig:
    """When the server ends by itself (docs/finish.md); 0 turns a condition off."""

    fetches: int = 0  # complete verified fetches of the whole view (distinct fetch ids)
    idle_timeout: float = 0.0  # seconds with no connection, from the last one's close
    deadline: float = 0.0  # seconds after start: stop as on SIGTERM


@dataclass(frozen=True, slots=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    hook: HookConfig = field(default_factory=HookConfig)
    finish: FinishConfig = field(default_factory=FinishConfig)
    log_level: str = "info"

    def with_overrides(self, **flags: Any) -> Config:
        """Apply command-line flags named `section_key` (None means not given)."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, value in flags.items():
            if value is None:
                continue
            section, _, key = name.partition("_")
            if section in ("source", "server", "engine", "hook", "finish") and key:
                sections.setdefault(section, {})[key] = value
            else:
                top[name] = value
        updated = {name: replace(getattr(self, name), **values)
                   for name, values in sections.items()}
        config = replace(self, **updated, **top)
        config.validate("command line")
        return config

    def validate(self, origin: str) -> None:
        """Cross-field checks; `origin` names the file (or "command line") in errors."""
        def bad(key: str, why: str) -> StartupError:
            return StartupError(f"{origin}: {key}: {why}")

        if self.source.kind not in ("auto", "elf", "raw", "kdump"):
            raise bad("source.kind",
                      f"must be auto, elf, raw or kdump, not {self.source.kind!r}")
        ps = self.source.page_size
        if ps < 512 or ps & (ps - 1):
            raise bad("source.page_size", f"must be a power of two >= 512, not {ps}")
        if self.source.mmap not in ("auto", "on", "off"):
            raise bad("source.mmap", f"must be auto, on or off, not {self.source.mmap!r}")
        window = self.source.mmap_window_kib
        if window <= 0 or window % 64:
            raise bad("source.mmap_window_kib", f"must be a positive multiple of 64, not {window}")
        if self.source.mmap_windows <= 0:
            raise bad("source.mmap_windows",
                      f"must be positive, not {self.source.mmap_windows}")
        srv = self.server
        for key in ("max_frame_kib", "max_read_mib", "max_inflight", "reply_budget_mib",
                    "max_streams", "stream_window_mib", "max_connections",
                    "reply_budget_total_mib", "write_buffer_kib", "write_batch_kib"):
            if getattr(srv, key) <= 0:
                raise bad(f"server.{key}", "must be positive")
        if srv.reply_budget_mib < srv.max_read_mib:
            raise bad("server.reply_budget_mib", "must be at least server.max_read_mib")
        if srv.reply_budget_total_mib < srv.reply_budget_mib:
            raise bad("server.reply_budget_total_mib", "must be at least server.reply_budget_mib")
        for key in ("shutdown_timeout", "idle_timeout", "send_timeout"):
            if getattr(srv, key) < 0:
                raise bad(f"server.{key}", f"must not be negative, not {getattr(srv, key)}")
        if memory_mib(srv.memory) is None and srv.memory not in ("off", "auto"):
            raise bad("server.memory", f'must be "off", "auto" or MiB like "96MiB", '
                      f"not {srv.memory!r}")
        if srv.loop not in ("auto", "uvloop", "asyncio"):
            raise bad("server.loop", f"must be auto, uvloop or asyncio, not {srv.loop!r}")
        tls_files = [getattr(srv, key) for key in TLS_KEYS]
        tls = all(tls_files)
        if srv.tcp:
            try:
                host, _ = split_host_port(srv.tcp)
            except ValueError:
                raise bad("server.tcp", f"must be HOST:PORT, not {srv.tcp!r}") from None
            if host not in ("127.0.0.1", "::1", "localhost") and not tls:
                raise bad("server.tcp", f"{host!r} is not a loopback address: anyone who "
                          "reaches it could read the dump; set server.tls_cert, "
                          "server.tls_key and server.tls_client_ca (TLS with required "
                          "client certificates) or use a loopback address")
        if any(tls_files) and not tls:
            missing = [k for k, v in zip(TLS_KEYS, tls_files, strict=True) if not v]
            raise bad(f"server.{missing[0]}", "TLS needs server.tls_cert, server.tls_key "
                      "and server.tls_client_ca together")
        if tls and not srv.tcp:
            raise bad("server.tls_cert", "TLS applies to the TCP listener: server.tcp is not set")
        eng = self.engine
        if eng.cache_mib < 0:
            raise bad("engine.cache_mib", f"must not be negative, not {eng.cache_mib}")
        for key in ("verdict_cache_kib", "read_threads", "hook_timeout", "hook_reload_timeout"):
            if getattr(eng, key) <= 0:
                raise bad(f"engine.{key}", f"must be positive, not {getattr(eng, key)}")
        if eng.buffer_pool_mib < 0:
            raise bad("engine.buffer_pool_mib", f"must not be negative, not {eng.buffer_pool_mib}")
        if self.hook.options and not self.hook.name:
            raise bad("hook.options", "given, but no hook is named to take them "
                      "(--hook NAME or hook.name)")
        fin = self.finish
        if not 0 <= fin.fetches <= MAX_FETCHES:
            raise bad("finish.fetches", f"must be in [0, {MAX_FETCHES}], not {fin.fetches}")
        for key in ("idle_timeout", "deadline"):
            if getattr(fin, key) < 0:
                raise bad(f"finish.{key}", f"must not be negative, not {getattr(fin, key)}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise bad("log_level", f"must be debug, info, warning or error, not {self.log_level!r}")


MEMORY = re.compile(r"([1-9][0-9]*)\s*MiB")


def memory_mib(text: str) -> int | None:
    """The MiB of a `server.memory` figure ("96MiB"); None for "off", "auto" or a mistake."""
    match = MEMORY.fullmatch(text)
    return int(match.group(1)) if match else None


def load(path: str | None) -> Config:
    """Read `path` (None: all defaults) into a validated `Config`."""
    if path is None:
        config = Config()
        config.validate("defaults")
        return config
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise StartupError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"{path}: not valid TOML: {exc}") from exc
    config = _from_table(path, raw)
    config.validate(path)
    return config


def _from_table(path: str, raw: dict[str, Any]) -> Config:
    known = {"source": SourceConfig, "server": ServerConfig, "engine": EngineConfig,
             "hook": HookConfig, "finish": FinishConfig}
    values: dict[str, Any] = {}
    for name, table in raw.items():
        if name == "log_level":
            values[name] = _typed(path, name, table, str)
            continue
        cls = known.get(name)
        if cls is None:
            raise StartupError(f"{path}: unknown section or key {name!r}")
        if not isinstance(table, dict):
            raise StartupError(f"{path}: [{name}] must be a table")
        values[name] = _section(path, name, cls, table)
    return Config(**values)


def _section(path: str, name: str, cls: type, table: dict[str, Any]) -> Any:
    types = {f.name: f.type for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in types:
            raise StartupError(
                f"{path}: [{name}] unknown key {key!r} (known: {', '.join(sorted(types))})")
        kwargs[key] = _typed(path, f"{name}.{key}", value, _python_type(types[key]))
    return cls(**kwargs)


def _python_type(annotation: Any) -> type:
    text = str(annotation)
    for name, typ in (("tuple", tuple), ("dict", dict), ("float", float), ("int", int),
                      ("str", str), ("bool", bool)):
        if text.startswith(name):
            return typ
    raise AssertionError(f"unsupported option type {text}")


def _typed(path: str, key: str, value: Any, typ: type) -> Any:
    if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if typ is tuple and isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    if typ is dict and isinstance(value, dict):
        return value
    if typ in (int, str) and isinstance(value, typ) and not isinstance(value, bool):
        return value
    if typ is bool and isinstance(value, bool):
        return value
    raise StartupError(f"{path}: {key}: expected {_expected(key, typ)}, got {_toml(value)}")


# What an option's name says its number counts, by the end of the name.
UNITS = (("_mib", "MiB"), ("_kib", "KiB"), ("timeout", "seconds"), ("size", "bytes"),
         ("_uids", "uids"), ("_gids", "gids"), ("deadline", "seconds"), ("fetches", "fetches"))


def _expected(key: str, typ: type) -> str:
    """What option `key`, declared `typ`, takes, in the file's terms (`a number of MiB`)."""
    unit = next((u for end, u in UNITS if key.endswith(end)), None)
    if typ is tuple:
        return f"a list of {unit or 'values'} (integers)"
    if typ in (int, float):
        number = "a whole number" if typ is int else "a number"
        return f"{number} of {unit}" if unit else ("an integer" if typ is int else "a number")
    return {str: "a string", bool: "true or false", dict: "a table"}[typ]


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml(value: Any) -> str:
    """`value` as the TOML file spells it (`["bob"]`, `true`, `"x"`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return f"[{', '.join(map(_toml, value))}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k if BARE_KEY.fullmatch(k) else _toml(k)} = {_toml(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, int | float):
        return repr(value)
    return str(value.isoformat())  # dates and times
