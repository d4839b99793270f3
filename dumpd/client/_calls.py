"""The typed calls both clients offer, each written once: the request's method and
params, and the check of its result (a result of the wrong type is a
`ProtocolViolation`: the server does not speak this protocol).

`Client` and `AsyncClient` each wrap a `Call` in a method of the same name, blocking or
awaitable: only the signatures are written twice, as Python cannot say "T or an
awaitable of T" in one signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from dumpd.client.errors import RemoteError
from dumpd.client.pieces import checked_params
from dumpd.protocol import Notification, ProtocolViolation, Response

T = TypeVar("T")

NotificationCallback = Callable[[Notification], None]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """`method(*params)`, whose result `check` returns as a T (or refuses)."""

    method: str
    params: tuple[Any, ...]
    check: Callable[[Any], T]


def _typed(kind: type[T], method: str) -> Callable[[Any], T]:
    def check(value: Any) -> T:
        if not isinstance(value, kind):
            raise ProtocolViolation(
                "EINVAL", f"{method} returned {type(value).__name__}, expected {kind.__name__}"
            )
        return value

    return check


def _runs(value: Any) -> list[tuple[int, int, str]]:
    runs = _typed(list, "extents")(value)
    try:
        return [(int(offset), int(length), str(kind)) for offset, length, kind in runs]
    except (TypeError, ValueError) as exc:
        raise ProtocolViolation("EINVAL", f"extents returned a malformed run: {exc}") from exc


def info() -> Call[dict[str, Any]]:
    return Call("info", (), _typed(dict, "info"))


def read(offset: int, length: int) -> Call[bytes]:
    return Call("read", (offset, length), _typed(bytes, "read"))


def read_phys(paddr: int, length: int) -> Call[bytes]:
    return Call("read_phys", (paddr, length), _typed(bytes, "read_phys"))


def read_virt(vaddr: int, length: int) -> Call[bytes]:
    return Call("read_virt", (vaddr, length), _typed(bytes, "read_virt"))


def vmcoreinfo() -> Call[str]:
    return Call("vmcoreinfo", (), _typed(str, "vmcoreinfo"))


def extents(offset: int, length: int) -> Call[list[tuple[int, int, str]]]:
    return Call("extents", (offset, length), _runs)


def digest(offset: int, length: int, algorithm: str) -> Call[dict[str, Any]]:
    return Call("digest", (offset, length, algorithm), _typed(dict, "digest"))


def stream_options(chunk: int | None, zeros_as_holes: bool, compress: str | None
                   ) -> dict[str, Any]:
    """The options map of a `stream` request (defaults left out, for older servers)."""
    options: dict[str, Any] = {} if chunk is None else {"chunk": chunk}
    if zeros_as_holes:
        options["zeros_as_holes"] = True
    if compress is not None:
        options["compress"] = compress
    return options


def stats() -> Call[dict[str, Any]]:
    return Call("stats", (), _typed(dict, "stats"))


def hook_register(name: str, options: dict[str, Any] | None,
                  distribution: str) -> Call[dict[str, Any]]:
    extra = (distribution,) if distribution else ()
    return Call("hook.register", (name, options or {}, *extra), _typed(dict, "hook.register"))


def hook_unregister() -> Call[dict[str, Any]]:
    return Call("hook.unregister", (), _typed(dict, "hook.unregister"))


def hook_reload() -> Call[dict[str, Any]]:
    return Call("hook.reload", (), _typed(dict, "hook.reload"))


def _explained(value: Any) -> dict[str, Any]:
    answer = _typed(dict, "hook.explain")(value)
    runs = answer.get("runs")
    if not (isinstance(runs, list) and all(
            isinstance(run, list) and len(run) == 2 and type(run[0]) is int
            and type(run[1]) is str for run in runs)):
        raise ProtocolViolation("EINVAL", "hook.explain returned malformed runs")
    return answer


def hook_explain(first_pfn: int, count: int) -> Call[dict[str, Any]]:
    return Call("hook.explain", (first_pfn, count), _explained)


def done(now: bool) -> Call[dict[str, Any]]:
    return Call("done", ({"now": True},) if now else (), _typed(dict, "done"))


def fetch_verified(fetch_id: str, sha256: str) -> Call[dict[str, Any]]:
    return Call("fetch.verified", (fetch_id, sha256), _typed(dict, "fetch.verified"))


def result(response: Response) -> Any:
    """A response's result; `RemoteError` for an error reply."""
    if response.error is not None:
        raise RemoteError(*response.error)
    return response.result


def check_notification(event: Notification) -> RemoteError | None:
    """Check a notification that reaches a client outside a stream's receiver (a stream
    notification of the wrong shape is a `ProtocolViolation`, as in the receiver); the
    server's `error` notification, sent just before it closes the connection, is
    returned as the `RemoteError` that explains the loss."""
    checked_params(event)
    params = event.params
    if event.method == "error" and len(params) == 2 and all(type(p) is str for p in params):
        return RemoteError(params[0], params[1])
    return None
