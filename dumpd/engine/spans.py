"""Sending a RAM run of the file view (a `Span`) from the source straight to a socket:
the engine's zero-copy read.

Design rules:
- The bytes go from the source to the socket in the kernel (`Source.copy_to`:
  sendfile, or a write straight from an mmap window of /proc/vmcore); the
  engine counts them as the source reads and bytes served they are, on the event
  loop (the sending runs in a worker thread; counters are only touched on the loop).
- A span's length was announced before its bytes go out, so a source that fails in
  the middle (EIO, a file cut short) cannot end it early: the failing page is
  padded with zeros, sending goes on with the next page, and the failed ranges are
  returned for the caller to report (the report wins over the zeros).
- Waiting for the socket, and giving up on it, is the sink's business.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from typing import Protocol

from dumpd.engine.bulk import Span
from dumpd.engine.engine import Engine

_ZEROS = bytes(256 * 1024)
_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


class Sink(Protocol):
    """A non-blocking socket a span is sent to."""

    def fileno(self) -> int: ...

    def wait(self) -> None:
        """Until the socket takes more bytes (raises ConnectionError to give up)."""

    def write(self, data: memoryview) -> None:
        """All of `data`, waiting as needed."""


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of one span: `good` bytes came from the source; `failed` lists the
    `(offset, length, message)` ranges sent as zeros instead."""

    good: int
    failed: tuple[tuple[int, int, str], ...] = ()


class SpanSender:
    """Sends spans of one engine's file view to sinks; made on the event loop."""

    def __init__(self, engine: Engine) -> None:
        self._source = engine.source
        self._page_size = engine.page_size
        self._counters = engine.counters
        self._loop = asyncio.get_running_loop()

    def send(self, span: Span, sink: Sink) -> Sent:
        """Write the span's bytes to `sink` (in a worker thread), failed pages as zeros.
        Raises ConnectionError when the client is gone (or the sink gives up)."""
        offset, end, ps = span.offset, span.offset + span.length, self._page_size
        pos = offset
        good = 0
        failed: list[tuple[int, int, str]] = []
        while pos < end:
            try:
                n = self._source.copy_to(sink.fileno(), pos, end - pos)
            except BlockingIOError:
                sink.wait()
                continue
            except OSError as exc:
                if exc.errno in _PEER_GONE:
                    raise ConnectionError(f"client gone: {exc.strerror}") from exc
                stop = min(end, (pos // ps + 1) * ps)  # skip the failing page
                why = f"source read failed at {pos:#x}: {exc.strerror or exc}"
            else:
                if n:
                    pos += n
                    good += n
                    continue
                stop, why = end, f"source ended early at {pos:#x} (file truncated?)"
            _pad(sink, stop - pos)
            start = max(offset, pos // ps * ps)  # the page's sent bytes too
            good -= pos - start
            if failed and failed[-1][0] + failed[-1][1] == start:  # one range, first reason
                start, _, why = failed.pop()
            failed.append((start, stop - start, why))
            pos = stop
        self._loop.call_soon_threadsafe(self._counters.count_span, offset, good, ps)
        return Sent(good, tuple(failed))


def _pad(sink: Sink, count: int) -> None:
    while count:
        n = min(count, len(_ZEROS))
        sink.write(memoryview(_ZEROS)[:n])
        count -= n
