"""What a partial copy needs to be resumed: which dump, which range, how far, what failed.

Kept beside the copy as `COPY.dumpd-fetch` (JSON). It is written only after the bytes
it vouches for were written to the copy (and synced, with --fsync), to a temporary
file renamed over the old one, so a crash at any moment leaves a state that never
claims more than the copy holds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from dumpd.errors import StartupError

SUFFIX = ".dumpd-fetch"
VERSION = 1


@dataclass(slots=True)
class FetchState:
    """A copy of `[offset, offset+length)` of the dump `identity`, done up to `done`
    (an absolute offset) except for the `errors` ranges `[offset, length, code, message]`."""

    identity: dict[str, Any]
    offset: int
    length: int
    done: int
    errors: list[list[Any]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def todo(self) -> list[tuple[int, int]]:
        """`(offset, length)` ranges still to fetch: the failed ones, then the rest."""
        ranges = [(int(e[0]), int(e[1])) for e in self.errors]
        if self.done < self.end:
            ranges.append((self.done, self.end - self.done))
        return ranges

    def save(self, path: str) -> None:
        """Replace the state file at `path` atomically (after the data it describes)."""
        temp = f"{path}.tmp"
        with open(temp, "w", encoding="utf-8") as out:
            json.dump({"version": VERSION, **asdict(self)}, out)
        os.replace(temp, path)

    @classmethod
    def load(cls, path: str) -> FetchState:
        """The state at `path`; StartupError says why it cannot be used."""
        try:
            with open(path, encoding="utf-8") as src:
                raw = json.load(src)
        except FileNotFoundError:
            raise StartupError(f"{path}: no partial copy to resume (fetch without "
                               "--resume to start one)") from None
        except (OSError, ValueError) as exc:
            raise StartupError(f"{path}: unreadable resume state: {exc}") from exc
        try:
            if raw.pop("version") != VERSION:
                raise ValueError("unknown version")
            state = cls(**raw)
            if not (isinstance(state.identity, dict) and
                    all(type(v) is int for v in (state.offset, state.length, state.done))):
                raise ValueError("wrong field types")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StartupError(f"{path}: unreadable resume state: {exc}") from exc
        return state
