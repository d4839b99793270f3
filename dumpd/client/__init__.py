"""Clients for dumpd, built on `dumpd.protocol` alone.

Design rules:
- Two clients, one behaviour: `Client` (`blocking`) is the form for scripts and `dumpd
  fetch`, a plain socket, one call at a time, no event loop; `AsyncClient` (`aio`)
  pipelines many calls on one connection. What they share is written once: the typed
  calls (`_calls`), the errors (`errors`), what a stream sends back (`pieces`).
- Every byte from a server passes one validation path: `dumpd.protocol`'s decoder
  checks for frames, `pieces` for a stream's notifications and reply; the blocking
  receiver (`receiver`, with `framescan`) skips decoding payloads, no check.
- Importing this package loads no asyncio: it exports the blocking client and what
  both share. The asyncio client is imported from its own module,
  `from dumpd.client.aio import AsyncClient`, so a type checker sees the real class
  and nothing is loaded behind a name.
"""

from dumpd.client.blocking import Client, Stream
from dumpd.client.errors import RemoteError, ServerUnreachable
from dumpd.client.pieces import (
    SinkError,
    StreamData,
    StreamError,
    StreamHole,
    StreamPages,
    StreamPiece,
    StreamWritten,
)

__all__ = [
    "Client",
    "RemoteError",
    "ServerUnreachable",
    "SinkError",
    "Stream",
    "StreamData",
    "StreamError",
    "StreamHole",
    "StreamPages",
    "StreamPiece",
    "StreamWritten",
]
