"""What a Unix socket's path must be (not empty, at most 107 bytes), for the server
that binds it and the clients that connect to it."""

from __future__ import annotations

import os

# sun_path holds 108 bytes; Python (like most C code) wants room for the NUL.
MAX_UNIX_PATH = 107


def unusable(path: str) -> str | None:
    """Why `path` cannot name a Unix socket because of its length, or None. Empty, it
    would bind an abstract address of the kernel's choosing, which no one can find."""
    size = len(os.fsencode(path))
    if not size:
        return "the socket path is empty"
    if size <= MAX_UNIX_PATH:
        return None
    return f"socket path is {size} bytes, the limit is {MAX_UNIX_PATH}"
