"""The `[hook.options]` of the xen hook: checking them and opening the transport they name.

Every mistake is a HookConfigError with one line that starts with `xen: ` and
names the option.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from dumpd.hooks.contract import HookConfigError, check_option_names
from dumpd.hooks.pfnrange import PFN_LIMIT, parse_pfn_range

from .abi import DOMID_MAX, DOMID_SELF
from .privcmd import HYPERCALL_DEVICE, PRIVCMD_DEVICE, PrivcmdTransport
from .stub import StubTransport
from .transport import Transport

TransportName = Literal["auto", "privcmd", "stub"]

TRANSPORTS: tuple[TransportName, ...] = ("auto", "privcmd", "stub")

OPTIONS = ("transport", "domid", "privcmd_device", "hypercall_device", "map", "fail", "delay_ms")
"""Every option `create` accepts, in the order they are checked."""

APPLIES_TO: dict[str, tuple[str, ...]] = {
    "privcmd_device": ("privcmd",),
    "hypercall_device": ("privcmd",),
    "map": ("stub",),
    "fail": ("stub",),
    "delay_ms": ("stub",),
}
"""The transports an option is for; options not listed apply to every transport."""


@dataclass(frozen=True, slots=True)
class XenOptions:
    """Checked options; `given` names the ones the configuration set."""

    transport: TransportName = "auto"
    domid: int = DOMID_SELF
    privcmd_device: str = PRIVCMD_DEVICE
    hypercall_device: str = HYPERCALL_DEVICE
    map: str | None = None
    failing: tuple[tuple[int, int], ...] = ()
    delay_ms: float = 0.0
    given: frozenset[str] = frozenset()


def _error(name: str, want: str, value: object) -> HookConfigError:
    return HookConfigError(f"xen: option {name!r} must be {want}, got {value!r}")


def _transport(value: object) -> TransportName:
    for name in TRANSPORTS:
        if value == name and isinstance(value, str):
            return name
    raise _error("transport", '"auto", "privcmd" or "stub"', value)


def _domid(value: object) -> int:
    if type(value) is not int or not 0 <= value <= DOMID_MAX:
        raise _error("domid", f"an integer 0..{DOMID_MAX}", value)
    return value


def _path(name: str, value: object) -> str:
    """A non-empty path, made absolute (in this process's directory) when relative, so
    messages and reloads name the file actually read."""
    path = os.fspath(value) if isinstance(value, str | os.PathLike) else None
    if not isinstance(path, str) or not path:
        raise _error(name, "a non-empty path", value)
    return path if os.path.isabs(path) else os.path.abspath(path)


def _delay(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error("delay_ms", "a number >= 0", value)
    if not (math.isfinite(value) and value >= 0):
        raise _error("delay_ms", "a number >= 0", value)
    return float(value)


def _failing(value: object) -> tuple[tuple[int, int], ...]:
    if value == "always":
        return ((0, PFN_LIMIT),)
    if not isinstance(value, list | tuple):
        raise _error("fail", '"always" or a list of pfn ranges', value)
    ranges = []
    for number, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise HookConfigError(
                f"xen: option 'fail' item {number} must be a pfn range string, got {item!r}"
            )
        try:
            ranges.append(parse_pfn_range(item))
        except ValueError as e:
            raise HookConfigError(f"xen: option 'fail' item {number} {item!r}: {e}") from None
    return tuple(ranges)


def parse_options(options: Mapping[str, object]) -> XenOptions:
    """Check `options`: names, types and values; HookConfigError names what is wrong."""
    check_option_names("xen", options, OPTIONS)
    get = options.get
    return XenOptions(
        transport=_transport(get("transport", "auto")),
        domid=_domid(get("domid", DOMID_SELF)),
        privcmd_device=_path("privcmd_device", get("privcmd_device", PRIVCMD_DEVICE)),
        hypercall_device=_path("hypercall_device", get("hypercall_device", HYPERCALL_DEVICE)),
        map=_path("map", options["map"]) if "map" in options else None,
        failing=_failing(options["fail"]) if "fail" in options else (),
        delay_ms=_delay(get("delay_ms", 0.0)),
        given=frozenset(map(str, options)),
    )


def choose_transport(opts: XenOptions) -> Literal["privcmd", "stub"]:
    """The transport to open: `auto` means privcmd when its device exists, else an error."""
    if opts.transport != "auto":
        return opts.transport
    if os.path.exists(opts.privcmd_device):
        return "privcmd"
    raise HookConfigError(
        f'xen: transport "auto" found no {opts.privcmd_device} (not a Xen guest, or '
        'xen-privcmd not loaded); set transport = "stub" for a stand-in hypervisor, '
        'or use another hook such as "balloon"'
    )


def _check_applies(opts: XenOptions, chosen: str) -> None:
    for name in OPTIONS:
        if name in opts.given and chosen not in APPLIES_TO.get(name, (chosen,)):
            how = ' (chosen by transport "auto")' if opts.transport == "auto" else ""
            wanted = " or ".join(f'"{t}"' for t in APPLIES_TO[name])
            raise HookConfigError(
                f'xen: option {name!r} applies to transport {wanted} only, not "{chosen}"{how}'
            )


def open_transport(opts: XenOptions) -> Transport:
    """The transport `opts` ask for, opened; HookConfigError when it cannot be."""
    chosen = choose_transport(opts)
    _check_applies(opts, chosen)
    if chosen == "stub":
        return StubTransport(opts.map, opts.failing, opts.delay_ms, opts.domid)
    try:
        return PrivcmdTransport(opts.domid, opts.privcmd_device, opts.hypercall_device)
    except OSError as e:
        if e.filename is not None:  # opening privcmd_device or hypercall_device failed
            raise HookConfigError(f"xen: {e.filename}: cannot open: {e.strerror}") from e
        raise HookConfigError(f"xen: cannot set up the hypercall buffer: {e.strerror or e}") from e
