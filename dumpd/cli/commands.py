"""What each `dumpd` command does, given its parsed arguments; `COMMANDS` names them.

Client commands connect with the blocking client, so none of them imports asyncio;
`serve` and `demo` import the server (and asyncio) when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dumpd.errors import StartupError
from dumpd.hooks.slot import hook_label

if TYPE_CHECKING:
    from dumpd import config as config_mod
    from dumpd.client import Client
    from dumpd.fetch.output import Output

READ_CHUNK = 8 << 20


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
                              "log_level", "finish_"))}
    # The file's [hook] options and distribution are for the hook the file names, if it
    # names one: `--hook ""` (no hook) or `--hook OTHER` runs without them.
    file_hook = config.hook
    name = file_hook.name if args.hook_name is None else args.hook_name
    foreign = bool(file_hook.name) and name != file_hook.name
    options = given if foreign else {**file_hook.options, **given}
    if foreign and args.hook_distribution is None:
        flags["hook_distribution"] = ""
    config = config.with_overrides(**flags, hook_options=options)
    if args.check:
        return _serve_check(config)
    from dumpd.cli.logs import log_to_stderr

    log_to_stderr(config.log_level)
    if name and foreign and (file_hook.options or file_hook.distribution):
        logging.getLogger("dumpd").warning(
            "--hook %s: the configuration's [hook] options and distribution are for hook "
            "%r; %s runs without them", name, file_hook.name, name)
    return serve(config, given_page_size=args.source_page_size)


def _serve_check(config: config_mod.Config) -> int:
    """The limits `serve` would run with (sized by `server.memory`) and their worst case."""
    from dumpd.server.memory import fit, worst_case

    sized, note = fit(config)
    if note:
        print(note)
    for line in worst_case(sized).lines():
        print(line)
    return 0


def _client(args: argparse.Namespace) -> Client:
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
        if args.vmcoreinfo:
            sys.stdout.write(client.vmcoreinfo())
            return 0
        info = client.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"dumpd {info['version']} (protocol {info['protocol']})")
    print(f"source   {info['source']['path']} ({info['source']['kind']})")
    print(f"size     {info['size']} bytes, page size {info['page_size']}")
    if "kernel" in info:
        print(f"kernel   {kernel_line(info['kernel'])}")
    print(f"hook     {hook_label(info['hook'])}")
    if "finish" in info:
        print(f"finish   {finish_line(info['finish'])}")
    if "codecs" in info:
        print(f"codecs   {', '.join(info['codecs']) or 'none'} (pages sent compressed)")
    print(f"segments {len(info['segments'])}")
    for paddr, offset, filesz, memsz in info["segments"]:
        print(f"  paddr {paddr:#014x}  offset {offset:#012x}  filesz {filesz:#x}  memsz {memsz:#x}")
    return 0


def kernel_line(kernel: dict[str, Any]) -> str:
    """The crash context in words: `6.1.0-57-amd64 x86_64, crashed 2026-12-01 ...`."""
    if kernel["vmcoreinfo"] is None:
        return "unknown: no VMCOREINFO (serve a raw dump with --vmcoreinfo FILE)"
    line = f"{kernel['osrelease'] or 'release unknown'} {kernel['arch'] or 'arch unknown'}"
    if kernel["crashtime"] is not None:
        line += time.strftime(", crashed %Y-%m-%d %H:%M:%S UTC", time.gmtime(kernel["crashtime"]))
    if kernel["kernel_offset"] is not None:
        line += f", KERNELOFFSET {kernel['kernel_offset']:#x}"
    return f"{line} (VMCOREINFO from {kernel['vmcoreinfo']})"


def finish_line(finish: dict[str, Any]) -> str:
    """`info`'s finish conditions in words: those armed and how far along they are."""
    armed = []
    if finish["fetches"]:
        armed.append(f"after {finish['fetches']} verified fetches "
                     f"({finish['verified_fetches']} so far)")
    if finish["idle_timeout"]:
        armed.append(f"when idle {finish['idle_timeout']:g} s")
    if finish["deadline"]:
        armed.append(f"at the deadline, in {finish['deadline_left']:g} s")
    line = "; ".join(armed) or "on `dumpd done` or SIGTERM only"
    return f"finishing: {finish['finishing']}" if finish["finishing"] else line


def _done(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.done(args.now)
    if reply["stopping"]:
        print(f"dumpd stops now: {reply['reason']}")
    else:
        others = reply["connections"] - 1  # this one closes as we exit
        print(f"dumpd finishes ({reply['reason']}) once {others} other connections "
              "close; it serves no new one")
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
        method = (client.read_phys if args.phys else client.read_virt if args.virt
                  else client.read)
        out = _open_output(args, info) if args.output else None
        try:
            for pos in range(args.offset, args.offset + args.length, chunk):
                want = min(chunk, args.offset + args.length - pos)
                data = method(pos, want)
                if out is not None:
                    with _naming(out.name):
                        out.write(data)
                elif sys.stdout.isatty():
                    hexdump(data, pos)
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
                              args.verify, args.quiet, args.chunk, args.fsync, args.force,
                              args.zeros, args.wire_compress, args.format, args.compress),
                 connect=lambda: _client(args))


def _debug(args: argparse.Namespace) -> int:
    from dumpd.debug.session import debug

    return debug(lambda: _client(args), args.vmlinux, args.script, args.script_args)


def hexdump(data: bytes, base: int) -> None:
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
                              pfn_limit=args.pfn_limit, distribution=args.hook_distribution,
                              dump=args.dump or "")
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
    if args.dump:
        print(f"dump read        {report.dump_bytes:,} bytes in {report.dump_reads:,} reads")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dumpd.demo import run_demo

    return run_demo(args.size_mib, args.balloon_percent, args.dir)


def _payload(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dumpd.payload import build, check_target, plan

    if args.into:  # before the work: a DIR that is not empty is refused at once
        check_target(Path(args.into))
    entries = plan()
    if args.list:
        for entry in entries:
            print(f"{entry.source}\t{entry.dest}")
        return 0
    files, size = build(Path(args.into), entries)
    print(f"{args.into}: {files} files, {size:,} bytes ({size / (1 << 20):.1f} MiB)")
    return 0


COMMANDS = {"serve": _serve, "info": _info, "stats": _stats, "read": _read, "fetch": _fetch,
            "debug": _debug, "plugins": _plugins, "hook": _hook, "done": _done, "demo": _demo,
            "payload": _payload}
