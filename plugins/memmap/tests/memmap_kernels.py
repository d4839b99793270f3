"""Synthetic kernels (`dumpd.testing.kernel`) written once per test session, and what
the memmap hook says of every pfn of one."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dumpd.sources import open_source
from dumpd.sources.physical import SourceMemory
from dumpd.testing.kernel import SyntheticKernel

import dumpd_memmap

_WRITTEN: dict[tuple[object, ...], tuple[SyntheticKernel, str]] = {}


def kernel_dump(factory: pytest.TempPathFactory, variant: str, levels: int = 4,
                kaslr: bool = True, omit: Collection[str] = ()
                ) -> tuple[SyntheticKernel, str]:
    """The kernel and the path of its ELF core (written on first use)."""
    key = (variant, levels, kaslr, tuple(sorted(omit)))
    if key not in _WRITTEN:
        kernel = SyntheticKernel(variant=variant, levels=levels, kaslr=kaslr, omit=omit)
        path = factory.mktemp("kernel") / f"vmcore-{variant}-{levels}-{len(_WRITTEN)}"
        kernel.write(str(path))
        _WRITTEN[key] = (kernel, str(path))
    return _WRITTEN[key]


@contextmanager
def opened(path: str | Path) -> Iterator[SourceMemory]:
    """The dump at `path` as dumpd gives it to a hook's attach."""
    source = open_source(str(path))
    try:
        yield SourceMemory(source)
    finally:
        source.close()


def attached(memory: SourceMemory, level: int) -> dumpd_memmap.MemmapHook:
    hook = dumpd_memmap.create({"dump_level": level})
    hook.attach(memory)
    return hook


def reasons(hook: dumpd_memmap.MemmapHook, memory: SourceMemory) -> dict[int, str]:
    """pfn -> the hook's reason, for every pfn of the dump it leaves out."""
    out: dict[int, str] = {}
    for first, end in memory.pfn_ranges:
        pfn = first
        for length, reason in hook.explain(first, end - first):
            if reason:
                out.update((p, reason) for p in range(pfn, pfn + length))
            pfn += length
    return out


def expected(kernel: SyntheticKernel, level: int, without: Collection[str] = ()
             ) -> dict[int, str]:
    """What makedumpfile leaves out at `level` (the kernel's own table), but zero pages
    (no verdict: the stream's option) and the `without` reasons."""
    return {pfn: why for pfn, why in kernel.reasons(level).items()
            if why != "zero" and why not in without}
