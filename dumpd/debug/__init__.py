"""`dumpd debug`: drgn on the served dump, its memory read only through dumpd.

    from dumpd.client import Client
    from dumpd.debug import load_debug_info, memory_of, program

    with Client.connect("/run/dumpd/dumpd.sock") as client:
        memory = memory_of(client)           # the page cache and read-ahead
        prog = program(client, memory)       # a drgn.Program (set_linux_kernel_custom)
        load_debug_info(prog, "vmlinux")     # or None: drgn's own finders
        print(prog["init_uts_ns"].name.release.string_().decode())
        print(memory.stats.line())           # reads, cache hits, round trips, bytes

drgn is optional (`pip install 'dumpd[debug]'`): only `program` and `load_debug_info`
import it. The command's session (interactive or a script) is in `session`.
"""

from dumpd.debug.drgnprogram import load_debug_info, memory_of, program
from dumpd.debug.memory import DebugMemory, MemoryStats, Run, physical_runs

__all__ = ["DebugMemory", "MemoryStats", "Run", "load_debug_info", "memory_of",
           "physical_runs", "program"]
