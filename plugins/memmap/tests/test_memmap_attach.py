"""attach's refusals, each one line naming what the dump lacks, and the keys whose absence
turns a test off; then the hook behind a real server on a real socket."""

from __future__ import annotations

from pathlib import Path

import pytest
from dumpd.client.aio import AsyncClient
from dumpd.client.errors import RemoteError
from dumpd.config import Config, HookConfig, ServerConfig, SourceConfig
from dumpd.errors import DumpdError
from dumpd.hooks.contract import HookConfigError
from dumpd.server import Server
from dumpd.testing.elfwriter import LoadSpec, Note, write_elf_core
from memmap_kernels import attached, expected, kernel_dump, opened, reasons

import dumpd_memmap

NEEDS = "which the dump's VMCOREINFO lacks"
BASE = "telling compound and offline pages"

REFUSED = [  # variant, key left out, level, the refusal
    ("6.12", "SIZE(page)", 0, f"memmap: {BASE} needs SIZE(page), {NEEDS}"),
    ("6.12", "OFFSET(page._mapcount)", 0, f"memmap: {BASE} needs OFFSET(page._mapcount), {NEEDS}"),
    ("6.12", "OFFSET(page.compound_head)", 0,
     f"memmap: {BASE} needs OFFSET(page.compound_head), {NEEDS}"),
    ("7.1", "OFFSET(page.compound_info)", 0,
     f"memmap: {BASE} needs OFFSET(page.compound_head), {NEEDS}"),
    ("6.12", "NUMBER(PG_head_mask)", 0, f"memmap: {BASE} needs NUMBER(PG_head_mask), {NEEDS}"),
    ("6.1", "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)", 0,
     f"memmap: {BASE} needs NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE), {NEEDS}"),
    ("6.1", "NUMBER(PG_slab)", 0, f"memmap: {BASE} needs NUMBER(PAGE_SLAB_MAPCOUNT_VALUE) "
     f"(6.10 on) or NUMBER(PG_slab), {NEEDS}"),
    ("6.12", "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)", 0, f"memmap: {BASE} needs "
     f"NUMBER(PAGE_SLAB_MAPCOUNT_VALUE) (6.10 on) or NUMBER(PG_slab), {NEEDS}"),
    ("6.1", "OFFSET(page.compound_order)", 0, f"memmap: {BASE} needs "
     "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE), NUMBER(PG_hugetlb), OFFSET(folio._folio_order) "
     f"or OFFSET(page.compound_order), {NEEDS}"),
    ("6.12", "OFFSET(page.private)", 16, f"memmap: excluding free pages needs "
     f"OFFSET(page.private), {NEEDS}"),
    ("6.12", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", 31, "memmap: excluding free pages needs "
     f"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE), {NEEDS}"),
    ("6.12", "LENGTH(zone.free_area)", 16, "memmap: excluding free pages needs "
     f"LENGTH(zone.free_area), {NEEDS}"),
    ("6.12", "NUMBER(PG_lru)", 2, f"memmap: excluding cache pages needs NUMBER(PG_lru), {NEEDS}"),
    ("6.12", "NUMBER(PG_swapbacked)", 4,
     f"memmap: excluding cache pages needs NUMBER(PG_swapbacked), {NEEDS}"),
    ("6.12", "OFFSET(page.mapping)", 8,
     f"memmap: excluding cache or user pages needs OFFSET(page.mapping), {NEEDS}"),
    ("6.1", "OFFSET(page.compound_dtor)", 8, "memmap: excluding user pages (hugetlb) needs "
     f"OFFSET(page.compound_dtor), {NEEDS}"),
    ("6.12", "SYMBOL(init_top_pgt)", 0, "memmap: VMCOREINFO has no SYMBOL(init_top_pgt)"),
    ("6.12", "SYMBOL(mem_section)", 0, "memmap: VMCOREINFO has no SYMBOL(mem_section)"),
]

ACCEPTED = [  # the same keys left out, at levels that do not need them
    ("6.12", "OFFSET(page.private)", 15), ("6.12", "NUMBER(PG_lru)", 24),
    ("6.12", "OFFSET(page.mapping)", 16), ("6.1", "OFFSET(page.compound_dtor)", 23),
]


@pytest.mark.parametrize(("variant", "key", "level", "message"), REFUSED)
def test_a_missing_key_is_refused_by_name(tmp_path_factory: pytest.TempPathFactory,
                                          variant: str, key: str, level: int,
                                          message: str) -> None:
    _, path = kernel_dump(tmp_path_factory, variant, omit=(key,))
    hook = dumpd_memmap.create({"dump_level": level})
    with opened(path) as memory, pytest.raises(DumpdError) as caught:
        hook.attach(memory)
    assert (caught.value.code, caught.value.message) == ("ENOSYS", message)
    assert hook.chunks is None


@pytest.mark.parametrize(("variant", "key", "level"), ACCEPTED)
def test_a_key_the_level_does_not_need_may_be_missing(
        tmp_path_factory: pytest.TempPathFactory, variant: str, key: str, level: int) -> None:
    kernel, path = kernel_dump(tmp_path_factory, variant, omit=(key,))
    with opened(path) as memory:
        assert reasons(attached(memory, level), memory) == expected(kernel, level)


@pytest.mark.parametrize(("variant", "key", "kept"), [
    ("6.12", "NUMBER(PG_hwpoison)", {"hwpoison", "hwpoison_user"}),  # no MEMORY_FAILURE
    ("6.1", "NUMBER(HUGETLB_PAGE_DTOR)", {"hugetlb", "hugetlb_tail"}),  # no hugetlbfs
    ("6.16", "NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)", {"unaccepted", "unaccepted_tail"}),
])
def test_a_key_whose_absence_means_no_such_page_turns_its_test_off(
        tmp_path_factory: pytest.TempPathFactory, variant: str, key: str,
        kept: set[str]) -> None:
    """The pages of those kinds are kept, but where another test takes them: the
    poisoned page of a process is still user data at level 8."""
    kernel, path = kernel_dump(tmp_path_factory, variant, omit=(key,))
    with opened(path) as memory:
        for level in (0, 8, 16, 31):
            want = {pfn: why for pfn, why in expected(kernel, level).items()
                    if kernel.kinds[pfn] not in kept}
            if level & 8 and "hwpoison_user" in kept:
                want.update((pfn, "user") for pfn, kind in kernel.kinds.items()
                            if kind == "hwpoison_user")
            assert reasons(attached(memory, level), memory) == want, f"{key} at {level}"


def test_a_dump_without_vmcoreinfo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "no-note"
    write_elf_core(path, [LoadSpec(0x1000, 0x4000)])
    hook = dumpd_memmap.create({})
    with opened(path) as memory, pytest.raises(HookConfigError) as caught:
        hook.attach(memory)
    assert str(caught.value) == ("memmap: the dump has no VMCOREINFO (no ELF note, and none "
                                 "given with the source), so its struct pages cannot be found")


def test_another_architecture_is_refused(tmp_path_factory: pytest.TempPathFactory,
                                         tmp_path: Path) -> None:
    kernel, _ = kernel_dump(tmp_path_factory, "6.12")
    path = tmp_path / "arm64"
    write_elf_core(path, [LoadSpec(0x1000, 0x4000)], machine=183,
                   notes=[Note("VMCOREINFO", 0, kernel.vmcoreinfo.encode())])
    with opened(path) as memory, pytest.raises(DumpdError) as caught:
        dumpd_memmap.create({}).attach(memory)
    assert (caught.value.code, caught.value.message) == (
        "ENOSYS", "memmap: reads x86_64 page tables only; this dump's architecture is aarch64")


def config(tmp_path: Path, dump: str, options: dict[str, object] | None) -> Config:
    return Config(source=SourceConfig(path=dump),
                  server=ServerConfig(socket=str(tmp_path / "dumpd.sock")),
                  hook=HookConfig(name="memmap" if options is not None else "",
                                  options=options or {}))


async def test_behind_a_real_server(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
                                    ) -> None:
    """Offline and free pages read as zeros (their bytes in the dump are not), without a
    read of them; a refused registration is one line with its code."""
    kernel, path = kernel_dump(tmp_path_factory, "6.12")
    _, lacking = kernel_dump(tmp_path_factory, "6.12", omit=("NUMBER(PG_swapbacked)",))
    offline, free = 2304, 5120
    assert (kernel.kinds[offline], kernel.kinds[free]) == ("offline", "free")
    server = Server(config(tmp_path, path, {"dump_level": 16}))
    await server.start()
    try:
        async with await AsyncClient.connect(str(tmp_path / "dumpd.sock")) as client:
            for pfn in (offline, free, free + 1023):
                assert kernel.read_phys(pfn * 4096, 4096) != bytes(4096)
                assert await client.read_phys(pfn * 4096, 4096) == bytes(4096)
            assert await client.read_phys(4100, 8) == kernel.read_phys(4100, 8)
            stats = await client.stats()
            assert stats["source_bytes_read"] == 4096  # pfn 1, a page; none of the three
            await client.hook_unregister()
            with pytest.raises(RemoteError) as caught:
                await client.hook_register("memmap", {"exclude": ["free", "user"], "x": 1})
            assert (caught.value.code, caught.value.message) == (
                "EINVAL", "memmap: unknown option 'x' (known: exclude, dump_level)")
    finally:
        await server.shutdown(deadline=2.0)
    server = Server(config(tmp_path, lacking, None))
    await server.start()
    try:
        async with await AsyncClient.connect(str(tmp_path / "dumpd.sock")) as client:
            with pytest.raises(RemoteError) as caught:
                await client.hook_register("memmap", {"exclude": "cache"})
            assert (caught.value.code, caught.value.message) == (
                "ENOSYS", f"memmap: excluding cache pages needs NUMBER(PG_swapbacked), {NEEDS}")
            assert (await client.info())["hook"] is None
    finally:
        await server.shutdown(deadline=2.0)
