"""What dumpd reads of the dead kernel: VMCOREINFO, kernel virtual addresses through its
page tables, its mem_map; on synthetic kernels (dumpd.testing.kernel, written from the
kernel's definitions) through the real server and CLI, and on the lab's real dump
when this machine has one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dumpd.client.errors import RemoteError
from dumpd.errors import DumpdError
from dumpd.kernel.sparsemem import MemMap
from dumpd.kernel.vmcoreinfo import MissingInfo, VmcoreInfo
from dumpd.kernel.x86_64 import PageTables
from dumpd.sources import open_source
from dumpd.testing.kernel import SyntheticKernel
from tests.daemon import ok, one_line_error, run, served
from tests.dumps import SegSpec, build_elf
from tests.servers import client_of, serving

PAGE = 4096
REAL = Path("/var/tmp/dumpd-lab/fetched.vmcore")
SHAPES = [(levels, kaslr, sme) for levels in (4, 5) for kaslr in (False, True)
          for sme in (False, True)]


def kernel_core(tmp_path: Path, **shape: object) -> tuple[SyntheticKernel, str]:
    kernel = SyntheticKernel(**shape)  # type: ignore[arg-type]
    path = str(tmp_path / "vmcore")
    kernel.write(path)
    return kernel, path


# -- VMCOREINFO --------------------------------------------------------------------------


def test_vmcoreinfo_lookups_are_typed() -> None:
    info = VmcoreInfo("OSRELEASE=6.12.3-1-amd64\nPAGESIZE=4096\nSYMBOL(init_top_pgt)="
                      "ffffffff82a0a000\nSIZE(page)=64\nOFFSET(page.flags)=0\n"
                      "LENGTH(mem_section)=2048\nNUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n"
                      "KERNELOFFSET=1e000000\nCRASHTIME=1796173927\nSIZE(page)=99\n")
    assert (info.symbol("init_top_pgt"), info.size("page"), info.offset("page.flags"),
            info.length("mem_section"), info.number("PAGE_BUDDY_MAPCOUNT_VALUE")) == (
        0xFFFFFFFF82A0A000, 64, 0, 2048, -129)  # the first SIZE(page) wins
    assert (info.osrelease, info.kernel_version, info.page_size, info.kernel_offset,
            info.crashtime) == ("6.12.3-1-amd64", (6, 12, 3), 4096, 0x1E000000, 1796173927)
    assert info.symbol("mem_section") is None and info.get("NUMBER(phys_base)") is None


def test_vmcoreinfo_refuses_what_it_lacks_in_one_line() -> None:
    info = VmcoreInfo("OSRELEASE=5.14.0\nNUMBER(phys_base)=zero\n")
    with pytest.raises(MissingInfo) as lacking:
        info.require_number("PG_hwpoison")
    assert (lacking.value.code, lacking.value.message) == (
        "ENOSYS", "VMCOREINFO has no NUMBER(PG_hwpoison)")
    with pytest.raises(MissingInfo) as bad:
        info.number("phys_base")
    assert bad.value.message == "VMCOREINFO NUMBER(phys_base)='zero' is not a number"


# -- page tables and mem_map on synthetic kernels ---------------------------------------


@pytest.mark.parametrize(("levels", "kaslr", "sme"), SHAPES)
def test_page_tables_translate_every_marker(tmp_path: Path, levels: int, kaslr: bool,
                                            sme: bool) -> None:
    kernel, path = kernel_core(tmp_path, levels=levels, kaslr=kaslr, sme=sme)
    source = open_source(path)
    try:
        tables = PageTables(VmcoreInfo(source.vmcoreinfo_text or ""), source.read_phys)
        assert tables.levels == levels
        for name, (vaddr, data) in kernel.markers.items():
            assert tables.read_virt(vaddr, len(data)) == data, name
        for level, vaddr in kernel.unmapped.items():
            with pytest.raises(DumpdError) as unmapped:
                tables.translate(vaddr)
            assert unmapped.value.code == "ERANGE", level
            assert unmapped.value.message.startswith(f"virtual address {vaddr:#x} is not "
                                                     "mapped (no "), level
    finally:
        source.close()


@pytest.mark.parametrize(("levels", "kaslr"), [(4, True), (5, False)])
def test_mem_map_holds_each_pfns_struct_page(tmp_path: Path, levels: int, kaslr: bool) -> None:
    kernel, path = kernel_core(tmp_path, levels=levels, kaslr=kaslr)
    source = open_source(path)
    try:
        info = VmcoreInfo(source.vmcoreinfo_text or "")
        memmap = MemMap(info, PageTables(info, source.read_phys))
        present = {}
        for pfn, count, paddr in memmap.struct_pages(0, max(kernel.kinds) + 1):
            present.update((pfn + i, paddr + i * 64) for i in range(count))
        with_map = {pfn for pfn in kernel.kinds if not 12288 <= pfn < 12544}
        assert set(present) >= with_map and not set(present) & set(range(12288, 12544))
        for pfn in sorted(with_map)[::97]:
            assert source.read_phys(present[pfn], 64) == kernel.struct_page(pfn), hex(pfn)
    finally:
        source.close()


# -- read_virt and the crash context through the server ---------------------------------


async def test_read_virt_and_the_crash_context_through_the_server(tmp_path: Path) -> None:
    kernel, path = kernel_core(tmp_path, levels=4, kaslr=True, sme=True)
    async with serving(tmp_path, path) as server, client_of(server) as client:
        for name, (vaddr, data) in kernel.markers.items():
            assert await client.read_virt(vaddr, len(data)) == data, name
        with pytest.raises(RemoteError) as unmapped:
            await client.read_virt(kernel.unmapped["pmd"], 16)
        assert unmapped.value.code == "ERANGE"
        assert unmapped.value.message == (f"virtual address {kernel.unmapped['pmd']:#x} is "
                                          "not mapped (no PMD entry)")
        text = await client.vmcoreinfo()
        context = (await client.info())["kernel"]
    assert text == kernel.vmcoreinfo
    info = VmcoreInfo(kernel.vmcoreinfo)
    assert context == {"vmcoreinfo": "the ELF note", "osrelease": info.osrelease,
                       "arch": "x86_64", "crashtime": info.crashtime, "page_size": PAGE,
                       "kernel_offset": info.kernel_offset}


def raw_image(path: Path, kernel_path: str) -> None:
    """Physical memory as /dev/oldmem has it: every byte at its own address (sparse)."""
    source = open_source(kernel_path)
    try:
        with open(path, "wb") as out:
            for run_ in source.phys_map:
                out.seek(run_.start)
                out.write(source.read_phys(run_.start, run_.end - run_.start))
    finally:
        source.close()


async def test_a_raw_dump_with_its_vmcoreinfo_as_a_file(tmp_path: Path) -> None:
    kernel, path = kernel_core(tmp_path, levels=5, kaslr=True)
    raw, note = tmp_path / "oldmem", tmp_path / "vmcoreinfo"
    raw_image(raw, path)
    note.write_text(kernel.vmcoreinfo)
    async with serving(tmp_path, raw, kind="raw", vmcoreinfo=str(note)) as server, \
            client_of(server) as client:
        vaddr, data = kernel.markers["direct_1g"]
        assert await client.read_virt(vaddr, len(data)) == data
        context = (await client.info())["kernel"]
    assert (context["vmcoreinfo"], context["arch"]) == (str(note), "x86_64")


async def test_no_vmcoreinfo_or_another_arch_is_enosys(tmp_path: Path) -> None:
    bare = build_elf(tmp_path / "bare", [SegSpec(paddr=0, memsz=4 * PAGE)]).path
    arm = build_elf(tmp_path / "arm", [SegSpec(paddr=0, memsz=4 * PAGE)], machine=183,
                    vmcoreinfo={"OSRELEASE": "6.8.0"}).path
    async with serving(tmp_path, bare) as server, client_of(server) as client:
        for call in (client.read_virt(0xFFFFFFFF81000000, 8), client.vmcoreinfo()):
            with pytest.raises(RemoteError) as lacking:
                await call
            assert (lacking.value.code, lacking.value.message) == (
                "ENOSYS", f"{bare}: no VMCOREINFO: its ELF core has no VMCOREINFO note; "
                "give one as a file (source.vmcoreinfo, --vmcoreinfo FILE)")
    (tmp_path / "dumpd.sock").unlink(missing_ok=True)
    async with serving(tmp_path, arm) as server, client_of(server) as client:
        with pytest.raises(RemoteError) as other:
            await client.read_virt(0xFFFF800000000000, 8)
        assert (other.value.code, other.value.message) == (
            "ENOSYS", "kernel virtual addresses are translated for x86_64 only; this dump "
            "is aarch64")


def test_the_cli_reads_virtual_addresses_and_shows_the_kernel(tmp_path: Path) -> None:
    kernel, path = kernel_core(tmp_path, levels=4, kaslr=False)
    vaddr, data = kernel.markers["vmalloc_split"]
    with served(tmp_path, path) as sock:
        out = tmp_path / "marker.bin"
        ok("read", "--virt", hex(vaddr), str(len(data)), "-o", str(out), "--socket", sock)
        lines = ok("info", "--socket", sock).splitlines()
        text = ok("info", "--vmcoreinfo", "--socket", sock)
        unmapped = one_line_error(run("read", "--virt", hex(kernel.unmapped["pud"]), "8",
                                      "--socket", sock), 1)
    assert out.read_bytes() == data
    info = VmcoreInfo(kernel.vmcoreinfo)
    assert f"kernel   {info.osrelease} x86_64" in lines[3]
    assert lines[3].endswith(f", KERNELOFFSET {info.kernel_offset:#x} (VMCOREINFO from the "
                             "ELF note)")
    assert text == kernel.vmcoreinfo
    assert unmapped == (f"dumpd: ERANGE: virtual address {kernel.unmapped['pud']:#x} is not "
                        "mapped (no PUD entry)")


def test_a_vmcoreinfo_file_is_refused_in_one_line(tmp_path: Path) -> None:
    kernel, path = kernel_core(tmp_path, levels=4, kaslr=False)
    note, junk = tmp_path / "vmcoreinfo", tmp_path / "junk"
    note.write_text(kernel.vmcoreinfo)
    junk.write_text("PAGESIZE=4096\n")
    sock = str(tmp_path / "dumpd.sock")
    own = one_line_error(run("serve", "--source", path, "--vmcoreinfo", str(note),
                             "--socket", sock), 2)
    assert own == (f"dumpd: {note}: {path} has a VMCOREINFO note of its own; "
                   "source.vmcoreinfo is for dumps without one")
    raw = tmp_path / "oldmem"
    raw.write_bytes(bytes(8 * PAGE))
    bad = one_line_error(run("serve", "--source", str(raw), "--kind", "raw", "--vmcoreinfo",
                             str(junk), "--socket", sock), 2)
    assert bad == f"dumpd: {junk}: no OSRELEASE= line: not a VMCOREINFO"


# -- the lab's real dump ----------------------------------------------------------------


@pytest.mark.skipif(not os.access(REAL, os.R_OK), reason=f"no real dump at {REAL} "
                    "(python -m bench.lab --keep makes one)")
def test_the_real_dumps_release_through_its_page_tables() -> None:
    source = open_source(str(REAL))
    try:
        info = VmcoreInfo(source.vmcoreinfo_text or "")
        tables = PageTables(info, source.read_phys)
        uts = info.require_symbol("init_uts_ns") + (info.offset("uts_namespace.name") or 0)
        name = tables.read_virt(uts, 65 * 6)
        fields = [name[i * 65:(i + 1) * 65].split(b"\0", 1)[0] for i in range(6)]
        memmap = MemMap(info, tables)
        pages = sum(count for _, count, _ in memmap.struct_pages(0, 1 << 22))
    finally:
        source.close()
    assert (fields[0], fields[2].decode(), fields[4]) == (b"Linux", info.osrelease, b"x86_64")
    assert pages >= sum(end - first for first, end in
                        ((r.start // PAGE, r.end // PAGE) for r in source.phys_map))
