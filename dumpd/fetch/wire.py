"""The codec a fetch has the server compress its stream with (`--wire-compress`):
worth it where the bytes cross a network, not on a Unix socket, where compressing
costs CPU time and saves nothing (bench/compress.py measures both)."""

from __future__ import annotations

from typing import Any

from dumpd.codecs import Codec, codec
from dumpd.errors import DumpdError, StartupError

AUTO = ("zstd", "zlib")
"""What `auto` asks for over TCP, the first that the server offers and this machine can
decompress: zstd compresses about as well as zlib at several times the speed."""


def wire_codec(choice: str, info: dict[str, Any], over_network: bool) -> Codec | None:
    """The codec for `--wire-compress CHOICE` (`auto`, `none` or a codec's name) against
    the server's `info`, None for none; StartupError for a codec the server does not
    offer or this machine cannot load."""
    offered = info.get("codecs") or []  # a server older than compression offers none
    if choice == "none" or (choice == "auto" and not over_network):
        return None
    if choice == "auto":
        for name in AUTO:
            if name in offered:
                try:
                    return codec(name)
                except DumpdError:  # this machine lacks its library: the next one
                    continue
        return None
    try:
        found = codec(choice)
    except DumpdError as exc:
        raise StartupError(f"fetch: --wire-compress {choice}: {exc.code}: {exc.message}"
                           ) from None
    if choice not in offered:
        raise StartupError(f"fetch: --wire-compress {choice}: ENOSYS: the server does not "
                           f"compress with it (it offers: {', '.join(offered) or 'none'})")
    return found
