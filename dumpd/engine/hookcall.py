"""Asking the registered hook for verdicts, off the event loop, with a timeout.

Hooks run on one dedicated thread (never concurrently), in one hop per batch of
pfn ranges. A call that raises, returns a non-int or takes longer than the
timeout gives the error verdict for its pfns, as the kernel treats `< 0`: the
page is read. A call that hangs cannot be interrupted in Python; the loop stops
waiting for it once no call has completed for `timeout` seconds and the rest of
the batch counts as timed out. Until the hung call returns, later asks are
answered with errors at once instead of queueing behind it. `reload` and `explain`
run on the same thread, one at a time with the verdict calls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from dumpd.engine.counters import Counters
from dumpd.engine.verdicts import Stored, code_of
from dumpd.errors import DumpdError
from dumpd.hooks.contract import HookConfigError, PfnIsRam
from dumpd.ratelog import RateLimitedLog

MAX_REASON = 32  # characters of a reason word `explain` gives

T = TypeVar("T")


class NoAnswer(DumpdError):
    """A call on the hook's thread did not return within its timeout (EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__("EIO", message)


Answer = tuple[int, int, Stored]
"""`(first_pfn, end_pfn, code)` as the hook answered it."""


class _Batch:
    """One hop's worth of calls; shared between the hook thread and the loop."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.answers: list[Answer] = []
        self.calls_done = 0
        self.abandoned = False  # the loop stopped waiting for it
        self.finished = False  # the hook thread is done with it
        self.lock = threading.Lock()


class HookCaller:
    """Runs one registered hook's calls; one instance per registration."""

    def __init__(
        self, name: str, hook: PfnIsRam, timeout: float, counters: Counters,
        ratelog: RateLimitedLog,
    ) -> None:
        self.name = name
        self._hook = hook
        self._ranged = getattr(hook, "pfn_range_is_ram", None)
        self._timeout = timeout
        self._counters = counters
        self._ratelog = ratelog
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"dumpd-hook-{name}")
        self._timeouts_lock = threading.Lock()
        self._closed = False
        self._stuck = False  # a call the loop gave up on has not returned yet

    async def ask(self, ranges: list[tuple[int, int]]) -> list[Answer]:
        """Verdict runs for each `[first, end)` pfn range, in order, covering them exactly."""
        if self._closed:  # unregistered before this read got to ask: every pfn is RAM now
            return [(first, end, Stored.RAM) for first, end in ranges]
        if self._stuck:  # do not queue behind a hung call: answer errors (read) at once
            self._counters.hook_stuck_asks += 1
            return self._error_rest(ranges, [], "is still stuck in an earlier call")
        batch = _Batch(ranges)
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._run, batch)
        while True:
            seen = batch.calls_done
            try:
                await asyncio.wait_for(asyncio.shield(future), self._timeout)
                return batch.answers
            except TimeoutError:
                with batch.lock:
                    if batch.calls_done != seen:
                        continue
                    batch.abandoned = True
                    self._stuck = not batch.finished
                    answers = list(batch.answers)
                future.add_done_callback(lambda f: f.exception())
                self._count_timeout()
                return self._error_rest(ranges, answers, f"gave no answer within "
                                                         f"{self._timeout}s")

    def _check_usable(self) -> None:
        """EIO for a call the hook cannot take now: unregistered, or stuck in a call."""
        if self._closed or self._stuck:
            raise DumpdError("EIO", f"hook {self.name!r} is "
                             f"{'unregistered' if self._closed else 'stuck in an earlier call'}")

    async def _once(self, call: Callable[[], T], timeout: float, what: str) -> T:
        """`call()` on the hook's thread; EIO after `timeout` seconds without an answer,
        and asks answered with errors until the call returns (it cannot be stopped)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._stuck = True
            future.add_done_callback(self._unstick)
            raise NoAnswer(f"hook {self.name!r} {what} gave no answer within {timeout}s; "
                           "it keeps running") from None

    async def reload(self, timeout: float) -> None:
        """Run the hook's `reload()` on its thread; DumpdError says why it failed (the
        caller logs the outcome, once)."""
        reload = getattr(self._hook, "reload", None)
        if not callable(reload):
            raise DumpdError("ENOSYS", f"hook {self.name!r} has no data to reload")
        self._check_usable()
        try:
            await self._once(reload, timeout, "reload")
        except NoAnswer:
            raise
        except HookConfigError as exc:
            raise DumpdError("EINVAL", f"reload failed, old data kept: {exc}") from exc
        except Exception as exc:
            raise DumpdError("EIO", f"reload failed, old data kept: "
                             f"{type(exc).__name__}: {exc}") from exc

    async def explain(self, first: int, count: int) -> list[tuple[int, str]]:
        """The hook's `(length, reason)` runs for pfns `[first, first+count)`, checked,
        from its thread; ENOSYS when it cannot explain, EIO when it failed (raised, a
        malformed answer, no answer within the timeout)."""
        explain = getattr(self._hook, "explain", None)
        if not callable(explain):
            raise DumpdError("ENOSYS", f"hook {self.name!r} does not explain its verdicts")
        self._check_usable()

        def call() -> list[tuple[int, str]]:
            return _explained(explain(first, count), first, count)

        try:
            return await self._once(call, self._timeout, "explain")
        except NoAnswer:
            raise
        except Exception as exc:
            raise DumpdError("EIO", f"hook {self.name!r} explain failed: "
                             f"{type(exc).__name__}: {exc}") from exc

    def _unstick(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()
        self._stuck = False

    def _error_rest(self, ranges: list[tuple[int, int]], answers: list[Answer],
                    why: str) -> list[Answer]:
        """`answers` completed with error verdicts for every pfn they do not cover."""
        # Answers come in order over sorted, disjoint ranges, so they cover a prefix.
        answered = answers[-1][1] if answers else -1
        rest = [
            (max(first, answered), end, Stored.ERROR) for first, end in ranges if end > answered
        ]
        pfns = sum(end - first for first, end, _ in rest)
        self._ratelog.warning(
            "timeout", f"hook {self.name!r} {why}; {pfns} pfns count as errors and are read"
        )
        return answers + rest

    def _run(self, batch: _Batch) -> None:
        try:
            self._run_calls(batch)
        finally:
            with batch.lock:
                batch.finished = True
                if batch.abandoned:
                    self._stuck = False  # the hung call came back: ask the hook again

    def _run_calls(self, batch: _Batch) -> None:
        for first, end in batch.ranges:
            if batch.abandoned:  # given up on while it waited or ran: call nothing more
                return
            if self._ranged is not None:
                self._call_ranged(batch, first, end)
            else:
                for pfn in range(first, end):
                    if not self._call_single(batch, pfn):
                        return

    def _call_single(self, batch: _Batch, pfn: int) -> bool:
        started = time.monotonic()
        try:
            verdict = self._hook.pfn_is_ram(pfn)
            if batch.abandoned:  # the loop gave up on this call and counted it
                return False
            code = self._judge(verdict, time.monotonic() - started, pfn, 1)
        except Exception as exc:
            code = self._failed(exc, pfn, 1)
        return self._record(batch, [(pfn, pfn + 1, code)], 1)

    def _call_ranged(self, batch: _Batch, first: int, end: int) -> None:
        assert self._ranged is not None
        started = time.monotonic()
        answers: list[Answer] = []
        try:
            runs: Iterable[tuple[int, int]] = self._ranged(first, end - first)
            if batch.abandoned:  # the loop gave up on this call and counted it
                return
            pos = first
            for length, verdict in runs:
                if type(length) is not int or length <= 0 or pos + length > end:
                    raise ValueError(f"bad run length {length!r} at pfn {pos:#x}")
                code = self._judge(verdict, time.monotonic() - started, pos, length)
                answers.append((pos, pos + length, code))
                pos += length
            if pos < end:
                raise ValueError(f"runs stop at pfn {pos:#x}, before {end:#x}")
        except Exception as exc:
            pos = answers[-1][1] if answers else first
            answers.append((pos, end, self._failed(exc, pos, end - pos)))
        self._record(batch, answers, end - first)

    def _judge(self, verdict: object, elapsed: float, pfn: int, count: int) -> Stored:
        if type(verdict) is not int:
            self._counters.hook_bad_results += 1
            self._ratelog.warning(
                "bad", f"hook {self.name!r} returned {type(verdict).__name__} for pfn {pfn:#x}"
            )
            return Stored.ERROR
        if elapsed > self._timeout:
            self._count_timeout()
            self._ratelog.warning(
                "slow", f"hook {self.name!r} took {elapsed:.3f}s for pfn {pfn:#x}+{count}"
            )
            return Stored.ERROR
        code = code_of(verdict)
        if code is Stored.ERROR:
            self._counters.hook_errors += count
        return code

    def _count_timeout(self) -> None:
        # The only hook counter written from both sides: the loop when it gives up on a
        # call, the hook thread when a call returns late.
        with self._timeouts_lock:
            self._counters.hook_timeouts += 1

    def _failed(self, exc: Exception, pfn: int, count: int) -> Stored:
        self._counters.hook_exceptions += 1
        self._ratelog.warning(
            "raise", f"hook {self.name!r} raised {type(exc).__name__}: {exc} (pfn {pfn:#x})"
        )
        return Stored.ERROR

    def _record(self, batch: _Batch, answers: list[Answer], pfns: int) -> bool:
        with batch.lock:
            if batch.abandoned:
                return False
            batch.answers.extend(answers)
            batch.calls_done += 1
            self._counters.hook_calls += 1
            self._counters.pfns_asked += pfns
        return True

    def close(self) -> None:
        """Close the hook (if it can be) after the calls already queued, then the thread."""
        self._closed = True
        closer = getattr(self._hook, "close", None)
        if callable(closer):
            self._executor.submit(closer)
        self._executor.shutdown(wait=False)


def _explained(runs: Iterable[tuple[int, str]], first: int, count: int
               ) -> list[tuple[int, str]]:
    """`runs` as a list, checked to cover `count` pfns from `first` with short words;
    ValueError says what is wrong."""
    out: list[tuple[int, str]] = []
    pos, end = first, first + count
    for length, reason in runs:
        if type(length) is not int or length <= 0 or pos + length > end:
            raise ValueError(f"bad run length {length!r} at pfn {pos:#x}")
        if type(reason) is not str or len(reason) > MAX_REASON:
            raise ValueError(f"reason at pfn {pos:#x} must be a str of at most "
                             f"{MAX_REASON} characters")
        if out and out[-1][1] == reason:
            out[-1] = (out[-1][0] + length, reason)
        else:
            out.append((length, reason))
        pos += length
    if pos < end:
        raise ValueError(f"runs stop at pfn {pos:#x}, before {end:#x}")
    return out
