"""`HOST:PORT` text, as the configuration, the listener and the CLI take it."""

from __future__ import annotations


def split_host_port(text: str) -> tuple[str, int]:
    """`(host, port)` of `HOST:PORT` (an IPv6 host in brackets, which are dropped);
    ValueError when there is no port or it is not in 1..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """`HOST:PORT` text for `(host, port)`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
