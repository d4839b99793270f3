"""Writing a stream's frames from a worker thread, RAM runs straight from the source
(the engine's `SpanSender`): source file to socket, no copy through Python.

Design rules:
- The frame head and its payload are written from a worker thread on a duplicate of
  the connection's socket, so a connection closed meanwhile cannot hand its fd
  number to another file under the thread. The event loop keeps reading the
  socket; nobody else writes to it meanwhile: the connection holds its write lock
  and waits until its transport has nothing buffered before handing over.
- A span the source fails to read in part still goes out whole (zeros for the
  failed pages, see `dumpd.engine.spans`), and a `stream.error` for each failed
  range follows right after its frame (the error wins over the zeros).
- A client that stops reading cannot hold a thread: waiting for the socket to take
  more bytes gives up after `send_timeout` seconds (`SendTimeout`), as it does at
  once when the stream is stopped.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from collections.abc import Callable, Sequence

from dumpd.engine.bulk import Span
from dumpd.engine.spans import Sent, SpanSender

WAIT = 0.25  # seconds between looks at `stop` while the client does not read


class SendTimeout(ConnectionError):
    """The socket took no bytes for `send_timeout` seconds: the client does not read."""


Item = bytes | memoryview | Span
"""What a batch writes, in order: frames as they are, or the payload of the frame head
before it, sent from the source."""


class SocketWriter:
    """Writes frames to one connection's socket from worker threads, one at a time."""

    def __init__(self, sock_fd: int, send_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fd = os.dup(sock_fd)
        self._send_timeout = send_timeout  # 0: wait for as long as the stream runs
        self._clock = clock  # the time the send timeout is measured in
        self.stop = threading.Event()  # the stream was cancelled or the connection lost
        self._lock = threading.Lock()
        self._busy = False  # a frame is being written: `close` leaves the fd to it

    def batch(self, items: Sequence[Item], spans: SpanSender,
              error_frame: Callable[[int, int, str], bytes]) -> list[Sent]:
        """Write `items` in order (in a worker thread), small ones joined into single
        writes, each `Span` sent by `spans`; each of its failed ranges is followed at
        once by `error_frame(offset, length, why)` so the stream stays in offset order.
        One `Sent` per `Span`.

        Raises ConnectionError when the client is gone or the stream was stopped,
        SendTimeout when the client read nothing for `send_timeout` seconds.
        """
        with self._lock:
            if self._fd < 0:
                raise ConnectionError("stream stopped")
            self._busy = True
        try:
            return self._batch(items, spans, error_frame)
        finally:
            with self._lock:
                self._busy = False
                if self.stop.is_set():
                    self._close_fd()

    def _batch(self, items: Sequence[Item], spans: SpanSender,
               error_frame: Callable[[int, int, str], bytes]) -> list[Sent]:
        results: list[Sent] = []
        pending: list[bytes | memoryview] = []
        for item in items:
            if not isinstance(item, Span):
                pending.append(item)
                continue
            if pending:
                self.write(memoryview(b"".join(pending)))
            sent = spans.send(item, self)
            pending = [error_frame(*failure) for failure in sent.failed]
            results.append(sent)
        if pending:
            self.write(memoryview(b"".join(pending)))
        return results

    def fileno(self) -> int:
        return self._fd

    def write(self, data: memoryview) -> None:
        """All of `data`, waiting for the socket as needed."""
        while data:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                self.wait()
                continue
            except OSError as exc:
                raise ConnectionError(f"client gone: {exc.strerror}") from exc
            data = data[n:]

    def wait(self) -> None:
        """Until the socket takes more bytes; ConnectionError once `stop` is set,
        SendTimeout when it takes none for `send_timeout` seconds."""
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        limit = self._send_timeout or math.inf
        deadline = self._clock() + limit
        while not self.stop.is_set():
            left = deadline - self._clock()
            if left <= 0:
                raise SendTimeout(f"the client read nothing for {limit:g} s")
            events = poller.poll(min(WAIT, left) * 1000)
            if any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events):
                raise ConnectionError("client gone")
            if events:
                return
        raise ConnectionError("stream stopped")

    def close(self) -> None:
        """Stop; the duplicate fd is closed now, or by the frame still being written."""
        self.stop.set()
        with self._lock:
            if not self._busy:
                self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
