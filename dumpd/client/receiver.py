"""Receiving one stream on a blocking socket, payloads straight into a buffer.

`stream.data` payloads never pass through a decoder: the head is recognised by
`dumpd.client.framescan.data_head`, then the payload is received into one reusable
buffer and handed out as a view (valid until the next piece is asked for).
Other frames (holes, errors, the final reply) are small and decoded whole.

Every byte from the server passes the checks any dumpd client applies: whole frames
go through `dumpd.protocol.decode_frame` (the decoder's own checks and limits), then
`dumpd.client.pieces` checks what a stream's notifications and reply carry. The fast
path skips decoding payloads, nothing else: a data head's msgid and offset are
checked as `pieces` checks them, its frame size against the same limit, and a frame
the fast path does not recognise is decoded whole and checked like any other.

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
from typing import Any

from dumpd.client.framescan import DATA_PREFIX, data_head, object_end
from dumpd.client.pieces import (
    SinkError,
    StreamData,
    StreamPiece,
    StreamWritten,
    malformed,
    stream_piece,
    stream_summary,
)
from dumpd.protocol import (
    MAX_MSGID,
    Event,
    Limits,
    Notification,
    ProtocolViolation,
    Response,
    decode_frame,
    oversized,
)

BUFFER = 256 * 1024
SINK_RECV = 4096  # bytes asked of the socket at a time when payloads are spliced
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031


class StreamReceiver:
    """The pieces of stream `msgid` arriving on `sock`, then its summary (`summary`).

    `on_reply` gets replies to other requests sent meanwhile (a `stream.cancel`);
    `on_notification` gets other notifications. With `sink`, data arrives as
    `StreamWritten` (already in the sink file). `page_size`: the server's, for a stream
    asked to compress (its `StreamPages`, never written to the sink, are checked with
    it); 0 for a stream that was not.
    """

    def __init__(self, sock: socket.socket, msgid: int, limits: Limits,
                 on_reply: Callable[[Response], None],
                 on_notification: Callable[[Notification], None], sink: int | None = None,
                 page_size: int = 0) -> None:
        self._sock = sock
        self._msgid = msgid
        self._page_size = page_size
        self._limits = limits
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
            data = prefix > 0 and view[start : start + prefix] == DATA_PREFIX[:prefix]
            head = data_head(view, start, end) if data else None
            if head is not None:
                yield from self._payload_pieces(view, start, *head)
                view = memoryview(self._buf)
                continue
            try:
                frame_end = object_end(view, start, end) if end > start else None
            except ValueError:
                frame_end = end  # not msgpack: the decoder names what is wrong
            if frame_end is None:  # a data head not recognised, too, waits to be whole
                view = self._fill()
                continue
            event = decode_frame(view[start:frame_end], "client", self._limits)
            self._start = frame_end
            yield from self._event(event)

    def _payload_pieces(self, view: memoryview, start: int, msgid: int, offset: int,
                        length: int, pos: int) -> Iterator[StreamPiece]:
        if msgid > MAX_MSGID:
            raise malformed("stream.data", [msgid, offset, f"<{length} bytes>"])
        if msgid != self._msgid:
            raise ProtocolViolation("EINVAL", f"stream.data for msgid {msgid}, not "
                                    f"{self._msgid}")
        if pos - start + length > self._limits.max_frame_size:
            raise oversized(pos - start + length, self._limits)
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

    def _event(self, event: Event) -> Iterator[StreamPiece]:
        """The piece of a frame decoded whole, if it is one of this stream's."""
        if isinstance(event, Notification):
            found = stream_piece(event, self._page_size)
            if found is None or found[0] != self._msgid:
                if found is not None and event.method == "stream.data":
                    raise ProtocolViolation("EINVAL", f"stream.data for msgid {found[0]}, "
                                            f"not {self._msgid}")
                self._on_notification(event)
                return
            piece = found[1]
            if isinstance(piece, StreamData) and self._sink is not None:
                _write_all(self._sink, piece.data, piece.offset)
                piece = StreamWritten(piece.offset, len(piece.data))
            yield piece
        elif isinstance(event, Response):
            if event.msgid != self._msgid:
                self._on_reply(event)
            elif event.error is not None:
                self.error = event.error
            else:
                self.summary = stream_summary(event.result)

    def _fill(self) -> memoryview:
        """Receive more bytes after what is buffered, making room as needed."""
        start, end = self._start, self._end
        if start:
            self._buf[: end - start] = self._buf[start:end]
            self._start, self._end = 0, end - start
        if self._end == len(self._buf):
            if len(self._buf) >= self._limits.max_frame_size:
                raise oversized(self._end, self._limits, complete=False)
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
