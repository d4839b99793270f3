"""The `dumpd` command line: its commands, their flags and the argument types.

Only argparse here: building the parser runs no command and imports no client.
"""

from __future__ import annotations

import argparse
import os

from dumpd import DEFAULT_SOCKET, __version__
from dumpd.hostport import split_host_port

DESCRIPTION = ("The `dumpd` command: serve, info, read, fetch, debug, stats, plugins, hook, "
               "done, demo, payload.")
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
    parser = argparse.ArgumentParser(prog="dumpd", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dumpd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a dump on a socket")
    serve.add_argument("-c", "--config", help="TOML configuration file")
    serve.add_argument("--source", dest="source_path", metavar="PATH",
                       help="dump to serve (/proc/vmcore, a vmcore file, a kdump-compressed "
                            "file, /dev/oldmem)")
    serve.add_argument("--kind", dest="source_kind", choices=["auto", "elf", "raw", "kdump"])
    serve.add_argument("--page-size", dest="source_page_size", type=_int, metavar="BYTES",
                       help="the dump's page size: the default without VMCOREINFO PAGESIZE=, "
                            "an error when VMCOREINFO says otherwise")
    serve.add_argument("--mmap", dest="source_mmap", choices=["auto", "on", "off"],
                       help="read through mmap windows: auto = /proc/vmcore and memory "
                            "devices, on = any file (one cut short while mapped kills the "
                            "server), off = pread and sendfile")
    serve.add_argument("--vmcoreinfo", dest="source_vmcoreinfo", metavar="FILE",
                       help="the dead kernel's VMCOREINFO text, for a dump without the note "
                            "(/dev/oldmem, a raw image): page filtering, read --virt")
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
    serve.add_argument("--finish-fetches", dest="finish_fetches", type=_int, metavar="N",
                       help="finish after N complete verified fetches of the whole view")
    serve.add_argument("--finish-idle", dest="finish_idle_timeout", type=float,
                       metavar="SECONDS", help="finish when no client was connected for this "
                       "long since the last one closed")
    serve.add_argument("--finish-deadline", dest="finish_deadline", type=float,
                       metavar="SECONDS", help="stop this long after start, as on SIGTERM")
    serve.add_argument("--memory", dest="server_memory", metavar='"auto"|NMiB|"off"',
                       help="size the limits for the memory there is (server.memory)")
    serve.add_argument("--check", action="store_true",
                       help="print the limits it would serve with (after server.memory) and "
                            "the most memory clients can make it hold; serve nothing")

    for name, text in (("info", "describe the served dump"), ("stats", "show counters")):
        p = sub.add_parser(name, help=text)
        _socket_arg(p)
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "info":
            p.add_argument("--vmcoreinfo", action="store_true",
                           help="print the dead kernel's VMCOREINFO text as it is")

    read = sub.add_parser("read", help="read bytes of the dump")
    read.add_argument("offset", type=_int, help="file offset (a physical address with --phys, "
                      "a kernel virtual address with --virt)")
    read.add_argument("length", type=_int)
    space = read.add_mutually_exclusive_group()
    space.add_argument("--phys", action="store_true", help="OFFSET is a physical address")
    space.add_argument("--virt", action="store_true",
                       help="OFFSET is a kernel virtual address, translated through the dead "
                            "kernel's page tables (x86_64)")
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
    fetch.add_argument("--zeros-as-holes", dest="zeros", action="store_true",
                       help="leave RAM pages that are all zero out as holes too (the "
                            "server looks at them); FILE.dumpd-holes says which and why")
    fetch.add_argument("--wire-compress", dest="wire_compress", default="auto",
                       metavar="auto|none|CODEC",
                       help="have the server compress the pages it sends with CODEC (zlib, "
                            "lzo, snappy, zstd: what `dumpd info` lists); default auto: zstd "
                            "(else zlib) over --tcp, none over a Unix socket")
    fetch.add_argument("--format", choices=["elf", "kdump"],
                       help="elf: the view as it is (the default for a file); kdump: "
                            "makedumpfile's kdump-compressed format (the default into a pipe "
                            "or -, in its flattened form: makedumpfile -R makes the file)")
    fetch.add_argument("--compress", choices=["zlib", "lzo", "snappy", "zstd"],
                       help="a kdump copy's page compression (default zlib, as makedumpfile "
                            "-c; lzo as -l, snappy as -p, zstd as -z)")
    fetch.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary")
    _socket_arg(fetch)

    debug = sub.add_parser("debug", help="drgn on the served dump, its memory read through "
                           "dumpd: drgn's shell, or SCRIPT run with `prog` in its globals")
    debug.add_argument("--vmlinux", metavar="FILE", help="the kernel's vmlinux with debug "
                       "info (default: where drgn looks for it)")
    _socket_arg(debug)
    debug.add_argument("script", nargs="?", metavar="SCRIPT",
                       help="run this drgn script (sys.argv: SCRIPT ARGS) instead of the shell")
    debug.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS")

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
                       help="draw random pfns below this (default 2**32, or the dump's end)")
    check.add_argument("--dump", metavar="FILE",
                       help="the dump a hook that reads it (attach) is checked on")
    actions.add_parser("unregister", help="empty the server's hook slot (all pfns are RAM)")
    actions.add_parser("reload", help="have the registered hook reload its data")
    for p in (register, actions.choices["unregister"], actions.choices["reload"]):
        _socket_arg(p)

    done = sub.add_parser("done", help="end the server's job: it finishes once the open "
                          "connections close (running fetches complete), then `dumpd serve` "
                          "exits 3 (finished)")
    done.add_argument("--now", action="store_true", help="stop now, as on SIGTERM: running "
                      "requests and streams get server.shutdown_timeout")
    _socket_arg(done)
    payload = sub.add_parser("payload", help="the files that run dumpd in a crash kernel's "
                                        "initramfs: list them, or copy them into DIR")
    where = payload.add_mutually_exclusive_group(required=True)
    where.add_argument("--into", metavar="DIR",
                       help="build the tree in DIR (absent or empty: never overwritten)")
    where.add_argument("--list", action="store_true",
                       help="print SOURCE<TAB>DEST for each file (DEST relative to the tree)")

    demo = sub.add_parser("demo", help="build a sample dump, serve it, read it back")
    demo.add_argument("--size-mib", type=_int, default=256, help="guest memory (default 256)")
    demo.add_argument("--balloon-percent", type=_int, default=25)
    demo.add_argument("--dir", help="work here instead of a temporary directory (kept; it must not "
                           "hold a vmcore or balloon.txt yet)")
    return parser

