"""What clients can make the server hold at most (`worst_case`), and limits that follow
the memory there is (`server.memory`: "auto" or "NMiB"), for a crash kernel.

Design rules
- The worst case is computed from the same numbers the code enforces, term by term, so
  that it is a bound and not an estimate: per connection, what its input can hold
  (the decoder's buffer, the undecoded bytes, one read of the loop) and its output
  (the transport's high-water mark plus the largest single write), and, where streams
  read (TLS, or `stream_sendfile` off: a sendfile stream reads nothing), each stream's
  window of chunks plus the one being sent; for the whole server, the reply budget
  and the engine's caches. A compressed stream holds what this does not count for
  it (its frames' output; its read-ahead too where the others read nothing) in the
  server's reply budget (`server/streams.py`). Python's own objects (a few KiB per
  connection and task) and the kernel's socket buffers are not in it.
- "auto" sizes for what is free when dumpd starts: MemAvailable less `FLOOR` (left to
  the kernel: a crash kernel must not drop below it), and no more than the headroom
  of dumpd's cgroup and of each cgroup above it (memory.max less memory.current: a
  unit's MemoryMax=). "NMiB" sizes for N MiB.
- Sizing only lowers a limit, never raises one above what the configuration says; it
  refuses to start (one line) when not even one connection fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from dumpd.config import Config, memory_mib
from dumpd.errors import StartupError
from dumpd.server.connection import FEED_SLICE, UNREAD_MAX
from dumpd.server.frames import WRITE_SLICE

KiB, MiB = 1 << 10, 1 << 20
READ_MAX = 256 * KiB
"""The most one `data_received` brings: asyncio's selector loop and uvloop both read
into 256 KiB."""
FLOOR = 32 * MiB
"""MemAvailable that "auto" leaves to the kernel."""


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The bytes clients can make dumpd hold, by term."""

    connections: int
    connection_input: int
    connection_output: int
    connection_streams: int
    replies: int
    engine: int

    @property
    def per_connection(self) -> int:
        return self.connection_input + self.connection_output + self.connection_streams

    @property
    def total(self) -> int:
        return self.connections * self.per_connection + self.replies + self.engine

    def lines(self) -> list[str]:
        """The terms as `dumpd serve --check` prints them."""
        def mib(n: int) -> str:
            return f"{n / MiB:.2f} MiB"
        return [f"per connection: input {mib(self.connection_input)} + output "
                f"{mib(self.connection_output)} + streams {mib(self.connection_streams)} = "
                f"{mib(self.per_connection)}",
                f"connections: {self.connections} x {mib(self.per_connection)} = "
                f"{mib(self.connections * self.per_connection)}",
                f"replies (reply budget): {mib(self.replies)}",
                f"engine (page cache, buffer pool, verdicts): {mib(self.engine)}",
                f"worst case: {mib(self.total)}"]


def worst_case(config: Config) -> WorstCase:
    """What clients can make the server hold at most under `config`."""
    srv, eng = config.server, config.engine
    max_read = srv.max_read_mib * MiB
    streams_read = bool(srv.tls_cert) or not srv.stream_sendfile
    # A stream reads chunks of at most max_read bytes, max(window, chunk) // chunk of
    # them ahead, and holds the one being sent (engine/bulk.py, server/dispatch.py).
    per_stream = max(srv.stream_window_mib * MiB, max_read) + max_read
    return WorstCase(
        connections=srv.max_connections,
        # The decoder holds an incomplete frame plus what it was fed, its buffer up to
        # twice that (protocol/decoder.py); the connection keeps undecoded bytes up to
        # UNREAD_MAX while a stream runs, plus one read of the loop.
        connection_input=2 * srv.max_frame_kib * KiB + FEED_SLICE + UNREAD_MAX + READ_MAX,
        # A write goes to the transport while it holds less than its high-water mark;
        # the largest is a batch of small frames, or a coalesced run (< 2 slices).
        connection_output=srv.write_buffer_kib * KiB + max(srv.write_batch_kib * KiB,
                                                           2 * WRITE_SLICE),
        connection_streams=srv.max_streams * per_stream if streams_read else 0,
        replies=min(srv.reply_budget_total_mib, srv.max_connections * srv.reply_budget_mib)
        * MiB,
        engine=int(eng.cache_mib * MiB) + eng.buffer_pool_mib * MiB
        + eng.verdict_cache_kib * KiB)


def _meminfo_available(path: str) -> int:
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "MemAvailable":
                return int(value.split()[0]) * KiB
    raise StartupError(f"server.memory = \"auto\": {path} has no MemAvailable line")


def _cgroup_headroom(proc_cgroup: str, cgroup_root: str) -> int | None:
    """The least memory.max - memory.current of our cgroup and those above it
    (cgroup v2); None where no limit is set."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    least: int | None = None
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        here = os.path.join(cgroup_root, *parts[:depth])
        try:
            with open(os.path.join(here, "memory.max")) as f:
                limit = f.read().strip()
            with open(os.path.join(here, "memory.current")) as f:
                current = int(f.read())
        except (OSError, ValueError):
            continue
        if limit != "max":
            room = max(0, int(limit) - current)
            least = room if least is None else min(least, room)
    return least


def available(memory: str, meminfo: str = "/proc/meminfo",
              proc_cgroup: str = "/proc/self/cgroup",
              cgroup_root: str = "/sys/fs/cgroup") -> tuple[int, str]:
    """The bytes `server.memory` lets the limits use, and where the figure comes from."""
    given = memory_mib(memory)
    if given is not None:
        return given * MiB, f"server.memory = {memory!r}"
    free = _meminfo_available(meminfo) - FLOOR
    where = f"MemAvailable less {FLOOR // MiB} MiB"
    room = _cgroup_headroom(proc_cgroup, cgroup_root)
    if room is not None and room < free:
        free, where = room, "the cgroup's memory.max less memory.current"
    return max(0, free), where


def sized(config: Config, budget: int) -> Config:
    """`config` with its limits lowered so that `worst_case` fits `budget` bytes:
    caches and windows take a share of it, then as many connections as the rest holds."""
    srv, eng = config.server, config.engine
    mib = budget // MiB

    def share(configured: int, part: int, least: int = 1) -> int:
        return max(least, min(configured, mib // part))

    max_read = share(srv.max_read_mib, 32)
    # Under 16 MiB (a crash kernel at crashkernel=160M has a few): no page cache or
    # buffer pool (every read goes to the source, which mmap makes cheap) and one
    # read's reply at a time, so that the room goes to connections.
    small = mib < 16
    reply = max_read if small else max(max_read, min(srv.reply_budget_mib, 2 * max_read))
    engine = replace(eng, cache_mib=min(eng.cache_mib, float(share(16, 16, least=0))),
                     buffer_pool_mib=min(eng.buffer_pool_mib, share(16, 16, least=0)),
                     verdict_cache_kib=max(16, min(eng.verdict_cache_kib, budget // KiB // 64)))
    server = replace(srv, max_read_mib=max_read, reply_budget_mib=reply,
                     reply_budget_total_mib=max(reply, share(srv.reply_budget_total_mib, 8,
                                                             least=0)),
                     stream_window_mib=share(srv.stream_window_mib, 32),
                     max_frame_kib=max(64, min(srv.max_frame_kib, budget // KiB // 256)),
                     write_buffer_kib=max(64, min(srv.write_buffer_kib, budget // KiB // 256)),
                     write_batch_kib=max(WRITE_SLICE // KiB,
                                         min(srv.write_batch_kib, budget // KiB // 128)),
                     max_connections=1)
    trial = replace(config, server=server, engine=engine)
    one = worst_case(trial)
    fits = (budget - one.engine - server.reply_budget_total_mib * MiB) // one.per_connection
    if fits < 1:
        raise StartupError(f"server.memory: {budget / MiB:.1f} MiB leave no room for one "
                           f"connection (it needs {one.total / MiB:.1f} MiB): give dumpd "
                           "more memory (crashkernel=, MemoryMax=) or lower server.memory's "
                           "other limits")
    final = replace(trial, server=replace(server, max_connections=min(srv.max_connections,
                                                                      fits)))
    final.validate("server.memory")
    return final


def fit(config: Config) -> tuple[Config, str]:
    """`config` sized as its `server.memory` says, and a line saying how ("" when off)."""
    if config.server.memory == "off":
        return config, ""
    budget, where = available(config.server.memory)
    result = sized(config, budget)
    srv = result.server
    return result, (f"server.memory: {budget / MiB:.1f} MiB ({where}): max_connections "
                    f"{srv.max_connections}, max_read_mib {srv.max_read_mib}, reply budgets "
                    f"{srv.reply_budget_mib}/{srv.reply_budget_total_mib} MiB, cache "
                    f"{result.engine.cache_mib:g} MiB; worst case "
                    f"{worst_case(result).total / MiB:.1f} MiB")
