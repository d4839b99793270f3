"""The hooks' own speed, and how often a whole-dump read asks them.

    python -m bench.hooks [--pfns 1048576] [--ranges 14000] [--dump-mib 256] [--seconds 1]

1. Lookups: one balloon of `--ranges` random runs (1..64 pfns) over `--pfns` pfns
   (a 4 GiB guest by default), served by each hook: `none`, `balloon` from the text
   list, `balloon` from the same data as a bitmap, and `xen` with the stub hypervisor
   answering from the same data as a memory-type map (`mmio_dm`). Each is created
   through its entry point and timed as dumpd calls it: single `pfn_is_ram` calls at
   random pfns, and the batched form over windows of 4096 pfns (one verdict chunk,
   the most the engine asks at once).
2. Whole-dump reads: a raw image of `--dump-mib` MiB with the balloon scaled to it,
   served in-process by each hook and read whole in 8 MiB reads, four in flight:
   hook verdicts per pfn, hook calls, pages served as zeros, and whether the source
   bytes read equal the RAM bytes (no ballooned byte read).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

import dumpd_balloon

from dumpd.client.aio import AsyncClient
from dumpd.config import Config, HookConfig, ServerConfig, SourceConfig
from dumpd.runner import loop_factory
from dumpd.server import Server
from dumpd.testing.conformance import created
from dumpd.testing.sampling import measure

PAGE = 4096
MiB = 1 << 20
CHUNK = 8 * MiB
WINDOW = 4096


def balloon(pfns: int, count: int, seed: int = 2011) -> list[tuple[int, int]]:
    """`count` disjoint runs of 1..64 pfns at random places below `pfns`, sorted."""
    rng = random.Random(seed)
    starts = sorted(rng.sample(range(0, pfns, 65), count))
    return [(s, s + rng.randint(1, 64)) for s in starts]


def hook_options(workdir: Path, ranges: list[tuple[int, int]], pfns: int
                 ) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every hook configuration, with its data files written under `workdir`."""
    text = workdir / "balloon.txt"
    dumpd_balloon.write_text(text, ranges)
    bitmap = workdir / "balloon.bitmap"
    dumpd_balloon.write_bitmap(bitmap, ranges, 0, pfns)
    memtypes = workdir / "memtypes.txt"
    memtypes.write_text("".join(f"{a:#x}-{b - 1:#x} mmio_dm\n" for a, b in ranges))
    return {
        "none": ("none", {}),
        "balloon (text)": ("balloon", {"file": str(text)}),
        "balloon (bitmap)": ("balloon", {"file": str(bitmap)}),
        "xen (stub)": ("xen", {"transport": "stub", "map": str(memtypes)}),
    }


def lookups(configs: dict[str, tuple[str, dict[str, Any]]], pfns: int, seconds: float
            ) -> list[tuple[str, float, float | None]]:
    rows = []
    for label, (name, options) in configs.items():
        with created(name, options) as hook:
            single, batched = measure(hook, random.Random(5), pfns, seconds, WINDOW)
        rows.append((label, single, batched))
    return rows


async def whole_dump(image: Path, socket: Path, name: str, options: dict[str, Any]
                     ) -> dict[str, Any]:
    config = Config(source=SourceConfig(path=str(image), kind="raw"),
                    server=ServerConfig(socket=str(socket)),
                    hook=HookConfig(name=name, options=options))
    server = Server(config)
    await server.start()
    try:
        async with await AsyncClient.connect(str(socket)) as client:
            size = image.stat().st_size
            offsets = list(range(0, size, CHUNK))
            for i in range(0, len(offsets), 4):
                await asyncio.gather(*(client.read(o, CHUNK) for o in offsets[i : i + 4]))
            stats: dict[str, Any] = await client.stats()
            return stats
    finally:
        await server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pfns", type=int, default=1 << 20)
    parser.add_argument("--ranges", type=int, default=14_000)
    parser.add_argument("--dump-mib", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dumpd-bench-hooks-") as tmp:
        work = Path(tmp)
        ranges = balloon(args.pfns, args.ranges)
        listed = sum(b - a for a, b in ranges)
        print(f"balloon: {len(ranges):,} runs, {listed:,} of {args.pfns:,} pfns "
              f"({100 * listed / args.pfns:.0f}%)\n")
        print("| hook | single lookups/s | batched pfns/s (windows of 4096) |")
        print("|---|---|---|")
        for label, single, batched in lookups(hook_options(work, ranges, args.pfns),
                                              args.pfns, args.seconds):
            shown = f"{batched:,.0f}" if batched is not None else "-"
            print(f"| {label} | {single:,.0f} | {shown} |")

        dump_pfns = args.dump_mib * MiB // PAGE
        scaled = balloon(dump_pfns, args.ranges * dump_pfns // args.pfns)
        image = work / "oldmem"
        with open(image, "wb") as f:  # sparse: RAM pages read as zeros, at memory speed
            f.truncate(args.dump_mib * MiB)
        ram_bytes = (dump_pfns - sum(b - a for a, b in scaled)) * PAGE
        (work / "dump").mkdir()
        configs = hook_options(work / "dump", scaled, dump_pfns)
        print(f"\nwhole-dump read of {args.dump_mib} MiB ({dump_pfns:,} pfns, "
              f"{sum(b - a for a, b in scaled):,} ballooned) in 8 MiB reads:\n")
        print("| hook | verdicts per pfn | hook calls | pages served as zeros | "
              "source bytes read | == bytes to read |")
        print("|---|---|---|---|---|---|")
        for label, (name, options) in configs.items():
            with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
                stats = runner.run(whole_dump(image, work / "dumpd.sock", name, options))
            want = dump_pfns * PAGE if name == "none" else ram_bytes
            print(f"| {label} | {stats['pfns_asked'] / dump_pfns:.3f} | {stats['hook_calls']:,} "
                  f"| {stats['zero_pages_served']:,} | {stats['source_bytes_read']:,} | "
                  f"{stats['source_bytes_read'] == want} |")


if __name__ == "__main__":
    main()
