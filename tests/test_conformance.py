"""The plugin conformance kit (dumpd.testing): `none` passes it, and each kind of broken
plugin fails it with a message naming the hook, the check and what to do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dumpd import __version__
from dumpd.testing import ConformanceError, ConformanceReport, HookConformance, check_plugin
from tests.plugindist import write_distribution

BROKEN = '''
from dumpd.hooks.contract import HookConfigError


def _strict(options):
    if options:
        raise HookConfigError("broken: no options")


class Good:
    """Pfns 0x100-0x1ff are not RAM, 0x300 fails; everything else is RAM."""

    def pfn_is_ram(self, pfn):
        if pfn == 0x300:
            return -1
        return 0 if 0x100 <= pfn < 0x200 else 1

    def pfn_range_is_ram(self, first, count):
        return [(1, self.pfn_is_ram(pfn)) for pfn in range(first, first + count)]


class Single:
    def pfn_is_ram(self, pfn):
        return Good.pfn_is_ram(self, pfn)


class Raises(Good):
    def pfn_is_ram(self, pfn):
        if pfn == 0x300:
            raise OSError(5, "backend gone")
        return super().pfn_is_ram(pfn)


class Bools(Good):
    def pfn_is_ram(self, pfn):
        return True


class ShortRuns(Good):
    def pfn_range_is_ram(self, first, count):
        runs = super().pfn_range_is_ram(first, count)
        return runs[:-1] if count > 1 else runs


class Disagrees(Good):
    def pfn_range_is_ram(self, first, count):
        return [(count, 1)] if count else []


class BadReload(Good):
    def reload(self):
        pass


class CloseOnce(Good):
    closed = False

    def close(self):
        if self.closed:
            raise RuntimeError("closed twice")
        self.closed = True


def factory(cls):
    def create(options):
        _strict(options)
        return cls()
    return create


good = factory(Good)
single = factory(Single)
raises = factory(Raises)
bools = factory(Bools)
short_runs = factory(ShortRuns)
disagrees = factory(Disagrees)
bad_reload = factory(BadReload)
close_once = factory(CloseOnce)


def lax(options):
    return Good()


def typo(options):
    return Good(options["nope"])
'''

NAMES = ("good", "single", "raises", "bools", "short_runs", "disagrees", "bad_reload", "close_once",
         "lax", "typo")
KNOWN = {0x100: 0, 0x1FF: 0, 0x200: 1, 0x0: 1}


@pytest.fixture
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The distribution `broken-hooks`, entry points `broken-<name>`, on sys.path."""
    root = write_distribution(tmp_path / "site", "broken-hooks", "broken_hooks", BROKEN,
                              {f"broken-{n}": f"broken_hooks:{n}" for n in NAMES})
    monkeypatch.syspath_prepend(str(root))
    return root


def check(name: str, **kwargs: Any) -> str:
    """The message of the ConformanceError the kit raises for hook `name`."""
    with pytest.raises(ConformanceError) as caught:
        check_plugin(name, {}, expected=KNOWN, error_pfns=[0x300], measure_seconds=0.01,
                     **kwargs)
    return str(caught.value)


class Ticks:
    """A clock that advances 1/256 s each time it is read (binary fractions: exact)."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.reads / 256


def test_a_conforming_plugin_passes_with_a_report(broken: Path) -> None:
    clock = Ticks()
    report = check_plugin("broken-good", {}, expected=KNOWN, error_pfns=[0x300],
                          measure_seconds=4 / 256, clock=clock)
    # Each measurement: the start, three rounds begun before 4 ticks have passed (4096
    # lookups; one window of 65536 pfns), the read that ends it 4/256 s after the start.
    assert report == ConformanceReport(
        "broken-good", "broken-hooks", "0.1",
        ["entry point", "unknown option refused", "verdicts", "batched form agrees", "close"],
        single_per_s=3 * 4096 * 64, batched_pfns_per_s=3 * 65536 * 64)
    assert clock.reads == 2 * 5


def test_a_plugin_without_a_batched_form_reports_none(broken: Path) -> None:
    report = check_plugin("broken-single", {}, expected=KNOWN, error_pfns=[0x300],
                          measure_seconds=4 / 256, clock=Ticks())
    assert report == ConformanceReport(
        "broken-single", "broken-hooks", "0.1",
        ["entry point", "unknown option refused", "verdicts", "close"],
        single_per_s=3 * 4096 * 64, batched_pfns_per_s=None)


@pytest.mark.parametrize(("name", "message"), [
    ("broken-raises", "hook 'broken-raises': pfn_is_ram: raised OSError: [Errno 5] backend "
                      "gone for pfn 0x300; return a verdict < 0 when it cannot tell"),
    ("broken-bools", "hook 'broken-bools': pfn_is_ram: returned True (bool) for pfn 0x100; "
                     "return an int (> 0 RAM, 0 not RAM, < 0 error)"),
    ("broken-disagrees", "hook 'broken-disagrees': batched: pfn_range_is_ram(0x0, 4096) says "
                         "pfn 0x100 is RAM, pfn_is_ram says not RAM"),
    ("broken-short_runs", "hook 'broken-short_runs': batched: pfn_range_is_ram(0x0, 4096) "
                          "covers 4095 pfns, not 4096"),
    ("broken-lax", "hook 'broken-lax': options: accepted the unknown option "
                   "'dumpd-conformance-unknown-option'; refuse it with HookConfigError so "
                   "typos in a configuration are caught"),
    ("broken-typo", "hook 'broken-typo': load: hook 'broken-typo': KeyError: 'nope'"),
    ("broken-close_once", "hook 'broken-close_once': close: the second close() raised "
                          "RuntimeError: closed twice"),
    ("broken-missing", "hook 'broken-missing': entry point: no entry point 'broken-missing' "
                       "in the group 'dumpd.pfn_is_ram'; is the plugin's distribution "
                       "installed?"),
])
def test_each_broken_plugin_fails_with_a_clear_message(broken: Path, name: str,
                                                       message: str) -> None:
    assert check(name) == message


def test_wrong_expectations_name_the_pfn(broken: Path) -> None:
    with pytest.raises(ConformanceError, match=r"^hook 'broken-good': verdicts: pfn 0x200 is "
                                                r"RAM \(1\), expected not RAM$"):
        check_plugin("broken-good", {}, expected={0x200: 0}, measure_seconds=0.01)


def test_a_reload_that_swallows_bad_data_fails(broken: Path) -> None:
    assert check("broken-bad_reload", corrupt=lambda: True) == (
        "hook 'broken-bad_reload': reload: reloading bad data did not raise; raise "
        "HookConfigError saying what is wrong and keep the old data")


def test_a_reload_that_ignores_new_data_fails(broken: Path) -> None:
    assert check("broken-bad_reload", change=lambda: {0x150: 1}) == (
        "hook 'broken-bad_reload': reload: after reloading changed data pfn 0x150 is "
        "not RAM, expected RAM")


class TestNoneConforms(HookConformance):
    """dumpd's built-in hook runs the suite every plugin runs."""

    hook_name = "none"
    expected: ClassVar[dict[int, int]] = {0: 1, 0x12345: 1, (1 << 52) - 1: 1}

    @pytest.fixture
    def hook_options(self) -> dict[str, Any]:
        return {}


class BrokenSuite(HookConformance):
    hook_name = "broken-disagrees"
    expected = KNOWN

    @pytest.fixture
    def hook_options(self) -> dict[str, Any]:
        return {}


def test_the_suite_fails_a_broken_plugin(broken: Path) -> None:
    suite = BrokenSuite()
    suite.test_verdicts({})
    with pytest.raises(ConformanceError) as caught:
        suite.test_batched_agrees_with_single({})
    assert str(caught.value) == ("hook 'broken-disagrees': batched: pfn_range_is_ram(0x0, "
                                 "4096) says pfn 0x100 is RAM, pfn_is_ram says not RAM")


def test_dumpd_hook_check_command(broken: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "dumpd", "hook", "check", "none"],
                        capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stderr) == (0, "")
    conforms, single, batched = ok.stdout.splitlines()
    assert conforms == (f"hook 'none' (dumpd {__version__}) conforms: entry point, unknown "
                        "option refused, verdicts, batched form agrees, close")
    assert re.fullmatch(r"single lookups   [1-9][\d,]*/s", single), single
    assert re.fullmatch(r"batched lookups  [1-9][\d,]* pfns/s", batched), batched
    bad = subprocess.run([sys.executable, "-m", "dumpd", "hook", "check", "broken-bools"],
                         capture_output=True, text=True, check=False,
                         env={"PYTHONPATH": str(broken)})
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr == ("dumpd: conformance: hook 'broken-bools': pfn_is_ram: returned True "
                          "(bool) for pfn 0x0; return an int (> 0 RAM, 0 not RAM, < 0 error)\n")
