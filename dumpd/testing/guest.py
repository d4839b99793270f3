"""The simulated guest `dumpd demo` and the benchmarks dump: a machine whose balloon
driver gave back part of its memory, and whose crash kernel's reservation is missing
from the dump, as in a real kdump.

The model is memory only: which PT_LOADs the vmcore has, which pfns are ballooned and
what every physical byte holds (`Guest.fill`, for `elfwriter.write_elf_core`).
Everything is whole pages, in memory and (as the writer places them) in the file.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from dumpd.sources.base import Segment
from dumpd.testing.elfwriter import LoadSpec, pattern

PAGE = 4096
MiB = 1 << 20
BALLOON_FILL = b"\xbb"  # every byte of a ballooned page, if anyone read it
MIN_SIZE_MIB = 24  # the kernel text's PT_LOAD (16-24 MiB) lies inside the guest


@dataclass(frozen=True, slots=True)
class Guest:
    """The simulated machine: its PT_LOADs (low memory, kernel text, the RAM below and
    the RAM above the crash kernel's reservation) and its ballooned pfn ranges (end
    exclusive)."""

    loads: tuple[LoadSpec, ...]
    balloon: tuple[tuple[int, int], ...]

    @property
    def ram_above_crash(self) -> LoadSpec:
        """The RAM above the crash kernel's reservation, the guest's largest PT_LOAD."""
        return self.loads[3]

    def ballooned(self, pfn: int) -> bool:
        i = bisect_right(self.balloon, (pfn, 1 << 64)) - 1
        return i >= 0 and self.balloon[i][0] <= pfn < self.balloon[i][1]

    def fill(self, paddr: int, length: int) -> bytes:
        """Guest memory: the writer's pattern, ballooned pages full of BALLOON_FILL."""
        data = bytearray(pattern(paddr, length))
        first, last = paddr // PAGE, (paddr + length - 1) // PAGE
        i = max(0, bisect_right(self.balloon, (first, 1 << 64)) - 1)
        while i < len(self.balloon) and self.balloon[i][0] <= last:
            lo = max(self.balloon[i][0] * PAGE, paddr)
            hi = min(self.balloon[i][1] * PAGE, paddr + length)
            if lo < hi:
                data[lo - paddr : hi - paddr] = BALLOON_FILL * (hi - lo)
            i += 1
        return bytes(data)


def check_guest(size_mib: int, balloon_percent: int, crash_mib: int | None = None,
                crash_at_mib: int | None = None) -> tuple[int, int]:
    """The crash kernel's reservation `(start, end)` in bytes of a guest `make_guest` can
    build; ValueError (one line, in the demo's terms) for one it cannot."""
    size = size_mib * MiB
    crash_lo = size // 4 if crash_at_mib is None else crash_at_mib * MiB
    crash_hi = crash_lo + (size // 8 if crash_mib is None else crash_mib * MiB)
    if size_mib < MIN_SIZE_MIB:
        raise ValueError(f"a guest of {size_mib} MiB is too small: the model needs at least "
                         f"{MIN_SIZE_MIB} MiB (its kernel text is at 16-24 MiB)")
    if not MiB < crash_lo < crash_hi < size:
        raise ValueError(f"the crash kernel's reservation {crash_lo / MiB:g}-{crash_hi / MiB:g}"
                         f" MiB must lie between 1 MiB and the guest's {size_mib} MiB")
    if not 0 <= balloon_percent <= 100:
        raise ValueError(f"a balloon of {balloon_percent}% is impossible: it takes 0 to 100% "
                         "of the guest's RAM outside the crash kernel's reservation")
    return crash_lo, crash_hi


def make_guest(size_mib: int, balloon_percent: int, seed: int = 2011, *,
               crash_mib: int | None = None, crash_at_mib: int | None = None) -> Guest:
    """A guest of `size_mib` MiB: page 0 and the crash kernel's reservation missing, text
    mapped twice.

    The reservation (`crashkernel=X@Y`) is `crash_mib` MiB at `crash_at_mib` MiB, by
    default 1/8 of the memory at 1/4 of it; it belongs clear of the kernel text (16-24 MiB).
    The balloon takes `balloon_percent` of the RAM outside the reservation: at most all of
    it (more could never be chosen). ValueError for a guest `check_guest` refuses.
    """
    size = size_mib * MiB
    crash_lo, crash_hi = check_guest(size_mib, balloon_percent, crash_mib, crash_at_mib)
    loads = (
        LoadSpec(paddr=PAGE, memsz=0x9F000 - PAGE),  # low memory, page 0 is a hole
        LoadSpec(paddr=16 * MiB, memsz=8 * MiB),  # kernel text, inside the direct map below
        LoadSpec(paddr=MiB, memsz=crash_lo - MiB),
        LoadSpec(paddr=crash_hi, memsz=size - crash_hi),
    )
    rng = random.Random(seed)
    ram = [(s.paddr // PAGE, (s.paddr + s.memsz) // PAGE) for s in (loads[0], loads[2], loads[3])]
    total = sum(end - first for first, end in ram)
    want = total * balloon_percent // 100
    chosen: set[int] = set()
    while len(chosen) < want:  # the balloon driver frees runs of pages
        first, end = rng.choice(ram)
        start = rng.randrange(first, end)
        stop = min(end, start + rng.randint(1, 64), start + want - len(chosen))
        chosen.update(range(start, stop))
    runs: list[tuple[int, int]] = []
    for pfn in sorted(chosen):
        if runs and runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], pfn + 1)
        else:
            runs.append((pfn, pfn + 1))
    return Guest(loads, tuple(runs))


def distinct_pfns(segments: Sequence[Segment]) -> int:
    """Pfns held by the PT_LOADs, a pfn mapped twice counted once."""
    spans = sorted((s.paddr // PAGE, (s.paddr + s.memsz + PAGE - 1) // PAGE) for s in segments)
    total, reach = 0, 0
    for first, end in spans:
        total += max(0, end - max(first, reach))
        reach = max(reach, end)
    return total
