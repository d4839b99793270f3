"""Tests of the xen hook, run against the installed `dumpd_xen` package."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib
import json
import logging
import os
import struct
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import distribution, entry_points
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

import pytest
from dumpd.hooks.contract import (
    ENTRY_POINT_GROUP,
    ERROR,
    NOT_RAM,
    RAM,
    Closable,
    HookConfigError,
    PfnIsRam,
    PfnRangeIsRam,
    Reloadable,
)
from dumpd.hooks.discovery import load_hook
from dumpd.hooks.pfnrange import MAX_PFN, PFN_LIMIT
from dumpd.testing import HookConformance
from hypothesis import given, settings
from hypothesis import strategies as st

import dumpd_xen
from dumpd_xen import abi
from dumpd_xen.buffer import PAGE_SIZE
from dumpd_xen.memmap import FAILED, MapFormatError, MemTypeMap, parse_line
from dumpd_xen.privcmd import PrivcmdTransport
from dumpd_xen.stub import StubTransport
from dumpd_xen.transport import Transport

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
KNOWN = "ram_rw, ram_ro, mmio_dm, unused, ioreq_server, a number 0..65535 or fail"
LOGGER = "dumpd_xen"


def write(tmp_path: Path, text: str, name: str = "map.txt") -> str:
    """Write `text` to a map file under `tmp_path`; its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def stub(tmp_path: Path, text: str | None = None, **options: object) -> dumpd_xen.XenHook:
    """A hook made by the factory with the stub transport and, if given, a map of `text`."""
    if text is not None:
        options["map"] = write(tmp_path, text)
    return dumpd_xen.create({"transport": "stub", **options})


def calls(hook: dumpd_xen.XenHook) -> int:
    """How many calls the hook's transport has made."""
    transport = hook.transport
    assert isinstance(transport, StubTransport | PrivcmdTransport)
    return transport.calls


def unexpected_failure(pfn: int, code: int) -> str:
    """The warning a hook logs for its first unexpected failure."""
    return (f"xen: unexpected HVMOP_get_mem_type failure for pfn {pfn:#x}: "
            f"{os.strerror(code)} (errno {code}); pages without a memory type are read "
            "anyway (logged once)")


def expand(runs: Iterable[tuple[int, int]]) -> list[int]:
    """Runs as one verdict per pfn."""
    return [verdict for length, verdict in runs for _ in range(length)]


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The warnings the plugin logged about failed hypercalls."""
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# --- the ABI -------------------------------------------------------------------------


class CGetMemType(ctypes.Structure):
    """`struct xen_hvm_get_mem_type` as a C compiler lays it out."""

    _fields_ = (
        ("domid", ctypes.c_uint16),
        ("mem_type", ctypes.c_uint16),
        ("pad", ctypes.c_uint16 * 2),
        ("pfn", ctypes.c_uint64),
    )


class CPrivcmdHypercall(ctypes.Structure):
    """`struct privcmd_hypercall` as a C compiler lays it out."""

    _fields_ = (("op", ctypes.c_uint64), ("arg", ctypes.c_uint64 * 5))


def test_hypercall_numbers() -> None:
    assert abi.HYPERVISOR_HVM_OP == 34
    assert abi.HVMOP_GET_MEM_TYPE == 15
    assert abi.DOMID_SELF == 0x7FF0
    assert abi.MEM_TYPES == {
        "ram_rw": 0,
        "ram_ro": 1,
        "mmio_dm": 2,
        "unused": 3,
        "ioreq_server": 4,
    }


def test_get_mem_type_layout() -> None:
    assert abi.GET_MEM_TYPE.size == struct.calcsize("=HH2HQ") == 16
    assert ctypes.sizeof(CGetMemType) == 16
    assert {
        name: getattr(CGetMemType, name).offset for name in ("domid", "mem_type", "pad", "pfn")
    } == abi.GET_MEM_TYPE_OFFSETS
    assert abi.GET_MEM_TYPE_OFFSETS == {"domid": 0, "mem_type": 2, "pad": 4, "pfn": 8}
    c = CGetMemType.from_buffer_copy(abi.pack_get_mem_type(0x7FF0, 0x123456789ABCDEF0, 2))
    assert (c.domid, c.mem_type, list(c.pad), c.pfn) == (0x7FF0, 2, [0, 0], 0x123456789ABCDEF0)
    assert abi.unpack_get_mem_type(bytes(c)) == (0x7FF0, 2, 0x123456789ABCDEF0)


def test_privcmd_hypercall_layout() -> None:
    assert abi.PRIVCMD_HYPERCALL.size == struct.calcsize("=6Q") == 48
    assert ctypes.sizeof(CPrivcmdHypercall) == 48
    assert abi.PRIVCMD_HYPERCALL_OFFSETS == {"op": 0, "arg": 8}
    assert CPrivcmdHypercall.op.offset == 0
    assert CPrivcmdHypercall.arg.offset == 8
    call = abi.pack_hypercall(34, 15, 0xDEAD000)
    assert isinstance(call, bytearray)
    c = CPrivcmdHypercall.from_buffer_copy(call)
    assert (c.op, list(c.arg)) == (34, [15, 0xDEAD000, 0, 0, 0])
    assert abi.unpack_hypercall(call) == (34, (15, 0xDEAD000, 0, 0, 0))
    with pytest.raises(ValueError, match="at most 5 arguments"):
        abi.pack_hypercall(1, 1, 2, 3, 4, 5, 6)


def test_ioctl_number() -> None:
    assert abi.IOCTL_PRIVCMD_HYPERCALL == 0x00305000
    assert dumpd_xen.IOCTL_PRIVCMD_HYPERCALL == 0x00305000
    # IOCTL_PRIVCMD_MMAP: _IOC(_IOC_NONE, 'P', 2, sizeof(struct privcmd_mmap)), 16 bytes
    assert abi.ioc(0, "P", 2, 16) == 0x00105002
    # an _IOR for comparison: FIONREAD-like _IOR('T', 0x1B, int) on asm-generic
    assert abi.ioc(2, "T", 0x1B, 4) == 0x8004541B
    with pytest.raises(ValueError):
        abi.ioc(0, "P", 256, 0)


# --- privcmd: end to end through a fake hypervisor behind the ioctl --------------------


class FakeXen:
    """An `ioctl` that plays Xen: decodes the privcmd_hypercall and answers through memory."""

    def __init__(
        self,
        device: str,
        types: Mapping[int, int] | None = None,
        failing: Iterable[int] = (),
        how: str = "raise",
        domid: int = abi.DOMID_SELF,
    ) -> None:
        self.device = device
        self.types = dict(types or {})
        self.failing = set(failing)
        self.how = how
        self.domid = domid
        self.asked: list[int] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert request == 0x00305000
        assert isinstance(arg, bytearray) and len(arg) == 48
        assert os.fstat(fd).st_ino == os.stat(self.device).st_ino
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        op, *args = struct.unpack("=6Q", arg)
        assert op == 34
        assert args[0] == 15
        assert args[2:] == [0, 0, 0]
        domid, mem_type, pad0, pad1, pfn = struct.unpack("=HHHHQ", ctypes.string_at(args[1], 16))
        assert domid == self.domid
        assert (mem_type, pad0, pad1) == (0, 0, 0)
        self.asked.append(pfn)
        if pfn in self.failing:
            if self.how == "raise":
                raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
            return {"minus-one": -1, "minus-errno": -errno.EACCES, "positive": 1}[self.how]
        ctypes.memmove(args[1] + 2, struct.pack("=H", self.types.get(pfn, 0)), 2)
        return 0


@pytest.fixture
def privcmd_device(tmp_path: Path) -> str:
    """A regular file standing in for /dev/xen/privcmd (the fake ioctl never reads it)."""
    path = tmp_path / "privcmd"
    path.write_bytes(b"")
    return str(path)


@pytest.fixture
def hypercall_device(tmp_path: Path) -> str:
    """A one-page regular file standing in for /dev/xen/hypercall."""
    path = tmp_path / "hypercall"
    path.write_bytes(bytes(PAGE_SIZE))
    return str(path)


TYPES = {0x10: 2, 0x11: 1, 0x12: 3, 0x13: 4, 0x14: 7, 0x15: 0xFFFF, MAX_PFN: 2}


def smaps_entry(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping holding `address`."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        pytest.skip("no /proc/self/smaps")
    fields: dict[str, str] | None = None
    for line in lines:
        head = line.split()[0]
        if "-" in head and ":" not in head:
            if fields is not None:
                break
            low, high = (int(x, 16) for x in head.split("-"))
            if low <= address < high:
                fields = {}
        elif fields is not None:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    assert fields is not None, f"no mapping holds {address:#x}"
    return fields


def test_privcmd_with_the_hypercall_device(privcmd_device: str, hypercall_device: str) -> None:
    fake = FakeXen(privcmd_device, TYPES)
    transport = PrivcmdTransport(
        privcmd_device=privcmd_device, hypercall_device=hypercall_device, ioctl=fake
    )
    assert transport.buffer.kind == "device"
    hook = dumpd_xen.XenHook(transport)
    assert [hook.pfn_is_ram(p) for p in (0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16)] == [
        NOT_RAM,
        RAM,
        RAM,
        RAM,
        RAM,
        RAM,
        RAM,
    ]
    assert hook.pfn_is_ram(MAX_PFN) == NOT_RAM
    assert fake.asked == [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, MAX_PFN]
    assert transport.calls == 8
    # MAP_SHARED: the last struct went through the page of the device file
    with open(hypercall_device, "rb") as page:
        assert abi.unpack_get_mem_type(page.read(16)) == (0x7FF0, 2, MAX_PFN)
    hook.close()
    hook.close()
    assert transport.buffer.closed


def test_privcmd_with_a_locked_anonymous_buffer(tmp_path: Path, privcmd_device: str) -> None:
    fake = FakeXen(privcmd_device, TYPES)
    absent = str(tmp_path / "no-hypercall-device")
    transport = PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=absent, ioctl=fake)
    assert transport.buffer.kind == "locked"
    assert transport.buffer.address % PAGE_SIZE == 0
    fields = smaps_entry(transport.buffer.address)
    flags = fields["VmFlags"].split()
    assert "lo" in flags  # mlock'ed
    assert "dc" in flags  # MADV_DONTFORK: not copied into a child
    assert fields["Locked"] == f"{PAGE_SIZE // 1024} kB"
    hook = dumpd_xen.XenHook(transport)
    assert [hook.pfn_is_ram(p) for p in (0x0F, 0x10, 0x11)] == [RAM, NOT_RAM, RAM]
    assert fake.asked == [0x0F, 0x10, 0x11]
    hook.close()
    assert transport.buffer.closed


def test_privcmd_without_a_hypercall_device_option(privcmd_device: str) -> None:
    transport = PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=None)
    assert transport.buffer.kind == "locked"
    transport.close()


def test_privcmd_passes_the_domid(privcmd_device: str) -> None:
    fake = FakeXen(privcmd_device, {5: 2}, domid=7)
    hook = dumpd_xen.XenHook(PrivcmdTransport(7, privcmd_device, hypercall_device=None, ioctl=fake))
    assert hook.pfn_is_ram(5) == NOT_RAM
    hook.close()


def test_privcmd_batched_is_one_hypercall_per_pfn(privcmd_device: str) -> None:
    fake = FakeXen(privcmd_device, {3: 2, 4: 2, 5: 1, 8: 2})
    transport = PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=None, ioctl=fake)
    assert transport.mem_type_runs(0, 10) == [(3, 0), (2, 2), (1, 1), (2, 0), (1, 2), (1, 0)]
    hook = dumpd_xen.XenHook(transport)
    fake.asked.clear()
    assert hook.pfn_range_is_ram(0, 10) == [
        (3, RAM),
        (2, NOT_RAM),
        (3, RAM),
        (1, NOT_RAM),
        (1, RAM),
    ]
    assert fake.asked == list(range(10))
    assert hook.pfn_range_is_ram(2, 0) == []
    hook.close()


@pytest.mark.parametrize(
    ("how", "code"),
    [
        ("raise", errno.ENOSYS),
        ("minus-one", errno.EIO),
        ("minus-errno", errno.EACCES),
        ("positive", errno.EPROTO),
    ],
)
def test_privcmd_failure_is_an_error_logged_once(
    privcmd_device: str, caplog: pytest.LogCaptureFixture, how: str, code: int
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fake = FakeXen(privcmd_device, {1: 2}, failing={4, 5, 9}, how=how)
    transport = PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=None, ioctl=fake)
    with pytest.raises(OSError) as caught:
        transport.mem_type(4)
    assert caught.value.errno == code
    hook = dumpd_xen.XenHook(transport)
    assert hook.pfn_is_ram(4) == ERROR
    assert hook.pfn_is_ram(5) == ERROR
    assert hook.pfn_is_ram(1) == NOT_RAM
    assert hook.pfn_range_is_ram(0, 12) == [
        (1, RAM),
        (1, NOT_RAM),
        (2, RAM),
        (2, ERROR),
        (3, RAM),
        (1, ERROR),
        (2, RAM),
    ]
    assert hook.pfn_is_ram(9) == ERROR
    assert hook.failures == 6
    logged = failures_logged(caplog)
    assert len(logged) == 1
    message = logged[0].getMessage()
    assert "HVMOP_get_mem_type" in message
    assert "pfn 0x4" in message
    assert f"(errno {code})" in message
    # a second hook logs its own first failure
    other = dumpd_xen.XenHook(transport)
    assert other.pfn_is_ram(9) == ERROR
    assert len(failures_logged(caplog)) == 2
    hook.close()


def test_real_ioctl_on_a_file_that_is_not_privcmd(
    privcmd_device: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    hook = dumpd_xen.create(
        {
            "transport": "privcmd",
            "privcmd_device": privcmd_device,
            "hypercall_device": str(tmp_path / "absent"),
        }
    )
    assert isinstance(hook.transport, PrivcmdTransport)
    assert [hook.pfn_is_ram(p) for p in (1, 2, 3)] == [ERROR] * 3
    assert hook.pfn_range_is_ram(0, 4) == [(4, ERROR)]
    (record,) = failures_logged(caplog)
    assert record.getMessage() == unexpected_failure(1, errno.ENOTTY)
    hook.close()


def test_privcmd_reload_asks_the_hypervisor_again(privcmd_device: str) -> None:
    fake = FakeXen(privcmd_device, {1: 2})
    hook = dumpd_xen.XenHook(
        PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=None, ioctl=fake)
    )
    assert hook.pfn_is_ram(1) == NOT_RAM
    fake.types[1] = 0
    hook.reload()
    assert hook.pfn_is_ram(1) == RAM
    assert fake.asked == [1, 1]
    hook.close()


def test_privcmd_after_close(privcmd_device: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeXen(privcmd_device)
    transport = PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=None, ioctl=fake)
    hook = dumpd_xen.XenHook(transport)
    hook.close()
    hook.close()
    assert hook.pfn_is_ram(1) == ERROR
    assert hook.pfn_range_is_ram(0, 3) == [(3, ERROR)]
    assert fake.asked == []
    assert "closed" in repr(transport)


def test_privcmd_outside_64_bits(privcmd_device: str) -> None:
    fake = FakeXen(privcmd_device)
    transport = PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=None, ioctl=fake)
    with pytest.raises(OSError) as caught:
        transport.mem_type(PFN_LIMIT)
    assert caught.value.errno == errno.EINVAL
    assert transport.mem_type_runs(-2, 4) == [(2, -errno.EINVAL), (2, 0)]
    assert transport.mem_type_runs(PFN_LIMIT - 1, 3) == [(1, 0), (2, -errno.EINVAL)]
    hook = dumpd_xen.XenHook(transport)
    assert hook.pfn_is_ram(-1) == ERROR
    assert hook.pfn_range_is_ram(-2, 4) == [(2, ERROR), (2, RAM)]
    assert fake.asked == [0, 1, MAX_PFN, 0, 1]
    hook.close()


def test_transports_meet_the_protocol(tmp_path: Path, privcmd_device: str) -> None:
    privcmd = PrivcmdTransport(privcmd_device=privcmd_device, hypercall_device=None)
    assert isinstance(privcmd, Transport)
    assert isinstance(StubTransport(), Transport)
    privcmd.close()


# --- the stub map format -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("5 mmio_dm", (5, 6, 2)),
        ("0x10 ram_ro", (16, 17, 1)),
        ("0X1f unused", (31, 32, 3)),
        ("010 ioreq_server", (10, 11, 4)),
        ("10-20 ram_rw", (10, 21, 0)),
        ("0x10-0x1f mmio_dm", (16, 32, 2)),
        ("10 - 20 mmio_dm", (10, 21, 2)),
        ("10\t-\t0x14\tmmio_dm", (10, 21, 2)),
        ("10+5 fail", (10, 15, FAILED)),
        ("0x10 + 0x10 2", (16, 32, 2)),
        ("7 0", (7, 8, 0)),
        ("7 65535", (7, 8, 65535)),
        ("7 0xffff", (7, 8, 65535)),
        ("7 0x2", (7, 8, 2)),
        ("7 007", (7, 8, 7)),
        ("   7   mmio_dm   ", (7, 8, 2)),
        ("7 mmio_dm # ballooned", (7, 8, 2)),
        ("7 mmio_dm#no space", (7, 8, 2)),
        ("9 fail\r\n", (9, 10, FAILED)),
        (b"0x20-0x2f mmio_dm\n", (32, 48, 2)),
        ("0xffffffffffffffff mmio_dm", (MAX_PFN, PFN_LIMIT, 2)),
        ("0-0xffffffffffffffff ram_ro", (0, PFN_LIMIT, 1)),
        ("0+0x10000000000000000 fail", (0, PFN_LIMIT, FAILED)),
    ],
)
def test_map_line_forms(line: str | bytes, expected: tuple[int, int, int]) -> None:
    item = parse_line(line)
    assert item is not None
    assert (item.start, item.end, item.outcome) == expected


@pytest.mark.parametrize("line", ["", "   ", "\n", "\r\n", "# comment", "   # x 5 mmio_dm", "#"])
def test_map_blank_and_comment_lines(line: str) -> None:
    assert parse_line(line) is None


BAD_LINES = [
    ("0x10 mmoi_dm", f"unknown memory type 'mmoi_dm' (want {KNOWN})"),
    ("0x10 MMIO_DM", f"unknown memory type 'MMIO_DM' (want {KNOWN})"),
    ("0x10 HVMMEM_mmio_dm", f"unknown memory type 'HVMMEM_mmio_dm' (want {KNOWN})"),
    ("0x10 -1", f"unknown memory type '-1' (want {KNOWN})"),
    ("0x10 1.5", f"unknown memory type '1.5' (want {KNOWN})"),
    ("0x10 65536", "memory type 65536 is above 65535 (mem_type is 16 bits)"),
    ("0x10 0x10000", "memory type 0x10000 is above 65535 (mem_type is 16 bits)"),
    ("0x10 " + "9" * 5000, "memory type " + "9" * 5000 + " is above 65535 (mem_type is 16 bits)"),
    ("0x10", f"missing memory type after '0x10' (want {KNOWN})"),
    ("10 - 20", f"missing memory type after '10 - 20' (want {KNOWN})"),
    ("10+5", f"missing memory type after '10+5' (want {KNOWN})"),
    ("mmio_dm", "expected RANGE TYPE, got 'mmio_dm'"),
    ("0x20-0x10 mmio_dm", "END 0x10 is below START 0x20"),
    ("zz mmio_dm", "PFN 'zz' is not a decimal or 0x hex number"),
    ("5-zz fail", "END 'zz' is not a decimal or 0x hex number"),
    ("5+0 fail", "COUNT 0 must be at least 1"),
    ("1 2 mmio_dm", "expected PFN, START-END or START+COUNT, got '1 2'"),
    ("0x10 fail fail", "expected PFN, START-END or START+COUNT, got '0x10 fail'"),
    (
        "0x10000000000000000 ram_ro",
        "PFN 0x10000000000000000 is above the largest pfn 0xffffffffffffffff",
    ),
    (
        "0xffffffffffffffff+2 mmio_dm",
        "START+COUNT 0xffffffffffffffff+2 ends past the largest pfn 0xffffffffffffffff",
    ),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_malformed_map_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, f"# header\n\n1-2 mmio_dm\n0x10 ram_ro # fine\n\n   \n{line}\n99 fail\n")
    with pytest.raises(MapFormatError) as caught:
        stub(tmp_path, map=path)
    assert str(caught.value) == f"xen: {path}:7: {reason}"
    assert (caught.value.source, caught.value.line, caught.value.reason) == (path, 7, reason)
    assert isinstance(caught.value, HookConfigError)


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_parse_line_reasons(line: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_line(line)
    assert str(caught.value) == reason


def test_the_documented_error(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(f"{pfn} ram_rw\n" for pfn in range(1, 7)) + "0x10 mmoi_dm\n")
    with pytest.raises(
        HookConfigError, match=r"^xen: .*/map\.txt:7: unknown memory type 'mmoi_dm'"
    ):
        stub(tmp_path, map=path)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("0x10-0x1f mmio_dm\n0x18 ram_ro\n", 2, "0x18 overlaps 0x10-0x1f on line 1"),
        ("0x18 ram_ro\n0x10-0x1f mmio_dm\n", 2, "0x10-0x1f overlaps 0x18 on line 1"),
        ("5 ram_ro\n# again\n5 ram_ro\n", 3, "5 overlaps 5 on line 1"),
        ("0-100 fail\n50 fail\n200 mmio_dm\n10 - 20 ram_ro\n", 2, "50 overlaps 0-100 on line 1"),
        ("1+10 mmio_dm\n100 ram_ro\n0xa mmio_dm\n", 3, "0xa overlaps 1+10 on line 1"),
        ("100-200 ram_ro\n0-5 fail\n150 mmio_dm\n3 mmio_dm\n", 3, "150 overlaps 100-200 on line 1"),
        ("0-9 ram_ro\n20-29 fail\n5-25 mmio_dm\n", 3, "5-25 overlaps 0-9 on line 1"),
        ("20-29 ram_ro\n0-9 fail\n5-25 mmio_dm\n", 3, "5-25 overlaps 20-29 on line 1"),
    ],
)
def test_overlapping_lines(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MapFormatError) as caught:
        stub(tmp_path, map=path)
    assert str(caught.value) == f"xen: {path}:{line}: {reason}"


def test_adjacent_lines_do_not_overlap(tmp_path: Path) -> None:
    hook = stub(tmp_path, "0x10-0x1f mmio_dm\n0x20 mmio_dm\n0x0-0xf ram_ro\n")
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert list(transport.map) == [(0, 0x10, 1), (0x10, 0x21, 2)]


def test_a_syntax_error_wins_over_an_earlier_overlap(tmp_path: Path) -> None:
    path = write(tmp_path, "5 mmio_dm\n5 mmio_dm\nnope mmio_dm\n")
    with pytest.raises(MapFormatError) as caught:
        stub(tmp_path, map=path)
    assert caught.value.line == 3


def test_non_utf8_map_line(tmp_path: Path) -> None:
    path = tmp_path / "map.txt"
    path.write_bytes(b"1 mmio_dm\n2 fail # caf\xe9\n")
    with pytest.raises(HookConfigError) as caught:
        stub(tmp_path, map=str(path))
    assert str(caught.value) == f"xen: {path}:2: line is not UTF-8 text"


def test_missing_map(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.txt")
    with pytest.raises(HookConfigError) as caught:
        stub(tmp_path, map=path)
    assert str(caught.value) == f"xen: {path}: cannot read: No such file or directory"


def test_map_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(HookConfigError) as caught:
        stub(tmp_path, map=str(tmp_path))
    assert str(caught.value) == f"xen: {tmp_path}: cannot read: Is a directory"


def test_relative_map_path_is_named_as_the_absolute_path_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "5 bogus\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HookConfigError) as caught:
        dumpd_xen.create({"transport": "stub", "map": "map.txt"})
    assert str(caught.value) == (
        f"xen: {tmp_path / 'map.txt'}:1: unknown memory type 'bogus' (want {KNOWN})")


def test_map_accepts_a_path_object(tmp_path: Path) -> None:
    hook = dumpd_xen.create({"transport": "stub", "map": Path(write(tmp_path, "4 mmio_dm\n"))})
    assert hook.pfn_is_ram(4) == NOT_RAM


def test_memory_is_per_line_not_per_pfn(tmp_path: Path) -> None:
    hook = stub(tmp_path, "0-0xfffffffffffffffe mmio_dm\n")
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert len(transport.map) == 1
    assert hook.pfn_is_ram(2**63) == NOT_RAM
    assert hook.pfn_is_ram(MAX_PFN) == RAM
    assert hook.pfn_range_is_ram(0, PFN_LIMIT) == [(PFN_LIMIT - 1, NOT_RAM), (1, RAM)]


def test_mem_type_map_rejects_overlaps_and_bad_segments() -> None:
    with pytest.raises(ValueError, match="overlap at pfn 0x5"):
        MemTypeMap([(0, 10, 2), (5, 6, 1)])
    with pytest.raises(ValueError, match="bad segment"):
        MemTypeMap([(5, 5, 2)])
    with pytest.raises(ValueError, match="bad segment"):
        MemTypeMap([(0, PFN_LIMIT + 1, 2)])
    with pytest.raises(ValueError, match="bad failing range"):
        MemTypeMap([], [(-1, 3)])


def test_mem_type_map_normalises() -> None:
    segments = [(10, 20, 0), (20, 30, 2), (30, 40, 2), (41, 50, 2), (50, 51, 1)]
    assert list(MemTypeMap(segments)) == [(20, 40, 2), (41, 50, 2), (50, 51, 1)]
    assert MemTypeMap(segments) == MemTypeMap(reversed(segments))


# --- stub verdicts -----------------------------------------------------------------


def test_stub_verdict_per_type(tmp_path: Path) -> None:
    hook = stub(
        tmp_path,
        "1 ram_rw\n2 ram_ro\n3 mmio_dm\n4 unused\n5 ioreq_server\n6 2\n7 0x2\n8 99\n"
        "9 65535\n10 fail\n",
    )
    verdicts = {pfn: hook.pfn_is_ram(pfn) for pfn in range(12)}
    assert verdicts == {
        0: RAM,
        1: RAM,
        2: RAM,
        3: NOT_RAM,
        4: RAM,
        5: RAM,
        6: NOT_RAM,
        7: NOT_RAM,
        8: RAM,
        9: RAM,
        10: ERROR,
        11: RAM,
    }
    assert all(type(v) is int for v in verdicts.values())
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert [transport.mem_type(p) for p in (0, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 3, 4, 99, 65535]
    with pytest.raises(OSError) as caught:
        transport.mem_type(10)
    assert caught.value.errno == errno.ENOSYS


def test_stub_without_a_map_is_all_ram_rw() -> None:
    hook = dumpd_xen.create({"transport": "stub"})
    assert [hook.pfn_is_ram(p) for p in (0, 1, 2**40, MAX_PFN)] == [RAM] * 4
    assert hook.pfn_range_is_ram(0, 1000) == [(1000, RAM)]
    assert calls(hook) == 5
    hook.reload()
    assert hook.pfn_is_ram(0) == RAM


def test_stub_pfns_outside_64_bits(tmp_path: Path) -> None:
    hook = stub(tmp_path, "0-1 mmio_dm\n0xfffffffffffffffe-0xffffffffffffffff mmio_dm\n")
    assert [hook.pfn_is_ram(p) for p in (-1, PFN_LIMIT, 2**100)] == [ERROR] * 3
    assert hook.pfn_range_is_ram(-3, 6) == [(3, ERROR), (2, NOT_RAM), (1, RAM)]
    assert hook.pfn_range_is_ram(PFN_LIMIT - 3, 6) == [(1, RAM), (2, NOT_RAM), (3, ERROR)]
    assert hook.pfn_range_is_ram(PFN_LIMIT + 5, 4) == [(4, ERROR)]
    assert hook.pfn_range_is_ram(-10, 5) == [(5, ERROR)]
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert transport.mem_type_runs(-1, 3) == [(1, -errno.EINVAL), (2, 2)]
    with pytest.raises(OSError) as caught:
        transport.mem_type(-1)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="count must not be negative"):
        hook.pfn_range_is_ram(0, -1)


def test_stub_fail_lines_and_option(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    hook = stub(tmp_path, "10-19 mmio_dm\n30 fail\n", fail=["15-16", "0x28+2", "100"])
    assert [hook.pfn_is_ram(p) for p in (14, 15, 16, 17, 30, 39, 40, 41, 42, 100, 101)] == [
        NOT_RAM,
        ERROR,
        ERROR,
        NOT_RAM,
        ERROR,
        RAM,
        ERROR,
        ERROR,
        RAM,
        ERROR,
        RAM,
    ]
    assert hook.pfn_range_is_ram(8, 36) == [
        (2, RAM),
        (5, NOT_RAM),
        (2, ERROR),
        (3, NOT_RAM),
        (10, RAM),
        (1, ERROR),
        (9, RAM),
        (2, ERROR),
        (2, RAM),
    ]
    assert len(failures_logged(caplog)) == 1
    assert hook.failures == 2 + 1 + 2 + 1 + 2 + 1 + 2


def test_stub_fail_always(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    hook = stub(tmp_path, "3 mmio_dm\n", fail="always")
    assert [hook.pfn_is_ram(p) for p in (0, 3, MAX_PFN)] == [ERROR] * 3
    assert hook.pfn_range_is_ram(0, 2**40) == [(2**40, ERROR)]
    (record,) = failures_logged(caplog)
    assert record.getMessage() == unexpected_failure(0, errno.ENOSYS)


def test_stub_fail_option_survives_reload(tmp_path: Path) -> None:
    hook = stub(tmp_path, "1-9 mmio_dm\n", fail=["5"])
    write(tmp_path, "1-9 ram_ro\n")
    hook.reload()
    assert [hook.pfn_is_ram(p) for p in (4, 5, 6)] == [RAM, ERROR, RAM]


def slept(hook: dumpd_xen.XenHook) -> list[float]:
    """The seconds the hook's stub transport sleeps, recorded from now on instead."""
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert transport.sleep is time.sleep
    naps: list[float] = []
    transport.sleep = naps.append
    return naps


def test_delay_ms_is_taken_once_per_call(tmp_path: Path) -> None:
    hook = stub(tmp_path, "5 mmio_dm\n", delay_ms=20)
    naps = slept(hook)
    assert hook.pfn_is_ram(5) == NOT_RAM
    assert naps == [0.020]
    assert hook.pfn_range_is_ram(0, 1 << 20) == [(5, RAM), (1, NOT_RAM), ((1 << 20) - 6, RAM)]
    assert naps == [0.020, 0.020]
    assert calls(hook) == 2
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert transport.delay_ms == 20.0


def test_delay_ms_accepts_a_float(tmp_path: Path) -> None:
    hook = stub(tmp_path, None, delay_ms=0.5)
    naps = slept(hook)
    assert hook.pfn_is_ram(1) == RAM
    assert naps == [0.0005]


def test_no_delay_no_sleep(tmp_path: Path) -> None:
    hook = stub(tmp_path, None)
    naps = slept(hook)
    assert hook.pfn_is_ram(1) == RAM
    assert hook.pfn_range_is_ram(0, 8) == [(8, RAM)]
    assert (naps, calls(hook)) == ([], 2)


def test_one_stub_call_per_batched_query(tmp_path: Path) -> None:
    lines = "".join(
        f"{i * 10}-{i * 10 + 4} {('mmio_dm', 'ram_ro', 'fail')[i % 3]}\n" for i in range(500)
    )
    hook = stub(tmp_path, lines)
    before = calls(hook)
    runs = hook.pfn_range_is_ram(0, 5000)
    assert calls(hook) == before + 1
    assert sum(length for length, _ in runs) == 5000
    assert expand(runs) == [hook.pfn_is_ram(p) for p in range(5000)]
    assert calls(hook) == before + 1 + 5000


def test_batched_coalesces_types_with_the_same_verdict(tmp_path: Path) -> None:
    hook = stub(tmp_path, "0-9 ram_ro\n10-19 unused\n20 2\n21-29 0x2\n30-39 ioreq_server\n")
    assert hook.pfn_range_is_ram(0, 50) == [(20, RAM), (10, NOT_RAM), (20, RAM)]
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert transport.mem_type_runs(0, 50) == [(10, 1), (10, 3), (10, 2), (10, 4), (10, 0)]


@st.composite
def maps(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, str]]]:
    """A base pfn and disjoint `(start, end, TYPE)` lines near it, in random order."""
    base = draw(st.sampled_from([0, 2**32 - 300, 2**63 - 300, PFN_LIMIT - 700]))
    words = st.sampled_from(
        ["ram_rw", "ram_ro", "mmio_dm", "unused", "ioreq_server", "2", "0x2", "7", "fail"]
    )
    pos, lines = base, []
    for gap, length, word in draw(
        st.lists(st.tuples(st.integers(0, 30), st.integers(1, 40), words), max_size=20)
    ):
        start = pos + gap
        end = min(start + length, PFN_LIMIT)
        if start >= end:
            break
        lines.append((start, end, word))
        pos = end
    return base, draw(st.permutations(lines))


def map_text(lines: Iterable[tuple[int, int, str]], draw: Callable[[Any], Any]) -> str:
    """The lines as a map file, each range in a randomly chosen form."""
    out = ["# generated"]
    for start, end, word in lines:
        form = draw(st.sampled_from(["range", "count", "single"]))
        if form == "single" and end - start == 1:
            out.append(f"{start:#x} {word}")
        elif form == "count":
            out.append(f"{start} + {end - start}  {word}  # note")
        else:
            out.append(f"{start:#x}-{end - 1:#x} {word}")
    return "\n".join(out) + "\n"


def oracle(lines: list[tuple[int, int, str]], failing: list[tuple[int, int]], pfn: int) -> int:
    """The verdict the hook must give for `pfn`, from the lines read plainly."""
    if not 0 <= pfn < PFN_LIMIT:
        return ERROR
    if any(start <= pfn < end for start, end in failing):
        return ERROR
    for start, end, word in lines:
        if start <= pfn < end:
            return {"fail": ERROR, "mmio_dm": NOT_RAM, "2": NOT_RAM, "0x2": NOT_RAM}.get(word, RAM)
    return RAM


@settings(max_examples=150, deadline=None)
@given(maps(), st.integers(-50, 800), st.integers(0, 800), st.data())
def test_batched_agrees_with_single(
    tmp_path_factory: pytest.TempPathFactory,
    based: tuple[int, list[tuple[int, int, str]]],
    offset: int,
    count: int,
    data: st.DataObject,
) -> None:
    base, lines = based
    failing = data.draw(
        st.lists(st.tuples(st.integers(0, 700), st.integers(1, 30)), max_size=3).map(
            lambda spans: [
                (base + s, min(base + s + n, PFN_LIMIT)) for s, n in spans if base + s < PFN_LIMIT
            ]
        )
    )
    directory = tmp_path_factory.mktemp("map")
    options: dict[str, object] = {
        "transport": "stub",
        "map": write(directory, map_text(lines, data.draw)),
    }
    if failing:
        options["fail"] = [f"{s}-{e - 1}" for s, e in failing]
    hook = dumpd_xen.create(options)
    first = base + offset
    before = calls(hook)
    runs = hook.pfn_range_is_ram(first, count)
    asks = 1 if max(first, 0) < min(first + count, PFN_LIMIT) else 0
    assert calls(hook) == before + asks  # one stub call for the whole window
    assert sum(length for length, _ in runs) == count
    assert all(length > 0 for length, _ in runs)
    assert all(a[1] != b[1] for a, b in pairwise(runs))  # maximal runs
    window = range(first, first + count)
    assert expand(runs) == [hook.pfn_is_ram(pfn) for pfn in window]
    assert expand(runs) == [oracle(lines, failing, pfn) for pfn in window]


@settings(max_examples=100, deadline=None)
@given(maps(), st.lists(st.tuples(st.integers(-20, 800), st.integers(1, 60)), max_size=4))
def test_fail_ranges_override_the_map(
    based: tuple[int, list[tuple[int, int, str]]], spans: list[tuple[int, int]]
) -> None:
    base, lines = based
    failing = [
        (max(0, base + s), min(base + s + n, PFN_LIMIT))
        for s, n in spans
        if max(0, base + s) < min(base + s + n, PFN_LIMIT)
    ]
    outcome = {"fail": FAILED, **abi.MEM_TYPES, "2": 2, "0x2": 2, "7": 7}
    table = MemTypeMap([(s, e, outcome[w]) for s, e, w in lines], failing)
    segments = list(table)
    assert all(s < e for s, e, _ in segments)
    assert all(a[1] <= b[0] for a, b in pairwise(segments))
    assert all(o != 0 for _, _, o in segments)
    for pfn in range(max(0, base - 30), min(base + 900, PFN_LIMIT)):
        want = oracle(lines, failing, pfn)
        got = table.outcome(pfn)
        assert dumpd_xen.verdict_of(got) == want


# --- reload ------------------------------------------------------------------------


def test_reload_swaps_the_map(tmp_path: Path) -> None:
    hook = stub(tmp_path, "5 mmio_dm\n")
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    old = transport.map
    write(tmp_path, "6 mmio_dm\n7 fail\n")
    hook.reload()
    assert transport.map is not old
    assert transport.reloads == 1
    assert [hook.pfn_is_ram(p) for p in (5, 6, 7)] == [RAM, NOT_RAM, ERROR]


def test_bad_reload_keeps_the_old_map(tmp_path: Path) -> None:
    hook = stub(tmp_path, "5 mmio_dm\n")
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    old = transport.map
    path = write(tmp_path, "6 mmio_dm\n7 mmoi_dm\n")
    with pytest.raises(HookConfigError) as caught:
        hook.reload()
    assert str(caught.value) == f"xen: {path}:2: unknown memory type 'mmoi_dm' (want {KNOWN})"
    assert transport.map is old
    assert transport.reloads == 0
    assert [hook.pfn_is_ram(p) for p in (5, 6)] == [NOT_RAM, RAM]
    os.remove(path)
    with pytest.raises(HookConfigError, match="cannot read: No such file or directory"):
        hook.reload()
    assert transport.map is old


def test_hook_meets_the_contract(tmp_path: Path) -> None:
    hook = stub(tmp_path, "1 mmio_dm\n")
    assert isinstance(hook, PfnIsRam)
    assert isinstance(hook, PfnRangeIsRam)
    assert isinstance(hook, Reloadable)
    assert isinstance(hook, Closable)
    assert "StubTransport" in repr(hook)
    hook.close()
    hook.close()


# --- create(): options -------------------------------------------------------------

OPTION_ERRORS: list[tuple[dict[str, object], str]] = [
    (
        {"bogus": 1},
        "xen: unknown option 'bogus' (known: transport, domid, privcmd_device, "
        "hypercall_device, map, fail, delay_ms)",
    ),
    (
        {"path": "x", "device": "y", "transport": "stub"},
        "xen: unknown options 'device', 'path' (known: transport, domid, privcmd_device, "
        "hypercall_device, map, fail, delay_ms)",
    ),
    (
        {"transport": "xen"},
        'xen: option \'transport\' must be "auto", "privcmd" or "stub", got \'xen\'',
    ),
    ({"transport": 1}, 'xen: option \'transport\' must be "auto", "privcmd" or "stub", got 1'),
    ({"transport": "stub", "domid": -1}, "xen: option 'domid' must be an integer 0..65535, got -1"),
    (
        {"transport": "stub", "domid": 0x10000},
        "xen: option 'domid' must be an integer 0..65535, got 65536",
    ),
    (
        {"transport": "stub", "domid": "0"},
        "xen: option 'domid' must be an integer 0..65535, got '0'",
    ),
    (
        {"transport": "stub", "domid": True},
        "xen: option 'domid' must be an integer 0..65535, got True",
    ),
    (
        {"transport": "stub", "domid": 1.0},
        "xen: option 'domid' must be an integer 0..65535, got 1.0",
    ),
    ({"transport": "stub", "map": 5}, "xen: option 'map' must be a non-empty path, got 5"),
    ({"transport": "stub", "map": ""}, "xen: option 'map' must be a non-empty path, got ''"),
    (
        {"transport": "privcmd", "privcmd_device": None},
        "xen: option 'privcmd_device' must be a non-empty path, got None",
    ),
    (
        {"transport": "privcmd", "hypercall_device": b"/x"},
        "xen: option 'hypercall_device' must be a non-empty path, got b'/x'",
    ),
    ({"transport": "stub", "delay_ms": -1}, "xen: option 'delay_ms' must be a number >= 0, got -1"),
    (
        {"transport": "stub", "delay_ms": "5"},
        "xen: option 'delay_ms' must be a number >= 0, got '5'",
    ),
    (
        {"transport": "stub", "delay_ms": True},
        "xen: option 'delay_ms' must be a number >= 0, got True",
    ),
    (
        {"transport": "stub", "delay_ms": float("nan")},
        "xen: option 'delay_ms' must be a number >= 0, got nan",
    ),
    (
        {"transport": "stub", "delay_ms": float("inf")},
        "xen: option 'delay_ms' must be a number >= 0, got inf",
    ),
    (
        {"transport": "stub", "fail": "alwyas"},
        "xen: option 'fail' must be \"always\" or a list of pfn ranges, got 'alwyas'",
    ),
    (
        {"transport": "stub", "fail": 5},
        "xen: option 'fail' must be \"always\" or a list of pfn ranges, got 5",
    ),
    (
        {"transport": "stub", "fail": ["1", 2]},
        "xen: option 'fail' item 2 must be a pfn range string, got 2",
    ),
    (
        {"transport": "stub", "fail": ["1", "0x20-0x10"]},
        "xen: option 'fail' item 2 '0x20-0x10': END 0x10 is below START 0x20",
    ),
    (
        {"transport": "stub", "privcmd_device": "/dev/xen/privcmd"},
        'xen: option \'privcmd_device\' applies to transport "privcmd" only, not "stub"',
    ),
    (
        {"transport": "stub", "hypercall_device": "/dev/xen/hypercall"},
        'xen: option \'hypercall_device\' applies to transport "privcmd" only, not "stub"',
    ),
]


@pytest.mark.parametrize(("options", "message"), OPTION_ERRORS)
def test_option_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(HookConfigError) as caught:
        dumpd_xen.create(options)
    assert str(caught.value) == message
    assert "\n" not in message


@pytest.mark.parametrize(("name", "value"), [("map", "m.txt"), ("fail", "always"), ("delay_ms", 1)])
def test_stub_options_do_not_apply_to_privcmd(
    privcmd_device: str, name: str, value: object
) -> None:
    with pytest.raises(HookConfigError) as caught:
        dumpd_xen.create({"transport": "privcmd", "privcmd_device": privcmd_device, name: value})
    assert str(caught.value) == (
        f'xen: option {name!r} applies to transport "stub" only, not "privcmd"'
    )


def test_auto_without_privcmd_is_a_clear_error(tmp_path: Path) -> None:
    absent = str(tmp_path / "privcmd")
    with pytest.raises(HookConfigError) as caught:
        dumpd_xen.create({"privcmd_device": absent})
    assert str(caught.value) == (
        f'xen: transport "auto" found no {absent} (not a Xen guest, or xen-privcmd not loaded); '
        'set transport = "stub" for a stand-in hypervisor, or use another hook such as "balloon"'
    )


@pytest.mark.skipif(os.path.exists("/dev/xen/privcmd"), reason="this host is a Xen guest")
def test_auto_by_default_on_a_host_without_xen() -> None:
    with pytest.raises(
        HookConfigError, match=r'^xen: transport "auto" found no /dev/xen/privcmd \('
    ):
        dumpd_xen.create({})
    with pytest.raises(HookConfigError, match='set transport = "stub"'):
        load_hook("xen", {"transport": "auto"})


def test_auto_picks_privcmd_where_the_device_exists(privcmd_device: str) -> None:
    hook = dumpd_xen.create({"privcmd_device": privcmd_device, "hypercall_device": "/nonexistent"})
    assert isinstance(hook.transport, PrivcmdTransport)
    assert hook.transport.buffer.kind == "locked"
    hook.close()
    with pytest.raises(HookConfigError) as caught:
        dumpd_xen.create({"privcmd_device": privcmd_device, "map": "m.txt"})
    assert str(caught.value) == (
        'xen: option \'map\' applies to transport "stub" only, not "privcmd" '
        '(chosen by transport "auto")'
    )


def test_privcmd_device_that_cannot_be_opened(tmp_path: Path) -> None:
    absent = str(tmp_path / "privcmd")
    with pytest.raises(HookConfigError) as caught:
        dumpd_xen.create({"transport": "privcmd", "privcmd_device": absent})
    assert str(caught.value) == f"xen: {absent}: cannot open: No such file or directory"
    with pytest.raises(HookConfigError) as caught:
        dumpd_xen.create({"transport": "privcmd", "privcmd_device": str(tmp_path)})
    assert str(caught.value) == f"xen: {tmp_path}: cannot open: Is a directory"


def test_hypercall_device_that_cannot_be_mapped(privcmd_device: str, tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x")
    with pytest.raises(HookConfigError, match=r"^xen: cannot set up the hypercall buffer: "):
        dumpd_xen.create(
            {
                "transport": "privcmd",
                "privcmd_device": privcmd_device,
                "hypercall_device": str(short),
            }
        )


def test_domid_option(tmp_path: Path) -> None:
    hook = dumpd_xen.create({"transport": "stub", "domid": 0})
    transport = hook.transport
    assert isinstance(transport, StubTransport)
    assert transport.domid == 0
    assert dumpd_xen.parse_options({}).domid == 0x7FF0


def test_every_option_is_documented() -> None:
    readme = (PYPROJECT.parent / "README.md").read_text()
    for name in dumpd_xen.OPTIONS:
        assert f"| `{name}` |" in readme


# --- packaging ---------------------------------------------------------------------


def test_pyproject_declares_the_entry_point() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert (project["name"], project["version"], project["dependencies"]) == (
        "dumpd-xen",
        "0.1.0",
        ["dumpd"],
    )
    target = project["entry-points"][ENTRY_POINT_GROUP]["xen"]
    assert target == "dumpd_xen:create"
    module, _, attr = target.partition(":")
    assert getattr(importlib.import_module(module), attr) is dumpd_xen.create


def test_installed_entry_point_loads_the_factory() -> None:
    (entry,) = entry_points(group=ENTRY_POINT_GROUP, name="xen")
    assert entry.dist is not None
    assert (entry.dist.name, entry.dist.version) == ("dumpd-xen", "0.1.0")
    assert entry.load() is dumpd_xen.create


def test_load_hook_through_discovery(tmp_path: Path) -> None:
    hook = load_hook("xen", {"transport": "stub", "map": write(tmp_path, "9 mmio_dm\n")})
    assert isinstance(hook, dumpd_xen.XenHook)
    assert hook.pfn_is_ram(9) == NOT_RAM
    with pytest.raises(HookConfigError, match=r"^xen: unknown option 'nope'"):
        load_hook("xen", {"transport": "stub", "nope": 1})


def test_imported_from_the_installed_location() -> None:
    dist = distribution("dumpd-xen")
    module = Path(dumpd_xen.__file__).resolve()
    assert module.name == "__init__.py"
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        source = Path(unquote(urlparse(json.loads(direct)["url"]).path)).resolve()
        assert module == source / "dumpd_xen" / "__init__.py"
    else:
        assert module == Path(str(dist.locate_file("dumpd_xen/__init__.py"))).resolve()
    assert Path(__file__).resolve().parent not in module.parents


# --- the conformance kit -----------------------------------------------------------

CONFORMANCE_MAP = """\
# a 4 GiB guest: a ballooned GiB, an emulated hole, a read-only page, failing pfns
0x40000-0x7ffff mmio_dm
0xf0000+0x100    2
0x1234           ram_ro
0x2000-0x200f    fail
0x3000           ioreq_server
0x3001           unused
"""


class TestXenStubConformance(HookConformance):
    hook_name = "xen"
    expected: ClassVar[Mapping[int, int]] = {
        0: RAM,
        0x3FFFF: RAM,
        0x40000: NOT_RAM,
        0x7FFFF: NOT_RAM,
        0x80000: RAM,
        0xF0000: NOT_RAM,
        0xF00FF: NOT_RAM,
        0xF0100: RAM,
        0x1234: RAM,
        0x3000: RAM,
        0x3001: RAM,
    }
    error_pfns: ClassVar[tuple[int, ...]] = (0x2000, 0x2005, 0x200F)

    @pytest.fixture
    def hook_options(self, tmp_path: Path) -> dict[str, Any]:
        return {"transport": "stub", "map": write(tmp_path, CONFORMANCE_MAP)}

    def change_data(self, options: Mapping[str, object]) -> Mapping[int, int] | None:
        Path(str(options["map"])).write_text("0x40000 ram_rw\n0x80000-0x8ffff mmio_dm\n")
        return {0x40000: RAM, 0x50000: RAM, 0x80000: NOT_RAM, 0x8FFFF: NOT_RAM, 0x2000: RAM}

    def corrupt_data(self, options: Mapping[str, object]) -> bool:
        Path(str(options["map"])).write_text("0x80000 mmio_dm\n0x90000 mmoi_dm\n")
        return True


class TestXenStubFailAlwaysConformance(HookConformance):
    hook_name = "xen"
    error_pfns: ClassVar[tuple[int, ...]] = (0, 1, 0xFFFF_FFFF)

    @pytest.fixture
    def hook_options(self) -> dict[str, Any]:
        return {"transport": "stub", "fail": "always"}
