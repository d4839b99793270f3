"""`dumpd debug`'s session: drgn's own shell with `prog` ready, or a script run as
`drgn SCRIPT ARGS` runs it (`sys.argv` is `[SCRIPT, *ARGS]`, `prog` in its globals);
what its reads cost in one line on stderr at the end.

Operator mistakes (no drgn, no such script or vmlinux, a vmlinux drgn cannot use) are
one line and exit status 2 before or instead of the session; a script's own exception
is its traceback and status 1, as Python gives it.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from dumpd.debug.drgnprogram import load_debug_info, memory_of, program
from dumpd.debug.memory import DebugMemory
from dumpd.errors import StartupError

if TYPE_CHECKING:
    import drgn

    from dumpd.client import Client

INSTALL = "pip install 'dumpd[debug]'"
VMLINUX_HINT = ("give --vmlinux FILE, the kernel's vmlinux with debug info (Debian: "
                "linux-image-RELEASE-dbg); memory reads work without it")


def debug(connect: Callable[[], Client], vmlinux: str | None, script: str | None,
          script_args: Sequence[str]) -> int:
    """Run the session on the server `connect` reaches; its exit status."""
    try:
        import drgn.cli  # noqa: F401  (the shell, and drgn itself)
    except ImportError:
        raise StartupError(f"debug needs drgn, which is not installed: {INSTALL}") from None
    for flag, path in (("SCRIPT", script), ("--vmlinux", vmlinux)):
        if path is not None and not os.path.isfile(path):
            raise StartupError(f"{flag} {path}: no such file")
    with connect() as client:
        info = client.info()
        memory = memory_of(client, info=info)
        prog = program(client, memory, info)
        missing = load_debug_info(prog, vmlinux)
        if missing and vmlinux is not None:
            raise StartupError(f"--vmlinux {vmlinux}: {missing}")
        if missing:
            print(f"dumpd: debug: {missing}; {VMLINUX_HINT}", file=sys.stderr)
        try:
            if script is None:
                _interact(prog, client.address, memory)
                return 0
            return _run_script(prog, script, script_args)
        finally:
            print(f"dumpd: debug: {memory.stats.line()}", file=sys.stderr)


def _interact(prog: drgn.Program, address: str, memory: DebugMemory) -> None:
    from drgn.cli import run_interactive, version_header

    where = (f"dumpd: the dump served at {address}, {len(memory.runs)} runs of physical "
             "memory, read through dumpd only")
    run_interactive(prog, banner_func=lambda banner: f"{version_header()}\n{where}\n{banner}")


def _run_script(prog: drgn.Program, script: str, script_args: Sequence[str]) -> int:
    """`script` run as `__main__`, as `drgn SCRIPT` runs it; its exit status."""
    import drgn

    argv, path = list(sys.argv), list(sys.path)
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    drgn.set_default_prog(prog)
    try:
        runpy.run_path(script, init_globals={"prog": prog}, run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc)
    except Exception as exc:
        traceback.print_exception(type(exc), exc, _from_script(exc.__traceback__, script))
        return 1
    finally:
        drgn.set_default_prog(None)
        sys.argv, sys.path[:] = argv, path
    return 0


def _exit_status(exc: SystemExit) -> int:
    """What the interpreter makes of `sys.exit(code)`: None 0, an int itself, anything
    else printed and 1."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _from_script(tb: TracebackType | None, script: str) -> TracebackType | None:
    """The traceback from the script's first frame on (runpy's and ours left out)."""
    found = tb
    while found is not None and found.tb_frame.f_code.co_filename != script:
        found = found.tb_next
    return found or tb
