"""The length limit of a Unix socket's path, for the server that binds it and the
clients that connect to it."""

from __future__ import annotations

import os

# sun_path holds 108 bytes; Python (like most C code) wants room for the NUL.
MAX_UNIX_PATH = 107


def too_long(path: str) -> str | None:
    """Why `path` cannot name a Unix socket because of its length, or None."""
    size = len(os.fsencode(path))
    if size <= MAX_UNIX_PATH:
        return None
    return f"socket path is {size} bytes, the limit is {MAX_UNIX_PATH}"
