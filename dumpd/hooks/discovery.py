"""Finding hook plugins through entry points (group `dumpd.pfn_is_ram`) and loading one.

The built-in `none` hook is found the same way as third-party ones, through
dumpd's own entry point. Two distributions may declare the same name: neither
silently wins. They are both listed, and loading that name needs the
distribution named (`hook.distribution`). One distribution found twice on the
path (an egg-link beside site-packages, say) counts once: `importlib.metadata`
keeps the first copy of each distribution name, as imports do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from dumpd.errors import DumpdError
from dumpd.hooks.contract import (
    ENTRY_POINT_GROUP,
    DumpMemory,
    HookConfigError,
    PfnIsRam,
    close_hook,
)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """An installed hook plugin as `dumpd plugins` lists it."""

    name: str
    distribution: str
    version: str
    target: str

    @property
    def provider(self) -> str:
        """The distribution that provides it: `dumpd-balloon 0.1.0`."""
        return f"{self.distribution} {self.version}"

    def __str__(self) -> str:
        return f"{self.provider} ({self.target})"


def _normalized(distribution: str) -> str:
    """A distribution name as packaging compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _info(ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?",
                      ep.value)


def _providers() -> dict[str, list[tuple[EntryPoint, PluginInfo]]]:
    """Every entry point of the group by name, sorted by name then distribution."""
    found: dict[str, list[tuple[EntryPoint, PluginInfo]]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append((ep, _info(ep)))
    return {name: sorted(found[name], key=lambda p: _normalized(p[1].distribution))
            for name in sorted(found)}


def installed_plugins() -> list[PluginInfo]:
    """Every hook plugin installed in this environment, by name then distribution;
    a name two distributions declare appears once for each."""
    return [info for providers in _providers().values() for _, info in providers]


def find_plugin(name: str, distribution: str = "") -> tuple[EntryPoint, PluginInfo]:
    """The entry point `name`, from `distribution` when one is named.

    HookConfigError when no distribution declares `name`, when `distribution` does
    not, or when several do and none is named.
    """
    everything = _providers()
    providers = everything.get(name)
    if providers is None:
        installed = ", ".join(sorted(everything)) or "none"
        raise HookConfigError(f"unknown hook {name!r}; installed: {installed}")
    listed = ", ".join(str(info) for _, info in providers)
    if distribution:
        chosen = [p for p in providers
                  if _normalized(p[1].distribution) == _normalized(distribution)]
        if not chosen:
            raise HookConfigError(f"hook {name!r} is not provided by distribution "
                                  f"{distribution!r}; it is provided by {listed}")
        return chosen[0]
    if len(providers) > 1:
        raise HookConfigError(f"hook {name!r} is provided by {len(providers)} distributions: "
                              f"{listed}; choose one with hook.distribution "
                              "(--hook-distribution DIST)")
    return providers[0]


def load_hook(name: str, options: Mapping[str, object], distribution: str = "",
              dump: DumpMemory | None = None) -> PfnIsRam:
    """Create hook `name` (from `distribution`, if named) with `options`, attached to
    `dump` when it has `attach`; HookConfigError says what is wrong in one line (a
    DumpdError from `attach` keeps its own code)."""
    return load_plugin(name, options, distribution, dump)[0]


def load_plugin(name: str, options: Mapping[str, object], distribution: str = "",
                dump: DumpMemory | None = None) -> tuple[PfnIsRam, PluginInfo]:
    """`load_hook`, and the plugin the hook came from (for the log: a name may be
    anyone's)."""
    ep, info = find_plugin(name, distribution)
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
    attach = getattr(hook, "attach", None)
    if dump is not None and callable(attach):
        _attach(name, hook, attach, dump)
    return hook, info


def _attach(name: str, hook: PfnIsRam, attach: Callable[[DumpMemory], object],
            dump: DumpMemory) -> None:
    """Attach the new hook to the dump; a refusal closes it (it will never be used)."""
    try:
        attach(dump)
    except Exception as exc:
        close_hook(hook)
        if isinstance(exc, HookConfigError | DumpdError):
            raise
        raise HookConfigError(f"hook {name!r}: attach: {type(exc).__name__}: {exc}") from exc
