"""Errors with stable codes, shared by every layer.

A `DumpdError` travels to the client as `[code, message]`; `code` is one of `CODES`
and never changes meaning. `StartupError` is for operator mistakes found while
starting (bad file, bad configuration): the CLI prints its one line, no traceback.
"""

from __future__ import annotations

CODES = frozenset(
    {"EINVAL", "ERANGE", "EIO", "EBUSY", "E2BIG", "ENOSYS", "EACCES", "ETIMEDOUT", "EFAULT",
     "ESHUTDOWN"}
)


class DumpdError(Exception):
    """A request failed; `code` is a stable errno-like name, `message` one line."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StartupError(Exception):
    """dumpd cannot start; the message names the file or option and what is wrong."""


class Refused(StartupError):
    """A command refuses what it was asked to write to (the served dump, a file it may
    not replace); the message names the output, the CLI puts the command before it."""


class OutputError(Exception):
    """The OS refused an operation on what a command writes to (its output, a resume
    state): `NAME: cannot WHAT: REASON`; the CLI puts the command before it, exit 1."""
