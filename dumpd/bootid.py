"""This machine's boot, as the kernel names it: the server reports it in `info`, and
`dumpd fetch` compares it with its own to know whether the source's device and inode
numbers are of the machine the copy is written on."""

from __future__ import annotations

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id(path: str = BOOT_ID) -> str | None:
    """The boot id, None when it cannot be read."""
    try:
        with open(path, "rb") as src:
            return src.read().decode("ascii").strip() or None
    except (OSError, ValueError):
        return None
