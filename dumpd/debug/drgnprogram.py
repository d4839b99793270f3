"""A drgn `Program` whose memory is the served dump's, read only through dumpd: its
physical runs from `info`, the kernel from the server's VMCOREINFO
(`set_linux_kernel_custom`: drgn walks the dead kernel's page tables itself), each
byte by `read_phys` through a `DebugMemory`. drgn is imported here only (an optional
dependency: `pip install 'dumpd[debug]'`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from dumpd.debug.memory import PAGE_CACHE, WINDOW, DebugMemory, physical_runs
from dumpd.errors import DumpdError

if TYPE_CHECKING:
    import drgn

    from dumpd.client import Client

ELF_MAGIC = b"\x7fELF"
# e_machine -> drgn's Architecture name for (32-bit, 64-bit) ELF classes
MACHINES = {3: ("I386", ""), 40: ("ARM", ""), 62: ("", "X86_64"), 183: ("", "AARCH64"),
            21: ("", "PPC64"), 243: ("RISCV32", "RISCV64"), 22: ("S390", "S390X"),
            258: ("", "LOONGARCH64")}


def memory_of(client: Client, *, cache_bytes: int = PAGE_CACHE, window: int = WINDOW,
              info: dict[str, Any] | None = None) -> DebugMemory:
    """The served dump's physical memory as `info` (asked when not given) describes it,
    read through `client` (a blocking `dumpd.client.Client`, not to be shared with
    another thread while the memory is in use)."""
    info = client.info() if info is None else info
    return DebugMemory(client.read_phys, physical_runs(info["segments"]), info["page_size"],
                       max_read=info["max_read"], cache_bytes=cache_bytes, window=window)


def program(client: Client, memory: DebugMemory | None = None,
            info: dict[str, Any] | None = None) -> drgn.Program:
    """A drgn program on the dump `client` is connected to (its `info`: asked when not
    given), without debug info (see `load_debug_info`); its reads go through `memory`
    (default: `memory_of(client)`, whose `stats` count them). ENOSYS when the dump has
    no VMCOREINFO or is of an architecture drgn does not know."""
    import drgn

    info = client.info() if info is None else info
    memory = memory if memory is not None else memory_of(client, info=info)
    prog = drgn.Program(_platform(client, info))
    memory.fault = drgn.FaultError  # a page the server cannot read is unreadable memory
    for index, run in enumerate(memory.runs):
        prog.add_memory_segment(run.start, run.end - run.start, partial(memory.read, index),
                                True)
    prog.set_linux_kernel_custom(client.vmcoreinfo(), False)
    return prog


def _platform(client: Client, info: dict[str, Any]) -> drgn.Platform:
    """The dead machine's platform, from the view's ELF header (every view but a raw
    dump's is an ELF core), else from `info`'s arch (a raw dump: x86_64 or unknown)."""
    import drgn

    head = b"" if info["source"]["kind"] == "raw" else client.read(0, 20)
    if head[:4] == ELF_MAGIC and len(head) == 20 and head[4] in (1, 2) and head[5] in (1, 2):
        wide, little = head[4] == 2, head[5] == 1
        machine = int.from_bytes(head[18:20], "little" if little else "big")
        name = MACHINES.get(machine, ("", ""))[wide]
        what = f"ELF e_machine {machine}"
    else:
        wide = little = True
        arch = info["kernel"]["arch"] or "unknown"
        name, what = ("X86_64" if arch == "x86_64" else ""), arch
    if not name:
        raise DumpdError("ENOSYS", f"the dump's architecture ({what}) is not one drgn reads")
    flags = (drgn.PlatformFlags.IS_64_BIT if wide else drgn.PlatformFlags(0)) | (
        drgn.PlatformFlags.IS_LITTLE_ENDIAN if little else drgn.PlatformFlags(0))
    return drgn.Platform(drgn.Architecture[name], flags)


def load_debug_info(prog: drgn.Program, vmlinux: str | None = None) -> str:
    """Load the kernel's debug info: from `vmlinux`, else where drgn's finders look
    (the kernel's and its modules'). What drgn said was missing, in one line ("" when
    nothing was)."""
    import drgn

    with _drgn_log() as said:
        try:
            if vmlinux is None:
                prog.load_debug_info(None, default=True, main=True)
            else:
                prog.load_debug_info([vmlinux], main=True)
        except drgn.MissingDebugInfoError as exc:
            return "; ".join(said) or str(exc)
    return ""


@contextmanager
def _drgn_log() -> Iterator[list[str]]:
    """drgn's log messages while the block runs, kept instead of printed."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.extend(record.getMessage().splitlines()[:1])

    logger = logging.getLogger("drgn")
    handler, propagate = Keep(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
