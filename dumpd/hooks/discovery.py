"""Finding hook plugins through entry points (group `dumpd.pfn_is_ram`) and loading one.

The built-in `none` hook is found the same way as third-party ones, through
dumpd's own entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from dumpd.hooks.contract import ENTRY_POINT_GROUP, HookConfigError, PfnIsRam


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """An installed hook plugin as `dumpd plugins` lists it."""

    name: str
    distribution: str
    version: str
    target: str


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def installed_plugins() -> list[PluginInfo]:
    """Every hook plugin installed in this environment, sorted by name."""
    out = []
    for name, ep in sorted(_entry_points().items()):
        dist = ep.dist
        out.append(
            PluginInfo(
                name=name,
                distribution=dist.name if dist else "?",
                version=dist.version if dist else "?",
                target=ep.value,
            )
        )
    return out


def load_hook(name: str, options: Mapping[str, object]) -> PfnIsRam:
    """Create hook `name` with `options`; HookConfigError says what is wrong in one line."""
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        installed = ", ".join(sorted(eps)) or "none"
        raise HookConfigError(f"unknown hook {name!r}; installed: {installed}")
    try:
        factory = ep.load()
    except Exception as exc:  # a broken plugin must not take the daemon down
        raise HookConfigError(f"hook {name!r}: cannot load {ep.value}: {exc}") from exc
    try:
        hook = cast(PfnIsRam, factory(dict(options)))
    except HookConfigError:
        raise
    except Exception as exc:
        raise HookConfigError(f"hook {name!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(hook, "pfn_is_ram", None)):
        raise HookConfigError(
            f"hook {name!r} ({ep.value}) returned {type(hook).__name__}, "
            "which has no pfn_is_ram(pfn) method"
        )
    return hook
