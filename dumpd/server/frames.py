"""Pure helpers from results to the frames written: no transport, no state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dumpd.protocol import encode_bin_response_head, encode_response
from dumpd.server.dispatch import BinParts

WRITE_SLICE = 256 * 1024  # bytes handed to the transport at a time


def reply_frames(msgid: int, result: Any) -> list[Any]:
    """The reply frames for a result; bytes go as a bin header plus the buffer itself."""
    if isinstance(result, BinParts):
        return [encode_bin_response_head(msgid, sum(map(len, result))), *result]
    if isinstance(result, bytes | memoryview):
        return [encode_bin_response_head(msgid, len(result)), result]
    return [encode_response(msgid, result)]


def coalesced(frames: list[Any]) -> Iterator[Any]:
    """`frames` with each run of frames smaller than `WRITE_SLICE` joined into writes of
    about `WRITE_SLICE` bytes, one at a time (a large read of cached pages is thousands
    of small frames: joined all at once they would be a second copy of the reply);
    larger frames stay as they are (written from their own buffers)."""
    run: list[Any] = []
    run_bytes = 0
    for frame in frames:
        if len(frame) >= WRITE_SLICE:
            if run:
                yield b"".join(run)
                run, run_bytes = [], 0
            yield frame
            continue
        run.append(frame)
        run_bytes += len(frame)
        if run_bytes >= WRITE_SLICE:
            yield b"".join(run)
            run, run_bytes = [], 0
    if run:
        yield run[0] if len(run) == 1 else b"".join(run)
