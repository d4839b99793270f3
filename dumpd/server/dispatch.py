"""From a request to an engine call: the method table, argument checks, limits.

Design rules:
- One table (`Dispatcher.methods`) holds every method: its handler, its arity, who
  may call it (administrators only, or anyone) and whether it streams. A request is
  checked against its entry (ENOSYS, EINVAL, EACCES, in that order) before its
  handler runs; the connection asks the table whether a method streams.
- Each method checks its own arguments (EINVAL, E2BIG) before touching the engine,
  and states its reply-size bound (`cost`) so the connection can reserve reply bytes
  before doing the work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dumpd import PROTOCOL_VERSION, __version__
from dumpd.bootid import boot_id
from dumpd.codecs import Codec, available, codec
from dumpd.engine import Engine
from dumpd.engine.bulk import BulkReader, digest
from dumpd.errors import DumpdError
from dumpd.hooks.contract import HookConfigError, close_hook
from dumpd.hooks.discovery import load_plugin
from dumpd.protocol import brief, integral
from dumpd.server.finish import Finish, View
from dumpd.server.params import as_bool, as_options, as_str, as_uint

log = logging.getLogger("dumpd.server")

SMALL_REPLY = 64 * 1024
NOT_READY = object()  # `call_now` cannot answer without waiting
MAX_EXTENTS_LENGTH = 1 << 30
EXTENT_ENTRY_BYTES = 24
STREAM_CHUNK = 1 << 20  # bytes per stream.data frame unless the client asks otherwise
MAX_FETCH_ID = 64  # characters of a `fetch.verified` fetch id
MAX_EXPLAIN = 1 << 20  # pfns one `hook.explain` may ask about
STREAM_OPTIONS = ("chunk", "compress", "zeros_as_holes")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request: uid from SO_PEERCRED (None over TCP), admin rights, and how
    the log names the peer (`uid 0 pid 1234`, `tcp 127.0.0.1:5000`)."""

    uid: int | None
    admin: bool
    who: str


class RunningStreams(Protocol):
    """The streams running on the connection a request came on."""

    def cancel(self, msgid: int) -> bool:
        """Stop the stream of request `msgid`; False when none runs."""


Handler = Callable[[Peer, Sequence[Any], RunningStreams], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Method:
    """One entry of the method table."""

    handler: Handler
    arity: int
    optional: int = 0  # trailing parameters a caller may leave out
    admin: bool = False  # administrators only (EACCES for anyone else)
    streams: bool = False  # answered by `stream.*` notifications and a summary: the
    # handler returns the `BulkReader` the connection runs


@dataclass(frozen=True, slots=True)
class Streamed:
    """What a `stream` request runs: its reader, and the codec its data frames are
    compressed with (None: sent as they are), page by page of `page_size` bytes;
    `footprint`: the view bytes it holds when it reads (its read-ahead and the chunk
    being sent)."""

    reader: BulkReader
    codec: Codec | None
    page_size: int
    footprint: int


class BinParts(list[bytes | memoryview]):
    """A binary result held in several buffers: it goes out as one bin object
    written from those buffers, never joined into a copy."""



class Dispatcher:
    """Maps method names to engine calls; knows no sockets."""

    def __init__(self, engine: Engine, max_read: int, live: Callable[[], Mapping[str, int]],
                 stream_window: int = 4 << 20, *, finish: Finish) -> None:
        self.engine = engine
        self.finish = finish
        self.max_read = max_read
        self.stream_window = stream_window
        self._live = live
        self._started = time.monotonic()
        self._boot_id = boot_id()  # read once: it names this boot
        self.methods: Mapping[str, Method] = {
            "info": Method(self._info, 0),
            "read": Method(self._read, 2),
            "read_phys": Method(self._read_phys, 2),
            "read_virt": Method(self._read_virt, 2),
            "vmcoreinfo": Method(self._vmcoreinfo, 0),
            "extents": Method(self._extents, 2),
            "digest": Method(self._digest, 3),
            "stats": Method(self._stats, 0),
            "stream": Method(self._stream, 3, streams=True),
            "stream.cancel": Method(self._cancel, 1),
            "hook.register": Method(self._register, 2, optional=1, admin=True),
            "hook.unregister": Method(self._unregister, 0, admin=True),
            "hook.reload": Method(self._reload, 0, admin=True),
            "hook.explain": Method(self._explain, 2),
            "done": Method(self._done, 0, optional=1, admin=True),
            "fetch.verified": Method(self._verified, 2),
        }
        self._now = {"info": self._info_now, "stats": self._stats_now}

    def cost(self, method: str, params: Sequence[Any]) -> int:
        """Upper bound of the bytes a call holds at once (its reply; a digest's read-ahead),
        reserved in the connection's reply budget before it runs."""
        length = integral(params[1]) if len(params) == 2 else None
        if method in ("read", "read_phys", "read_virt") and length is not None:
            return max(0, min(length, self.max_read))
        if method == "extents" and length is not None:
            pages = max(0, min(length, MAX_EXTENTS_LENGTH)) // self.engine.page_size + 2
            return pages * EXTENT_ENTRY_BYTES
        if method == "vmcoreinfo":  # the kernel's text: a page, at most VMCOREINFO_MAX
            return max(SMALL_REPLY, len(self.engine.source.vmcoreinfo_text or ""))
        if method == "digest":  # its window of chunks read ahead, and the one being hashed
            return max(STREAM_CHUNK, self.stream_window) + STREAM_CHUNK
        return SMALL_REPLY

    async def call(self, peer: Peer, method: str, params: Sequence[Any],
                   streams: RunningStreams) -> Any:
        """The result of `method(*params)` (a `BulkReader` for a method that streams),
        or DumpdError with a stable code; `streams`: those of the caller's connection."""
        entry = self.methods.get(method)
        if entry is None:
            raise DumpdError("ENOSYS", f"no method {brief(method)}")
        arity, optional = entry.arity, entry.optional
        if not arity <= len(params) <= arity + optional:
            takes = f"{arity} or {arity + optional}" if optional else str(arity)
            noun = "parameter" if takes == "1" else "parameters"
            raise DumpdError("EINVAL", f"{method} takes {takes} {noun}, got {len(params)}")
        if entry.admin and not peer.admin:
            raise DumpdError("EACCES", f"{method} is for administrators only")
        return await entry.handler(peer, params, streams)

    def call_now(self, peer: Peer, method: str, params: Sequence[Any]) -> Any:
        """The result if it is at hand without waiting (a read of a cached page, info,
        stats), else NOT_READY; argument errors raise DumpdError as `call` does."""
        if method == "read" and len(params) == 2:
            data = self.engine.read_now(*self._range(params, "offset"))
            return NOT_READY if data is None else data
        if method in ("info", "stats") and not params:
            return self._now[method]()
        return NOT_READY

    def _range(self, params: Sequence[Any], start: str) -> tuple[int, int]:
        """`(start, length)` of a read: unsigned ints, length at most `max_read`."""
        first = as_uint(params[0], start)
        length = as_uint(params[1], "length")
        if length > self.max_read:
            raise DumpdError("E2BIG", f"length {length} is above the maximum {self.max_read}")
        return first, length

    async def _info(self, peer: Peer, params: Sequence[Any],
                    streams: RunningStreams) -> dict[str, Any]:
        return self._info_now()

    def _info_now(self) -> dict[str, Any]:
        source = self.engine.source
        st = source.stat()
        described: dict[str, Any] = {"kind": source.kind, "path": source.path,
                                     "device": st.st_dev, "inode": st.st_ino,
                                     "rdev": st.st_rdev, "mtime_ns": st.st_mtime_ns,
                                     "read_path": source.read_path}
        if self._boot_id is not None:
            described["boot_id"] = self._boot_id
        current = self.engine.slot.current
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "source": described,
            "size": source.size,
            "page_size": source.page_size,
            "segments": [[s.paddr, s.file_offset, s.filesz, s.memsz] for s in source.segments],
            "hook": self.engine.hook_name,
            "hook_options": dict(current.options) if current else None,
            "hook_generation": self.engine.slot.generation,
            "max_read": self.max_read,
            "finish": self.finish.status(),
            "kernel": self.engine.kernel.context(),
            "codecs": available(),
        }

    async def _read(self, peer: Peer, params: Sequence[Any], streams: RunningStreams) -> BinParts:
        return BinParts(await self.engine.read_parts(*self._range(params, "offset")))

    async def _read_phys(self, peer: Peer, params: Sequence[Any], streams: RunningStreams
                         ) -> BinParts:
        return BinParts(await self.engine.read_phys_parts(*self._range(params, "paddr")))

    async def _read_virt(self, peer: Peer, params: Sequence[Any], streams: RunningStreams) -> bytes:
        return await self.engine.read_virt(*self._range(params, "vaddr"))

    async def _vmcoreinfo(self, peer: Peer, params: Sequence[Any],
                          streams: RunningStreams) -> str:
        return self.engine.kernel.vmcoreinfo()

    async def _extents(self, peer: Peer, params: Sequence[Any],
                       streams: RunningStreams) -> list[Sequence[Any]]:
        offset = as_uint(params[0], "offset")
        length = as_uint(params[1], "length")
        if length > MAX_EXTENTS_LENGTH:
            raise DumpdError(
                "E2BIG", f"length {length} is above the extents maximum {MAX_EXTENTS_LENGTH}")
        return [list(extent) for extent in await self.engine.extents(offset, length)]

    async def _digest(self, peer: Peer, params: Sequence[Any],
                      streams: RunningStreams) -> dict[str, Any]:
        offset = as_uint(params[0], "offset")
        length = as_uint(params[1], "length")
        algorithm = as_str(params[2], "algorithm")
        size = self.engine.source.size
        end = min(size, offset + length)
        view = self._view()
        value = await digest(self.engine, offset, length, algorithm, STREAM_CHUNK,
                             self.stream_window)
        if self._view() == view:  # neither the hook nor the source changed meanwhile
            self.finish.digested(view, offset == 0 and end == size, algorithm, value)
        return {"algorithm": algorithm, "digest": value, "offset": offset,
                "length": max(0, end - offset)}

    async def _stream(self, peer: Peer, params: Sequence[Any],
                      streams: RunningStreams) -> Streamed:
        """The pieces a `stream [offset, length, options]` request sends; EINVAL when its
        arguments are wrong, ENOSYS for a codec this server cannot load. The caller
        sets `spans` on its reader to send RAM runs itself."""
        offset = as_uint(params[0], "offset")
        length = as_uint(params[1], "length")
        options = as_options(params[2], "stream", STREAM_OPTIONS)
        zeros = as_bool(options.get("zeros_as_holes", False), "zeros_as_holes")
        asked = options.get("chunk", min(STREAM_CHUNK, self.max_read))
        chunk = integral(asked)
        page = self.engine.page_size
        if chunk is None or not page <= chunk <= self.max_read or chunk % page:
            raise DumpdError("EINVAL", f"chunk must be a multiple of {page} in [{page}, "
                             f"{self.max_read}], got {asked!r}")
        method = options.get("compress")
        found = None if method is None else codec(as_str(method, "compress"))
        window = max(chunk, self.stream_window)
        return Streamed(BulkReader(self.engine, offset, length, chunk, window, zeros=zeros),
                        found, page, window + chunk)

    async def _explain(self, peer: Peer, params: Sequence[Any],
                       streams: RunningStreams) -> dict[str, Any]:
        """Why the registered hook calls pages not RAM: its `explain` runs for a pfn
        range, on its thread."""
        first = as_uint(params[0], "first_pfn")
        count = as_uint(params[1], "count")
        if count > MAX_EXPLAIN:
            raise DumpdError("E2BIG", f"count {count} is above the maximum {MAX_EXPLAIN}")
        name = self.engine.hook_name
        generation, runs = await self.engine.explain(first, count)
        return {"hook": name, "hook_generation": generation,
                "runs": [[length, reason] for length, reason in runs]}

    async def _cancel(self, peer: Peer, params: Sequence[Any],
                      streams: RunningStreams) -> dict[str, bool]:
        return {"cancelled": streams.cancel(as_uint(params[0], "msgid"))}

    async def _stats(self, peer: Peer, params: Sequence[Any],
                     streams: RunningStreams) -> dict[str, Any]:
        return self._stats_now()

    def _stats_now(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self.engine.counters.as_dict())
        stats["uptime"] = round(time.monotonic() - self._started, 3)
        stats.update(self._live())
        stats["hook"] = self.engine.hook_name
        return stats

    def _view(self) -> View:
        """What the view's bytes depend on besides the dump: the hook's generation and
        the source's mtime (a saved vmcore may be written over)."""
        return self.engine.slot.generation, self.engine.source.stat().st_mtime_ns

    async def _done(self, peer: Peer, params: Sequence[Any],
                    streams: RunningStreams) -> dict[str, Any]:
        options = as_options(params[0] if params else None, "done", ("now",))
        return self.finish.done(peer.who, as_bool(options.get("now", False), "now"))

    async def _verified(self, peer: Peer, params: Sequence[Any],
                        streams: RunningStreams) -> dict[str, Any]:
        fetch_id = as_str(params[0], "fetch_id")
        sha256 = as_str(params[1], "sha256")
        if not 0 < len(fetch_id) <= MAX_FETCH_ID:
            raise DumpdError("EINVAL", f"fetch_id must be 1 to {MAX_FETCH_ID} characters")
        return self.finish.verified(fetch_id, sha256, self._view(), peer.who)

    async def _register(self, peer: Peer, params: Sequence[Any],
                        streams: RunningStreams) -> dict[str, Any]:
        name, options, distribution = (*params, "")[:3]
        if not (isinstance(name, str) and isinstance(options, dict)
                and isinstance(distribution, str)):
            raise DumpdError("EINVAL", "hook.register takes [name: str, options: map] or "
                             "[name: str, options: map, distribution: str]")
        if self.engine.hook_name is not None:  # fail fast, before loading anything
            raise DumpdError(
                "EBUSY", f"hook {self.engine.hook_name!r} is registered; unregister it first")
        try:
            hook, plugin = await asyncio.to_thread(load_plugin, name, options, distribution,
                                                   self.engine.dump_memory)
        except HookConfigError as exc:
            raise DumpdError("EINVAL", str(exc)) from exc
        try:
            self.engine.register_hook(name, hook, options)
        except DumpdError:  # another register won the slot while this one loaded
            close_hook(hook)
            raise
        log.info("hook %s (%s) registered with options %r, asked by %s", name,
                 plugin.provider, options, peer.who)
        return {"hook": name}

    async def _unregister(self, peer: Peer, params: Sequence[Any],
                          streams: RunningStreams) -> dict[str, Any]:
        name = self.engine.unregister_hook()
        if name is None:
            log.info("no hook is registered: nothing to unregister, asked by %s", peer.who)
        else:
            log.info("hook %s unregistered, asked by %s", name, peer.who)
        return {"hook": name}

    async def _reload(self, peer: Peer, params: Sequence[Any],
                      streams: RunningStreams) -> dict[str, Any]:
        generation = await reload_hook(self.engine, peer.who)
        return {"hook": self.engine.hook_name, "hook_generation": generation}


async def reload_hook(engine: Engine, who: str) -> int:
    """Have the registered hook reload its data (`hook.reload`, SIGHUP); returns the new
    generation. The outcome is logged in one line naming `who` asked: an error only
    when a reload failed (no data to reload, or no hook, is not one)."""
    name = engine.hook_name
    try:
        generation = await engine.reload_hook()
    except DumpdError as exc:
        if name is None:
            log.info("no hook is registered: nothing to reload, asked by %s", who)
        elif exc.code == "ENOSYS":
            log.info("hook %s has no data to reload, asked by %s", name, who)
        else:
            log.error("hook %s: %s, asked by %s", name, exc.message, who)
        raise
    log.info("hook %s reloaded its data (generation %d), asked by %s", name, generation, who)
    return generation
