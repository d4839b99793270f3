"""What holds while one hook registration stands: its verdicts, cached pages and flights.

Design rules:
- A change of the hook slot starts a new `State`; a read in progress finishes with
  the state (and verdicts) it started with.
- The hook is asked at most once per pfn while a registration stands: asks are
  serialized per state, and the cache is looked at again once it is a reader's turn.
"""

from __future__ import annotations

import asyncio
from operator import itemgetter

from dumpd.config import EngineConfig
from dumpd.engine.hookcall import HookCaller
from dumpd.engine.pagecache import PageCache
from dumpd.engine.verdicts import CHUNK_PFNS, Run, Stored, VerdictCache
from dumpd.errors import DumpdError

MiB = 1 << 20


class Flight:
    """One batched read of `count` pages from `first`; waiters share its result.
    `failed`: the pages the source could not read, and why (the others are good)."""

    __slots__ = ("buffer", "count", "failed", "first", "task", "zero")

    def __init__(self, first: int, count: int) -> None:
        self.first = first
        self.count = count
        self.buffer: memoryview | None = None
        self.zero: list[bool] = []
        self.failed: dict[int, DumpdError] = {}
        self.task: asyncio.Future[None] | None = None


class State:
    """Everything that holds only while one hook registration stands."""

    def __init__(self, generation: int, caller: HookCaller | None, config: EngineConfig,
                 page_size: int) -> None:
        self.generation = generation
        self.caller = caller
        self.verdicts = VerdictCache(config.verdict_cache_kib * 1024 // CHUNK_PFNS)
        self.pages = PageCache(int(config.cache_mib * MiB) // page_size, page_size)
        self.flights: dict[int, Flight] = {}
        self.asking = asyncio.Lock()

    def known(self, ranges: list[tuple[int, int]]) -> list[Run]:
        """The verdicts at hand: all RAM with no hook, else the cache (UNKNOWN for gaps)."""
        if self.caller is None:
            ram = Stored.RAM
            return [(first, end, ram) for first, end in ranges]
        runs: list[Run] = []
        for first, end in ranges:
            runs.extend(self.verdicts.lookup(first, end))
        return runs

    async def verdicts_of(self, ranges: list[tuple[int, int]]) -> list[Run]:
        """Sorted verdict runs covering `ranges` (sorted, disjoint), asking the hook for gaps.

        Asks are serialized (the hook has one thread anyway), and the cache is looked at
        again once it is our turn, so concurrent readers of the same pfns never ask the
        hook twice.
        """
        unknown = Stored.UNKNOWN
        runs = self.known(ranges)
        if self.caller is None or not any(code is unknown for _, _, code in runs):
            return runs
        async with self.asking:
            runs = self.known(ranges)
            gaps = [(first, end) for first, end, code in runs if code is unknown]
            if not gaps:
                return runs
            answers = await self.caller.ask(gaps)
        for first, end, code in answers:
            self.verdicts.store(first, end, code)
        return sorted([run for run in runs if run[2] is not unknown] + answers, key=itemgetter(0))
