"""The `dumpd` command: serve, info, read, fetch, debug, stats, plugins, hook, done, demo.

Operator mistakes and server errors print one line (`dumpd: ...`) and exit
non-zero; tracebacks are for bugs only.

Here: `main` (the console script, and `python -m dumpd`), which runs a command and
turns what it raises into that line and an exit status. The flags are in `parser`,
the commands in `commands`, `serve`'s log format in `logs`.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Sequence

from dumpd import DEFAULT_SOCKET
from dumpd.cli.commands import COMMANDS
from dumpd.cli.parser import build_parser
from dumpd.errors import DumpdError, OutputError, Refused, StartupError
from dumpd.stdio import reopen_closed


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

