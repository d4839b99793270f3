"""Where a fetch writes and in which format, checked and opened before any byte is
written: the output the operator named (a directory gets the source's name in it, as
`cp`), its kind, the format it gets, and for a file its resume state and record.

Design rules:
- The format follows the output unless named: an ELF copy (the view at its offsets,
  holes kept) for a file or a device, the kdump-compressed form in its flattened kind
  (`makedumpfile -F`) for a pipe or standard output. An ELF copy into a pipe is refused
  (its holes need seeking), as are a kdump file on a device and options that mean
  nothing for the format chosen: one line each, before the output is touched.
- A new or replaced file is as large as the format starts it (the view's size for
  ELF, empty for kdump); a partial copy resumed is cut back to what its state vouches
  for (ELF: the bytes up to `done`; kdump: the data area up to its cursor).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dumpd.client import RemoteError
from dumpd.codecs import Codec
from dumpd.errors import StartupError
from dumpd.fetch import output as out_mod
from dumpd.fetch.calls import Calls
from dumpd.fetch.output import STDOUT, Output, Served, blamed, look, os_error
from dumpd.fetch.record import PageMap, Record
from dumpd.fetch.state import SUFFIX, FetchState
from dumpd.fetch.wire import wire_codec

if TYPE_CHECKING:
    from dumpd.fetch import FetchRequest

FINGERPRINT = 1 << 20  # bytes of the view hashed to tell one dump from another


@dataclass(frozen=True, slots=True)
class Target:
    """The output named, resolved: `name` ("-" for stdout), what is there (`st`, None:
    nothing yet) and how it is written (`kind`: "file", "device" or "stream")."""

    name: str
    st: os.stat_result | None
    kind: str

    @property
    def shown(self) -> str:
        return "stdout" if self.name == STDOUT else self.name


@dataclass(slots=True)
class Job:
    """The opened output, the state of its copy and the record of the pages it left
    out; `state_path` None: no resume state (a stream or a device)."""

    output: Output
    state: FetchState
    state_path: str | None
    record: Record
    codec: Codec | None = None  # what the server compresses an ELF copy's stream with

    def save(self, sync: Callable[[int], None]) -> None:
        """The record's runs written (synced by `sync`), then the state saved (none to
        save without a `state_path`); SinkError names the file that failed."""
        if self.state_path is None:
            return
        with blamed(self.record.path):
            self.state.record_bytes = self.record.checkpoint(sync)
        with blamed(self.state_path):
            self.state.save(self.state_path)


@dataclass(frozen=True, slots=True)
class Chosen:
    """What a request comes to against the server's `info`: the view's range
    `[offset, end)`, the output and the format."""

    offset: int
    end: int
    where: Target
    format: str


def choose(request: FetchRequest, info: dict[str, Any]) -> Chosen:
    """The range, the output and the format `request` asks for; StartupError (Refused,
    OutputError) for what cannot be done, before any file is touched."""
    offset, end = _plan(request, info)
    where = target(request.output, info)
    ranged = (request.offset, request.length) != (0, None)
    return Chosen(offset, end, where, format_of(where, request.format, request.codec, ranged))


def _plan(request: FetchRequest, info: dict[str, Any]) -> tuple[int, int]:
    """`(offset, end)` of the range to copy; StartupError for a range or a chunk the
    server would refuse."""
    chunk, page, most = request.chunk, info["page_size"], info["max_read"]
    if chunk is not None and not (page <= chunk <= most and chunk % page == 0):
        raise StartupError(f"fetch: --chunk {chunk}: EINVAL: the server takes a multiple of "
                           f"its page size {page} in [{page}, {most}]")
    offset, length, view = request.offset, request.length, info["size"]
    if length == 0:
        raise StartupError(f"fetch: --range {offset:#x}:0: EINVAL: the range is empty")
    if offset >= view:
        raise StartupError(f"fetch: --range {offset:#x}:...: ERANGE: it starts at or past "
                           f"the end of the view ({view:#x} bytes)")
    return offset, view if length is None else min(view, offset + length)


def elf_job(client: Calls, request: FetchRequest, info: dict[str, Any], chosen: Chosen) -> Job:
    """The ELF copy `chosen` opened (resumed or new), with the codec its stream asks the
    server for (`--wire-compress`)."""
    wire = wire_codec(request.wire_compress, info, client.over_network)
    fresh = FetchState(identity(client, info), chosen.offset, chosen.end - chosen.offset,
                       done=chosen.offset)
    job = open_copy(chosen.where, info, fresh, request.resume, request.force, request.quiet)
    job.codec = wire
    return job


def default_name(info: dict[str, Any]) -> str:
    return os.path.basename(info["source"]["path"]) or "vmcore"


def target(output: str | None, info: dict[str, Any]) -> Target:
    """The output `output` names (None: the source's file name, here)."""
    served = Served.of(info)
    name = output or default_name(info)
    st = None if name == STDOUT else look(name, served)
    if st is not None and stat.S_ISDIR(st.st_mode):  # as cp: DIR/<the source's name>
        name = os.path.join(name, default_name(info))
        st = look(name, served)
    return Target(name, st, out_mod.kind_of(name, st))


def format_of(where: Target, fmt: str | None, codec: str | None, ranged: bool) -> str:
    """The format the copy gets ("elf" or "kdump"); StartupError for a combination
    that cannot be written."""
    chosen = fmt or ("kdump" if where.kind == "stream" else "elf")
    if chosen == "elf" and where.kind == "stream":
        raise StartupError(f"fetch: --format elf: {where.shown} is a pipe, and an ELF copy "
                           "needs seeking (its holes); write it to a file, or send the "
                           "kdump-compressed form (--format kdump, a pipe's default)")
    if chosen == "elf" and codec is not None:
        raise StartupError(f"fetch: --compress {codec}: only a kdump-compressed copy is "
                           "compressed (add --format kdump)")
    if chosen == "kdump" and where.kind == "device":
        raise StartupError(f"fetch: --format kdump: {where.name} is a block device; a "
                           "kdump-compressed copy goes to a regular file or a pipe")
    if chosen == "kdump" and ranged:
        raise StartupError("fetch: --range: a kdump-compressed copy holds the whole dump; "
                           "copy a range with --format elf")
    return chosen


def identity(client: Calls, info: dict[str, Any]) -> dict[str, Any]:
    """What tells this dump from another: its shape and a digest of its first MiB (the
    ELF header and notes, which differ between two crashes of one machine)."""
    try:
        head = client.digest(0, min(info["size"], FINGERPRINT))["digest"]
    except RemoteError as exc:
        if exc.code != "EIO":
            raise
        head = "unreadable"  # the same dump fails the same way
    return {"size": info["size"], "kind": info["source"]["kind"],
            "page_size": info["page_size"], "segments": info["segments"],
            "head_sha256": head}


def _check_same(state: FetchState, fresh: FetchState, path: str) -> None:
    for key, value in fresh.identity.items():
        if key == "head_sha256" and "unreadable" in (value, state.identity.get(key)):
            continue  # a range that failed before may read now: the shape must do
        if state.identity.get(key) != value:
            raise StartupError(f"{path}: the server serves a different dump now ({key} "
                               "differs); fetch again without --resume")
    was, now = _made_as(state), _made_as(fresh)
    if was != now:
        raise StartupError(f"{path}: the partial copy is {was}, not {now}: resume it with "
                           "the options it was begun with")


def _made_as(state: FetchState) -> str:
    if state.kdump is None:
        return "an ELF copy"
    zeros = ", zero pages left out" if state.kdump["zeros"] else ""
    return f"a kdump-compressed copy ({state.kdump['codec']}{zeros})"


def _sizes(state: FetchState) -> tuple[int, int]:
    """(bytes kept, size) of the partial copy `state` vouches for, reopened."""
    if state.kdump is None:
        return state.done, state.identity["size"]
    return state.kdump["cursor"], state.kdump["cursor"]


def open_copy(where: Target, info: dict[str, Any], fresh: FetchState, resume: bool,
              force: bool, quiet: bool) -> Job:
    """Check and open the output (and its resume state) as the request says; `fresh`
    is the state of a new copy."""
    served = Served.of(info)
    name, st = where.name, where.st
    if where.kind != "file":
        if resume:
            raise StartupError(f"fetch: --resume: {where.shown} is not a regular file: there "
                               "is no partial copy to resume (fetch again without --resume)")
        counted = Record(None, PageMap(info), name)  # no room for a record beside
        if where.kind == "stream":
            return Job(out_mod.stream(name, served), fresh, None, counted)
        if not force:
            raise StartupError(f"fetch: {name} is a block device; --force writes the copy "
                               "over its content")
        return Job(out_mod.device(name, served, fresh.end), fresh, None, counted)
    state_path = name + SUFFIX
    look(state_path, served)
    old = FetchState.find(state_path)
    if resume and old is not None and st is not None:
        _check_same(old, fresh, state_path)
        record = Record.beside(name, info, served, old.record_bytes, force)
        return Job(out_mod.reopen(name, served, *_sizes(old)), old, state_path, record)
    if st is not None and not force:
        if resume:
            raise StartupError(f"fetch: {name} exists but {state_path} does not: it is no "
                               "partial copy fetch can resume; --force replaces it")
        raise StartupError(f"fetch: {name} exists; --force replaces it, --resume continues "
                           "a partial copy")
    record = Record.beside(name, info, served, None, force or old is not None)
    if resume and not quiet:
        print(f"fetch: no partial copy of {name} to resume: starting a new one",
              file=sys.stderr)
    size = info["size"] if fresh.kdump is None else 0
    output = (out_mod.create(name, served, size) if st is None else
              out_mod.replace(name, served, size))
    try:
        fresh.save(state_path)
    except OSError as exc:
        output.close()
        output.remove_if_created()
        raise os_error(state_path, "save the resume state", exc) from exc
    record.drop_old()  # that of the copy replaced (--force)
    return Job(output, fresh, state_path, record)
