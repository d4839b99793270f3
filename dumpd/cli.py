"""The `dumpd` command: serve, info, read, fetch, stats, plugins, hook, demo.

Operator mistakes and server errors print one line (`dumpd: ...`) and exit
non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dumpd import DEFAULT_SOCKET, __version__
from dumpd.errors import DumpdError, OutputError, Refused, StartupError
from dumpd.hooks.slot import hook_label
from dumpd.hostport import split_host_port
from dumpd.stdio import reopen_closed

if TYPE_CHECKING:
    from dumpd.fetch.output import Output

READ_CHUNK = 8 << 20
OPTION_VALUES = "VALUE is read as TOML when it is (2, 1.5, true, [1, 2]), else as a string"
DISTRIBUTION_HELP = "the distribution providing the hook, when several do (see `dumpd plugins`)"
RELATIVE_PATHS = ("; a string VALUE that names an existing file or directory relative to "
                  "the current directory is sent as an absolute path (the server's "
                  "directory is another)")


def _int(text: str) -> int:
    """An integer in decimal or 0x hex (offsets, lengths, addresses)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _range(text: str) -> tuple[int, int]:
    """`OFFSET:LENGTH`, each decimal or 0x hex."""
    offset, sep, length = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected OFFSET:LENGTH, got {text!r}")
    return _int(offset), _int(length)


def _host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets)."""
    try:
        host, port = split_host_port(text)
    except ValueError:
        host, port = "", 0
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, port


def _socket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=os.environ.get("DUMPD_SOCKET", DEFAULT_SOCKET),
                        help="server socket (default: $DUMPD_SOCKET or %(default)s)")
    parser.add_argument("--tcp", type=_host_port, metavar="HOST:PORT",
                        help="connect over TCP instead of the socket")
    tls = parser.add_argument_group("TLS (with --tcp, all three)")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate (chain)")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key")
    tls.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server's certificate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dumpd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dumpd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a dump on a socket")
    serve.add_argument("-c", "--config", help="TOML configuration file")
    serve.add_argument("--source", dest="source_path", metavar="PATH",
                       help="dump to serve (/proc/vmcore, a vmcore file, /dev/oldmem)")
    serve.add_argument("--kind", dest="source_kind", choices=["auto", "elf", "raw"])
    serve.add_argument("--page-size", dest="source_page_size", type=_int, metavar="BYTES",
                       help="the dump's page size: the default without VMCOREINFO PAGESIZE=, "
                            "an error when VMCOREINFO says otherwise")
    serve.add_argument("--socket", dest="server_socket", metavar="PATH")
    serve.add_argument("--tcp", dest="server_tcp", metavar="HOST:PORT")
    serve.add_argument("--hook", dest="hook_name", metavar="NAME",
                       help="is-RAM hook plugin to register (see `dumpd plugins`)")
    serve.add_argument("--hook-option", action="append", default=[], metavar="KEY=VALUE",
                       help=f"an option for the hook (repeatable); {OPTION_VALUES}")
    serve.add_argument("--hook-distribution", dest="hook_distribution", metavar="DIST",
                       help=DISTRIBUTION_HELP)
    serve.add_argument("--cache-mib", dest="engine_cache_mib", type=float)
    serve.add_argument("--loop", dest="server_loop", choices=["auto", "uvloop", "asyncio"])
    serve.add_argument("--log-level", dest="log_level",
                       choices=["debug", "info", "warning", "error"])

    for name, text in (("info", "describe the served dump"), ("stats", "show counters")):
        p = sub.add_parser(name, help=text)
        _socket_arg(p)
        p.add_argument("--json", action="store_true", help="print JSON")

    read = sub.add_parser("read", help="read bytes of the dump")
    read.add_argument("offset", type=_int, help="file offset (or physical address with --phys)")
    read.add_argument("length", type=_int)
    read.add_argument("--phys", action="store_true", help="OFFSET is a physical address")
    read.add_argument("-o", "--output", help="write raw bytes to this file (new, mode 0600)")
    read.add_argument("--force", action="store_true",
                      help="replace an existing FILE (or write over a block device)")
    _socket_arg(read)

    fetch = sub.add_parser("fetch", help="copy the dump: sparse, resumable, verifiable")
    fetch.add_argument("-o", "--output", metavar="FILE",
                       help="the copy (default: the source's file name, here; in DIR "
                            "if FILE is a directory; - for stdout)")
    fetch.add_argument("--range", type=_range, metavar="OFFSET:LENGTH",
                       help="only this part of the file view (at its own offsets)")
    fetch.add_argument("--resume", action="store_true",
                       help="continue a partial copy (FILE.dumpd-fetch says where); with "
                            "none, start one")
    fetch.add_argument("--force", action="store_true",
                       help="replace an existing FILE (or write over a block device)")
    fetch.add_argument("--verify", action="store_true",
                       help="compare the copy's sha256 with the server's")
    fetch.add_argument("--chunk", type=_int, metavar="BYTES",
                       help="bytes per stream frame (default 1 MiB)")
    fetch.add_argument("--fsync", action="store_true",
                       help="sync the copy at each checkpoint and at the end (survives a "
                            "crash of the machine, not only of fetch)")
    fetch.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary")
    _socket_arg(fetch)

    sub.add_parser("plugins", help="list installed is-RAM hook plugins")

    hook = sub.add_parser("hook", help="register, unregister, reload or check an is-RAM hook")
    actions = hook.add_subparsers(dest="action", required=True)
    register = actions.add_parser("register", help="register a hook in the running server")
    check = actions.add_parser("check", help="run the plugin conformance kit on a hook here")
    for p in (register, check):
        p.add_argument("name", help="entry point name (see `dumpd plugins`)")
        p.add_argument("--hook-option", action="append", default=[], metavar="KEY=VALUE",
                       help=f"an option for the hook (repeatable); {OPTION_VALUES}"
                            + (RELATIVE_PATHS if p is register else ""))
        p.add_argument("--hook-distribution", metavar="DIST", default="",
                       help=DISTRIBUTION_HELP)
    check.add_argument("--pfn-limit", type=_int, default=1 << 32,
                       help="draw random pfns below this (default 2**32)")
    actions.add_parser("unregister", help="empty the server's hook slot (all pfns are RAM)")
    actions.add_parser("reload", help="have the registered hook reload its data")
    for p in (register, actions.choices["unregister"], actions.choices["reload"]):
        _socket_arg(p)

    demo = sub.add_parser("demo", help="build a sample dump, serve it, read it back")
    demo.add_argument("--size-mib", type=_int, default=256, help="guest memory (default 256)")
    demo.add_argument("--balloon-percent", type=_int, default=25)
    demo.add_argument("--dir", help="work here instead of a temporary directory (kept; it must not "
                           "hold a vmcore or balloon.txt yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    reopen_closed()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error: printed already
        return _flushed(int(exc.code or 0))
    try:
        status = int(COMMANDS[args.command](args))
        return _flushed(status)  # here, where a closed pipe is still ours to handle
    except (StartupError, DumpdError, OutputError) as exc:
        command = f"{args.command}: " if isinstance(exc, Refused | OutputError) else ""
        print(f"dumpd: {command}{exc}", file=sys.stderr)
        return 2 if isinstance(exc, StartupError) else 1
    except BrokenPipeError:  # stdout's reader is gone (`| head`): stop quietly, like `cat`
        _drop_stdout()
        return 128 + signal.SIGPIPE
    except OSError as exc:
        print(f"dumpd: {_os_error(exc, args)}", file=sys.stderr)
        if exc.filename == "stdout":
            _drop_stdout()
        return 1
    except KeyboardInterrupt:
        return 130


def _flushed(status: int) -> int:
    """`status`, once what is buffered for stdout is out; a closed pipe ends quietly
    (141), another failure (`>&-`: EBADF) is one line and status 1."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        return 128 + signal.SIGPIPE
    except OSError as exc:
        print(f"dumpd: stdout: {exc.strerror or exc}", file=sys.stderr)
        _drop_stdout()
        return 1
    return status


def _os_error(exc: OSError, args: argparse.Namespace) -> str:
    """One line for an OSError: the server not reached or lost (`ServerUnreachable`,
    with what to do about it), or the file the operator named and what is wrong with it."""
    from dumpd.client import ServerUnreachable

    if isinstance(exc, ServerUnreachable):
        if not exc.lost and exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return f"no server is listening at {exc.address} ({_start_hint(args)})"
        if not exc.lost and exc.errno == errno.EACCES:
            return (f"{exc.address}: permission denied (connecting needs write permission "
                    "on the socket; dumpd creates it mode 0600, for its own user)")
        return str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{args.command}: {exc.strerror or exc}"


def _start_hint(args: argparse.Namespace) -> str:
    if getattr(args, "tcp", None):
        return "start one with `dumpd serve --tcp HOST:PORT`, or point elsewhere with --tcp"
    where = "" if args.socket == DEFAULT_SOCKET else f" --socket {args.socket}"
    return (f"start one with `dumpd serve --source /proc/vmcore{where}`, or point elsewhere "
            "with --socket or $DUMPD_SOCKET")


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail
    again on the closed pipe (what the `signal` module's documentation recommends)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _options(items: Sequence[str], flag: str) -> dict[str, Any]:
    """`KEY=VALUE` items as a map; a VALUE that reads as a TOML value is one."""
    import tomllib

    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise StartupError(f"{flag} {item!r}: expected KEY=VALUE")
        if key in options:
            raise StartupError(f"{flag} {key!r} is given twice: give each key once")
        try:
            options[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = text
    return options


def _serve(args: argparse.Namespace) -> int:
    from dumpd import config as config_mod
    from dumpd.runner import serve

    config = config_mod.load(args.config)
    given = _options(args.hook_option, "--hook-option")
    flags = {k: v for k, v in vars(args).items()
             if k.startswith(("source_", "server_", "engine_", "hook_name", "hook_distribution",
                              "log_level"))}
    # The file's [hook] options and distribution are for the hook the file names, if it
    # names one: `--hook ""` (no hook) or `--hook OTHER` runs without them.
    file_hook = config.hook
    name = file_hook.name if args.hook_name is None else args.hook_name
    foreign = bool(file_hook.name) and name != file_hook.name
    options = given if foreign else {**file_hook.options, **given}
    if foreign and args.hook_distribution is None:
        flags["hook_distribution"] = ""
    config = config.with_overrides(**flags, hook_options=options)
    _log_to_stderr(config.log_level)
    if name and foreign and (file_hook.options or file_hook.distribution):
        logging.getLogger("dumpd").warning(
            "--hook %s: the configuration's [hook] options and distribution are for hook "
            "%r; %s runs without them", name, file_hook.name, name)
    return serve(config, given_page_size=args.source_page_size)


SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    """`<priority>message`: journald reads the syslog priority from the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


class _StampedFormatter(logging.Formatter):
    """`2026-12-01T18:30:00.123Z dumpd[PID]: LEVEL: message`, the time in UTC."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s dumpd[%(process)d]: %(levelname)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def _log_to_stderr(level: str) -> None:
    """One line per event on stderr, stamped with the time; with syslog priority
    prefixes instead when stderr is the journal (systemd sets JOURNAL_STREAM to its
    device:inode; journald adds its own time)."""
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_StampedFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _stderr_is_journal() -> bool:
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _client(args: argparse.Namespace) -> Any:
    from dumpd.client import Client

    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(files) and not (all(files) and args.tcp):
        raise StartupError("TLS needs --tcp and all of --tls-cert, --tls-key and --tls-ca")
    if not args.tcp:
        return Client.connect(args.socket)
    tls = None
    if all(files):
        from dumpd.tls import client_context

        tls = client_context(*files)
    return Client.connect_tcp(*args.tcp, tls=tls)


def _info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"dumpd {info['version']} (protocol {info['protocol']})")
    print(f"source   {info['source']['path']} ({info['source']['kind']})")
    print(f"size     {info['size']} bytes, page size {info['page_size']}")
    print(f"hook     {hook_label(info['hook'])}")
    print(f"segments {len(info['segments'])}")
    for paddr, offset, filesz, memsz in info["segments"]:
        print(f"  paddr {paddr:#014x}  offset {offset:#012x}  filesz {filesz:#x}  memsz {memsz:#x}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        width = max(map(len, stats))
        for key, value in stats.items():
            print(f"{key:<{width}}  {hook_label(value) if key == 'hook' else value}")
    return 0


def _read(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.info()
        chunk = min(READ_CHUNK, info.get("max_read", READ_CHUNK))
        method = client.read_phys if args.phys else client.read
        out = _open_output(args, info) if args.output else None
        try:
            for pos in range(args.offset, args.offset + args.length, chunk):
                want = min(chunk, args.offset + args.length - pos)
                data = method(pos, want)
                if out is not None:
                    with _naming(out.name):
                        out.write(data)
                elif sys.stdout.isatty():
                    _hexdump(data, pos)
                else:
                    with _naming("stdout"):
                        sys.stdout.buffer.write(data)
                if len(data) < want:
                    break
        except BaseException:
            if out is not None and out.position == 0:  # no empty leftover to retry over
                out.close()
                out.remove_if_created()
            raise
        finally:
            if out is not None:
                with _naming(out.name):
                    out.close()
    return 0


def _open_output(args: argparse.Namespace, info: dict[str, Any]) -> Output:
    """The output `read -o` names, opened once the server answered (no empty leftover
    when it does not) as fetch opens its own: never the served dump, an existing file
    only with --force, mode 0600 (it holds dump bytes)."""
    from dumpd.fetch.output import Served, for_bytes

    return for_bytes(args.output, Served.of(info), args.length, args.force)


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """A failed write or close (ENOSPC, EIO) names the file, as a failed open does."""
    try:
        yield
    except OSError as exc:
        exc.filename = exc.filename or path
        raise


def _fetch(args: argparse.Namespace) -> int:
    from dumpd.fetch import FetchRequest, fetch

    offset, length = args.range if args.range else (0, None)
    return fetch(FetchRequest(args.socket, args.output, offset, length, args.resume,
                              args.verify, args.quiet, args.chunk, args.fsync, args.force),
                 connect=lambda: _client(args))


def _hexdump(data: bytes, base: int) -> None:
    for i in range(0, len(data), 16):
        row = data[i : i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        print(f"{base + i:012x}  {row[:8].hex(' '):<23}  {row[8:].hex(' '):<23}  |{text}|")


def _plugins(args: argparse.Namespace) -> int:
    from dumpd.hooks.discovery import installed_plugins

    plugins = installed_plugins()
    for plugin in plugins:
        others = [p.provider for p in plugins if p.name == plugin.name and p is not plugin]
        also = f"  also provided by {', '.join(others)}" if others else ""
        print(f"{plugin.name:<12} {plugin.provider}  ({plugin.target}){also}")
    return 0


def _hook(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _hook_check(args)
    if args.action == "register":  # a mistake in them is found before connecting
        options = _absolute_paths(_options(args.hook_option, "--hook-option"))
    with _client(args) as client:
        if args.action == "register":
            client.hook_register(args.name, options, args.hook_distribution)
            print(f"hook {args.name!r} registered")
        elif args.action == "unregister":
            name = client.hook_unregister()["hook"]
            print(f"hook {name!r} unregistered" if name else "no hook was registered")
        else:
            reply = client.hook_reload()
            print(f"hook {reply['hook']!r} reloaded its data "
                  f"(generation {reply['hook_generation']})")
    return 0


def _absolute_paths(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with each string value that names an existing path relative to our
    directory made absolute: the server resolves relative paths in its own directory.
    Which options are paths only the plugin knows; an existing path is taken for one."""
    return {key: os.path.abspath(value)
            if isinstance(value, str) and value and not os.path.isabs(value)
            and os.path.exists(value) else value
            for key, value in options.items()}


def _hook_check(args: argparse.Namespace) -> int:
    from dumpd.testing import ConformanceError, check_plugin

    try:
        report = check_plugin(args.name, _options(args.hook_option, "--hook-option"),
                              pfn_limit=args.pfn_limit, distribution=args.hook_distribution)
    except ConformanceError as exc:
        print(f"dumpd: conformance: {exc}", file=sys.stderr)
        return 1
    print(f"hook {report.name!r} ({report.distribution} {report.version}) conforms: "
          f"{', '.join(report.checks)}")
    print(f"single lookups   {report.single_per_s:,.0f}/s")
    if report.batched_pfns_per_s is None:
        print("batched lookups  (no batched form)")
    else:
        print(f"batched lookups  {report.batched_pfns_per_s:,.0f} pfns/s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dumpd.demo import run_demo

    return run_demo(args.size_mib, args.balloon_percent, args.dir)


COMMANDS = {"serve": _serve, "info": _info, "stats": _stats, "read": _read, "fetch": _fetch,
            "plugins": _plugins, "hook": _hook, "demo": _demo}
