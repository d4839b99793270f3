"""A bare msgpack-RPC server for the benchmarks: answers every request with 8 zero bytes.

    python -m bench.echo SOCKET

The same event loop (uvloop), the same msgpack and the same reply shape as dumpd's
`read`, and nothing else: the stack's own limit, to hold dumpd's round trips against.
"""

from __future__ import annotations

import asyncio
import sys

import msgpack
import uvloop

REPLY = b"\x00" * 8


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.unpacker = msgpack.Unpacker(raw=False)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        out = [msgpack.packb([1, request[1], None, REPLY], use_bin_type=True)
               for request in self.unpacker]
        self.transport.write(b"".join(out))  # type: ignore[attr-defined]


async def main(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(Echo, path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
