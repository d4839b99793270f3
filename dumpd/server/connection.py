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
- Streams (`streams.py`) share the connection with replies frame by frame.
- At most `max_connections` connections are served at once: the next one gets an
  `EBUSY` error notification and is closed. An idle connection (`deadlines.py`)
  gets `ETIMEDOUT` and is closed; one whose output has not moved for
  `send_timeout` is aborted (its client does not read, so a notification could not
  reach it), which cancels its requests and streams and frees their budget.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from dumpd.engine.spans import SpanSender
from dumpd.errors import DumpdError
from dumpd.protocol import (
    FrameDecoder,
    InvalidRequest,
    Limits,
    Notification,
    ProtocolViolation,
    Request,
    encode_notification,
)
from dumpd.server.budget import ByteBudget
from dumpd.server.deadlines import Deadlines, LoopClock
from dumpd.server.dispatch import NOT_READY, Dispatcher, Peer
from dumpd.server.frames import WRITE_SLICE, coalesced, error_frames, refusal, reply_frames
from dumpd.server.shared import ConnectionLimits, Shared
from dumpd.server.streams import Streams

log = logging.getLogger("dumpd.server")

FEED_SLICE = 16 * 1024  # bytes decoded at a time, so queued requests stay few
UNREAD_MAX = 64 * 1024  # undecoded bytes kept while replies wait to drain (streams only)


class RpcConnection(asyncio.Protocol):
    """asyncio protocol serving msgpack-RPC requests from one client."""

    def __init__(self, dispatcher: Dispatcher, spans: SpanSender, limits: ConnectionLimits,
                 shared: Shared, authorize: Callable[[asyncio.BaseTransport], Peer | str]
                 ) -> None:
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
        clock = limits.clock or LoopClock()
        self._deadlines = Deadlines(self, clock, limits.idle_timeout, limits.send_timeout)
        # The sendfile thread's clock: loop.time() is not safe from a thread (uvloop).
        thread_clock = time.monotonic if limits.clock is None else limits.clock.time
        self._streams = Streams(limits.max_streams, limits.sendfile, limits.send_timeout,
                                thread_clock, shared.compression, shared.reply_budget)
        self._spans = spans
        self._drained = asyncio.Event()
        self._drained.set()
        self.writing = asyncio.Lock()  # one reply at a time: slices must not interleave
        self._reading = True
        self._closing_when_idle = False
        self._corked: list[Any] | None = None  # replies of this _pump, written at its end
        self._corked_bytes = 0
        self._transport: asyncio.Transport | None = None
        self._written = 0  # bytes handed to the transport, to tell whether output moves
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
        self._transport.set_write_buffer_limits(high=self._limits.write_buffer)
        self.id = next(self._shared.ids)
        verdict = self._authorize(transport)
        if isinstance(verdict, str):
            self._close_with("EACCES", verdict)
            return
        refused = self._shared.admit(self, verdict.who)  # EBUSY, or ESHUTDOWN: finishing
        if refused is not None:
            self._close_with(*refused)
            return
        self.peer = verdict
        log.debug("connection %d (%s) opened", self.id, verdict.who)
        self._deadlines.opened()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            return
        self._unread += data
        self._deadlines.received()
        self._pump()

    def eof_received(self) -> bool:
        # The client is done asking: answer what it asked, then close. TLS has no
        # half-close (its transport closes now whatever this returns): say so.
        tls = self._transport is not None and self._transport.get_extra_info("sslcontext")
        self.close_when_idle()
        return not tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._deadlines.close()
        for task in self._tasks:
            task.cancel()
        self._queue.clear()
        self._unread.clear()
        self._drained.set()
        self._shared.closed(self)
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
        if (not isinstance(event, Request) or self._corked is None or self.writing.locked()
                or not self._drained.is_set() or event.msgid in self._msgids):
            return False
        assert self.peer is not None
        try:
            result = self._dispatcher.call_now(self.peer, event.method, event.params)
            if result is NOT_READY:
                return False
            frames = reply_frames(event.msgid, result)
        except Exception as exc:
            frames = self._error_frames(event, exc)
        self._corked.extend(frames)
        self._corked_bytes += sum(map(len, frames))
        if self._corked_bytes >= WRITE_SLICE:
            self._uncork()
            self._corked = []
        return True

    def _uncork(self) -> None:
        """Write the replies answered at once in one go, unjoined: one system call for a
        burst of pipelined requests instead of one each (asyncio's loop joins them)."""
        corked, size = self._corked, self._corked_bytes
        self._corked, self._corked_bytes = None, 0
        if corked and self._transport is not None and not self._transport.is_closing():
            self._written += size
            self._transport.writelines(corked)

    def _write(self, transport: asyncio.Transport, data: bytes | memoryview) -> None:
        self._written += len(data)
        transport.write(data)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._deadlines.finished()
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

    # -- what the deadlines and streams look at ------------------------------------

    def output(self) -> tuple[int, int] | None:
        """(bytes handed to the transport, bytes it still holds); None once closing."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        return self._written, transport.get_write_buffer_size()

    def socket(self) -> tuple[socket.socket, bool] | None:
        """The connection's socket, and whether it is a plain one (not TLS)."""
        transport = self._transport
        sock = transport and transport.get_extra_info("socket")
        return None if not transport or sock is None else (
            cast(socket.socket, sock), not transport.get_extra_info("sslcontext"))

    def idle_out(self) -> None:
        self._shared.idle_timeouts += 1
        self._close_with("ETIMEDOUT", f"idle for {self._limits.idle_timeout:g} s")

    def send_timed_out(self) -> None:
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
            await self.send(self._refusal(event.msgid, "a request", event.code, event.message))
            return
        msgid = event.msgid
        if msgid in self._msgids:
            await self.send(self._refusal(msgid, event.method, "EINVAL",
                                           f"msgid {msgid} is already in use"))
            return
        assert self.peer is not None
        self._msgids.add(msgid)
        method = self._dispatcher.methods.get(event.method)
        if method is not None and method.streams:
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
                await self.send(frames)
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
            result = await self._dispatcher.call(self.peer, event.method, event.params,
                                                 self._streams)
            return reply_frames(event.msgid, result)
        except Exception as exc:
            return self._error_frames(event, exc)

    async def _stream(self, event: Request) -> None:
        """Send the pieces of a `stream` request as notifications, then its summary."""
        assert self.peer is not None
        peer, streams = self.peer, self._streams
        try:
            frames = await streams.serve(self, event.msgid, lambda: self._dispatcher.call(
                peer, event.method, event.params, streams), self._spans)
        except DumpdError as exc:
            frames = self._error_frames(event, exc)
        if frames is not None:
            await self.send(frames)

    async def send(self, frames: list[Any]) -> None:
        """Write `frames` in slices, waiting for the transport to drain between them, so
        a large reply goes to the socket from its own buffer instead of being copied
        into the transport's; runs of small frames go out joined, one system call each."""
        async with self.writing:
            total = sum(map(len, frames))
            if (len(frames) > 2 and total <= self._limits.write_batch
                    and all(len(frame) < WRITE_SLICE for frame in frames)):
                # Many small frames (a stream's pieces between holes): one vectored write
                # where the loop has it (uvloop), one joined write where it does not.
                transport = self._transport
                if transport is not None and not transport.is_closing():
                    self._written += total
                    transport.writelines(frames)
                    await self._drained.wait()
                return
            for frame in coalesced(frames):
                view = memoryview(frame)
                for pos in range(0, len(view), WRITE_SLICE):
                    transport = self._transport
                    if transport is None or transport.is_closing():
                        return
                    self._write(transport, view[pos : pos + WRITE_SLICE])
                    await self._drained.wait()

    def _error_frames(self, event: Request, exc: Exception) -> list[Any]:
        assert self.peer is not None  # requests are read from served connections only
        return error_frames(event, exc, self.id, self.peer.who)

    def _refusal(self, msgid: int, method: str, code: str, message: str) -> list[Any]:
        assert self.peer is not None
        return refusal(msgid, method, code, message, self.id, self.peer.who)

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

