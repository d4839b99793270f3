"""The memmap hook's options and their one-line refusals, through its entry point."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from dumpd.hooks.contract import ENTRY_POINT_GROUP, ERROR, HookConfigError
from dumpd.hooks.discovery import load_hook

import dumpd_memmap

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_entry_point_is_declared_and_installed() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    assert declared[ENTRY_POINT_GROUP] == {"memmap": "dumpd_memmap:create"}
    (found,) = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "memmap"]
    assert found.value == "dumpd_memmap:create"
    assert found.dist is not None and found.dist.name == "dumpd-memmap"


@pytest.mark.parametrize(("options", "level"), [
    ({}, 0),
    ({"dump_level": 0}, 0),
    ({"dump_level": 1}, 1),  # zero pages: accepted, no verdict
    ({"dump_level": 31}, 31),
    ({"dump_level": 17}, 17),
    ({"exclude": []}, 0),
    ({"exclude": ["free"]}, 16),
    ({"exclude": ["cache", "cache_private", "user", "free"]}, 31 - 1),
    ({"exclude": ("user", "user")}, 8),
    ({"exclude": "free,cache"}, 18),  # --hook-option exclude=free,cache
    ({"exclude": " cache_private "}, 4),
    ({"exclude": ""}, 0),
])
def test_the_level_the_options_ask(options: dict[str, object], level: int) -> None:
    hook = load_hook("memmap", options)
    assert isinstance(hook, dumpd_memmap.MemmapHook)
    assert hook.level == level


@pytest.mark.parametrize(("options", "message"), [
    ({"level": 31}, "memmap: unknown option 'level' (known: exclude, dump_level)"),
    ({"a": 1, "b": 2}, "memmap: unknown options 'a', 'b' (known: exclude, dump_level)"),
    ({"dump_level": 32},
     "memmap: option 'dump_level' must be an integer 0..31 (makedumpfile's -d), got 32"),
    ({"dump_level": -1},
     "memmap: option 'dump_level' must be an integer 0..31 (makedumpfile's -d), got -1"),
    ({"dump_level": True},
     "memmap: option 'dump_level' must be an integer 0..31 (makedumpfile's -d), got True"),
    ({"dump_level": "31"},
     "memmap: option 'dump_level' must be an integer 0..31 (makedumpfile's -d), got '31'"),
    ({"exclude": ["zero"]}, "memmap: option 'exclude': unknown exclusion 'zero' "
     "(known: cache, cache_private, user, free)"),
    ({"exclude": "free,,cache"}, "memmap: option 'exclude': unknown exclusion '' "
     "(known: cache, cache_private, user, free)"),
    ({"exclude": [16]}, "memmap: option 'exclude': unknown exclusion 16 "
     "(known: cache, cache_private, user, free)"),
    ({"exclude": 16}, "memmap: option 'exclude' must be a list of names "
     "(cache, cache_private, user, free), got 16"),
    ({"exclude": ["free"], "dump_level": 16},
     "memmap: give 'exclude' or 'dump_level', not both (they say the same thing)"),
])
def test_bad_options_are_refused_in_one_line(options: dict[str, object], message: str
                                             ) -> None:
    with pytest.raises(HookConfigError) as caught:
        load_hook("memmap", options)
    assert str(caught.value) == message


def test_before_attach_every_pfn_is_an_error() -> None:
    """The hook cannot tell without the dump: the page is read (never a guess)."""
    hook = dumpd_memmap.create({"dump_level": 31})
    assert hook.pfn_is_ram(0x1000) == ERROR
    assert hook.pfn_range_is_ram(-2, 10) == [(10, ERROR)]
    assert hook.explain(0, 5) == [(5, "")]
    assert hook.pfn_range_is_ram(0, 0) == [] and hook.explain(7, 0) == []
    assert repr(hook) == ("MemmapHook(dump_level=31: offline, hwpoison, cache, cache_private, "
                          "user, free; not attached)")
    hook.close()
    hook.close()
