"""Writing a stream's frames from a worker thread, payloads with `os.sendfile`: source
file to socket, no copy through Python.

Design rules:
- The frame head and its payload are written from a worker thread on a duplicate of
  the connection's socket, so a connection closed meanwhile cannot hand its fd
  number to another file under the thread. The event loop keeps reading the
  socket; nobody else writes to it meanwhile: the connection holds its write lock
  and waits until its transport has nothing buffered before handing over.
- A frame announces its length before its bytes go out, so a source that fails in
  the middle (EIO, a file cut short) cannot end the frame early: the failing page
  is padded with zeros, sending goes on with the next page, and the caller sends a
  `stream.error` for each failed range right after the frame (the error wins over
  the zeros).
- Where the source cannot be sent from (a file system without splice support),
  the bytes are read and written instead, by the same thread.
- A client that stops reading cannot hold a thread: waiting for the socket to take
  more bytes gives up after `send_timeout` seconds (`SendTimeout`), as it does at
  once when the stream is stopped.
"""

from __future__ import annotations

import errno
import math
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WAIT = 0.25  # seconds between looks at `stop` while the client does not read
_ZEROS = bytes(256 * 1024)
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


class SendTimeout(ConnectionError):
    """The socket took no bytes for `send_timeout` seconds: the client does not read."""


@dataclass(frozen=True, slots=True)
class SpanFrame:
    """A `stream.data` frame whose `length` payload bytes come from the source file at
    `offset`, after `head`."""

    head: bytes
    offset: int
    length: int


Item = bytes | memoryview | SpanFrame
"""What a batch writes, in order: frames as they are, or a frame sent from the source."""


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of one frame: `good` payload bytes came from the source; `failed`
    lists the `(offset, length, message)` ranges sent as zeros instead."""

    good: int
    failed: tuple[tuple[int, int, str], ...] = ()


class SocketWriter:
    """Writes frames to one connection's socket from worker threads, one at a time."""

    def __init__(self, sock_fd: int, send_timeout: float) -> None:
        self._fd = os.dup(sock_fd)
        self._send_timeout = send_timeout  # 0: wait for as long as the stream runs
        self.stop = threading.Event()  # the stream was cancelled or the connection lost
        self._sendfile = True
        self._lock = threading.Lock()
        self._busy = False  # a frame is being written: `close` leaves the fd to it

    def batch(self, items: Sequence[Item], source_fd: int, page_size: int,
              error_frame: Callable[[int, int, str], bytes]) -> list[Sent]:
        """Write `items` in order (in a worker thread), small ones joined into single
        writes; a `SpanFrame`'s pages the source cannot read go as zeros, whole pages,
        each failed range followed at once by `error_frame(offset, length, why)` so
        the stream stays in offset order. One `Sent` per `SpanFrame`.

        Raises ConnectionError when the client is gone or the stream was stopped,
        SendTimeout when the client read nothing for `send_timeout` seconds.
        """
        with self._lock:
            if self._fd < 0:
                raise ConnectionError("stream stopped")
            self._busy = True
        try:
            return self._batch(items, source_fd, page_size, error_frame)
        finally:
            with self._lock:
                self._busy = False
                if self.stop.is_set():
                    self._close_fd()

    def _batch(self, items: Sequence[Item], source_fd: int, page_size: int,
               error_frame: Callable[[int, int, str], bytes]) -> list[Sent]:
        results: list[Sent] = []
        pending: list[bytes | memoryview] = []
        for item in items:
            if not isinstance(item, SpanFrame):
                pending.append(item)
                continue
            pending.append(item.head)
            self._write(memoryview(b"".join(pending)))
            pending = []
            sent = self._payload(source_fd, item.offset, item.length, page_size)
            pending += [error_frame(*failure) for failure in sent.failed]
            results.append(sent)
        if pending:
            self._write(memoryview(b"".join(pending)))
        return results

    def _payload(self, source_fd: int, offset: int, length: int, page_size: int) -> Sent:
        pos, end = offset, offset + length
        good = 0
        failed: list[tuple[int, int, str]] = []
        while pos < end:
            try:
                n = self._copy(source_fd, pos, end - pos)
            except BlockingIOError:
                self._wait()
                continue
            except OSError as exc:
                if exc.errno in _PEER_GONE:
                    raise ConnectionError(f"client gone: {exc.strerror}") from exc
                stop = min(end, (pos // page_size + 1) * page_size)  # skip the failing page
                why = f"source read failed at {pos:#x}: {exc.strerror or exc}"
            else:
                if n:
                    pos += n
                    good += n
                    continue
                stop, why = end, f"source ended early at {pos:#x} (file truncated?)"
            self._pad(stop - pos)
            start = max(offset, pos // page_size * page_size)  # the page's sent bytes too
            good -= pos - start
            if failed and failed[-1][0] + failed[-1][1] == start:  # one range, first reason
                start, _, why = failed.pop()
            failed.append((start, stop - start, why))
            pos = stop
        return Sent(good, tuple(failed))

    def _copy(self, source_fd: int, offset: int, count: int) -> int:
        if self._sendfile:
            try:
                return os.sendfile(self._fd, source_fd, offset, count)
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:
                    raise
                self._sendfile = False  # this source cannot be spliced: read and write
        data = os.pread(source_fd, min(count, len(_ZEROS)), offset)
        if data:
            self._write(memoryview(data))
        return len(data)

    def _pad(self, count: int) -> None:
        while count:
            n = min(count, len(_ZEROS))
            self._write(memoryview(_ZEROS)[:n])
            count -= n

    def _write(self, data: memoryview) -> None:
        while data:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                self._wait()
                continue
            except OSError as exc:
                raise ConnectionError(f"client gone: {exc.strerror}") from exc
            data = data[n:]

    def _wait(self) -> None:
        """Until the socket takes more bytes; ConnectionError once `stop` is set,
        SendTimeout when it takes none for `send_timeout` seconds."""
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        limit = self._send_timeout or math.inf
        deadline = time.monotonic() + limit
        while not self.stop.is_set():
            left = deadline - time.monotonic()
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
