"""What a partial copy needs to be resumed: which dump, which range, how far, what failed.

Kept beside the copy as `COPY.dumpd-fetch` (JSON). It is written only after the bytes
it vouches for were written to the copy (and synced, with --fsync), to a temporary
file renamed over the old one, so a crash at any moment leaves a state that never
claims more than the copy holds. A file there that is not a state fetch wrote is
never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from dumpd.errors import StartupError

SUFFIX = ".dumpd-fetch"
VERSION = 1
KDUMP: dict[str, type | tuple[type, ...]] = {
    "codec": str, "zeros": bool, "dumped": int, "next_pfn": int, "rank": int, "cursor": int,
    "zero": (list, type(None))}
"""The fields of a kdump-compressed copy's state and their types."""


def _is_kdump(value: object) -> bool:
    return isinstance(value, dict) and value.keys() == KDUMP.keys() and all(
        isinstance(value[key], kind) and (kind is not int or type(value[key]) is int)
        for key, kind in KDUMP.items())


@dataclass(slots=True)
class FetchState:
    """A copy of `[offset, offset+length)` of the dump `identity`, done up to `done`
    (an absolute offset) except for the `errors` ranges `[offset, length, code, message]`;
    `record_bytes` of the record of the pages it left out (`COPY.dumpd-holes`) hold
    for it.
    `fetch_id` names this copy to the server (`fetch.verified`) across resumes, so one
    fetch counts once; a state saved before it existed gets a new one.
    `kdump` is that of a kdump-compressed copy (None: an ELF one): its codec, whether
    zero pages are left out, and where its pages stand (`dumpd.fetch.kdump`)."""

    identity: dict[str, Any]
    offset: int
    length: int
    done: int
    errors: list[list[Any]] = field(default_factory=list)
    record_bytes: int = 0
    fetch_id: str = field(default_factory=lambda: secrets.token_hex(16))
    kdump: dict[str, Any] | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def todo(self) -> list[tuple[int, int]]:
        """`(offset, length)` ranges still to fetch: the failed ones, then the rest."""
        ranges = [(int(e[0]), int(e[1])) for e in self.errors]
        if self.done < self.end:
            ranges.append((self.done, self.end - self.done))
        return ranges

    @contextlib.contextmanager
    def retrying(self, entry: list[Any]) -> Iterator[None]:
        """While the failed range `entry` is fetched again it is no longer listed; if that
        does not get to its end, it is owed again as before."""
        kept = list(self.errors)
        self.errors.remove(entry)
        try:
            yield
        except BaseException:
            self.errors = kept
            raise

    def text(self) -> str:
        """The state as its file holds it."""
        return json.dumps({"version": VERSION, **asdict(self)})

    def save(self, path: str) -> None:
        """Replace the state file at `path` atomically (after the data it describes).

        The temporary file has a name of its own (O_EXCL, mode 0600) beside `path` and
        is removed again if anything fails; OSError says why.
        """
        fd, temp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.", suffix=".tmp",
                                    dir=os.path.dirname(path) or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(self.text())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    @classmethod
    def find(cls, path: str) -> FetchState | None:
        """The state at `path`, None when there is none; StartupError when something
        else is there (it is not fetch's to overwrite)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StartupError(f"{path}: cannot look at the resume state: "
                               f"{exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise StartupError(f"{path}: not a resume state (not a regular file); "
                               "move it away")
        return cls.load(path)

    @classmethod
    def load(cls, path: str) -> FetchState:
        """The state at `path`; StartupError says why it cannot be used."""
        try:
            with open(path, encoding="utf-8") as src:
                raw = json.load(src)
        except FileNotFoundError:
            raise StartupError(f"{path}: no partial copy to resume") from None
        except (OSError, ValueError) as exc:
            raise StartupError(f"{path}: unreadable resume state ({exc}); move it "
                               "away") from exc
        try:
            if raw.pop("version") != VERSION:
                raise ValueError("unknown version")
            state = cls(**raw)
            if not (isinstance(state.identity, dict) and
                    all(type(v) is int for v in (state.offset, state.length, state.done,
                                                  state.record_bytes))
                    and type(state.fetch_id) is str
                    and (state.kdump is None or _is_kdump(state.kdump))):
                raise ValueError("wrong field types")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StartupError(f"{path}: unreadable resume state ({exc}); move it "
                               "away") from exc
        return state
