"""A bare msgpack-RPC server for the benchmarks: answers `[0, msgid, method, [a, n]]`
with `n` zero bytes (8 when the request has no such `n`), whatever the method.

    python -m bench.echo SOCKET

The same event loop (uvloop), the same msgpack and the same reply shape as dumpd's
`read` (a bin header, then the payload written from its own buffer; the replies of
one burst of pipelined requests in one write), and nothing else: no engine, no page,
no budget. The stack's own limit, to hold dumpd's round trips and throughput against.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import uvloop

from bench.common import MiB, wait_for_socket

MAX_REPLY = 16 * MiB
ZEROS = memoryview(bytes(MAX_REPLY))  # calloc'd: untouched pages cost no memory
DEFAULT_REPLY = 8


def reply_length(request: Any) -> int:
    """`n` of a `[a, n]` request (a `read`), bounded; `DEFAULT_REPLY` for any other."""
    params = request[3] if isinstance(request, list) and len(request) == 4 else None
    if isinstance(params, list) and len(params) == 2 and type(params[1]) is int:
        return max(0, min(params[1], MAX_REPLY))
    return DEFAULT_REPLY


def bin_header(length: int) -> bytes:
    """msgpack's bin 8/16/32 header for a payload of `length` bytes."""
    if length < 0x100:
        return struct.pack(">BB", 0xC4, length)
    if length < 0x10000:
        return struct.pack(">BH", 0xC5, length)
    return struct.pack(">BI", 0xC6, length)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.unpacker = msgpack.Unpacker(raw=False)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        out: list[bytes | memoryview] = []
        for request in self.unpacker:
            length = reply_length(request)
            out.append(b"\x94\x01" + msgpack.packb(request[1]) + b"\xc0" + bin_header(length))
            out.append(ZEROS[:length])
        if out:
            self.transport.writelines(out)


async def main(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(Echo, path)
    async with server:
        await server.serve_forever()


@contextmanager
def echo_server(sock: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m bench.echo SOCK`, running until the block ends."""
    sock.unlink(missing_ok=True)  # else an old socket would pass for the new one
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo", str(sock)])
    try:
        wait_for_socket(proc, sock, "bench.echo")
        yield proc
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
