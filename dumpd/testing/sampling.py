"""Where the conformance kit looks: sampled pfns and windows, and the lookup rates."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from dumpd.hooks.contract import PfnIsRam
from dumpd.hooks.pfnrange import PFN_LIMIT

MAX_WINDOW = 4096


def sample_pfns(rng: random.Random, pfn_limit: int, around: Iterable[int], n: int) -> list[int]:
    """`n` random pfns below `pfn_limit`, the edges, and the neighbours of `around`."""
    pfns = {0, 1, pfn_limit - 1, PFN_LIMIT - 1}
    for pfn in around:
        pfns.update(p for p in range(pfn - 2, pfn + 3) if 0 <= p < PFN_LIMIT)
    pfns.update(rng.randrange(pfn_limit) for _ in range(n))
    return sorted(pfns)


def sample_windows(rng: random.Random, pfn_limit: int, around: Iterable[int], n: int
                   ) -> list[tuple[int, int]]:
    """Windows `(first, count)`: empty, at both ends, over `around`, and `n` random ones."""
    windows = [(0, 0), (0, 1), (0, MAX_WINDOW), (PFN_LIMIT - 3, 3)]
    windows += [(max(0, pfn - 5), 11) for pfn in around]
    for _ in range(n):
        count = rng.choice((1, 2, 7, 64, 513, MAX_WINDOW))
        windows.append((rng.randrange(max(1, pfn_limit - count)), count))
    return windows


def measure(hook: PfnIsRam, rng: random.Random, pfn_limit: int, seconds: float = 0.25,
            window: int = 1 << 16, clock: Callable[[], float] = time.perf_counter
            ) -> tuple[float, float | None]:
    """Single lookups per second, and batched pfns per second in windows of `window`
    pfns, at random pfns below `pfn_limit`: as many rounds (4096 lookups, or one window)
    as start within `seconds` of `clock`."""
    pfns = [rng.randrange(pfn_limit) for _ in range(4096)]
    calls, start = 0, clock()
    while (elapsed := clock() - start) < seconds:
        for pfn in pfns:
            hook.pfn_is_ram(pfn)
        calls += len(pfns)
    single = calls / elapsed
    ranged = getattr(hook, "pfn_range_is_ram", None)
    if ranged is None:
        return single, None
    window = min(window, pfn_limit)
    covered, start = 0, clock()
    while (elapsed := clock() - start) < seconds:
        list(ranged(rng.randrange(pfn_limit - window + 1), window))
        covered += window
    return single, covered / elapsed
