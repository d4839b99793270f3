"""Stock msgpack-RPC clients, by their exact bytes on the wire, against a real
`dumpd serve` over a plain socket (docs/protocol.md, "Compatibility with stock clients").

The clients are not installed: their frames are written out here, byte for byte, as
their encoders produce them (the sources are named at each frame).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import msgpack

from dumpd.protocol import encode_bin_notification_head, encode_response
from tests.daemon import log_lines, served, server_pid, stats_json
from tests.dumps import build_raw, file_bytes, patch

PAGE = 4096
GiB = 1 << 30

# pynvim (github.com/neovim/pynvim, pynvim/msgpack_rpc/__init__.py, `session`): the first
# frame of every session is the notification
#   session.request(b'nvim_set_client_info', *get_client_info('client', 'remote', {}),
#                   async_=True)
# i.e. [2, b"nvim_set_client_info", ("python3-client", VERSION.__dict__, "remote", {},
# {"license": "Apache v2", "website": "github.com/neovim/pynvim"})], packed by
# pynvim/msgpack_rpc/msgpack_stream.py's `Packer(unicode_errors='surrogateescape')`
# (msgpack >= 1.0: use_bin_type on, so the bytes method goes as bin8, c4 14). VERSION is
# pynvim/_version.py's SimpleNamespace(major=0, minor=6, patch=1, prerelease="dev0").
PYNVIM_SET_CLIENT_INFO = bytes.fromhex(
    "9302c4146e76696d5f7365745f636c69656e745f696e666f95ae707974686f6e332d636c69656e74"
    "84a56d616a6f7200a56d696e6f7206a5706174636801aa70726572656c65617365a464657630a672"
    "656d6f74658082a76c6963656e7365a9417061636865207632a777656273697465b8676974687562"
    "2e636f6d2f6e656f76696d2f70796e76696d"
)
# Then `session.request(b'read', 0, 16)`: AsyncSession.request sends
# [0, request_id, method, args] with request ids from 1: [0, 1, b"read", (0, 16)].
PYNVIM_READ = bytes.fromhex("94 00 01 c4 04 72 65 61 64 92 00 10")

# msgpack-lite (github.com/kawanet/msgpack-lite, lib/write-type.js `number`): a number
# whose `value | 0` (int32) differs from it is written as float64 (token 0xcb,
# writeDoubleBE): every integer from 2**31 up. `[0, 1, "read", [4294967296, 16]]`:
MSGPACK_LITE_READ_4G = bytes.fromhex(
    "94 00 01 a4 72 65 61 64 92"  # [0, 1, "read", [   (fixarray, fixint, fixstr)
    "cb 41 f0 00 00 00 00 00 00"  # 4294967296 as float64 (2**32)
    "10"  # 16, a positive fixint
)
# `[0, 2, "read", [2147483648, 16]]`: 2**31 already goes as float64 (int32 overflows).
MSGPACK_LITE_READ_2G = bytes.fromhex("94 00 02 a4 72 65 61 64 92 cb 41 e0 00 00 00 00 00 00 10")
# `[0, 3, "stream", [4294967296, 8192, {chunk: 4096}]]`: small numbers stay ints
# (uint16 cd), the map key is a fixstr.
MSGPACK_LITE_STREAM_4G = bytes.fromhex(
    "94 00 03 a6 73 74 72 65 61 6d 93 cb 41 f0 00 00 00 00 00 00 cd 20 00"
    "81 a5 63 68 75 6e 6b cd 10 00"
)


def talk(sock_path: str, data: bytes) -> bytes:
    """Send `data` on a plain socket, half-close, and return every byte until EOF."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(sock_path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    return bytes(received)


def test_the_frames_are_what_the_clients_encoders_produce() -> None:
    """The hex above against the Python encoder pynvim uses, configured as pynvim does."""
    packer = msgpack.Packer(unicode_errors="surrogateescape")
    info = ("python3-client", {"major": 0, "minor": 6, "patch": 1, "prerelease": "dev0"},
            "remote", {}, {"license": "Apache v2", "website": "github.com/neovim/pynvim"})
    assert packer.pack([2, b"nvim_set_client_info", info]) == PYNVIM_SET_CLIENT_INFO
    assert packer.pack([0, 1, b"read", (0, 16)]) == PYNVIM_READ
    lite = msgpack.Packer(use_single_float=False)
    assert lite.pack([0, 1, "read", [float(2**32), 16]]) == MSGPACK_LITE_READ_4G
    assert lite.pack([0, 2, "read", [float(2**31), 16]]) == MSGPACK_LITE_READ_2G
    assert lite.pack([0, 3, "stream", [float(2**32), 8192, {"chunk": 4096}]]
                     ) == MSGPACK_LITE_STREAM_4G


def test_a_pynvim_session_connects_and_reads(tmp_path: Path) -> None:
    """Its first frame, a notification whose method is bin, gets no reply and does not
    close the connection (it is counted and logged at debug level); its request, method
    as bin too, gets the exact reply."""
    dump = build_raw(tmp_path / "oldmem", 4 * PAGE)
    with served(tmp_path, dump.path, "--log-level", "debug") as sock:
        reply = talk(sock, PYNVIM_SET_CLIENT_INFO + PYNVIM_READ)
        # [1, 1, nil, <16 bytes>]: bin8 of 16 bytes, nothing before it, nothing after.
        assert reply == bytes.fromhex("94 01 01 c0 c4 10") + file_bytes(dump.path, 0, 16)
        assert stats_json(sock)["notifications_ignored"] == 1
        pid = server_pid(sock)
    log = log_lines(tmp_path / "serve.log", pid)
    ignored = [line for line in log if "ignored" in line]
    assert len(ignored) == 1, log  # `talk`'s connection: the first (served() opens none)
    assert re.fullmatch(rf"DEBUG: connection 1 \(uid {os.getuid()} pid {os.getpid()}\): "
                        r"ignored a notification: 'nvim_set_client_info'", ignored[0]), log


def test_a_msgpack_lite_client_reads_above_4_gib(tmp_path: Path) -> None:
    """Offsets sent as float64, as Node's msgpack-lite sends every integer from 2**31:
    `read` and `stream` answer the bytes at those offsets, exactly."""
    path = tmp_path / "oldmem"
    with open(path, "wb") as f:  # sparse: 4 GiB + a page of which two pages are written
        f.truncate(4 * GiB + PAGE)
    marks = {2 * GiB: bytes(range(0x20, 0x30)), 4 * GiB: bytes(range(0xA0, 0xB0))}
    for offset, data in marks.items():
        patch(path, offset, data)
    head = bytes.fromhex("94 01 01 c0 c4 10")  # [1, 1, nil, bin8(16)]
    with served(tmp_path, str(path), "--kind", "raw") as sock:
        assert talk(sock, MSGPACK_LITE_READ_4G) == head + marks[4 * GiB]
        assert talk(sock, MSGPACK_LITE_READ_2G) == bytes.fromhex(
            "94 01 02 c0 c4 10") + marks[2 * GiB]
        page = marks[4 * GiB] + bytes(PAGE - 16)
        assert talk(sock, MSGPACK_LITE_STREAM_4G) == b"".join([
            encode_bin_notification_head("stream.data", [3, 4 * GiB], PAGE), page,
            encode_response(3, {"bytes": PAGE, "data_bytes": PAGE, "hole_bytes": 0,
                                "error_bytes": 0, "cancelled": False}),
        ])
        # A float beyond 2**53 (or not integral) is no integer: EINVAL, as before.
        beyond = msgpack.packb([0, 4, "read", [float(2**53 + 2), 16]])
        assert msgpack.unpackb(talk(sock, beyond)) == [1, 4, [
            "EINVAL", "offset must be an unsigned int (a float only if integral, at most "
            "2**53), got float 9007199254740994.0"], None]
