"""Receiving one stream on a blocking socket, payloads straight into a buffer.

`stream.data` payloads never pass through a decoder: the head is recognised by
`dumpd.framescan.data_head`, then the payload is received into one reusable
buffer and handed out as a view (valid until the next piece is asked for).
Other frames (holes, errors, the final reply) are small and decoded whole.

With a `sink` (a file descriptor), payloads go from the socket to the file at
their offsets through a pipe with `splice`, never copied through user space; the
receiver then reads the socket in small steps, so payload bytes stay in the
socket for `splice` instead of in its buffer. Over TLS the socket's bytes are
encrypted: payloads are then received (decrypted) and written with `pwrite`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from dumpd.framescan import DATA_PREFIX, data_head, object_end
from dumpd.protocol import NOTIFICATION, RESPONSE, ProtocolViolation

HEAD_MAX = len(DATA_PREFIX) + 9 + 9 + 5  # prefix, two uint64, a bin32 header
BUFFER = 256 * 1024
SINK_RECV = 4096  # bytes asked of the socket at a time when payloads are spliced
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031


@dataclass(frozen=True, slots=True)
class StreamData:
    """File-view bytes at `offset`; `data` is only valid until the next piece."""

    offset: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class StreamHole:
    """Non-RAM pages: zeros in the file view, not sent."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class StreamError:
    """A range the source could not read; the stream goes on past it."""

    offset: int
    length: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class StreamWritten:
    """File-view bytes at `offset` already written to the receiver's sink."""

    offset: int
    length: int


StreamPiece = StreamData | StreamHole | StreamError | StreamWritten


class SinkError(OSError):
    """Writing to the sink failed (ENOSPC, EIO, ...): the sink's fault, not the
    connection's; `errno` and `strerror` are those of the failed write."""


class StreamReceiver:
    """The pieces of stream `msgid` arriving on `sock`, then its summary (`summary`).

    `on_reply(msgid, error, result)` gets replies to other requests sent meanwhile
    (a `stream.cancel`); `on_notification(method, params)` gets other notifications.
    With `sink`, data arrives as `StreamWritten` (already in the sink file).
    """

    def __init__(self, sock: socket.socket, msgid: int, max_frame: int,
                 on_reply: Callable[[int, Any, Any], None],
                 on_notification: Callable[[str, Any], None], sink: int | None = None
                 ) -> None:
        self._sock = sock
        self._msgid = msgid
        self._max_frame = max_frame
        self._on_reply = on_reply
        self._on_notification = on_notification
        self._buf = bytearray(BUFFER)
        self._start = self._end = 0
        self._payload = bytearray()
        self._sink = sink
        self._splicing = sink is not None and type(sock) is socket.socket  # not TLS
        self._pipe: tuple[int, int] | None = None
        self.summary: dict[str, Any] | None = None
        self.error: tuple[str, str] | None = None  # the stream's error reply, if any

    @property
    def leftover(self) -> bytes:
        """Bytes received past the stream's reply (frames of later replies)."""
        return bytes(self._buf[self._start : self._end])

    def __iter__(self) -> Iterator[StreamPiece]:
        view = memoryview(self._buf)
        while self.summary is None and self.error is None:
            start, end = self._start, self._end
            prefix = min(end - start, len(DATA_PREFIX))
            if prefix and view[start : start + prefix] == DATA_PREFIX[:prefix]:
                head = data_head(view, start, end)
                if head is None:
                    if end - start >= HEAD_MAX:
                        raise ProtocolViolation("EINVAL", "malformed stream.data frame")
                    view = self._fill()
                    continue
                yield from self._payload_pieces(view, *head)
                view = memoryview(self._buf)
                continue
            try:
                frame_end = object_end(view, start, end) if end > start else None
            except ValueError as exc:
                raise ProtocolViolation("EINVAL", str(exc)) from None
            if frame_end is None:
                view = self._fill()
                continue
            obj = msgpack.unpackb(view[start:frame_end], raw=False)
            self._start = frame_end
            piece = self._frame(obj)
            if piece is not None:
                yield piece

    def _payload_pieces(self, view: memoryview, msgid: int, offset: int, length: int,
                        pos: int) -> Iterator[StreamPiece]:
        if msgid != self._msgid:
            raise ProtocolViolation("EINVAL", f"stream.data for msgid {msgid}, not "
                                    f"{self._msgid}")
        take = min(length, self._end - pos)
        self._start = pos + take
        if self._sink is not None:
            if take:
                _write_all(self._sink, view[pos : pos + take], offset)
            if self._splicing:
                self._splice(offset + take, length - take)
            else:
                self._receive_to_sink(offset + take, length - take)
            yield StreamWritten(offset, length)
            return
        if take:
            yield StreamData(offset, view[pos : pos + take])
        rest = length - take
        if not rest:
            return
        if len(self._payload) < rest:
            self._payload = bytearray(rest)
        payload = memoryview(self._payload)
        got = 0
        while got < rest:
            n = self._sock.recv_into(payload[got:rest])
            if n == 0:
                raise ConnectionError("connection to dumpd closed in the middle of a frame")
            got += n
        yield StreamData(offset + take, payload[:rest])

    def _splice(self, offset: int, length: int) -> None:
        """Move `length` payload bytes from the socket to the sink at `offset`."""
        if not length:
            return
        assert self._sink is not None
        if self._pipe is None:
            self._pipe = os.pipe()
            with contextlib.suppress(OSError):  # a smaller pipe only means more calls
                fcntl.fcntl(self._pipe[1], F_SETPIPE_SZ, PIPE_SIZE)
        read_end, write_end = self._pipe
        sock = self._sock.fileno()
        while length:
            n = os.splice(sock, write_end, min(length, PIPE_SIZE))
            if n == 0:
                raise ConnectionError("connection to dumpd closed in the middle of a frame")
            length -= n
            while n:
                try:
                    written = os.splice(read_end, self._sink, n, offset_dst=offset)
                except OSError as exc:
                    raise SinkError(exc.errno, exc.strerror) from exc
                offset += written
                n -= written

    def _receive_to_sink(self, offset: int, length: int) -> None:
        """Receive `length` payload bytes and write them to the sink at `offset`."""
        assert self._sink is not None
        if length and not self._payload:
            self._payload = bytearray(min(length, PIPE_SIZE))
        payload = memoryview(self._payload)
        while length:
            n = self._sock.recv_into(payload, min(length, len(payload)))
            if n == 0:
                raise ConnectionError("connection to dumpd closed in the middle of a frame")
            _write_all(self._sink, payload[:n], offset)
            offset += n
            length -= n

    def close(self) -> None:
        """Release the pipe used for splicing."""
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _frame(self, obj: Any) -> StreamPiece | None:
        if not isinstance(obj, list) or not obj:
            raise ProtocolViolation("EINVAL", "a frame that is not a msgpack-RPC message")
        if obj[0] == NOTIFICATION and len(obj) == 3:
            method, params = obj[1], obj[2]
            if method == "stream.hole" and params[0] == self._msgid:
                return StreamHole(params[1], params[2])
            if method == "stream.error" and params[0] == self._msgid:
                return StreamError(params[1], params[2], params[3], params[4])
            self._on_notification(method, params)
            return None
        if obj[0] == RESPONSE and len(obj) == 4:
            msgid, error, result = obj[1], obj[2], obj[3]
            if msgid != self._msgid:
                self._on_reply(msgid, error, result)
            elif error is not None:
                self.error = (str(error[0]), str(error[1]))
            else:
                self.summary = result
            return None
        raise ProtocolViolation("EINVAL", f"unexpected frame {obj[:2]!r}")

    def _fill(self) -> memoryview:
        """Receive more bytes after what is buffered, making room as needed."""
        start, end = self._start, self._end
        if start:
            self._buf[: end - start] = self._buf[start:end]
            self._start, self._end = 0, end - start
        if self._end == len(self._buf):
            if len(self._buf) >= self._max_frame:
                raise ProtocolViolation("E2BIG", f"a frame is larger than {self._max_frame} "
                                        "bytes")
            grown = bytearray(2 * len(self._buf))  # a new buffer: views of the old stay valid
            grown[: self._end] = self._buf[: self._end]
            self._buf = grown
        view = memoryview(self._buf)
        want = len(self._buf) - self._end
        if self._splicing:
            want = min(want, SINK_RECV)
        n = self._sock.recv_into(view[self._end :], want)
        if n == 0:
            raise ConnectionError("connection to dumpd closed during a stream")
        self._end += n
        return view


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        try:
            n = os.pwrite(fd, data, offset)
        except OSError as exc:
            raise SinkError(exc.errno, exc.strerror) from exc
        data, offset = data[n:], offset + n
