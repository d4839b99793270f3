"""The conformance kit's checks of what a hook does with the dump it reads
(`attach`) and of its `explain` (see dumpd.hooks.contract).

What is checked: a hook with `attach` is given a dump (it cannot be judged without
one); attached to a dump without VMCOREINFO, or whose every read fails, it either
works or refuses in one line (HookConfigError or DumpdError), never another
exception; attached to the dump it is checked on, its reads stay in the pfn ranges
the dump holds and are counted (bytes read per pfn judged is in the report);
`explain` covers each window exactly with positive runs of short words, "" exactly
where the verdict is not "not RAM".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from dumpd.errors import DumpdError
from dumpd.hooks.contract import DumpMemory, HookConfigError, PfnIsRam, close_hook
from dumpd.sources import open_source
from dumpd.sources.physical import SourceMemory


class RecordingMemory:
    """A `DumpMemory` that counts what the hook reads, and can fail every read (EIO)
    or hide the VMCOREINFO."""

    def __init__(self, memory: DumpMemory, *, fail: bool = False,
                 vmcoreinfo: bool = True) -> None:
        self._memory = memory
        self.fail = fail
        self._vmcoreinfo = vmcoreinfo
        self.reads = 0
        self.bytes = 0
        self.outside: list[tuple[int, int]] = []  # reads the dump's pfn ranges do not hold

    @property
    def page_size(self) -> int:
        return self._memory.page_size

    @property
    def vmcoreinfo(self) -> str | None:
        return self._memory.vmcoreinfo if self._vmcoreinfo else None

    @property
    def arch(self) -> str:
        return self._memory.arch

    @property
    def pfn_ranges(self) -> Sequence[tuple[int, int]]:
        return self._memory.pfn_ranges

    def read_phys(self, paddr: int, length: int) -> bytes:
        self.reads += 1
        self.bytes += length
        if self.fail:
            raise DumpdError("EIO", f"conformance: the read of {length} bytes at "
                             f"{paddr:#x} failed")
        page = self.page_size
        first, end = paddr // page, -(-(paddr + length) // page)
        if not any(lo <= first and end <= hi for lo, hi in self.pfn_ranges):
            self.outside.append((paddr, length))
        return self._memory.read_phys(paddr, length)


@contextmanager
def opened_dump(path: str) -> Iterator[DumpMemory]:
    """The dump at `path` (ELF or raw, as `dumpd serve` opens it) as hooks read it."""
    source = open_source(path)
    try:
        yield SourceMemory(source)
    finally:
        source.close()


def attachable(hook: PfnIsRam) -> bool:
    return callable(getattr(hook, "attach", None))


def _one_line(name: str, fail: Callable[[str, str, str], AssertionError], what: str,
              exc: BaseException) -> None:
    text = str(exc)
    if not isinstance(exc, HookConfigError | DumpdError):
        raise fail(name, "attach", f"attached to {what}, it raised {type(exc).__name__}: "
                   f"{text}; refuse with HookConfigError or DumpdError instead") from exc
    if not text or "\n" in text:
        raise fail(name, "attach", f"attached to {what}, its refusal is not one line: "
                   f"{text!r}")


def check_refusals(name: str, make: Callable[[], PfnIsRam], dump: DumpMemory,
                   fail: Callable[[str, str, str], AssertionError]) -> None:
    """Attached to the dump without its VMCOREINFO, and to one whose reads all fail,
    the hook works or refuses in one line (and a refused hook is closed)."""
    for what, memory in (("a dump without VMCOREINFO", RecordingMemory(dump, vmcoreinfo=False)),
                         ("a dump whose every read fails", RecordingMemory(dump, fail=True))):
        hook = make()
        try:
            hook.attach(memory)  # type: ignore[attr-defined]
        except Exception as exc:
            _one_line(name, fail, what, exc)
        finally:
            close_hook(hook)


def check_reads(name: str, memory: RecordingMemory,
                fail: Callable[[str, str, str], AssertionError]) -> None:
    """Every read the attached hook made is in the dump's pfn ranges."""
    if memory.outside:
        paddr, length = memory.outside[0]
        raise fail(name, "attach", f"{len(memory.outside)} reads outside the dump's memory, "
                   f"the first {length} bytes at {paddr:#x}: read only pfn_ranges")


def check_explain(name: str, hook: PfnIsRam, windows: Iterable[tuple[int, int]],
                  fail: Callable[[str, str, str], AssertionError]) -> bool:
    """`explain` covers each window with positive runs; its reason is "" exactly where
    the verdict is not 0. False when the hook has no `explain`."""
    explain = getattr(hook, "explain", None)
    if not callable(explain):
        return False
    for first, count in windows:
        pfn = first
        for length, reason in explain(first, count):
            if not (isinstance(length, int) and length > 0 and isinstance(reason, str)):
                raise fail(name, "explain", f"explain({first:#x}, {count}) gave run "
                           f"{(length, reason)!r}; runs are (positive int, str)")
            if reason != reason.strip() or " " in reason or len(reason) > 32:
                raise fail(name, "explain", f"reason {reason!r} is not a short word")
            for p in (pfn, pfn + length - 1):
                verdict = hook.pfn_is_ram(p)
                if (verdict == 0) != (reason != ""):
                    raise fail(name, "explain", f"pfn {p:#x}: verdict {verdict} but reason "
                               f"{reason!r} (\"\" exactly where the verdict is not 0)")
            pfn += length
        if pfn != first + count:
            raise fail(name, "explain", f"explain({first:#x}, {count}) covered "
                       f"{pfn - first} pfns")
    return True
