"""One client connection: bytes to requests, requests to engine calls, replies back.

Design rules:
- Memory per connection is bounded whatever the client does: undecoded bytes
  wait (reading paused) until queued requests have started; at most
  `max_inflight` requests run at once; replies reserve their size in the
  connection's `ByteBudget`, then in the server's (`Shared.reply_budget`),
  before any work, and are released only once the transport has drained them
  below its high-water mark. Waiting on its own budget first, a connection holds
  none of the server's meanwhile.
- The server stops reading a connection while its replies have not drained,
  except while a stream runs: then it reads on until `UNREAD_MAX` bytes wait, so a
  `stream.cancel` (or any small request) gets through to a stream held back by a
  slow reader.
- Work already done (a cached page, `info`) is answered without a task, and the
  replies of one burst of pipelined requests go out in one write. Other replies
  are written one at a time, in slices, never interleaved.
- A broken frame with a recoverable msgid gets an error reply; any other
  protocol violation closes this connection and no other.
- A stream sends its pieces as notifications, each a frame of its own, so streams
  and replies share the connection frame by frame; it reads ahead at most its
  window and waits for the transport to drain like any reply. At most
  `max_streams` run at once per connection.
- At most `max_connections` connections are served at once: the next one gets an
  `EBUSY` error notification and is closed. A connection with nothing running,
  nothing left to write and nothing received for `idle_timeout` gets `ETIMEDOUT`
  and is closed; one whose output has not moved for `send_timeout` is aborted (its
  client does not read, so a notification could not reach it), which cancels its
  requests and streams and frees their budget. One timer per connection checks
  both when it fires; activity only records a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import reprlib
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from dumpd.engine.bulk import Data, Hole, Piece, Span
from dumpd.engine.ratelog import RateLimitedLog
from dumpd.errors import DumpdError
from dumpd.protocol import (
    FrameDecoder,
    InvalidRequest,
    Limits,
    Notification,
    ProtocolViolation,
    Request,
    brief,
    encode_bin_notification_head,
    encode_bin_response_head,
    encode_error,
    encode_notification,
    encode_response,
)
from dumpd.server.budget import ByteBudget
from dumpd.server.dispatch import NOT_READY, BinParts, Dispatcher, Peer
from dumpd.server.params import as_uint
from dumpd.server.zerocopy import Item, SendTimeout, SocketWriter, SpanFrame

log = logging.getLogger("dumpd.server")

FEED_SLICE = 16 * 1024  # bytes decoded at a time, so queued requests stay few
WRITE_SLICE = 256 * 1024  # bytes handed to the transport at a time
WRITELINES_MAX = 2 << 20  # bytes of small frames written in one vectored call
WRITE_HIGH_WATER = 1024 * 1024
STREAM_SNDBUF = 2 * 1024 * 1024
TRANSPORT_POLL = 0.0005  # seconds between looks at a draining transport before sendfile
UNREAD_MAX = 64 * 1024  # undecoded bytes kept while replies wait to drain (streams only)


class ConnectionLimits:
    """Per-connection bounds, from the server configuration (timeouts in seconds,
    0 for never)."""

    __slots__ = ("check_period", "idle_timeout", "max_frame", "max_inflight", "max_streams",
                 "reply_budget", "send_timeout", "sendfile")

    def __init__(self, max_frame: int, max_inflight: int, reply_budget: int,
                 max_streams: int = 4, sendfile: bool = True, idle_timeout: float = 0.0,
                 send_timeout: float = 0.0) -> None:
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.reply_budget = reply_budget
        self.max_streams = max_streams
        self.sendfile = sendfile
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        # How often the timer of a busy connection looks at it (0: never): a quarter of
        # the send timeout, so output that stopped moving is caught within 1.5x of it.
        self.check_period = send_timeout / 4 if send_timeout else idle_timeout


class Shared:
    """What the connections of one server share: the set of those served (at most
    `max_connections`), the server-wide reply budget, and counts of the connections
    a limit refused or dropped."""

    def __init__(self, max_connections: int, reply_budget_total: int) -> None:
        self.open: set[RpcConnection] = set()
        self.max_connections = max_connections
        self.reply_budget = ByteBudget(reply_budget_total)
        self.busy_refused = 0
        self.idle_timeouts = 0
        self.send_timeouts = 0
        self.notifications_ignored = 0
        self.log = RateLimitedLog(log)
        self.ids = itertools.count(1)  # connection ids, for the log

    def admit(self, conn: RpcConnection, who: str) -> bool:
        """Serve `conn` (of `who`) if a slot is free; False (counted, logged) if none is."""
        if len(self.open) >= self.max_connections:
            self.busy_refused += 1
            self.log.warning("busy", f"refused connection {conn.id} ({who}): too many "
                             f"connections (limit {self.max_connections})")
            return False
        self.open.add(conn)
        return True

    def ignore(self, conn: RpcConnection, notification: Notification) -> None:
        """A notification from a client on `conn`: none is answered (msgpack-RPC) and
        none is acted on, so it is counted and logged (at debug level, at most once a
        minute)."""
        assert conn.peer is not None  # notifications are read from served connections only
        self.notifications_ignored += 1
        self.log.debug("notification", f"connection {conn.id} ({conn.peer.who}): ignored a "
                       f"notification: {reprlib.repr(notification.method)}")

    def stats(self) -> dict[str, int]:
        budget = self.reply_budget
        return {"busy_refused_connections": self.busy_refused,
                "idle_timeouts": self.idle_timeouts, "send_timeouts": self.send_timeouts,
                "notifications_ignored": self.notifications_ignored,
                "reply_bytes_held": budget.held, "reply_bytes_held_peak": budget.peak,
                "reply_budget_waits": budget.waits}


class RpcConnection(asyncio.Protocol):
    """asyncio protocol serving msgpack-RPC requests from one client."""

    def __init__(self, dispatcher: Dispatcher, limits: ConnectionLimits, shared: Shared,
                 authorize: Callable[[asyncio.BaseTransport], Peer | str]) -> None:
        self._dispatcher = dispatcher
        self._limits = limits
        self._shared = shared
        self._authorize = authorize
        self._decoder = FrameDecoder("server", Limits(limits.max_frame))
        self._budget = ByteBudget(limits.reply_budget)
        self._unread = bytearray()
        self._queue: deque[Request | InvalidRequest] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._msgids: set[int] = set()
        self._streams: dict[int, _Stream] = {}
        self._drained = asyncio.Event()
        self._writing = asyncio.Lock()
        self._drained.set()
        self._reading = True
        self._closing_when_idle = False
        self._corked: list[Any] | None = None  # replies of this _pump, written at its end
        self._corked_bytes = 0
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._active_at = 0.0  # last time bytes came in or a request finished
        self._written = 0  # bytes handed to the transport, to tell whether output moves
        self._moved = -1  # bytes the transport had sent at the timer's last look (-1: none)
        self._stalled_at = 0.0  # when the timer last saw them move
        self._closed_why = ""  # the error notification this side closed with, if any
        self.peer: Peer | None = None
        self.id = 0

    @property
    def busy(self) -> bool:
        """Requests are running, waiting to run, or not yet decoded."""
        return bool(self._tasks or self._queue or self._unread)

    # -- asyncio callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.id = next(self._shared.ids)
        verdict = self._authorize(transport)
        if isinstance(verdict, str):
            self._close_with("EACCES", verdict)
            return
        if not self._shared.admit(self, verdict.who):
            self._close_with("EBUSY", f"too many connections (limit "
                             f"{self._shared.max_connections})")
            return
        self.peer = verdict
        log.debug("connection %d (%s) opened", self.id, verdict.who)
        self._active_at = self._loop.time()
        if self._limits.idle_timeout:
            self._arm(self._active_at + self._limits.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            return
        self._unread += data
        self._active_at = now = self._loop.time()
        period = self._limits.check_period
        if period and self._timer_at > now + period:  # work may start: look soon
            self._arm(now + period)
        self._pump()

    def eof_received(self) -> bool:
        # The client is done asking: answer what it asked, then close. TLS has no
        # half-close (its transport closes now whatever this returns): say so.
        tls = self._transport is not None and self._transport.get_extra_info("sslcontext")
        self.close_when_idle()
        return not tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        self._queue.clear()
        self._unread.clear()
        self._drained.set()
        self._shared.open.discard(self)
        if self.peer is not None:  # served: opened in the log (the others were refused)
            why = f": {self._closed_why}" if self._closed_why else ""
            log.debug("connection %d (%s) closed%s", self.id, self.peer.who, why)

    def pause_writing(self) -> None:
        # Called from inside transport.write: only stop reading here, never re-enter _pump.
        self._drained.clear()
        if self._reading and self._transport is not None and not self._streams:
            self._reading = False
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._drained.set()
        self._pump()

    # -- request flow ----------------------------------------------------------

    def _pump(self) -> None:
        """Start what may start, decode more when the queue is empty, steer reading."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._corked = []
        try:
            while True:
                while self._queue and len(self._tasks) < self._limits.max_inflight:
                    self._start(self._queue.popleft())
                if self._queue or not self._unread:
                    break
                chunk = bytes(self._unread[:FEED_SLICE])
                del self._unread[:FEED_SLICE]
                try:
                    events = self._decoder.feed(chunk)
                except ProtocolViolation as exc:
                    self._uncork()
                    self._violation(exc)
                    return
                for event in events:  # a server-role decoder yields no Response
                    if isinstance(event, Request | InvalidRequest):
                        self._queue.append(event)
                    elif isinstance(event, Notification):
                        self._shared.ignore(self, event)
        finally:
            self._uncork()
        if self._closing_when_idle:
            if not self.busy:
                transport.close()
            return
        if self._drained.is_set():
            want = not self._queue and not self._unread
        else:  # a stream may be what fills the transport: let small requests through
            want = bool(self._streams) and not self._queue and len(self._unread) < UNREAD_MAX
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _start(self, event: Request | InvalidRequest) -> None:
        if self._answer_now(event):
            return
        task = asyncio.ensure_future(self._serve(event))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _answer_now(self, event: Request | InvalidRequest) -> bool:
        """Answer without a task when the work is already done (a cached page, `info`):
        only while nothing is being written and the client keeps up."""
        if (not isinstance(event, Request) or self._corked is None or self._writing.locked()
                or not self._drained.is_set() or event.msgid in self._msgids):
            return False
        assert self.peer is not None
        try:
            result = self._dispatcher.call_now(self.peer, event.method, event.params)
            if result is NOT_READY:
                return False
            frames = _frames(event.msgid, result)
        except Exception as exc:
            frames = self._error_frames(event, exc)
        self._corked.extend(frames)
        self._corked_bytes += sum(map(len, frames))
        if self._corked_bytes >= WRITE_SLICE:
            self._uncork()
            self._corked = []
        return True

    def _uncork(self) -> None:
        """Write the replies answered at once in one go: one system call for a burst of
        pipelined requests instead of one each."""
        corked, self._corked, self._corked_bytes = self._corked, None, 0
        if corked and self._transport is not None and not self._transport.is_closing():
            self._write(self._transport, b"".join(corked))

    def _write(self, transport: asyncio.Transport, data: bytes | memoryview) -> None:
        self._written += len(data)
        transport.write(data)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._active_at = self._loop.time()
        if not task.cancelled() and task.exception() is not None:
            log.error("request task failed", exc_info=task.exception())
        self._pump()

    def close_when_idle(self) -> None:
        """Read no more; answer what was already received, then close."""
        if self._closing_when_idle or self._transport is None:
            return
        self._closing_when_idle = True
        if self._reading and not self._transport.is_closing():
            self._transport.pause_reading()
            self._reading = False
        self._pump()

    def abort(self) -> None:
        """Close now, dropping whatever is still running."""
        if self._transport is not None:
            self._transport.abort()

    # -- timeouts --------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._tick)
        self._timer_at = when

    def _tick(self) -> None:
        """The connection's one timer: abort it when its output has not moved for
        `send_timeout`, close it when idle for `idle_timeout`, else look again later."""
        due, self._timer, self._timer_at = self._timer_at, None, math.inf
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        now = max(self._loop.time(), due)  # timers may fire a hair early (uvloop: ms)
        pending = transport.get_write_buffer_size()
        if pending and self._limits.send_timeout:
            if self._stalled(now, pending):
                self._send_timed_out()
            else:
                self._arm(now + self._limits.check_period)
            return
        self._moved = -1
        if pending or self.busy:
            self._arm(now + self._limits.check_period)
        elif self._limits.idle_timeout:
            deadline = self._active_at + self._limits.idle_timeout
            if now >= deadline:
                self._idle_out()
            else:
                self._arm(deadline)
        # else: nothing to watch until bytes come in (data_received arms the timer)

    def _stalled(self, now: float, pending: int) -> bool:
        """The transport has sent nothing for `send_timeout`, as far as the timer saw."""
        moved = self._written - pending
        if moved != self._moved:
            self._moved, self._stalled_at = moved, now
            return False
        return now - self._stalled_at >= self._limits.send_timeout

    def _idle_out(self) -> None:
        self._shared.idle_timeouts += 1
        idle = self._limits.idle_timeout
        self._close_with("ETIMEDOUT", f"idle for {idle:g} s")

    def _send_timed_out(self) -> None:
        """Abort a connection whose client stopped reading: its requests and streams
        are cancelled, its buffers and budget freed."""
        if self._transport is None or self._transport.is_closing():
            return
        self._shared.send_timeouts += 1
        self._shared.log.warning("send_timeout", "aborted a connection whose client read "
                                 f"nothing for {self._limits.send_timeout:g} s")
        self._transport.abort()

    async def _serve(self, event: Request | InvalidRequest) -> None:
        if isinstance(event, InvalidRequest):
            await self._send(self._refusal(event.msgid, "a request", event.code, event.message))
            return
        msgid = event.msgid
        if msgid in self._msgids:
            await self._send(self._refusal(msgid, event.method, "EINVAL",
                                           f"msgid {msgid} is already in use"))
            return
        assert self.peer is not None
        self._msgids.add(msgid)
        if event.method == "stream":
            try:
                await self._stream(event)
            finally:
                self._msgids.discard(msgid)
            return
        cost = self._dispatcher.cost(event.method, event.params)
        try:
            await self._reserve(cost)
            try:
                frames = await self._call(event)
                await self._send(frames)
            finally:
                self._shared.reply_budget.release(cost)
                self._budget.release(cost)
        finally:
            self._msgids.discard(msgid)

    async def _reserve(self, cost: int) -> None:
        """`cost` bytes of this connection's reply budget, then of the server's."""
        await self._budget.acquire(cost)
        try:
            await self._shared.reply_budget.acquire(cost)
        except BaseException:
            self._budget.release(cost)
            raise

    async def _call(self, event: Request) -> list[Any]:
        assert self.peer is not None
        try:
            if event.method == "stream.cancel":
                result: Any = self._cancel_stream(event.params)
            else:
                result = await self._dispatcher.call(self.peer, event.method, event.params)
            return _frames(event.msgid, result)
        except Exception as exc:
            return self._error_frames(event, exc)

    async def _stream(self, event: Request) -> None:
        """Send the pieces of a `stream` request as notifications, then its summary."""
        msgid = event.msgid
        try:
            if len(self._streams) >= self._limits.max_streams:
                raise DumpdError("EBUSY", f"{self._limits.max_streams} streams are running "
                                 "on this connection already")
            sock = self._sendfile_socket()
            reader = self._dispatcher.open_stream(event.params, spans=sock is not None)
        except DumpdError as exc:
            await self._send(self._error_frames(event, exc))
            return
        stream = self._streams[msgid] = _Stream()
        writer = None
        try:
            if sock is not None:  # a dup of the socket: made once the stream is sure to run
                writer = SocketWriter(sock.fileno(), self._limits.send_timeout)
            async for batch in reader:
                if stream.cancelled:
                    break
                if writer is None:
                    await self._send([f for p in batch for f in stream.frames(msgid, p)])
                else:
                    await self._send_with_sendfile(msgid, stream, batch, writer)
                if self._transport is None or self._transport.is_closing():
                    return
                await asyncio.sleep(0)  # let the loop read requests (a cancel) between chunks
            summary = {**stream.counts, "cancelled": stream.cancelled}
            frames = [encode_response(msgid, summary)]
        except DumpdError as exc:
            frames = self._error_frames(event, exc)
        except SendTimeout:  # the sendfile thread gave up on a client that does not read
            self._send_timed_out()
            return
        except ConnectionError:  # the client went away while data was being sent
            return
        finally:
            reader.close()
            if writer is not None:
                writer.close()
            del self._streams[msgid]
        await self._send(frames)

    async def _send_with_sendfile(self, msgid: int, stream: _Stream, batch: list[Piece],
                                  writer: SocketWriter) -> None:
        """Write a batch on a worker thread, its RAM runs with `sendfile` from the source
        file, once the transport has nothing left to write before it."""
        engine = self._dispatcher.engine
        items: list[Item] = []
        spans: list[Span] = []
        for piece in batch:
            frames = stream.frames(msgid, piece)
            if isinstance(piece, Span):
                items.append(SpanFrame(frames[0], piece.offset, piece.length))
                spans.append(piece)
            else:
                items += frames

        def error_frame(offset: int, length: int, why: str) -> bytes:
            return encode_notification("stream.error", [msgid, offset, length, "EIO", why])

        async with self._writing:
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            pause = TRANSPORT_POLL
            while transport.get_write_buffer_size():  # the thread writes after it
                await asyncio.sleep(pause)
                pause = min(2 * pause, 0.05)
            sent = await asyncio.to_thread(writer.batch, items, engine.source.fileno(),
                                           engine.page_size, error_frame)
        for span, outcome in zip(spans, sent, strict=True):
            engine.count_sent(span.offset, outcome.good)
            for _, length, _ in outcome.failed:  # sent as zeros, then as an error
                stream.counts["data_bytes"] -= length
                stream.counts["error_bytes"] += length

    def _sendfile_socket(self) -> socket.socket | None:
        """The socket a stream may `sendfile` to: a plain one (never TLS), when the
        option is on; widens its send buffer too (a bulk stream moves in larger steps)."""
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is None or self._transport is None:
            return None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        if not self._limits.sendfile or self._transport.get_extra_info("sslcontext"):
            return None
        return cast(socket.socket, sock)

    def _cancel_stream(self, params: Sequence[Any]) -> dict[str, bool]:
        if len(params) != 1:
            raise DumpdError("EINVAL", f"stream.cancel takes 1 parameter, got {len(params)}")
        stream = self._streams.get(as_uint(params[0], "msgid"))
        if stream is not None:
            stream.cancel()
        return {"cancelled": stream is not None}

    async def _send(self, frames: list[Any]) -> None:
        """Write `frames` in slices, waiting for the transport to drain between them, so
        a large reply goes to the socket from its own buffer instead of being copied
        into the transport's; runs of small frames go out joined, one system call each."""
        async with self._writing:  # one reply at a time: slices must not interleave
            total = sum(map(len, frames))
            if (len(frames) > 2 and total <= WRITELINES_MAX
                    and all(len(frame) < WRITE_SLICE for frame in frames)):
                # Many small frames (a stream's pieces between holes): one vectored write
                # where the loop has it (uvloop), one joined write where it does not.
                transport = self._transport
                if transport is not None and not transport.is_closing():
                    self._written += total
                    transport.writelines(frames)
                    await self._drained.wait()
                return
            for frame in _coalesced(frames):
                view = memoryview(frame)
                for pos in range(0, len(view), WRITE_SLICE):
                    transport = self._transport
                    if transport is None or transport.is_closing():
                        return
                    self._write(transport, view[pos : pos + WRITE_SLICE])
                    await self._drained.wait()

    def _error_frames(self, event: Request, exc: Exception) -> list[Any]:
        if isinstance(exc, DumpdError):
            return self._refusal(event.msgid, event.method, exc.code, exc.message)
        log.error("%s failed", event.method, exc_info=exc)  # a bug of ours, not the client's
        return [encode_error(event.msgid, "EFAULT", f"internal error: {type(exc).__name__}")]

    def _refusal(self, msgid: int, method: str, code: str, message: str) -> list[Any]:
        """The error reply to a request, logged at debug: the client's mistake or a limit."""
        assert self.peer is not None  # requests are read from served connections only
        # one short line, whatever it is (a method name may fill a frame)
        shown = method if method.isprintable() and len(method) <= 40 else brief(method)
        log.debug("connection %d (%s): %s refused: %s: %s", self.id, self.peer.who, shown,
                  code, message)
        return [encode_error(msgid, code, message)]

    def _violation(self, exc: ProtocolViolation) -> None:
        assert self.peer is not None
        log.info("connection %d (%s): closing it: %s", self.id, self.peer.who, exc.message)
        self._close_with(exc.code, exc.message)

    def _close_with(self, code: str, message: str) -> None:
        """Send the error notification that says why, then close."""
        assert self._transport is not None
        self._closed_why = f"{code}: {message}"
        self._write(self._transport, encode_notification("error", [code, message]))
        self._transport.close()


class _Stream:
    """A running stream: its counts so far, and whether it was asked to stop."""

    __slots__ = ("cancelled", "counts")

    def __init__(self) -> None:
        self.cancelled = False
        self.counts = {"bytes": 0, "data_bytes": 0, "hole_bytes": 0, "error_bytes": 0}

    def cancel(self) -> None:
        """Stop after the frame being written (a frame is never cut short)."""
        self.cancelled = True

    def frames(self, msgid: int, piece: Piece) -> list[Any]:
        """The notification for `piece`, counted; data goes as a head plus its buffer."""
        counts = self.counts
        if isinstance(piece, Data):
            length = len(piece.data)
            counts["data_bytes"] += length
            frames = [encode_bin_notification_head("stream.data", [msgid, piece.offset],
                                                   length), piece.data]
        elif isinstance(piece, Span):  # the head only: the bytes are sent from the source
            length = piece.length
            counts["data_bytes"] += length
            frames = [encode_bin_notification_head("stream.data", [msgid, piece.offset],
                                                   length)]
        elif isinstance(piece, Hole):
            length = piece.length
            counts["hole_bytes"] += length
            frames = [encode_notification("stream.hole", [msgid, piece.offset, length])]
        else:
            length = piece.length
            counts["error_bytes"] += length
            frames = [encode_notification("stream.error", [msgid, piece.offset, length,
                                                           piece.code, piece.message])]
        counts["bytes"] += length
        return frames


def _coalesced(frames: list[Any]) -> Iterator[Any]:
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


def _frames(msgid: int, result: Any) -> list[Any]:
    """The reply frames for a result; bytes go as a bin header plus the buffer itself."""
    if isinstance(result, BinParts):
        return [encode_bin_response_head(msgid, sum(map(len, result))), *result]
    if isinstance(result, bytes | memoryview):
        return [encode_bin_response_head(msgid, len(result)), result]
    return [encode_response(msgid, result)]
