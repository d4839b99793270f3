"""`stream` with `compress`: `stream.pages` frames through a real server on a real
socket, byte for byte against the plain stream of the same range, with every codec this
machine has; the frames' checks in the client; `fetch` compressing over TLS by
default and not over a Unix socket."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bench.kdumppages import pages, rearrange
from dumpd import codecs
from dumpd.client import (
    Client,
    StreamData,
    StreamError,
    StreamHole,
    StreamPages,
)
from dumpd.client.aio import AsyncClient
from dumpd.codecs import available, codec
from dumpd.errors import DumpdError
from dumpd.protocol import ProtocolViolation, encode_bin_notification_head
from dumpd.server.pages import FRAME, HELD
from dumpd.testing.elfwriter import pattern
from tests.daemon import one_line_error, run, served, stats_json
from tests.dumps import build_elf, build_raw, file_bytes
from tests.pki import Pki
from tests.servers import failing, free_port, serving, until
from tests.views import (
    BALLOONED,
    PAGE,
    STREAM_LOADS,
    ZERO_PFNS,
    balloon_file,
    expected_view,
    zeroed_dump,
)

MiB = 1 << 20
CODECS = available()  # zlib always; zstd with backports.zstd; lzo, snappy with their libs


def mixed(paddr: int, length: int) -> bytes:
    """Pages of three kinds by pfn: text that compresses well, the tests' random pattern
    (which does not shrink: sent as it is), and pages of one repeated byte."""
    out = bytearray()
    first = paddr - paddr % PAGE
    for page in range(first, paddr + length, PAGE):
        pfn = page // PAGE
        if pfn % 3 == 0:
            body = (f"pfn {pfn:#x}: struct page flags=0x{pfn * 7919:x} ".encode() * 200)[:PAGE]
        elif pfn % 3 == 1:
            body = pattern(page, PAGE)
        else:
            body = bytes([pfn % 251]) * PAGE
        out += body
    return bytes(out[paddr - first : paddr - first + length])


def mixed_dump(tmp_path: Path, kind: str) -> tuple[str, int, Any]:
    """An ELF core whose data starts 0x200 into a page of the file (its units cut at the
    view's pages, not the pfns'), or a raw image: (path, size, segments)."""
    if kind == "elf":
        dump = build_elf(tmp_path / "vmcore", STREAM_LOADS, page_size_note=PAGE,
                         data_align=0x200, fill=mixed)
    else:
        dump = build_raw(tmp_path / "oldmem", 0x600 * PAGE, fill=mixed)
    return dump.path, dump.size, dump.segments


def collect(sock: str, offset: int, length: int, compress: str | None = None,
            chunk: int | None = None, zeros: bool = False
            ) -> tuple[list[Any], dict[str, Any] | None]:
    """Every piece of a stream, payloads copied out, and its summary."""
    with Client.connect(sock, timeout=30) as client:
        stream = client.stream(offset, length, chunk, zeros_as_holes=zeros, compress=compress)
        pieces: list[Any] = []
        for p in stream:
            if isinstance(p, StreamData):
                p = StreamData(p.offset, memoryview(bytes(p.data)))
            elif isinstance(p, StreamPages):
                p = StreamPages(p.offset, p.length, p.sizes, memoryview(bytes(p.payload)),
                                p.page_size)
            pieces.append(p)
        assert client.info()["size"] > 0  # the connection is usable after the stream
        return pieces, stream.summary


def assemble(offset: int, length: int, pieces: list[Any], name: str | None) -> bytes:
    """The range as a client rebuilds it: data (decompressed), zeros for holes and for
    errors (which win over data sent before them)."""
    out = bytearray(length)
    for p in pieces:
        start = p.offset - offset
        if isinstance(p, StreamData):
            out[start : start + len(p.data)] = p.data
        elif isinstance(p, StreamPages):
            assert name is not None
            out[start : start + p.length] = p.data(codec(name))
        elif isinstance(p, StreamError):
            out[start : start + p.length] = bytes(p.length)
    return bytes(out)


def not_data(pieces: list[Any]) -> list[Any]:
    return [p for p in pieces if isinstance(p, StreamHole | StreamError)]


def check_units(pages: list[StreamPages], view: bytes, offset: int, name: str) -> int:
    """Each frame's units cut at the view's page boundaries, within one frame of at
    most `FRAME` bytes, each blob the unit as it is or the unit compressed on its own
    (smaller); the count of units sent as they are."""
    method, stored = codec(name), 0
    for piece in pages:
        assert piece.offset // FRAME == (piece.offset + piece.length - 1) // FRAME
        units = list(piece.units())
        assert [u[0] for u in units] == [piece.offset, *range(
            (piece.offset // PAGE + 1) * PAGE, piece.offset + piece.length, PAGE)]
        assert sum(length for _, length, _ in units) == piece.length
        for pos, length, blob in units:
            unit = view[pos - offset : pos - offset + length]
            if len(blob) == length:  # as it is: because it does not shrink
                assert bytes(blob) == unit and len(method.compress(unit)) >= length
                stored += 1
            else:
                assert len(blob) < length
                assert method.decompress(blob, length) == unit
    return stored


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("kind", ["elf", "raw"])
async def test_a_compressed_stream_is_the_plain_one_page_by_page(
        tmp_path: Path, kind: str, name: str) -> None:
    path, size, segments = mixed_dump(tmp_path, kind)
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": hook}) as server:
        sock = server.config.server.socket
        plain, plain_summary = await asyncio.to_thread(collect, sock, 0, size)
        assert server.engine is not None
        read_plain = server.engine.counters.source_bytes_read
        pieces, summary = await asyncio.to_thread(collect, sock, 0, size, name)
        read_both = server.engine.counters.source_bytes_read
        stats = server.shared.stats()
    view = expected_view(path, segments, ZERO_PFNS)
    assert assemble(0, size, plain, None) == assemble(0, size, pieces, name) == view
    assert not any(isinstance(p, StreamData) for p in pieces)
    assert not_data(pieces) == not_data(plain)  # the hook's holes, as they were
    pages = [p for p in pieces if isinstance(p, StreamPages)]
    stored = check_units(pages, view, 0, name)
    wire = sum(len(p.payload) for p in pages)
    assert plain_summary is not None and summary is not None
    assert summary == {**plain_summary, "compressed_bytes": wire}
    assert wire < summary["data_bytes"] * 0.8  # two pages in three compress
    assert read_both == 2 * read_plain  # each RAM byte read once per stream, no more
    units = sum(len(p.sizes) for p in pages)
    assert stats["compressed_streams"] == 1
    assert (stats["compressed_view_bytes"], stats["compressed_wire_bytes"]) == (
        summary["data_bytes"], wire)
    assert (stats["compressed_units"], stats["compressed_units_stored"]) == (units, stored)
    if kind == "raw":  # the random pages, each a unit: of the pfns 1 modulo 3
        assert stored == len([p for p in range(0x600) if p % 3 == 1 and p not in ZERO_PFNS])
    else:  # a unit is the end of one pfn and the start of the next: always shrinks
        assert stored <= 2  # but maybe the ELF headers' page, and the last one


@pytest.mark.parametrize("name", CODECS)
async def test_units_of_a_range_that_is_not_page_aligned(tmp_path: Path, name: str) -> None:
    path, size, _ = mixed_dump(tmp_path, "raw")
    offset, length = 12345, 3 * MiB + 777
    async with serving(tmp_path, path) as server:
        sock = server.config.server.socket
        pieces, summary = await asyncio.to_thread(collect, sock, offset, length, name,
                                                  8 * PAGE)
        tail, _ = await asyncio.to_thread(collect, sock, size - 10, 100, name)
    want = file_bytes(path, offset, length)
    assert assemble(offset, length, pieces, name) == want
    pages = [p for p in pieces if isinstance(p, StreamPages)]
    assert [(p.offset, p.length) for p in pages[:2]] == [(12345, 8 * PAGE - 12345),
                                                        (8 * PAGE, 8 * PAGE)]  # chunks
    first = list(pages[0].units())
    assert [(pos, n) for pos, n, _ in first[:2]] == [(12345, 4 * PAGE - 12345),
                                                    (4 * PAGE, PAGE)]
    last = pages[-1]
    assert last.offset + last.length == offset + length
    assert list(last.units())[-1][1] == (offset + length) % PAGE  # a short last unit
    check_units(pages, want, offset, name)
    assert summary is not None and summary["bytes"] == summary["data_bytes"] == length
    assert [(p.offset, p.length, [n for _, n, _ in p.units()]) for p in tail] == [
        (size - 10, 10, [10])]
    assert assemble(size - 10, 10, tail, name) == file_bytes(path, size - 10, 10)


@pytest.mark.parametrize("kind", ["elf", "raw"])
async def test_zero_pages_are_holes_not_compressed_zeros(tmp_path: Path, kind: str) -> None:
    path, size, _ = zeroed_dump(tmp_path, kind)
    name = CODECS[-1]
    async with serving(tmp_path, path, mmap="on") as server:
        sock = server.config.server.socket
        plain, plain_summary = await asyncio.to_thread(collect, sock, 0, size, None, None,
                                                       True)
        pieces, summary = await asyncio.to_thread(collect, sock, 0, size, name, None, True)
    assert assemble(0, size, pieces, name) == assemble(0, size, plain, None) == file_bytes(
        path)
    holes = not_data(pieces)
    assert holes == not_data(plain)  # the zero pages' holes, as the plain stream has them
    assert {h.reason for h in holes} == {"zero"} and len(holes) >= 6
    assert plain_summary is not None and summary is not None
    assert {k: v for k, v in summary.items() if k != "compressed_bytes"} == plain_summary
    if kind == "raw":  # every zero page a hole: no unit is a page of zeros
        view = file_bytes(path)
        assert not [pos for p in pieces if isinstance(p, StreamPages)
                    for pos, length, _ in p.units() if view[pos : pos + length] == bytes(PAGE)]


async def test_a_failing_source_and_a_hook_s_holes_in_a_compressed_stream(
        tmp_path: Path) -> None:
    path, size, segments = mixed_dump(tmp_path, "raw")
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    bad = range(0x100 * PAGE + 100, 0x102 * PAGE + 5)
    name = CODECS[0]
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": hook},
                       stream_sendfile=False) as server:  # the plain stream reads too
        assert server.source is not None
        with failing(server.source, bad):
            plain, plain_summary = await asyncio.to_thread(collect, server.config.server.socket,
                                                           0, size)
            pieces, summary = await asyncio.to_thread(collect, server.config.server.socket,
                                                      0, size, name)
    errors = [p for p in pieces if isinstance(p, StreamError)]
    assert errors == [StreamError(0x100 * PAGE, 3 * PAGE, "EIO", "source read failed at "
                                  f"{0x100 * PAGE:#x}: Input/output error")]
    assert not_data(pieces) == not_data(plain)
    want = bytearray(expected_view(path, segments, ZERO_PFNS))
    want[0x100 * PAGE : 0x103 * PAGE] = bytes(3 * PAGE)
    assert assemble(0, size, pieces, name) == bytes(want)
    assert plain_summary is not None and summary is not None
    assert summary["error_bytes"] == plain_summary["error_bytes"] == 3 * PAGE
    assert summary["data_bytes"] == plain_summary["data_bytes"]


def _raw_call(sock: str, params: list[Any]) -> Any:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(msgpack.packb([0, 0, "stream", params]))
        unpacker = msgpack.Unpacker()
        while True:
            unpacker.feed(s.recv(65536))
            for obj in unpacker:
                return obj


def info_of(sock: str) -> dict[str, Any]:
    with Client.connect(sock, timeout=30) as client:
        return client.info()


async def test_bad_compress_options_are_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> codecs.Codec:
        raise DumpdError("ENOSYS", "zstd: this Python has no compression.zstd; install "
                         "backports.zstd (pip install backports.zstd)")

    path, size, _ = mixed_dump(tmp_path, "raw")
    async with serving(tmp_path, path) as server:
        sock = server.config.server.socket
        unknown = await asyncio.to_thread(_raw_call, sock, [0, size, {"compress": "lz4"}])
        typed = await asyncio.to_thread(_raw_call, sock, [0, size, {"compress": b"zlib"}])
        monkeypatch.setitem(codecs._MAKERS, "zstd", missing)
        codecs._load.cache_clear()
        try:
            absent = await asyncio.to_thread(_raw_call, sock, [0, size, {"compress": "zstd"}])
            offered = (await asyncio.to_thread(info_of, sock))["codecs"]
        finally:
            codecs._load.cache_clear()
    assert unknown == [1, 0, ["EINVAL", "unknown compression 'lz4' (expected zlib, lzo, "
                              "snappy, zstd)"], None]
    assert typed == [1, 0, ["EINVAL", "compress must be a str, got bytes"], None]
    assert absent == [1, 0, ["ENOSYS", "zstd: this Python has no compression.zstd; install "
                             "backports.zstd (pip install backports.zstd)"], None]
    assert "zstd" not in offered and "zlib" in offered


@pytest.mark.parametrize("sendfile", [True, False], ids=["plain-socket", "streams-read"])
async def test_what_a_compressed_stream_holds_is_in_the_reply_budget(
        tmp_path: Path, sendfile: bool) -> None:
    """On a socket where streams go by sendfile (and the worst case counts no read-ahead
    for them) a compressed stream holds its read-ahead, chunk and frames in the server's
    reply budget; where streams read anyway, its frames only."""
    path, size, _ = mixed_dump(tmp_path, "raw")
    async with serving(tmp_path, path, reply_budget_total_mib=1,
                       stream_sendfile=sendfile) as server:
        sock = server.config.server.socket
        if sendfile:
            reply = await asyncio.to_thread(_raw_call, sock, [0, size, {"compress": "zlib"}])
        else:
            pieces, summary = await asyncio.to_thread(collect, sock, 0, size, "zlib")
        budget = server.shared.reply_budget
        held, peak = budget.held, budget.peak
    if sendfile:  # 4 MiB read ahead + the 1 MiB chunk + the frames: over 1 MiB
        assert reply == [1, 0, ["E2BIG", f"a compressed stream here holds {HELD + 5 * MiB} "
                                "bytes at once, more than the server's whole reply budget "
                                f"({MiB}, server.reply_budget_total_mib)"], None]
        assert peak == 0
    else:
        assert summary is not None and summary["bytes"] == size
        assert assemble(0, size, pieces, "zlib") == file_bytes(path)
        assert (held, peak) == (0, HELD)


async def async_collect(client: AsyncClient, offset: int, length: int,
                        compress: str | None) -> tuple[list[Any], dict[str, Any] | None]:
    stream = client.stream(offset, length, compress=compress)
    pieces: list[Any] = []
    async for p in stream:
        if isinstance(p, StreamPages):  # the payload is the piece's own: no copy needed
            assert p.page_size == PAGE
        pieces.append(p)
    return pieces, stream.summary


async def test_both_clients_stream_compressed_over_tls(tmp_path: Path, pki: Pki) -> None:
    path, size, _ = mixed_dump(tmp_path, "elf")
    name = CODECS[-1]
    port = free_port()
    async with serving(tmp_path, path, tcp=f"127.0.0.1:{port}",
                       **pki.server_options()) as server:
        async with await AsyncClient.connect_tcp("127.0.0.1", port, tls=pki.client()) as client:
            (pieces, summary), (plain, plain_summary) = await asyncio.gather(
                async_collect(client, 0, size, name), async_collect(client, 0, size, None))
            assert (await client.info())["size"] == size  # usable after both
        blocking = await asyncio.to_thread(blocking_tls, port, pki, size, name)
        stats = server.shared.stats()
    view = file_bytes(path)
    assert assemble(0, size, pieces, name) == assemble(0, size, plain, None) == view
    assert assemble(0, size, blocking[0], name) == view
    assert not any(isinstance(p, StreamData) for p in pieces + blocking[0])
    assert not any(isinstance(p, StreamPages) for p in plain)
    assert plain_summary is not None and summary == blocking[1] == {
        **plain_summary, "compressed_bytes": sum(len(p.payload) for p in pieces
                                                 if isinstance(p, StreamPages))}
    assert stats["compressed_streams"] == 2
    assert stats["compressed_view_bytes"] == 2 * size


def blocking_tls(port: int, pki: Pki, size: int, name: str
                 ) -> tuple[list[Any], dict[str, Any] | None]:
    with Client.connect_tcp("127.0.0.1", port, tls=pki.client(), timeout=30) as client:
        stream = client.stream(0, size, compress=name)
        pieces = [StreamPages(p.offset, p.length, p.sizes, memoryview(bytes(p.payload)),
                              p.page_size) if isinstance(p, StreamPages) else p
                  for p in stream]
        return pieces, stream.summary


async def test_the_async_client_holds_a_slow_consumer_s_stream_back(tmp_path: Path) -> None:
    """A consumer that takes nothing stops the client reading: the server stops too, its
    reads bounded by its window and what the sockets hold; leaving early cancels."""
    dump = build_raw(tmp_path / "oldmem", 256 * MiB, fill=mixed)
    async with serving(tmp_path, dump.path) as server, \
            await AsyncClient.connect(server.config.server.socket) as client:
        assert server.engine is not None
        counters = server.engine.counters
        stream = client.stream(0, dump.size, compress="zlib")
        async for first in stream:
            assert isinstance(first, StreamPages) and first.offset == 0
            await until(lambda: counters.source_bytes_read > 4 * MiB)
            await asyncio.sleep(0.5)
            read = counters.source_bytes_read
            await asyncio.sleep(0.3)
            assert counters.source_bytes_read == read  # held back
            break
        # Its 4 MiB window and frames, the client's 4 MiB of pieces, the sockets' buffers:
        # about a third of the view bytes read is on the wire (the random pages).
        assert read <= 32 * MiB
        assert (await client.read(0, 16)) == file_bytes(dump.path, 0, 16)
        await until(lambda: not server.connections or all(
            not c._streams for c in server.connections))  # cancelled by leaving
        await until(lambda: client._streams == {})  # its cancel's reply came back


@pytest.mark.parametrize("compress", [None, "zlib"])
async def test_the_async_stream_gives_the_blocking_one_s_pieces(
        tmp_path: Path, compress: str | None) -> None:
    """Holes with their reasons (the hook's, zero pages), a chunk of the client's: the
    async client's holes, bytes and summary are the blocking one's (the blocking
    receiver cuts data where its reads end)."""
    path, size, _ = zeroed_dump(tmp_path, "elf")
    balloon = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    async with serving(tmp_path, path, hook="balloon", hook_options={"file": balloon}) as server:
        sock = server.config.server.socket
        blocking = await asyncio.to_thread(collect, sock, 0, size, compress, 16 * PAGE, True)
        async with await AsyncClient.connect(sock) as client:
            stream = client.stream(0, size, 16 * PAGE, zeros_as_holes=True, compress=compress)
            pieces = [p async for p in stream]
    assert not_data(pieces) == not_data(blocking[0])
    assert {p.reason for p in not_data(pieces) if isinstance(p, StreamHole)} == {
        "not_ram", "zero"}
    assert assemble(0, size, pieces, compress) == assemble(0, size, blocking[0], compress)
    assert stream.summary == blocking[1]


async def test_an_async_stream_cancelled_ends_with_its_summary(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 64 * MiB, fill=mixed)
    async with serving(tmp_path, dump.path) as server, \
            await AsyncClient.connect(server.config.server.socket) as client:
        stream = client.stream(0, dump.size, 16 * PAGE, compress="zlib")
        seen, cancelled = 0, None
        async for _ in stream:
            if cancelled is None:
                cancelled = await stream.cancel()
            seen += 1
        again = await stream.cancel()  # not running any more
    assert (cancelled, again) == (True, False)
    assert stream.summary is not None and stream.summary["cancelled"] is True
    assert 0 < stream.summary["bytes"] < dump.size
    assert seen * 16 * PAGE >= stream.summary["data_bytes"]


# -- what the client refuses -------------------------------------------------------------

INFO = {"version": "0", "protocol": 1, "size": 1 << 20, "page_size": PAGE, "codecs": ["zlib"]}
SUMMARY = {"bytes": 2 * PAGE, "data_bytes": 2 * PAGE, "hole_bytes": 0, "error_bytes": 0,
           "cancelled": False}


def pages_frame(offset: int, length: int, sizes: list[int], payload: bytes,
                msgid: int = 1) -> bytes:
    head = encode_bin_notification_head("stream.pages", [msgid, offset, length, sizes],
                                        len(payload))
    return head + payload


def received(frames: bytes, compress: str | None = "zlib") -> list[Any]:
    """The pieces the blocking client makes of `frames`, the answer (msgid 1, after
    `info`'s, msgid 0, which says the page size) to a stream asked to `compress` (or
    not), over a real socket pair."""
    mine, theirs = socket.socketpair()
    with mine, theirs, Client(mine) as client:
        theirs.sendall(msgpack.packb([1, 0, None, INFO]))
        client.info()
        theirs.sendall(frames + msgpack.packb([1, 1, None, SUMMARY]))
        pieces = [(p.offset, p.length, list(p.units()), bytes(p.data(codec("zlib"))))
                  if isinstance(p, StreamPages) else p
                  for p in client.stream(0, 1 << 20, compress=compress)]
        return pieces


def refused(frames: bytes, compress: str | None = "zlib") -> str:
    with pytest.raises(ProtocolViolation) as err:
        received(frames, compress)
    assert err.value.code == "EINVAL"
    return err.value.message


def test_the_client_takes_a_good_frame_and_refuses_malformed_ones() -> None:
    text = (b"compressible " * 400)[:PAGE]
    small = codec("zlib").compress(text)
    noise = random.Random(5).randbytes(100)
    good = pages_frame(PAGE - 100, PAGE + 100, [100, len(small)], noise + small)
    assert received(good) == [(PAGE - 100, PAGE + 100,
                               [(PAGE - 100, 100, memoryview(noise)),
                                (PAGE, PAGE, memoryview(small))], noise + text)]
    where = f"stream.pages at {PAGE - 100:#x}+{PAGE + 100:#x}"
    assert refused(pages_frame(PAGE - 100, PAGE + 100, [100, len(small)],
                               noise + small + b"x")) == (
        f"stream.pages sizes add up to {100 + len(small)}, its payload is "
        f"{101 + len(small)} bytes")
    assert refused(pages_frame(PAGE - 100, PAGE + 100, [100 + len(small)], noise + small)
                   ) == f"{where}: 1 sizes for 2 units of 4096 bytes"
    assert refused(pages_frame(PAGE - 100, PAGE + 100, [101, len(small) - 1], noise + small)
                   ) == f"{where}: the blob of the unit at {PAGE - 100:#x} is 101 bytes, " \
                        "its unit 100"
    assert refused(pages_frame(0, PAGE, [0], b"")).startswith(
        "stream.pages params must be [msgid, offset, length, sizes, bin], got ")
    assert refused(pages_frame(0, 0, [], b"")) == (
        "stream.pages at 0x0+0x0: the range is empty or past 2**64")
    corrupt = bytearray(small)
    corrupt[len(corrupt) // 2] ^= 0xFF
    assert refused(pages_frame(PAGE, PAGE, [len(small)], bytes(corrupt))).startswith(
        f"stream.pages unit at {PAGE:#x}: zlib: a compressed page does not decompress: ")
    shorter = codec("zlib").compress(text[:-1])  # decompresses to a byte less than its unit
    assert refused(pages_frame(PAGE, PAGE, [len(shorter)], shorter)).startswith(
        f"stream.pages unit at {PAGE:#x}: zlib: a compressed page does not decompress: ")
    assert refused(pages_frame(PAGE, PAGE, [len(small)], small), compress=None) == (
        f"stream.pages at {PAGE:#x}+{PAGE:#x} in a stream not asked to compress")


async def test_the_async_client_refuses_a_malformed_frame(tmp_path: Path) -> None:
    small = codec("zlib").compress(bytes(PAGE))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker()
        while data := await reader.read(65536):  # until the client gives up on it
            unpacker.feed(data)
            for request in unpacker:
                if request[2] == "info":
                    writer.write(msgpack.packb([1, request[1], None, INFO]))
                else:  # two units, one size
                    writer.write(pages_frame(PAGE - 1, 2, [len(small)], small, request[1]))
                await writer.drain()
        writer.close()

    path = str(tmp_path / "fake.sock")
    listener = await asyncio.start_unix_server(answer, path)
    try:
        async with await AsyncClient.connect(path) as client:
            with pytest.raises(ConnectionError) as err:
                async for _ in client.stream(0, 1 << 20, compress="zlib"):
                    pass
    finally:
        listener.close()
    cause = err.value.__cause__
    assert isinstance(cause, ProtocolViolation)
    assert cause.message == f"stream.pages at {PAGE - 1:#x}+0x2: 1 sizes for 2 units of 4096 bytes"


# -- fetch ---------------------------------------------------------------------------------

def tls_config(tmp_path: Path, pki: Pki, port: int) -> str:
    path = tmp_path / "dumpd.toml"
    path.write_text(f'[server]\ntcp = "127.0.0.1:{port}"\ntls_cert = "{pki.server_cert}"\n'
                    f'tls_key = "{pki.server_key}"\ntls_client_ca = "{pki.ca}"\n')
    return str(path)


def test_fetch_compresses_over_tls_by_default_and_not_over_a_unix_socket(
        tmp_path: Path, pki: Pki) -> None:
    dump = build_raw(tmp_path / "oldmem", 0x600 * PAGE, fill=mixed)
    hook = balloon_file(tmp_path / "balloon.txt", BALLOONED)
    port = free_port()
    tcp = ["--tcp", f"127.0.0.1:{port}", *pki.client_args()]
    copies = {name: tmp_path / name for name in ("unix", "tls", "tls-none", "tls-zlib")}
    with served(tmp_path, dump.path, "-c", tls_config(tmp_path, pki, port), "--hook",
                "balloon", "--hook-option", f"file={hook}") as sock:
        results = [run("fetch", "-q", "-o", str(copies["unix"]), "--socket", sock)]
        unix = stats_json(sock)
        piped = run("fetch", "-q", "-o", "-", "--wire-compress", "zlib", "--socket", sock)
        pipe = stats_json(sock)
        results.append(run("fetch", "-q", "--verify", "-o", str(copies["tls"]), *tcp))
        tls = stats_json(sock)
        results.append(run("fetch", "-q", "-o", str(copies["tls-none"]), "--wire-compress",
                           "none", *tcp))
        none = stats_json(sock)
        results.append(run("fetch", "-q", "-o", str(copies["tls-zlib"]), "--wire-compress",
                           "zlib", *tcp))
        zlib_stats = stats_json(sock)
        unknown = run("fetch", "-o", str(tmp_path / "x"), "--wire-compress", "lz4", *tcp)
    assert [(r.returncode, r.stderr) for r in [*results, piped]] == [(0, b"")] * 5
    view = expected_view(dump.path, dump.segments, ZERO_PFNS)
    for copy in copies.values():  # the hook's pages holes, the rest where it belongs
        assert copy.read_bytes() == view
    rearrange(piped.stdout, tmp_path / "piped")  # a pipe gets the kdump copy, flattened
    assert dict(pages(tmp_path / "piped")) == {
        pfn: view[pfn * PAGE : (pfn + 1) * PAGE] for pfn in range(dump.size // PAGE)
        if pfn not in ZERO_PFNS}
    ram = dump.size - len(ZERO_PFNS) * PAGE

    def sent(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, int]:
        streams, viewed, wire = (after[k] - before[k] for k in (
            "compressed_streams", "compressed_view_bytes", "compressed_wire_bytes"))
        return streams, viewed, wire

    assert unix["compressed_streams"] == unix["compressed_view_bytes"] == 0  # not asked
    streams, viewed, zlib_wire = sent(unix, pipe)  # asked: the RAM pages compressed
    assert (streams, viewed) == (1, ram) and 0 < zlib_wire < ram * 0.75
    streams, viewed, auto_wire = sent(pipe, tls)  # by default over TLS
    assert (streams, viewed) == (1, ram) and 0 < auto_wire < ram * 0.75
    assert sent(tls, none) == (0, 0, 0)
    assert sent(none, zlib_stats) == (1, ram, zlib_wire)  # the same pages, the same codec
    assert (auto_wire == zlib_wire) == ("zstd" not in CODECS)  # zstd's by default
    assert one_line_error(unknown, 2) == ("dumpd: fetch: --wire-compress lz4: EINVAL: unknown "
                                          "compression 'lz4' (expected zlib, lzo, snappy, "
                                          "zstd)")
    assert not (tmp_path / "x").exists()


def test_fetch_refuses_a_codec_the_server_does_not_offer(tmp_path: Path) -> None:
    from dumpd.errors import StartupError
    from dumpd.fetch.wire import wire_codec

    with pytest.raises(StartupError) as err:
        wire_codec("zlib", {"codecs": []}, True)
    assert str(err.value) == ("fetch: --wire-compress zlib: ENOSYS: the server does not "
                              "compress with it (it offers: none)")
    assert wire_codec("auto", {}, True) is None  # a server older than compression
    assert wire_codec("auto", {"codecs": ["zlib"]}, False) is None  # a Unix socket
    auto = wire_codec("auto", {"codecs": CODECS}, True)
    assert auto is not None and auto.name == ("zstd" if "zstd" in CODECS else "zlib")
