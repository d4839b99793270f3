"""The synthetic kernel (dumpd.testing.kernel) checked by a reader of its own, written
here from the formats (ELF, x86_64 paging, SPARSEMEM_EXTREME, makedumpfile's rules):
the tables it writes reach its markers, its mem_map says what its kinds say, and
makedumpfile (when installed) excludes what it expects."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dumpd.testing.kernel import VARIANTS, SyntheticKernel

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
ADDRESS = 0x000F_FFFF_FFFF_F000
CONFIGS = [  # every variant once; levels, KASLR and SME spread over them
    ("6.1", 4, True, False), ("6.9", 5, True, True), ("6.10", 4, False, True),
    ("6.12", 5, True, False), ("6.16", 4, True, True), ("7.1", 5, False, False),
]


class Unmapped(Exception):
    def __init__(self, level: int) -> None:
        super().__init__(f"not present at level {level}")
        self.level = level


class Core:
    """An ELF core read by hand: PT_LOADs (first wins), the VMCOREINFO note."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        head = os.pread(self.fd, 64, 0)
        assert head[:4] == b"\x7fELF"
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        self.loads: list[tuple[int, int, int, int]] = []  # paddr, offset, size, vaddr
        self.notes = b""
        for i in range(phnum):
            p_type, _, offset, vaddr, paddr, filesz = struct.unpack_from(
                "<IIQQQQ", os.pread(self.fd, phentsize, phoff + i * phentsize))
            if p_type == 1:
                self.loads.append((paddr, offset, filesz, vaddr))
            elif p_type == 4:
                self.notes = os.pread(self.fd, filesz, offset)
        self.info = dict(line.split("=", 1) for line in self.note("VMCOREINFO").splitlines())

    def note(self, wanted: str) -> str:
        at = 0
        while at < len(self.notes):
            namesz, descsz, _ = struct.unpack_from("<III", self.notes, at)
            name = self.notes[at + 12 : at + 12 + namesz - 1].decode()
            desc_at = at + 12 + (namesz + 3) // 4 * 4
            if name == wanted:
                return self.notes[desc_at : desc_at + descsz].decode()
            at = desc_at + (descsz + 3) // 4 * 4
        raise KeyError(wanted)

    def ram(self) -> Iterator[int]:
        for paddr, _, size, vaddr in self.loads:
            if vaddr < START_KERNEL_MAP:
                yield from range(paddr // 4096, (paddr + size) // 4096)

    def phys(self, paddr: int, length: int) -> bytes:
        for start, offset, size, _ in self.loads:
            if start <= paddr and paddr + length <= start + size:
                return os.pread(self.fd, length, offset + paddr - start)
        raise LookupError(f"{paddr:#x} is not in the dump")

    def number(self, key: str) -> int | None:
        value = self.info.get(f"NUMBER({key})")
        return None if value is None else int(value, 0)

    def walk(self, vaddr: int) -> tuple[int, int]:
        """(paddr, level of the leaf) through init_top_pgt, phys_base, sme_mask."""
        levels = 5 if self.number("pgtable_l5_enabled") else 4
        sme = self.number("sme_mask") or 0
        phys_base = self.number("phys_base") or 0
        table = int(self.info["SYMBOL(init_top_pgt)"], 16) - START_KERNEL_MAP + phys_base
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            entry, = struct.unpack("<Q", self.phys(table + (vaddr >> shift & 511) * 8, 8))
            if not entry & 1:
                raise Unmapped(level)
            base = entry & ADDRESS & ~sme
            if level == 1 or (level <= 3 and entry & 0x80):
                return (base & ~((1 << shift) - 1)) + (vaddr & ((1 << shift) - 1)), level
            table = base
        raise AssertionError("unreachable")

    def virt(self, vaddr: int, length: int) -> bytes:
        out = b""
        while len(out) < length:
            n = min(4096 - (vaddr + len(out)) % 4096, length - len(out))
            out += self.phys(self.walk(vaddr + len(out))[0], n)
        return out

    def mem_map(self) -> dict[int, bytes]:
        """pfn -> struct page, through mem_section's roots (absent roots and sections,
        and sections without SECTION_HAS_MEM_MAP, give none)."""
        per = 1 << (int(self.info["NUMBER(SECTION_SIZE_BITS)"]) - 12)
        size = int(self.info["SIZE(mem_section)"])
        roots = int(self.info["SYMBOL(mem_section)"], 16)
        ram = set(self.ram())
        out: dict[int, bytes] = {}
        for nr in sorted({pfn // per for pfn in ram}):
            root, = struct.unpack("<Q", self.virt(roots + nr // (4096 // size) * 8, 8))
            if not root:
                continue
            coded, = struct.unpack("<Q", self.virt(root + nr % (4096 // size) * size, 8))
            if coded & 3 != 3:
                continue
            structs = self.virt((coded & ~0x1F) + nr * per * 64, per * 64)
            out.update((pfn, structs[(pfn - nr * per) * 64 :][:64])
                       for pfn in range(nr * per, nr * per + per) if pfn in ram)
        return out


def classify(core: Core, pages: dict[int, bytes], level: int) -> dict[int, str]:
    """makedumpfile 1.7.7 (+ 1.7.8's unaccepted pages) from the bytes and the note."""
    n = core.number
    head_at = int(core.info.get("OFFSET(page.compound_head)")
                  or core.info["OFFSET(page.compound_info)"])
    bits = {name: 1 << (n(f"PG_{name}") or 64)
            for name in ("lru", "private", "swapcache", "swapbacked", "slab", "hwpoison")}
    head_mask, dtor_6_1 = n("PG_head_mask") or 0, "OFFSET(page.compound_order)" in core.info
    buddy, offline, slab_type = (n("PAGE_BUDDY_MAPCOUNT_VALUE"), n("PAGE_OFFLINE_MAPCOUNT_VALUE"),
                                 n("PAGE_SLAB_MAPCOUNT_VALUE"))
    hugetlb_type, unaccepted = n("PAGE_HUGETLB_MAPCOUNT_VALUE"), n("PAGE_UNACCEPTED_MAPCOUNT_VALUE")
    max_order = int(core.info["LENGTH(zone.free_area)"]) - 1
    out: dict[int, str] = {}
    skip = -1
    for pfn in sorted(pages):
        page = pages[pfn]
        (flags,) = struct.unpack_from("<Q", page, 0)
        (head,) = struct.unpack_from("<Q", page, head_at)
        mapping, _, private = struct.unpack_from("<QQQ", page, 24)
        (mapcount,) = struct.unpack_from("<i", page, 48)
        if pfn < skip or head & 1:
            continue
        order, hugetlb = 0, False
        if flags & head_mask:
            tail = pages[pfn + 1]
            if dtor_6_1:
                order, hugetlb = tail[17], tail[16] == n("HUGETLB_PAGE_DTOR")
            else:
                order, hugetlb = tail[0], mapcount == hugetlb_type
        slab = mapcount == slab_type if slab_type else bool(flags & bits["slab"])
        anon = bool(mapping & 1) and not slab
        cache = flags & bits["lru"] or (flags & bits["swapcache"] and flags & bits["swapbacked"])
        private_flag = flags & bits["private"]
        count = 1 << order
        if level & 16 and not slab and mapcount == buddy:
            reason, count = "free", 1 << private
        elif level & 16 and mapcount == unaccepted:
            reason, count = "free", 1 << max_order
        elif level & 2 and cache and not private_flag and not anon:
            reason = "cache"
        elif level & 4 and cache and not anon:
            reason = "cache_private" if private_flag else "cache"
        elif level & 8 and (anon or hugetlb):
            reason = "user"
        elif flags & bits["hwpoison"]:
            reason = "hwpoison"
        elif not slab and mapcount == offline:
            reason = "offline"
        else:
            continue
        out.update((q, reason) for q in range(pfn, pfn + count) if q in pages)
        skip = pfn + count
    return out


def _config_id(config: tuple[str, int, bool, bool]) -> str:
    variant, levels, kaslr, sme = config
    return f"{variant}-l{levels}-kaslr{int(kaslr)}-sme{int(sme)}"


@pytest.fixture(scope="module", params=CONFIGS, ids=_config_id)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SyntheticKernel, Core]]:
    variant, levels, kaslr, sme = request.param
    kernel = SyntheticKernel(variant, levels=levels, kaslr=kaslr, sme=sme)
    path = tmp_path_factory.mktemp("synth") / f"vmcore-{variant}"
    kernel.write(str(path))
    core = Core(path)
    yield kernel, core
    os.close(core.fd)


def test_the_note_is_the_kernels_text(built: tuple[SyntheticKernel, Core]) -> None:
    kernel, core = built
    assert core.note("VMCOREINFO") == kernel.vmcoreinfo
    lines = kernel.vmcoreinfo.splitlines()
    assert lines[0] == f"OSRELEASE={kernel.variant.name}.0-synth"
    assert lines[-1].startswith("CRASHTIME=")
    for key, value in (line.split("=", 1) for line in lines):
        if key.startswith("SYMBOL(") or key == "KERNELOFFSET":
            assert int(value, 16) >= 0 and not value.startswith("0x"), key
        elif key == "NUMBER(VMALLOC_START)":
            assert value == f"0x{kernel.vmalloc_start:x}"
        elif key.split("(")[0] in ("SIZE", "OFFSET", "LENGTH", "NUMBER"):
            assert str(int(value)) == value, key
    assert f"OFFSET(page.{kernel.variant.head_field})=8" in lines
    assert int(core.info["KERNELOFFSET"], 16) == (0x2E00000 if kernel.kaslr else 0)
    if shutil.which("readelf"):
        shown = subprocess.run(["readelf", "-n", str(core.path)],
                               capture_output=True, text=True, check=True).stdout
        assert "VMCOREINFO" in shown and kernel.vmcoreinfo.encode()[:64].hex(" ") in shown


def test_the_tables_reach_every_marker(built: tuple[SyntheticKernel, Core]) -> None:
    kernel, core = built
    for name, (vaddr, data) in kernel.markers.items():
        assert core.virt(vaddr, len(data)) == data, name
    assert core.walk(kernel.markers["direct_1g"][0])[1] == 3
    assert core.walk(kernel.markers["direct_2m"][0])[1] == 2
    assert core.walk(kernel.markers["direct_4k"][0])[1] == 1
    assert core.virt(kernel.symbols["init_uts_ns"] + 130, 16).split(b"\0")[0] == \
        core.info["OSRELEASE"].encode()
    text = next(load for load in core.loads if load[3] >= START_KERNEL_MAP)
    assert core.walk(int(core.info["SYMBOL(_stext)"], 16)) == (text[0], 2)
    for level_name, level in (("pgd", kernel.levels), ("pud", 3), ("pmd", 2), ("pte", 1)):
        with pytest.raises(Unmapped) as stopped:
            core.walk(kernel.unmapped[level_name])
        assert stopped.value.level == level, level_name
    if kernel.sme_mask:
        top = int(core.info["SYMBOL(init_top_pgt)"], 16) - START_KERNEL_MAP + kernel.phys_base
        shift = 12 + 9 * (kernel.levels - 1)
        entry, = struct.unpack("<Q", core.phys(top + (kernel.page_offset >> shift & 511) * 8, 8))
        assert entry & kernel.sme_mask


def test_the_mem_map_says_what_the_kinds_say(built: tuple[SyntheticKernel, Core]) -> None:
    kernel, core = built
    assert set(core.ram()) == set(kernel.kinds)
    pages = core.mem_map()
    assert set(kernel.kinds) - set(pages) == {p for p, k in kernel.kinds.items() if k == "nomap"}
    for pfn in (388, 5120, 6145, 16384 + 4096, 0x200000):
        assert pages[pfn] == kernel.struct_page(pfn)
    for level in (0, 2, 4, 6, 8, 16, 31):
        expected = {p: r for p, r in kernel.reasons(level).items() if r != "zero"}
        assert classify(core, pages, level) == expected, level
    head_at = int(core.info[f"OFFSET(page.{kernel.variant.head_field})"])
    heads: dict[str, int] = {}
    for pfn in sorted(pages):
        kind = kernel.kinds[pfn]
        if not kind.endswith("_tail"):
            heads[kind] = pfn
            continue
        info, = struct.unpack_from("<Q", pages[pfn], head_at)
        me = kernel.vmemmap + pfn * 64
        if kind in ("free_tail", "unaccepted_tail"):  # a block, not a compound page
            assert not info & 1
            continue
        found = me & info if kernel.variant.tail_mask else info - 1
        assert info & 1 and found == kernel.vmemmap + heads[kind[: -len("_tail")]] * 64, pfn
    # section 3 has no mem_map; where vmemmap would put it lie bytes that look free
    trap = core.virt(kernel.vmemmap + 12288 * 64, 64)
    assert trap == kernel.struct_page(12288)
    assert struct.unpack_from("<i", trap, 48)[0] == kernel.variant.types["buddy"]


def test_zero_pages_read_as_zeros(built: tuple[SyntheticKernel, Core]) -> None:
    kernel, core = built
    zeros = kernel.zero_pfns
    assert {16, 17, 18, 19} <= zeros and 20 not in zeros
    for pfn in kernel.kinds:
        assert (core.phys(pfn * 4096, 4096) == bytes(4096)) == (pfn in zeros), pfn
    assert (set(kernel.reasons(1).values()) - {"hwpoison", "offline"}) == {"zero"}
    stat = os.fstat(core.fd)
    assert stat.st_blocks * 512 < stat.st_size * 3 // 4  # the zero pages are holes


def test_options_are_checked() -> None:
    kernel = SyntheticKernel("6.12", omit=("NUMBER(PG_hwpoison)", "SYMBOL(mem_section)"))
    assert "NUMBER(PG_hwpoison)" not in kernel.vmcoreinfo
    assert "SYMBOL(mem_section)" not in kernel.vmcoreinfo
    assert "LENGTH(mem_section)=16384\n" in kernel.vmcoreinfo
    with pytest.raises(ValueError, match=r"NUMBER\(PG_slab\)"):
        SyntheticKernel("6.12", omit=("NUMBER(PG_slab)",))  # 6.12 has no PG_slab
    with pytest.raises(ValueError, match="variant"):
        SyntheticKernel("5.4")
    with pytest.raises(ValueError, match="4 or 5 levels"):
        SyntheticKernel("6.1", levels=3)
    with pytest.raises(ValueError, match="dump level"):
        kernel.expected_excluded(32)
    assert set(VARIANTS) == {"6.1", "6.9", "6.10", "6.12", "6.16", "7.1"}


def _kept(path: Path, level: int) -> set[int]:
    """The pfns a kdump-compressed file holds: bitmap 2, less the pages whose
    descriptor points at the shared zero page (with -d 1)."""
    with path.open("rb") as f:
        block_size, sub_hdr, bitmap_blocks = struct.unpack_from("<iiI", f.read(440), 428)
        start, half = (1 + sub_hdr) * block_size, bitmap_blocks // 2 * block_size
        f.seek(start + half)
        bitmap = f.read(half)
        dumped = [at * 8 + bit for at, byte in enumerate(bitmap) if byte
                  for bit in range(8) if byte >> bit & 1]
        descs = f.read(24 * len(dumped))
    zero_at = start + 2 * half + len(descs)
    return {pfn for i, pfn in enumerate(dumped)
            if not (level & 1 and struct.unpack_from("<q", descs, 24 * i)[0] == zero_at)}


@pytest.mark.skipif(not shutil.which("makedumpfile"), reason="makedumpfile is not installed")
@pytest.mark.parametrize("levels,kaslr,dump_levels", [(4, True, (1, 2, 4, 8, 16, 31)),
                                                      (5, False, (31,))])
def test_makedumpfile_excludes_what_is_expected(
    tmp_path: Path, levels: int, kaslr: bool, dump_levels: tuple[int, ...]
) -> None:
    """6.1's encodings are ones every makedumpfile since 1.7.2 reads right."""
    kernel = SyntheticKernel("6.1", levels=levels, kaslr=kaslr, sme=not kaslr)
    kernel.write(str(tmp_path / "vmcore"))
    features = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True).stdout
    compress = "-l" if "lzo\tenabled" in features else "-c"  # lzo: 4x quicker than zlib
    for level in dump_levels:
        out = tmp_path / f"dump-{level}"
        subprocess.run(["makedumpfile", compress, "-d", str(level), str(tmp_path / "vmcore"),
                        str(out)], capture_output=True, check=True)
        assert set(kernel.kinds) - _kept(out, level) == kernel.expected_excluded(level), level
