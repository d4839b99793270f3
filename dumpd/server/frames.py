"""From results and refusals to the frames written: no transport, no state."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from dumpd.errors import DumpdError
from dumpd.protocol import Request, brief, encode_bin_response_head, encode_error, encode_response
from dumpd.server.dispatch import BinParts

log = logging.getLogger("dumpd.server")

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


def error_frames(event: Request, exc: Exception, conn: int, who: str) -> list[Any]:
    """The error reply to `event` that raised `exc` on connection `conn` (of `who`):
    its code for a DumpdError, EFAULT (logged with the traceback) for a bug of ours."""
    if isinstance(exc, DumpdError):
        return refusal(event.msgid, event.method, exc.code, exc.message, conn, who)
    log.error("%s failed", event.method, exc_info=exc)  # a bug of ours, not the client's
    return [encode_error(event.msgid, "EFAULT", f"internal error: {type(exc).__name__}")]


def refusal(msgid: int, method: str, code: str, message: str, conn: int, who: str
            ) -> list[Any]:
    """The error reply to a request, logged at debug: the client's mistake or a limit."""
    # one short line, whatever it is (a method name may fill a frame)
    shown = method if method.isprintable() and len(method) <= 40 else brief(method)
    log.debug("connection %d (%s): %s refused: %s: %s", conn, who, shown, code, message)
    return [encode_error(msgid, code, message)]
