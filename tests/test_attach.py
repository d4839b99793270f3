"""Hooks that read the dump they judge (`attach`), through the real server and CLI: what
they are given, that their reads ask no verdicts, and refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dumpd.client.errors import RemoteError
from tests.dumps import SegSpec, build_elf, file_bytes
from tests.plugindist import write_distribution
from tests.servers import client_of, serving, until

PAGE = 4096
INFO = {"OSRELEASE": "6.1.0-test", "SYMBOL(init_top_pgt)": "ffffffff82a0a000"}

PEEK = '''
import json
from dumpd.errors import DumpdError
from dumpd.hooks.contract import HookConfigError

LOG = []  # what attach saw and every read the hook made, for the test to look at


class Peek:
    """Not RAM: the pfns whose first byte (read from the dump itself) is 0x5a."""

    def __init__(self, options):
        self.refuse = options.get("refuse", "")
        self.dump = None

    def attach(self, dump):
        if self.refuse == "config":
            raise HookConfigError("peek: refused by its options")
        if self.refuse == "nosys":
            raise DumpdError("ENOSYS", "VMCOREINFO has no NUMBER(PG_hwpoison)")
        if self.refuse == "crash":
            raise KeyError("boom")
        self.dump = dump
        LOG.append(json.dumps({"page_size": dump.page_size, "arch": dump.arch,
                               "vmcoreinfo": dump.vmcoreinfo,
                               "pfn_ranges": [list(r) for r in dump.pfn_ranges]}))

    def pfn_is_ram(self, pfn):
        first = self.dump.read_phys(pfn * 4096, 1)
        LOG.append(pfn)
        return 0 if first == b"\\x5a" else 1

    def explain(self, first_pfn, count):
        return [(1, "" if self.pfn_is_ram(p) else "marked") for p in
                range(first_pfn, first_pfn + count)]

    def close(self):
        LOG.append("closed")


def create(options):
    return Peek(options)
'''


@pytest.fixture
def peek(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The distribution `peek` installed for this process; its LOG."""
    site = write_distribution(tmp_path / "site", "peek", "peek_hooks", PEEK,
                              {"peek": "peek_hooks:create"})
    monkeypatch.syspath_prepend(str(site))
    import peek_hooks  # type: ignore[import-not-found]

    log: list[object] = peek_hooks.LOG
    log.clear()
    return log


def marked(path: Path) -> str:
    """An ELF core of 8 pages from pfn 0x10 with pfns 0x12 and 0x15 starting with 0x5a."""
    def fill(paddr: int, length: int) -> bytes:
        out = bytearray(b"\x11" * length)
        for pfn in (0x12, 0x15):
            at = pfn * PAGE - paddr
            if 0 <= at < length:
                out[at] = 0x5A
        return bytes(out)
    return build_elf(path, [SegSpec(paddr=0x10 * PAGE, memsz=8 * PAGE)], vmcoreinfo=INFO,
                     page_size_note=PAGE, fill=fill).path


async def test_attach_gets_the_dump_and_its_reads_ask_no_verdicts(
        tmp_path: Path, peek: list[object]) -> None:
    dump = marked(tmp_path / "vmcore")
    async with serving(tmp_path, dump, hook="peek") as server, client_of(server) as client:
        seen = json.loads(str(peek[0]))
        data = await client.read_phys(0x10 * PAGE, 8 * PAGE)
        stats = await client.stats()
    note = "PAGESIZE=4096\nOSRELEASE=6.1.0-test\nSYMBOL(init_top_pgt)=ffffffff82a0a000\n"
    assert note.encode() in file_bytes(dump)
    await until(lambda: "closed" in peek)  # closed on the hook's thread after shutdown
    assert seen == {"page_size": PAGE, "arch": "x86_64", "vmcoreinfo": note,
                    "pfn_ranges": [[0x10, 0x18]]}
    assert peek[1:] == [*range(0x10, 0x18), "closed"]  # one verdict per pfn, no recursion
    expected = b"".join(bytes(PAGE) if pfn in (0x12, 0x15) else
                        b"\x11" * PAGE for pfn in range(0x10, 0x18))
    assert data == expected
    assert (stats["pfns_asked"], stats["hook_calls"]) == (8, 8)


@pytest.mark.parametrize(("refuse", "code", "message"), [
    ("config", "EINVAL", "peek: refused by its options"),
    ("nosys", "ENOSYS", "VMCOREINFO has no NUMBER(PG_hwpoison)"),
    ("crash", "EINVAL", "hook 'peek': attach: KeyError: 'boom'"),
])
async def test_a_refused_attach_is_one_line_and_the_hook_is_closed(
        tmp_path: Path, peek: list[object], refuse: str, code: str, message: str) -> None:
    dump = marked(tmp_path / "vmcore")
    async with serving(tmp_path, dump) as server, client_of(server) as client:
        with pytest.raises(RemoteError) as caught:
            await client.hook_register("peek", {"refuse": refuse})
        assert (caught.value.code, caught.value.message) == (code, message)
        assert (await client.info())["hook"] is None
    assert peek == ["closed"]
