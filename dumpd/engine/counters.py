"""The engine's counters, as `stats` reports them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Counters:
    """Monotonic counts since start. Hook counters are written by the hook thread (and
    `hook_timeouts` also by the loop, under a lock); the others by the loop."""

    hook_calls: int = 0
    pfns_asked: int = 0
    hook_errors: int = 0
    hook_exceptions: int = 0
    hook_bad_results: int = 0
    hook_timeouts: int = 0
    hook_stuck_asks: int = 0
    hook_reloads: int = 0
    hook_reload_failures: int = 0
    source_pages_read: int = 0
    source_read_calls: int = 0
    source_bytes_read: int = 0
    source_reads_inline: int = 0
    worker_hops: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    singleflight_waits: int = 0
    zero_pages_served: int = 0
    bytes_served: int = 0

    def count_span(self, offset: int, length: int, page_size: int) -> None:
        """Count `length` bytes at `offset` taken straight from the source (sent to a
        socket, hashed out of a mapping) as the read and the bytes served they are."""
        if length <= 0:
            return
        self.source_read_calls += 1
        self.source_bytes_read += length
        self.source_pages_read += (offset + length - 1) // page_size - offset // page_size + 1
        self.bytes_served += length

    def count_looked(self, ranges: list[tuple[int, int]], page_size: int) -> None:
        """Count file ranges looked at in the source's mappings but not sent (all-zero
        pages a stream sends as holes) as the source reads they are."""
        for offset, end in ranges:
            self.source_bytes_read += end - offset
            self.source_pages_read += (end - 1) // page_size - offset // page_size + 1

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
