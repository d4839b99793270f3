"""Standard descriptors that were closed when dumpd started (`dumpd info >&-`).

Left closed, the next file dumpd opens takes the number: its connection or a dump
file would be written as stdout, and Python leaves `sys.stdout` None. Each is opened
on /dev/null, as gnulib's `stdopen` does: stdout read-only, so that writes fail
(EBADF, reported as a failed write is), stderr writable, so that messages vanish
(there is no one to tell; the exit status still does), stdin read-only.
"""

from __future__ import annotations

import os
import sys

FLAGS = {0: os.O_RDONLY, 1: os.O_RDONLY, 2: os.O_WRONLY}


def reopen_closed() -> None:
    """Open each closed standard descriptor on /dev/null, and the Python stream over it."""
    for fd, flags in FLAGS.items():
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, flags)
            if new != fd:
                os.dup2(new, fd, inheritable=True)
                os.close(new)
            os.set_inheritable(fd, True)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's, never closed)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
