"""Telling the server that a copy of the whole view is complete and verified
(`fetch.verified`), so that a server waiting for `finish.fetches` can end its job.

The report carries the sha256 the copy was found to have and the copy's fetch id
(kept in its resume state, so a resumed fetch is still one fetch); the server counts it
only if the digest is its own of the whole view. A copy of part of the view is not
reported. The copy is as good whatever the server answers: a refusal is one line on
stderr, not a failure of the fetch.
"""

from __future__ import annotations

import sys

from dumpd.client import Client, RemoteError
from dumpd.fetch.state import FetchState


def report_verified(client: Client, state: FetchState, sha256: str, size: int,
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
