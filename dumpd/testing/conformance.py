"""The conformance kit for is-RAM hook plugins (`from dumpd.testing import ...`).

Point it at an installed entry point name and the options a configuration would
give it. Two ways to use it:

- in a plugin's pytest suite, subclass `dumpd.testing.HookConformance` (the way fsspec ships
  an abstract test suite for its backends; dumpd.testing.suite) and provide a
  `hook_options` fixture (and `dump_path(options)` for a hook with `attach`):

      class TestMyHook(HookConformance):
          hook_name = "myhook"
          expected: ClassVar[dict[int, int]] = {0x100: 0, 0x200: 1}

          @pytest.fixture
          def hook_options(self, tmp_path):
              return {"file": str(write_my_data(tmp_path))}

- anywhere else, `check_plugin(name, options, ...)` runs every check and returns
  a `ConformanceReport` (with lookups per second), or raises ConformanceError
  listing what failed. `dumpd hook check NAME` is that call on the command line.

What is checked: the hook loads through its entry point in the group
`dumpd.pfn_is_ram` from an installed distribution; an unknown option is refused
with HookConfigError; `pfn_is_ram` answers exact ints (not bools) with the
right meaning for the pfns you name, the same answer twice, and `< 0` rather
than an exception for the pfns you say fail and for pfns that cannot exist;
the batched form covers each window exactly with positive run lengths and
agrees with the single form pfn by pfn; `close()` may be called twice;
`reload()` with unchanged data changes no verdict, picks up changed data, and
keeps the old data when the new is bad; for a hook with `attach` and `explain`, the
checks of dumpd.testing.attached.

This module imports no test framework: a skipped check raises
`unittest.SkipTest`, which pytest reports as a skip.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from dumpd.errors import DumpdError
from dumpd.hooks.contract import (
    ENTRY_POINT_GROUP,
    DumpMemory,
    HookConfigError,
    PfnIsRam,
    close_hook,
)
from dumpd.hooks.discovery import find_plugin, load_hook
from dumpd.hooks.pfnrange import PFN_LIMIT
from dumpd.testing.attached import (
    RecordingMemory,
    attachable,
    check_explain,
    check_reads,
    check_refusals,
    opened_dump,
)
from dumpd.testing.sampling import measure, sample_pfns, sample_windows

UNKNOWN_OPTION = "dumpd-conformance-unknown-option"
IMPOSSIBLE_PFNS = (-1, -(1 << 70), PFN_LIMIT, PFN_LIMIT + 12345)


class ConformanceError(AssertionError):
    """A hook does not meet the contract; the message names the hook and the check."""


@dataclass(slots=True)
class ConformanceReport:
    """What `check_plugin` found: the checks passed and the measured lookup rates."""

    name: str
    distribution: str
    version: str
    checks: list[str] = field(default_factory=list)
    single_per_s: float = 0.0
    batched_pfns_per_s: float | None = None  # None: no batched form
    dump_reads: int = 0  # what an attached hook read of the dump, all checks together
    dump_bytes: int = 0


def _sign(verdict: int) -> str:
    return "RAM" if verdict > 0 else "not RAM" if verdict == 0 else "error"


def fail(name: str, check: str, detail: str) -> ConformanceError:
    return ConformanceError(f"hook {name!r}: {check}: {detail}")


def entry_point(name: str, distribution: str = "") -> EntryPoint:
    """Entry point `name` of an installed distribution (`distribution`, when several
    declare it)."""
    if not any(ep.name == name for ep in entry_points(group=ENTRY_POINT_GROUP)):
        raise fail(name, "entry point", f"no entry point {name!r} in the group "
                    f"{ENTRY_POINT_GROUP!r}; is the plugin's distribution installed?")
    try:
        ep, _ = find_plugin(name, distribution)
    except HookConfigError as exc:
        raise fail(name, "entry point", str(exc)) from exc
    if ep.dist is None:
        raise fail(name, "entry point", "not declared by an installed distribution")
    return ep


def load(name: str, options: Mapping[str, object], distribution: str = "",
         dump: DumpMemory | None = None) -> PfnIsRam:
    """The hook made by entry point `name` of an installed distribution, attached to
    `dump` when it reads the dump it judges (then it needs one)."""
    entry_point(name, distribution)
    try:
        hook = load_hook(name, options, distribution, dump)
    except (HookConfigError, DumpdError) as exc:
        raise fail(name, "load", str(exc)) from exc
    if dump is None and attachable(hook):
        check_close(name, hook)
        raise fail(name, "attach", "the hook reads the dump it judges (it has attach()): "
                    "give it one to be checked on (dumpd hook check --dump FILE)")
    return hook


@contextmanager
def created(name: str, options: Mapping[str, object], distribution: str = "",
            dump: DumpMemory | None = None) -> Iterator[PfnIsRam]:
    """Hook `name` made through its entry point, closed (where it can be) on the way out."""
    hook = load(name, options, distribution, dump)
    try:
        yield hook
    finally:
        close_hook(hook)


def check_unknown_option(name: str, options: Mapping[str, object],
                         distribution: str = "") -> None:
    """The factory refuses an option it does not know, with HookConfigError."""
    factory = entry_point(name, distribution).load()
    try:
        hook = factory({**options, UNKNOWN_OPTION: 1})
    except HookConfigError:
        return
    except Exception as exc:
        raise fail(name, "options", f"an unknown option raised {type(exc).__name__}: "
                    f"{exc}; raise HookConfigError with one line instead") from exc
    close_hook(hook)
    raise fail(name, "options", f"accepted the unknown option {UNKNOWN_OPTION!r}; "
                "refuse it with HookConfigError so typos in a configuration are caught")


def ask(name: str, hook: PfnIsRam, pfn: int) -> int:
    """`hook.pfn_is_ram(pfn)`, checked to be an exact int without an exception."""
    try:
        verdict = hook.pfn_is_ram(pfn)
    except Exception as exc:
        raise fail(name, "pfn_is_ram", f"raised {type(exc).__name__}: {exc} for pfn "
                    f"{pfn:#x}; return a verdict < 0 when it cannot tell") from exc
    if type(verdict) is not int:
        raise fail(name, "pfn_is_ram", f"returned {verdict!r} ({type(verdict).__name__}) "
                    f"for pfn {pfn:#x}; return an int (> 0 RAM, 0 not RAM, < 0 error)")
    return verdict


def check_verdicts(name: str, hook: PfnIsRam, pfns: Iterable[int],
                   expected: Mapping[int, int], error_pfns: Iterable[int]) -> None:
    """Ints for every pfn, stable when asked twice, of the expected meaning."""
    for pfn, want in [*expected.items(), *((p, -1) for p in error_pfns)]:
        got = ask(name, hook, pfn)
        if _sign(got) != _sign(want):
            raise fail(name, "verdicts", f"pfn {pfn:#x} is {_sign(got)} ({got}), "
                        f"expected {_sign(want)}")
    for pfn in [*pfns, *IMPOSSIBLE_PFNS]:
        first, again = ask(name, hook, pfn), ask(name, hook, pfn)
        if _sign(first) != _sign(again):
            raise fail(name, "verdicts", f"pfn {pfn:#x} was {_sign(first)}, then "
                        f"{_sign(again)} with no reload in between")


def check_batched(name: str, hook: PfnIsRam, windows: Iterable[tuple[int, int]]) -> bool:
    """Each window's runs cover it exactly and agree with `pfn_is_ram`; False: no batched form."""
    ranged = getattr(hook, "pfn_range_is_ram", None)
    if ranged is None:
        return False
    for first, count in windows:
        where = f"pfn_range_is_ram({first:#x}, {count})"
        try:
            runs = list(ranged(first, count))
        except Exception as exc:
            raise fail(name, "batched", f"{where} raised {type(exc).__name__}: {exc}") from exc
        pos = first
        for run in runs:
            if not (isinstance(run, Sequence) and len(run) == 2):
                raise fail(name, "batched", f"{where} gave {run!r}, not (length, verdict)")
            length, verdict = run
            if type(length) is not int or length <= 0 or type(verdict) is not int:
                raise fail(name, "batched", f"{where} gave the run {run!r}; want a "
                            "positive int length and an int verdict")
            for pfn in range(pos, min(pos + length, first + count)):
                single = ask(name, hook, pfn)
                if _sign(single) != _sign(verdict):
                    raise fail(name, "batched", f"{where} says pfn {pfn:#x} is "
                                f"{_sign(verdict)}, pfn_is_ram says {_sign(single)}")
            pos += length
        if pos != first + count:
            raise fail(name, "batched", f"{where} covers {pos - first} pfns, not {count}")
    return True


def check_close(name: str, hook: PfnIsRam) -> None:
    """`close()`, where offered, runs twice without raising."""
    close = getattr(hook, "close", None)
    if close is None:
        return
    for attempt in ("first", "second"):
        try:
            close()
        except Exception as exc:
            raise fail(name, "close", f"the {attempt} close() raised "
                        f"{type(exc).__name__}: {exc}") from exc


def verdict_map(name: str, hook: PfnIsRam, pfns: Iterable[int]) -> dict[int, str]:
    """The meaning of each pfn's verdict."""
    return {pfn: _sign(ask(name, hook, pfn)) for pfn in pfns}


def check_reload(name: str, hook: PfnIsRam, pfns: Sequence[int],
                 change: Callable[[], Mapping[int, int] | None] | None = None,
                 corrupt: Callable[[], bool] | None = None) -> bool:
    """`reload()` keeps verdicts with unchanged data, takes `change()`'s new data (whose
    expected verdicts it returns), and keeps the old data when `corrupt()` broke it.
    False: the hook has no reload."""
    reload = getattr(hook, "reload", None)
    if reload is None:
        return False
    before = verdict_map(name, hook, pfns)
    _reload(name, reload, "unchanged data")
    if verdict_map(name, hook, pfns) != before:
        raise fail(name, "reload", "verdicts changed after a reload of unchanged data")
    expected = change() if change is not None else None
    if expected is not None:
        _reload(name, reload, "changed data")
        for pfn, want in expected.items():
            got = ask(name, hook, pfn)
            if _sign(got) != _sign(want):
                raise fail(name, "reload", f"after reloading changed data pfn {pfn:#x} is "
                            f"{_sign(got)}, expected {_sign(want)}")
    if corrupt is not None and corrupt():
        kept = verdict_map(name, hook, pfns)
        try:
            reload()
        except Exception:
            pass
        else:
            raise fail(name, "reload", "reloading bad data did not raise; raise "
                        "HookConfigError saying what is wrong and keep the old data")
        if verdict_map(name, hook, pfns) != kept:
            raise fail(name, "reload", "a failed reload changed verdicts; keep the old "
                        "data until the new data is complete and valid")
    return True


def _reload(name: str, reload: Callable[[], object], what: str) -> None:
    try:
        reload()
    except Exception as exc:
        raise fail(name, "reload", f"reload() of {what} raised {type(exc).__name__}: "
                    f"{exc}") from exc


def check_plugin(name: str, options: Mapping[str, object], *,
                 expected: Mapping[int, int] | None = None, error_pfns: Iterable[int] = (),
                 pfn_limit: int = 1 << 32, samples: int = 200, seed: int = 0,
                 change: Callable[[], Mapping[int, int] | None] | None = None,
                 corrupt: Callable[[], bool] | None = None,
                 measure_seconds: float = 0.25, distribution: str = "", dump: str = "",
                 clock: Callable[[], float] = time.perf_counter) -> ConformanceReport:
    """Every check on hook `name` made with `options`; raises ConformanceError on the first
    failure. `expected` maps pfns to the verdict they must have (by meaning), `error_pfns`
    must give `< 0`; pfns are sampled below `pfn_limit` (below the dump's last pfn when
    `dump` names one: the dump a hook with `attach` is attached to). `change` and
    `corrupt` (see `check_reload`) act on the hook's data for the reload checks.
    `distribution` picks the provider when several distributions declare `name`. The
    lookup rates are timed for `measure_seconds` of `clock`."""
    with ExitStack() as stack:
        memory = RecordingMemory(stack.enter_context(opened_dump(dump))) if dump else None
        if memory is not None and memory.pfn_ranges:
            pfn_limit = min(pfn_limit, memory.pfn_ranges[-1][1])
        return _check(name, options, memory, dict(expected or {}),
                      list(error_pfns), pfn_limit, samples, random.Random(seed), change,
                      corrupt, measure_seconds, distribution, clock)


def _check(name: str, options: Mapping[str, object], memory: RecordingMemory | None,
           expected: dict[int, int], error_pfns: list[int], pfn_limit: int,
           samples: int, rng: random.Random,
           change: Callable[[], Mapping[int, int] | None] | None,
           corrupt: Callable[[], bool] | None, measure_seconds: float, distribution: str,
           clock: Callable[[], float]) -> ConformanceReport:
    hook = load(name, options, distribution, memory)
    _, info = find_plugin(name, distribution)
    report = ConformanceReport(name, info.distribution, info.version, ["entry point"])
    try:
        check_unknown_option(name, options, distribution)
        report.checks.append("unknown option refused")
        if memory is not None and attachable(hook):
            factory = entry_point(name, distribution).load()
            check_refusals(name, lambda: factory(dict(options)), memory, fail)
            report.checks.append("attach")
        around = [*expected, *error_pfns]
        pfns = sample_pfns(rng, pfn_limit, around, samples)
        check_verdicts(name, hook, pfns, expected, error_pfns)
        report.checks.append("verdicts")
        windows = sample_windows(rng, pfn_limit, around, samples // 4)
        if check_batched(name, hook, windows):
            report.checks.append("batched form agrees")
        if check_explain(name, hook, windows, fail):
            report.checks.append("explain agrees")
        if memory is not None:
            check_reads(name, memory, fail)
        if check_reload(name, hook, pfns, change, corrupt):
            report.checks.append("reload")
        report.single_per_s, report.batched_pfns_per_s = measure(
            hook, rng, pfn_limit, measure_seconds, clock=clock)
    finally:
        check_close(name, hook)
    report.checks.append("close")
    if memory is not None:
        report.dump_reads, report.dump_bytes = memory.reads, memory.bytes
    return report
