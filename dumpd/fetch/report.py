"""`fetch --verify`: the copy checked against the server's digest of the view, and
then the server told that a copy of the whole view is complete and verified
(`fetch.verified`), so that a server waiting for `finish.fetches` can end its job.

The report carries the sha256 the copy was found to have and the copy's fetch id
(kept in its resume state, so a resumed fetch is still one fetch); the server counts it
only if the digest is its own of the whole view. A copy of part of the view is not
reported. The copy is as good whatever the server answers: a refusal is one line on
stderr, not a failure of the fetch.
"""

from __future__ import annotations

import sys
from typing import Any

from dumpd.client import RemoteError, SinkError
from dumpd.fetch.calls import Calls
from dumpd.fetch.output import Output
from dumpd.fetch.state import FetchState


def say_incomplete(errors: list[list[Any]], zeros: str, again: str) -> None:
    """On stderr: the ranges a copy could not read (`zeros`: what stands in for them in
    the copy) and what the operator can do (`again`)."""
    print(f"dumpd: the copy is incomplete: {len(errors)} ranges could not be read "
          f"({zeros} in the copy):", file=sys.stderr)
    for offset, length, code, message, *_ in errors:
        print(f"  {offset:#x}+{length:#x} {code}: {message}", file=sys.stderr)
    print(again, file=sys.stderr)


def say_stopped(exc: BaseException, name: str, at: str, total: str, space: str,
                saved: str) -> int:
    """On stderr: why a copy stopped at `at` (of `total`), and what is saved (`saved`);
    for a full disk, what it still needs (`space`). The exit status: 130 for an
    interrupt, else 1."""
    if isinstance(exc, SinkError):
        print(f"dumpd: fetch: {exc.filename or name}: {exc.strerror}{space}; {saved}",
              file=sys.stderr)
        return 1
    if not isinstance(exc, Exception):  # KeyboardInterrupt, a task cancelled
        print(f"dumpd: fetch interrupted at {at}; {saved}", file=sys.stderr)
        return 130
    print(f"dumpd: fetch stopped at {at} of {total}: {exc}; {saved}", file=sys.stderr)
    return 1


def saved_note(state_path: str | None, failure: SinkError | None) -> str:
    """What the operator can do next, once the checkpoint was saved (`failure`: why it
    could not be); a copy without a resume state (a pipe, a device) is fetched again."""
    if state_path is None:
        return "fetch again for a complete copy"
    if failure is not None:
        return (f"{state_path} could not be updated ({failure.strerror}): --resume "
                "continues from its last checkpoint")
    return "run the same command with --resume to continue"


def report_verified(client: Calls, state: FetchState, sha256: str, size: int,
                    quiet: bool) -> None:
    """Report `state`'s copy, of sha256 `sha256`, if it covers the whole view of `size`
    bytes; a server without the method (an older one) is left alone."""
    if state.offset != 0 or state.end != size:
        return
    try:
        reply = client.fetch_verified(state.fetch_id, sha256)
    except RemoteError as exc:
        if exc.code != "ENOSYS":
            print(f"dumpd: fetch: the server did not count this fetch as verified: {exc}",
                  file=sys.stderr)
        return
    if not quiet and reply.get("needed"):
        print(f"fetch: verified fetch {reply['fetches']} of the {reply['needed']} the server "
              "waits for (finish.fetches)", file=sys.stderr)


def changed(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """What of the served dump changed between two `info` replies (None: nothing):
    its shape, or the source file itself (another file, or written: mtime_ns)."""
    for key in ("size", "page_size", "segments"):
        if before.get(key) != after.get(key):
            return key
    for key in ("kind", "device", "inode", "rdev", "mtime_ns"):
        if before["source"].get(key) != after["source"].get(key):
            return key
    return None


def verify(client: Calls, info: dict[str, Any], out: Output, state: FetchState,
           quiet: bool) -> int:
    """The ELF copy as it is on disk against the server's digest of the view now, and
    the dump now against the dump the copy started from; a match is reported
    (`report_verified`). 0 when they match, else 1 (said on stderr)."""
    what = changed(info, client.info())
    if what is not None:
        print(f"dumpd: verify: the served dump changed during the copy ({what} differs): "
              f"{out.name} cannot equal it", file=sys.stderr)
        return 1
    remote = client.digest(state.offset, state.length)["digest"]
    local = out.sha256(state.offset, state.end)
    if local != remote:
        print(f"dumpd: verify: {out.name} differs from the server's view (sha256 "
              f"{local} != {remote})", file=sys.stderr)
        return 1
    if not quiet:
        print(f"verify: sha256 {remote} matches", file=sys.stderr)
    report_verified(client, state, local, info["size"], quiet)
    return 0

