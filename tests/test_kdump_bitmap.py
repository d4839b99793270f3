"""dumpd.kdump.bitmap against the definition, bit by bit: runs of set bits, the rank of
every bit across blocks and superblocks, `peek` answering only from what was read, and
the holes `skip` names never read."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dumpd.kdump import bitmap
from dumpd.kdump.bitmap import Rank, TooManyRuns, clear_runs, set_runs


def bits_of(data: bytes) -> list[int]:
    return [byte >> bit & 1 for byte in data for bit in range(8)]


def naive_runs(data: bytes | list[int], first: int = 0, end: int | None = None
               ) -> list[tuple[int, int]]:
    """The runs of set bits of `data` (bytes, or its bits) in `[first, end)`."""
    bits = bits_of(data) if isinstance(data, bytes) else data
    runs: list[tuple[int, int]] = []
    for i in range(first, len(bits) if end is None else end):
        if bits[i]:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
    return runs


@given(st.binary(max_size=200), st.integers(0, 1000))
def test_set_runs_are_the_set_bits(data: bytes, base: int) -> None:
    assert set_runs(data, base) == [(a + base, b + base) for a, b in naive_runs(data)]


def test_set_runs_stops_past_its_limit() -> None:
    with pytest.raises(TooManyRuns):
        set_runs(b"\x55" * 100, 0, limit=10)
    assert len(set_runs(b"\x55" * 100, 0, limit=400)) == 400


def test_clear_runs_are_the_rest() -> None:
    assert clear_runs([(2, 4), (6, 7)], 0, 10) == [(0, 2), (4, 6), (7, 10)]
    assert clear_runs([], 3, 5) == [(3, 5)]
    assert clear_runs([(3, 5)], 3, 5) == []


class Reading:
    """A bitmap's bytes read through `read`, every read recorded."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.0, 0.02, 0.5, 0.98, 1.0]))
def test_rank_and_runs_of_every_bit(seed: int, density: float) -> None:
    """Blocks of 16 bytes: 64 of them to a superblock of 8192 bits, so 3 superblocks."""
    rng = random.Random(seed)
    nbits = 20000 + rng.randrange(200)
    data = bytes(sum((rng.random() < density) << bit for bit in range(8))
                 for _ in range(-(-nbits // 8)))
    bits = bits_of(data)[:nbits]
    rank = Rank(Reading(data).read, nbits, 16)
    order = list(range(nbits + 1))
    rng.shuffle(order)  # superblocks are counted in order whatever is asked first
    prefix = [0]
    for bit in bits:
        prefix.append(prefix[-1] + bit)
    for bit in [*order[:500], 0, nbits]:
        assert rank.rank(bit) == prefix[bit], bit
    for _ in range(200):
        first = rng.randrange(nbits)
        end = min(nbits, first + rng.choice([1, 7, 64, 300, 5000]))
        want = naive_runs(bits, first, end)
        assert rank.runs(first, end) == want
        peeked = rank.peek(first, end)
        assert peeked is None or peeked == (prefix[first], want)


def test_peek_answers_only_from_what_was_read() -> None:
    data = bytes(range(256)) * 64  # 16 KiB: 131072 bits, 2 superblocks of 256-byte blocks
    reading = Reading(data)
    rank = Rank(reading.read, len(data) * 8, 256)
    assert rank.peek(70000, 70001) is None and reading.reads == []
    assert rank.rank(70000) == sum(bits_of(data)[:70000])
    reads = len(reading.reads)
    assert rank.peek(70000, 70008) == (rank.rank(70000), naive_runs(data, 70000, 70008))
    assert len(reading.reads) == reads  # from the superblock counts and the block at hand


def test_holes_are_skipped_not_read() -> None:
    """Of a bitmap of 2**30 bits (128 MiB) with set bits only at both ends, the ranks
    at its end cost the reads of its two ends and an array of 64 counts."""
    nbits = 1 << 30
    size = nbits // 8
    head, tail = b"\xff" * 10, b"\x0f" * 10

    def read(offset: int, length: int) -> bytes:
        out = bytearray(length)
        for start, chunk in ((0, head), (size - len(tail), tail)):
            lo, hi = max(offset, start), min(offset + length, start + len(chunk))
            if lo < hi:
                out[lo - offset : hi - offset] = chunk[lo - start : hi - start]
        return bytes(out)

    def skip(offset: int) -> int:
        return offset if offset < len(head) else max(offset, size - len(tail))

    rank = Rank(read, nbits, 4096, skip)
    assert rank.rank(nbits) == 80 + 40
    assert rank.runs(nbits - 80, nbits) == [(nbits - 80 + 8 * k, nbits - 76 + 8 * k)
                                             for k in range(10)]
    assert rank.blocks_read <= 2 * bitmap.SUPER + 1
    assert rank.memory < 2 * bitmap.BLOCK_CACHE_BYTES


def test_ranks_from_many_threads_agree() -> None:
    rng = random.Random(5)
    data = rng.randbytes(1 << 16)
    prefix = [0]
    for bit in bits_of(data):
        prefix.append(prefix[-1] + bit)
    rank = Rank(Reading(data).read, len(data) * 8, 512)
    wrong: list[int] = []

    def ask(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(300):
            bit = local.randrange(len(data) * 8)
            if rank.rank(bit) != prefix[bit]:
                wrong.append(bit)

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
