"""What dumpd reads of the dead kernel itself: its VMCOREINFO, its page tables, its mem_map.

Design rule: pure decoding over a `read_phys(paddr, length) -> bytes` callable given by
the caller; no file, no hook, no socket. The engine (read_virt) and hook plugins (the
page structures) share it.
"""
