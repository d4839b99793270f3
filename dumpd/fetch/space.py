"""What an ELF copy that ran out of room still needs: the note `dumpd fetch` adds to a
full file system's (or quota's) error, so the operator knows how much space to make."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from dumpd.client.pieces import SinkError
from dumpd.errors import DumpdError
from dumpd.fetch import output as out_mod
from dumpd.fetch.calls import Calls
from dumpd.fetch.output import NO_SPACE, Output
from dumpd.fetch.progress import size
from dumpd.fetch.state import FetchState

EXTENTS_STEP = 1 << 30  # the largest range `extents` answers at once
Opener = Callable[[], AbstractContextManager[Calls]]


def space_note(opener: Opener, out: Output, state: FetchState,
               exc: SinkError) -> str:
    """For a full file system or quota: what is still needed, what is on disk, what is
    free; else nothing."""
    if exc.errno not in NO_SPACE:
        return ""
    free = out_mod.free_space(out.fd)
    free_text = "unknown" if free is None else size(free)
    ram = _ram_left(opener, state.todo())
    need = (f"up to {size(sum(n for _, n in state.todo()))}" if ram is None else
            f"{size(ram)} of RAM pages")
    held = out_mod.allocated(out.fd)
    return (f" ({need} still to write, {'unknown' if held is None else size(held)} on disk "
            f"already, {free_text} free)")


def _ram_left(opener: Opener, todo: list[tuple[int, int]]) -> int | None:
    """RAM bytes of the view in `todo`, asked of the server on a connection of its own
    (the copy's is in the middle of a stream); None if it cannot say."""
    total = 0
    try:
        with opener() as client:
            for offset, length in todo:
                for pos in range(offset, offset + length, EXTENTS_STEP):
                    step = min(EXTENTS_STEP, offset + length - pos)
                    total += sum(n for _, n, kind in client.extents(pos, step)
                                 if kind == "data")
    except (OSError, DumpdError):
        return None
    return total
