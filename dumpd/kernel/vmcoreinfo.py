"""The kernel's VMCOREINFO text, typed: `SYMBOL(x)=hex`, `SIZE/OFFSET/LENGTH/NUMBER(x)=dec`.

The kernel writes it in kernel/vmcore_info.c (crash_core.c before 6.6) and the arch
adds its own lines (arch/x86/kernel/crash_core_64.c); the first line for a key wins,
as in the sources' ELF reader. A key a reader needs and does not find is `MissingInfo`:
a one-line ENOSYS naming the key, never a guess.
"""

from __future__ import annotations

import re

from dumpd.errors import DumpdError


class MissingInfo(DumpdError):
    """VMCOREINFO lacks a key something needs (or has one that is not a number)."""

    def __init__(self, message: str) -> None:
        super().__init__("ENOSYS", message)


_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_lines(text: str) -> dict[str, str]:
    """`KEY=VALUE` lines; other lines are ignored, the first line for a key wins."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            info.setdefault(key, value)
    return info


class VmcoreInfo:
    """One dump's VMCOREINFO; lookups answer None for absent keys, `require_*` refuse."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._lines = parse_lines(text)

    def get(self, key: str) -> str | None:
        """The value of `key` as written (`OSRELEASE`, `SYMBOL(init_top_pgt)`)."""
        return self._lines.get(key)

    def _int(self, key: str, base: int) -> int | None:
        value = self._lines.get(key)
        if value is None:
            return None
        try:
            return int(value.strip(), base)
        except ValueError:
            raise MissingInfo(f"VMCOREINFO {key}={value!r} is not a number") from None

    def symbol(self, name: str) -> int | None:
        return self._int(f"SYMBOL({name})", 16)

    def size(self, name: str) -> int | None:
        return self._int(f"SIZE({name})", 10)

    def offset(self, name: str) -> int | None:
        return self._int(f"OFFSET({name})", 10)

    def length(self, name: str) -> int | None:
        return self._int(f"LENGTH({name})", 10)

    def number(self, name: str) -> int | None:
        return self._int(f"NUMBER({name})", 10)

    def _required(self, kind: str, name: str, value: int | None) -> int:
        if value is None:
            raise MissingInfo(f"VMCOREINFO has no {kind}({name})")
        return value

    def require_symbol(self, name: str) -> int:
        return self._required("SYMBOL", name, self.symbol(name))

    def require_size(self, name: str) -> int:
        return self._required("SIZE", name, self.size(name))

    def require_offset(self, name: str) -> int:
        return self._required("OFFSET", name, self.offset(name))

    def require_length(self, name: str) -> int:
        return self._required("LENGTH", name, self.length(name))

    def require_number(self, name: str) -> int:
        return self._required("NUMBER", name, self.number(name))

    @property
    def osrelease(self) -> str | None:
        return self._lines.get("OSRELEASE")

    @property
    def kernel_version(self) -> tuple[int, int, int] | None:
        """(major, minor, patch) from OSRELEASE (`6.1.0-57-amd64` -> (6, 1, 0))."""
        match = _RELEASE.match(self.osrelease or "")
        if match is None:
            return None
        return int(match[1]), int(match[2]), int(match[3] or 0)

    @property
    def page_size(self) -> int | None:
        return self._int("PAGESIZE", 10)

    @property
    def kernel_offset(self) -> int | None:
        """KASLR's offset of the kernel text (KERNELOFFSET, hex); None before 4.x kernels."""
        return self._int("KERNELOFFSET", 16)

    @property
    def crashtime(self) -> int | None:
        """When the kernel crashed, in seconds since the epoch (CRASHTIME)."""
        return self._int("CRASHTIME", 10)
