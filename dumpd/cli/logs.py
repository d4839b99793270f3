"""`dumpd serve`'s log on stderr: one line per event, stamped with the time in UTC, or
with syslog priority prefixes when stderr is the journal (which adds its own time)."""

from __future__ import annotations

import logging
import os
import sys
import time

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


def log_to_stderr(level: str) -> None:
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
