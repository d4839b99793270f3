"""The record of the pages a copy left out, and why, kept beside it as
`COPY.dumpd-holes`: an investigator who finds a page of zeros in the copy reads there
whether the dump had those zeros or not.

Format (JSON lines): a header object (`"dumpd_holes": 1`: the copy, the page size,
the hook with its options, what each reason means), then one `[first_pfn, count,
reason]` per run of pfns, in the order the copy got them (the view's; ranges retried
after a read error last), then `{"pages": {reason: count}}`. Reasons: `hook:WORD`
(the hook calls the pages not RAM, and says why: `explain`), `hook` (it gives no
reason), `zero` (RAM whose bytes in the dump are all zero: `--zeros-as-holes`),
`file_hole` (the served file holds no data there), `excluded` (the served dump left
the pages out: a kdump-compressed file's pages not dumped).

Design rules:
- While the copy runs, runs are appended as its holes arrive (the stream's reasons,
  the hook's not yet asked) under a header that says `"complete": false`; each
  checkpoint of the resume state notes how many bytes of the record it vouches for,
  and a resumed fetch cuts the record back to them, as it cuts the copy back.
- Once the copy is complete, the hook is asked why (`hook.explain`, in windows of
  pfns) and the whole record is rewritten under a temporary name and renamed over
  the partial one, runs that meet or overlap joined (a run split by a checkpoint, a
  hole sent again after a resume); rewriting a complete record gives it again.
- The record is fetch's own file: one that is not a record fetch wrote is never
  overwritten, nor an old record unless `--force` replaces the copy it belongs to.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import tempfile
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import IO, Any, Literal

from dumpd.client import RemoteError
from dumpd.errors import StartupError
from dumpd.fetch.calls import Calls
from dumpd.fetch.output import Served, look, no_sync
from dumpd.sources.base import Segment, build_file_map

SUFFIX = ".dumpd-holes"
MAGIC = "dumpd_holes"
EXPLAIN_PFNS = 1 << 20  # pfns asked of `hook.explain` at once (the server's maximum)
EXPLAIN_GAP = 1024  # pfns between two runs that one `hook.explain` still covers
HELD_MAX = 1 << 20  # bytes of runs held before a checkpoint writes them
MEANING = {
    "hook:WORD": "the hook calls these pages not RAM, for the reason WORD; never read",
    "hook": "the hook calls these pages not RAM (it gives no reason); never read",
    "zero": "RAM whose bytes in the dump are all zero (--zeros-as-holes)",
    "file_hole": "the served file holds no data for these pages (a hole of its own)",
    "excluded": "the served dump left these pages out (a kdump-compressed file's pages not "
                "dumped: makedumpfile's dump level); never read",
}
Run = list[Any]
"""`[first_pfn, count, reason]`."""


class PageMap:
    """Which pfns the bytes of the file view hold (the first PT_LOAD wins), from `info`."""

    def __init__(self, info: dict[str, Any]) -> None:
        segments = [Segment(*seg) for seg in info["segments"]]
        self.page_size: int = info["page_size"]
        self._runs = build_file_map(segments, info["size"])
        self._starts = [run.file_start for run in self._runs]

    def pfns(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """`(first_pfn, count)` of the pages file bytes `[offset, offset+length)` hold."""
        ps, end = self.page_size, offset + length
        i = max(0, bisect_right(self._starts, offset) - 1)
        while i < len(self._runs) and self._runs[i].file_start < end:
            run = self._runs[i]
            lo, hi = max(offset, run.file_start), min(end, run.file_end)
            if lo < hi and run.paddr is not None:
                first = (run.paddr + lo - run.file_start) // ps
                yield first, (run.paddr + hi - run.file_start - 1) // ps + 1 - first
            i += 1


class Record:
    """The runs left out of one copy: on disk at `path` (None: an output with no room
    for it beside, a stream or a device: only counted), and counted by stream reason."""

    def __init__(self, path: str | None, pages: PageMap, copy: str) -> None:
        self.path = path
        self.pages = pages
        self.copy = copy
        self.counts: dict[str, int] = {}  # pages by the stream's reason, this run
        self.vouched = 0  # bytes of the record a checkpoint vouched for
        self.note: str | None = None  # why the record has no reasons of the hook ("": it
        # gives none), if so
        self._ours = False  # a record fetch wrote is at `path` (it may be rewritten)
        self._file: IO[bytes] | None = None
        self._pending: Run | None = None
        self._lines = bytearray()  # runs not written yet

    @classmethod
    def beside(cls, copy: str, info: dict[str, Any], served: Served,
               resume_bytes: int | None, force: bool) -> Record:
        """The record of the copy at `copy` (resumed when `resume_bytes`: what its
        state vouches for), once checked that fetch may write it (`check`)."""
        path = copy + SUFFIX
        look(path, served)
        cls.check(path, resume_bytes, force)
        record = cls(path, PageMap(info), os.path.basename(copy))
        if resume_bytes is not None:
            record.resume(resume_bytes)
        return record

    @classmethod
    def check(cls, path: str, resume_bytes: int | None, force: bool) -> None:
        """Refuse (StartupError) a record at `path` fetch may not write over: any file
        that is not a record, a record when neither resumed (`resume_bytes`: the
        bytes its state vouches for) nor replaced (`force`)."""
        try:
            header = _header(path)
        except FileNotFoundError:
            return
        if header is None:
            raise StartupError(f"fetch: {path} exists and is not a record fetch wrote; "
                               "move it away")
        if resume_bytes is None and not force:
            raise StartupError(f"fetch: {path} exists (the record of another copy); move "
                               "it away, or --force replaces it with the copy")

    def resume(self, vouched: int) -> None:
        """Continue the record left by a fetch that stopped: cut back to what its last
        checkpoint vouched for (a complete record stays as it is)."""
        assert self.path is not None
        try:
            header = _header(self.path)
            held = os.path.getsize(self.path)
        except FileNotFoundError:
            header, held = None, None
        if (held or 0) < vouched:
            raise StartupError(f"fetch: {self.path} holds less than the partial copy's state "
                               "counts on: the record is lost; fetch again without --resume")
        if held is None:  # none was begun yet
            return
        self._ours = True  # `check` refused anything but a record
        if header is not None and header.get("complete"):
            self.vouched = held
            return
        os.truncate(self.path, vouched)
        self.vouched = vouched

    def drop_old(self) -> None:
        """Remove the record of the copy `--force` replaces."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def add(self, offset: int, length: int, reason: str) -> None:
        """Note the hole `[offset, offset+length)` of the view, left out for `reason`
        (held: `lines` takes it for the file)."""
        for first, count in self.pages.pfns(offset, length):
            pending = self._pending
            if pending is not None and pending[2] == reason and (
                    pending[0] <= first <= pending[0] + pending[1]):
                grown = max(pending[0] + pending[1], first + count) - pending[0]
                self.counts[reason] = self.counts.get(reason, 0) + grown - pending[1]
                pending[1] = grown
                continue
            self._hold_pending()
            self._pending = [first, count, reason]
            self.counts[reason] = self.counts.get(reason, 0) + count

    @property
    def full(self) -> bool:
        """Whether the runs held should be written now (a checkpoint writes them)."""
        return len(self._lines) >= HELD_MAX

    def lines(self) -> bytes:
        """The runs held, the one still growing included, taken for the record's file."""
        self._hold_pending()
        out, self._lines = bytes(self._lines), bytearray()
        return out

    def _hold_pending(self) -> None:
        if self._pending is not None and self.path is not None:
            self._lines += _line(self._pending)
        self._pending = None

    def opening(self) -> tuple[int, Literal["ab", "wb"], bytes]:
        """How the record's file is first opened: its `os.open` flags, its mode, and
        what starts it. Past what a checkpoint vouched for it is appended to; else it
        is made anew with its header, over fetch's own record only (never over a file
        that appeared meanwhile)."""
        if self.vouched:
            return os.O_WRONLY | os.O_APPEND, "ab", b""
        new = os.O_TRUNC if self._ours else os.O_EXCL
        return os.O_WRONLY | os.O_CREAT | new, "wb", _line({
            MAGIC: 1, "complete": False, "copy": self.copy, "page_size": self.pages.page_size})

    def checkpoint(self, sync: Callable[[int], None]) -> int:
        """Write what is held (synced as the copy is); the bytes now vouched for."""
        lines = self.lines()
        if lines and self._file is None:
            assert self.path is not None
            flags, mode, head = self.opening()
            self._file = os.fdopen(os.open(self.path, flags, 0o600), mode)
            self._file.write(head)
        if self._file is not None:
            self._file.write(lines)
            self._file.flush()
            sync(self._file.fileno())
            self.vouched = self._file.tell()
        return self.vouched

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def counted(self) -> dict[str, int]:
        """The pages this run left out, by reason (the hook's not asked for)."""
        return {("hook" if r == "not_ram" else r): n for r, n in self.counts.items()}

    def finish(self, client: Calls, info: dict[str, Any]) -> dict[str, int]:
        """Rewrite the record of a complete copy with the hook's reasons; its pages by
        final reason. OSError when the record cannot be written."""
        self.checkpoint(no_sync)
        self.close()
        if self.path is None or not self.vouched:
            return self.counted()
        explainer = _Explainer(client, info)
        header = {MAGIC: 1, "complete": True, "copy": self.copy,
                  "source": info["source"]["path"], "page_size": self.pages.page_size,
                  "hook": info.get("hook"), "hook_options": info.get("hook_options"),
                  "hook_generation": info.get("hook_generation"), "reasons": MEANING}
        totals: dict[str, int] = {}
        fd, temp = tempfile.mkstemp(prefix=f"{os.path.basename(self.path)}.", suffix=".tmp",
                                    dir=os.path.dirname(self.path) or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(json.dumps(header) + "\n")
                last: Run | None = None
                for run in itertools.chain(explainer.explained(self._runs()), [None]):
                    if run is not None and last is not None and last[2] == run[2] and (
                            last[0] <= run[0] <= sum(last[:2])):
                        last[1] = max(sum(last[:2]), sum(run[:2])) - last[0]
                        continue  # split by a checkpoint, or sent again after a resume
                    if last is not None:
                        out.write(json.dumps(last) + "\n")
                        totals[last[2]] = totals.get(last[2], 0) + last[1]
                    last = run
                out.write(json.dumps({"pages": totals}) + "\n")
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self.note = explainer.note
        return totals

    def _runs(self) -> Iterator[Run]:
        assert self.path is not None
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise OSError(errno.EINVAL, f"line {number} is not JSON ({exc}); "
                                  "move the record away and fetch again") from exc
                if isinstance(item, list):
                    yield item


class _Explainer:
    """The hook's reasons for the runs the stream called not RAM: one `hook.explain`
    for the not-RAM runs that lie close together (within `EXPLAIN_GAP` pfns, at most
    `EXPLAIN_PFNS` in all), the runs between them held back meanwhile."""

    def __init__(self, client: Calls, info: dict[str, Any]) -> None:
        self._client = client
        self._generation = info.get("hook_generation")
        self.note: str | None = None  # why the record has no reasons of the hook ("": it
        # gives none)

    def explained(self, runs: Iterator[Run]) -> Iterator[Run]:
        """`runs` in order, each `not_ram` run split by the hook's reasons."""
        held: list[Run] = []
        span: tuple[int, int] | None = None  # pfns of the not-RAM runs held
        for run in runs:
            first, end = run[0], run[0] + run[1]
            if run[2] == "not_ram":
                if span is not None and not (
                        span[1] <= first <= span[1] + EXPLAIN_GAP
                        and end - span[0] <= EXPLAIN_PFNS):
                    yield from self._split(held, span)
                    held, span = [], None
                span = (first, end) if span is None else (span[0], end)
            held.append(run)
            if span is None:
                yield from held
                held = []
        if held:
            yield from self._split(held, span)

    def _split(self, held: list[Run], span: tuple[int, int] | None) -> Iterator[Run]:
        reasons = self._ask(*span) if span is not None else []
        for first, count, reason in held:
            if reason != "not_ram":
                yield [first, count, reason]
                continue
            if not reasons:
                yield [first, count, "hook"]
                continue
            pos = span[0] if span is not None else first
            for length, word in reasons:  # the hook's runs over the span, in order
                lo, hi = max(first, pos), min(first + count, pos + length)
                if lo < hi:
                    yield [lo, hi - lo, f"hook:{word}" if word else "hook"]
                pos += length

    def _ask(self, first: int, end: int) -> list[list[Any]]:
        """The hook's `[length, word]` runs over pfns `[first, end)`; [] (and `note`
        set) once it cannot say."""
        runs: list[list[Any]] = []
        for pos in range(first, end, EXPLAIN_PFNS):
            if self.note is not None:
                return []
            try:
                reply = self._client.hook_explain(pos, min(EXPLAIN_PFNS, end - pos))
            except RemoteError as exc:  # ENOSYS: it gives none ("hook" says so)
                self.note = "" if exc.code == "ENOSYS" else (
                    f"the hook could not give its reasons ({exc})")
                return []
            if reply.get("hook_generation") != self._generation:
                self.note = "the hook changed during the copy: its reasons may not hold"
                return []
            runs += reply["runs"]
        return runs


def _header(path: str) -> dict[str, Any] | None:
    """The header of the record at `path`; None: not a record. FileNotFoundError when
    nothing is there."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline(4096)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError):
        return None
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return header if isinstance(header, dict) and header.get(MAGIC) == 1 else None


def _line(item: object) -> bytes:
    return (json.dumps(item) + "\n").encode()
