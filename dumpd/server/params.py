"""Checks of request parameters, on the server side: each names the parameter it
refused (EINVAL). An integral float counts as its int (`protocol.integral`), as the
frame decoder reads msgids."""

from __future__ import annotations

from typing import Any

from dumpd.errors import DumpdError
from dumpd.protocol import MAX_UINT64, brief, integral


def as_uint(value: object, name: str) -> int:
    """`value` as an unsigned 64-bit int (an `integral` float counts); bools, other floats
    and out-of-range values are EINVAL."""
    number = integral(value)
    if number is None:
        if type(value) is float:
            raise DumpdError("EINVAL", f"{name} must be an unsigned int (a float only if "
                             f"integral, at most 2**53), got float {value!r}")
        raise DumpdError("EINVAL", f"{name} must be an unsigned int, got {type(value).__name__}")
    if not 0 <= number <= MAX_UINT64:
        raise DumpdError("EINVAL", f"{name} must be in [0, 2**64-1], got {number}")
    return number


def as_str(value: object, name: str) -> str:
    """`value` as a str; anything else (bin included) is EINVAL."""
    if type(value) is not str:
        raise DumpdError("EINVAL", f"{name} must be a str, got {type(value).__name__}")
    return value


def as_map(value: object, name: str) -> dict[str, Any]:
    """`value` as a map with str keys; nil is read as an empty map."""
    if value is None:
        return {}
    if type(value) is not dict or not all(type(key) is str for key in value):
        raise DumpdError("EINVAL", f"{name} must be a map with str keys")
    return value


def as_options(value: object, what: str, known: tuple[str, ...]) -> dict[str, Any]:
    """`value` as a map of `what`'s options (nil: none); a name not in `known` is EINVAL."""
    options = as_map(value, "options")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DumpdError("EINVAL", f"unknown {what} option {unknown[0]!r} (known: "
                         f"{', '.join(known)})")
    return options


def as_bool(value: object, name: str) -> bool:
    """`value` as true or false; anything else (0 and 1 included) is EINVAL."""
    if type(value) is not bool:
        raise DumpdError("EINVAL", f"{name} must be true or false, got {brief(value)}")
    return value
