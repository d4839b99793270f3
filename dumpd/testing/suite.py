"""The conformance kit as a pytest suite to subclass (`dumpd.testing.HookConformance`):
each check of `dumpd.testing.conformance` one test. It imports no test framework: a
skipped check raises `unittest.SkipTest`, which pytest reports as a skip."""

from __future__ import annotations

import random
import unittest
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from types import MappingProxyType
from typing import Any, ClassVar

from dumpd.hooks.contract import PfnIsRam
from dumpd.testing.attached import (
    RecordingMemory,
    check_explain,
    check_reads,
    check_refusals,
    opened_dump,
)
from dumpd.testing.conformance import (
    check_batched,
    check_close,
    check_reload,
    check_unknown_option,
    check_verdicts,
    created,
    entry_point,
    fail,
)
from dumpd.testing.sampling import sample_pfns, sample_windows


class HookConformance:
    """The kit as a pytest suite: subclass it, set `hook_name`, provide `hook_options`.

    Optional class attributes: `expected` (pfn -> verdict by meaning), `error_pfns`
    (pfns whose verdict must be < 0), `pfn_limit` (where random pfns are drawn),
    `hook_distribution` (the provider, when several distributions declare the name).
    Optional methods, for the reload checks: `change_data(options)` rewrites the
    hook's data and returns the verdicts now expected; `corrupt_data(options)` makes
    the data bad and returns True.
    """

    hook_name: ClassVar[str] = ""
    hook_distribution: ClassVar[str] = ""
    expected: ClassVar[Mapping[int, int]] = MappingProxyType({})
    error_pfns: ClassVar[Sequence[int]] = ()
    pfn_limit: ClassVar[int] = 1 << 32

    def change_data(self, options: Mapping[str, object]) -> Mapping[int, int] | None:
        return None

    def corrupt_data(self, options: Mapping[str, object]) -> bool:
        return False

    def dump_path(self, options: Mapping[str, object]) -> str | None:
        """The dump a hook with `attach` is attached to (None: the hook has no attach)."""
        return None

    @contextmanager
    def _hook(self, options: Mapping[str, object]) -> Iterator[PfnIsRam]:
        if not self.hook_name:
            raise unittest.SkipTest("HookConformance subclasses set hook_name")
        path = self.dump_path(options)
        with ExitStack() as stack:
            memory = stack.enter_context(opened_dump(path)) if path else None
            yield stack.enter_context(created(self.hook_name, options,
                                              self.hook_distribution, memory))

    def test_loads_through_entry_point_and_closes_twice(self, hook_options: dict[str, Any]
                                                        ) -> None:
        with self._hook(hook_options) as hook:
            check_close(self.hook_name, hook)

    def test_refuses_unknown_option(self, hook_options: dict[str, Any]) -> None:
        with self._hook(hook_options):
            check_unknown_option(self.hook_name, hook_options, self.hook_distribution)

    def test_attach(self, hook_options: dict[str, Any]) -> None:
        path = self.dump_path(hook_options)
        if not path:
            raise unittest.SkipTest(f"hook {self.hook_name!r} reads no dump (no attach)")
        factory = entry_point(self.hook_name, self.hook_distribution).load()
        with opened_dump(path) as dump:
            memory = RecordingMemory(dump)
            with created(self.hook_name, hook_options, self.hook_distribution, memory) as hook:
                check_refusals(self.hook_name, lambda: factory(dict(hook_options)), dump, fail)
                pfns = sample_pfns(random.Random(4), self.pfn_limit, self.expected, 100)
                check_verdicts(self.hook_name, hook, pfns, self.expected, self.error_pfns)
            check_reads(self.hook_name, memory, fail)

    def test_verdicts(self, hook_options: dict[str, Any]) -> None:
        with self._hook(hook_options) as hook:
            pfns = sample_pfns(random.Random(1), self.pfn_limit, self.expected, 200)
            check_verdicts(self.hook_name, hook, pfns, self.expected, self.error_pfns)

    def test_batched_agrees_with_single(self, hook_options: dict[str, Any]) -> None:
        around = [*self.expected, *self.error_pfns]
        windows = sample_windows(random.Random(2), self.pfn_limit, around, 50)
        with self._hook(hook_options) as hook:
            if not check_batched(self.hook_name, hook, windows):
                raise unittest.SkipTest(f"hook {self.hook_name!r} has no batched form")

    def test_explain(self, hook_options: dict[str, Any]) -> None:
        around = [*self.expected, *self.error_pfns]
        windows = sample_windows(random.Random(5), self.pfn_limit, around, 50)
        with self._hook(hook_options) as hook:
            if not check_explain(self.hook_name, hook, windows, fail):
                raise unittest.SkipTest(f"hook {self.hook_name!r} has no explain")

    def test_reload(self, hook_options: dict[str, Any]) -> None:
        pfns = sample_pfns(random.Random(3), self.pfn_limit, self.expected, 100)
        with self._hook(hook_options) as hook:
            if not check_reload(self.hook_name, hook, pfns,
                                lambda: self.change_data(hook_options),
                                lambda: self.corrupt_data(hook_options)):
                raise unittest.SkipTest(f"hook {self.hook_name!r} has no reload")
