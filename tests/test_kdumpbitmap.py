"""bench.kdumpbitmap reads makedumpfile's real output: small ELF cores written here
(makedumpfile needs no VMCOREINFO for dump levels 0 and 1, only a PT_NOTE), the lab's
real dump when it is there; and the pfn-set arithmetic it is written in."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bench.kdumpbitmap import (
    KdumpError,
    Makedumpfile,
    elf_loads,
    kept_dumps,
    makedumpfile_excluded,
    read_kdump,
    run_makedumpfile,
)
from bench.pfnranges import (
    bitmap_runs,
    count,
    intersect,
    normal,
    nth_pfns,
    subtract,
    union,
)
from dumpd.testing.elfwriter import LoadSpec, pattern, prstatus_note, write_elf_core

MiB = 1 << 20
PAGE = 4096
LAB = Path("/var/tmp/dumpd-lab")
needs_makedumpfile = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                        reason="makedumpfile is not installed")


def _zero_pfn(pfn: int) -> bool:
    return pfn % 7 == 0 or 300 <= pfn < 400


def _fill(paddr: int, length: int) -> bytes:
    data = bytearray(pattern(paddr, length))
    for page in range(paddr - paddr % PAGE, paddr + length, PAGE):
        if _zero_pfn(page // PAGE):
            lo, hi = max(page, paddr) - paddr, min(page + PAGE, paddr + length) - paddr
            data[lo:hi] = bytes(hi - lo)
    return bytes(data)


# pfns 1-0x9e and a partial 0x9f (as on a real PC), 256-4095, and 8192-10239 of which
# only 8192-9215 are in the file (p_filesz).
LOADS = [LoadSpec(0x1000, 0x9EC00), LoadSpec(1 * MiB, 15 * MiB),
         LoadSpec(32 * MiB, 8 * MiB, filesz=4 * MiB)]
WHOLE = ((1, 0x9F), (256, 4096), (8192, 10240))
PARTIAL = ((0x9F, 0xA0),)
NODATA = ((9216, 10240),)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("core") / "vmcore"
    write_elf_core(path, LOADS, notes=[prstatus_note(0)], fill=_fill)
    return path


def _kdump(core: Path, level: int, out: Path) -> Path:
    subprocess.run(["makedumpfile", "-c", "-d", str(level), "--message-level", "4",
                    str(core), str(out)], check=True, capture_output=True)
    return out


@needs_makedumpfile
def test_level_0_keeps_every_page_with_data(core: Path) -> None:
    run = run_makedumpfile(core, 0)
    kd = run.kdump
    assert (kd.header_version, kd.block_size, kd.dump_level) == (6, PAGE, 0)
    assert kd.max_mapnr == kd.max_mapnr_32 == 10240
    assert kd.present in (WHOLE, union(WHOLE, PARTIAL))  # makedumpfile has two ways
    assert kd.dumped == subtract(WHOLE, NODATA)  # never a partial page
    assert kd.excluded == union(NODATA, subtract(kd.present, WHOLE)) and kd.zero == ()
    assert run.counts["original"] == count(kd.present) and run.counts["zero"] == 0
    loads = elf_loads(core)
    assert (loads.pfns, loads.partial, loads.nodata) == (WHOLE, PARTIAL, NODATA)
    assert loads.holds(kd.present) and not loads.holds(WHOLE[1:])


@needs_makedumpfile
def test_level_1_stores_each_zero_page_as_the_one_zero_page(core: Path) -> None:
    run = run_makedumpfile(core, 1)
    zero = normal((p, p + 1) for a, b in subtract(WHOLE, NODATA) for p in range(a, b)
                  if _zero_pfn(p))
    assert run.kdump.zero == zero
    assert run.counts["zero"] == count(zero)
    assert run.kdump.dumped == subtract(WHOLE, NODATA)  # zero pages stay in the 2nd bitmap
    assert run.excluded == union(run.kdump.excluded, zero) == makedumpfile_excluded(core, 1)


@needs_makedumpfile
def test_reasons_name_the_pages_past_p_filesz_and_the_zero_pages(core: Path) -> None:
    reasons = Makedumpfile(core).reasons(1)
    assert reasons["nodata"] == Makedumpfile(core).run(0).kdump.excluded
    assert set(reasons) == {"nodata", "zero"}
    assert Makedumpfile(core).reason_of(1, 9300) == "nodata"
    assert Makedumpfile(core).reason_of(1, 7) == "zero"
    assert Makedumpfile(core).reason_of(1, 8) == "kept"


@needs_makedumpfile
def test_max_mapnr_64_wins_from_header_version_6(core: Path, tmp_path: Path) -> None:
    data = bytearray(_kdump(core, 0, tmp_path / "a.kdump").read_bytes())
    present = read_kdump(tmp_path / "a.kdump").present
    struct.pack_into("<I", data, 440, 300)  # the 32-bit field, as if truncated
    (tmp_path / "b.kdump").write_bytes(data)
    kd = read_kdump(tmp_path / "b.kdump")
    assert (kd.max_mapnr, kd.max_mapnr_32) == (10240, 300)
    assert kd.present == present
    struct.pack_into("<i", data, 8, 5)  # before version 6 the 32-bit field is the one
    (tmp_path / "c.kdump").write_bytes(data)
    kd = read_kdump(tmp_path / "c.kdump")
    assert (kd.max_mapnr, kd.present) == (300, intersect(present, ((0, 300),)))


@needs_makedumpfile
def test_what_it_does_not_read_is_refused_in_one_line(core: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    with open(flat, "wb") as out:
        subprocess.run(["makedumpfile", "-F", "-d", "1", "--message-level", "4", str(core)],
                       stdout=out, check=True)
    with pytest.raises(KdumpError, match=r"flattened format \(-F\).*makedumpfile -R"):
        read_kdump(flat)
    with pytest.raises(KdumpError, match="not a kdump-compressed file"):
        read_kdump(core)
    with pytest.raises(KdumpError, match=r"makedumpfile -d 2 .*: exit 1: .*vmcoreinfo"):
        run_makedumpfile(core, 2)  # no VMCOREINFO: levels above 1 need mem_map


@needs_makedumpfile
@pytest.mark.skipif(not (LAB / "fetched.vmcore").exists(),
                    reason=f"no real dump at {LAB / 'fetched.vmcore'} (python -m bench.lab)")
def test_the_bitmaps_add_up_to_the_report_on_a_real_dump() -> None:
    dump = LAB / "fetched.vmcore"
    loads, mdf = elf_loads(dump), Makedumpfile(dump)
    run = mdf.run(31)
    counts = run.counts
    assert loads.holds(run.kdump.present)
    assert count(run.kdump.zero) == counts["zero"]
    assert count(run.kdump.excluded) == count(intersect(run.kdump.excluded,
                                                        loads.unreasoned)) + sum(
        counts[r] for r in ("cache", "cache_private", "user", "free", "hwpoison", "offline"))
    reasons = mdf.reasons(31)
    assert union(*reasons.values()) == run.excluded  # each excluded pfn has one reason
    assert sum(count(r) for r in reasons.values()) == count(run.excluded)
    assert count(reasons.get("free", ())) == counts["free"]


def _ballooned() -> list[Path]:
    return [d for d in kept_dumps(LAB / "dumps")
            if json.loads(Path(f"{d}.json").read_text())["balloon_mib"]]


@needs_makedumpfile
@pytest.mark.skipif(not _ballooned(), reason=f"no ballooned dump kept in {LAB / 'dumps'} "
                    "(python -m bench.lab --balloon 64 --keep ...)")
def test_every_ballooned_page_is_offline_in_a_real_dump() -> None:
    for dump in _ballooned():
        run = json.loads(Path(f"{dump}.json").read_text())
        out = ((run["guest_mem_mib"] << 20) - run["balloon_qmp"]["actual"]) // PAGE
        level0 = run_makedumpfile(dump, 0)
        assert level0.counts["offline"] == out == run["balloon_mib"] * MiB // PAGE
        assert count(level0.kdump.excluded) == out


def _naive_runs(bits: bytes, nbits: int) -> tuple[tuple[int, int], ...]:
    return normal((i, i + 1) for i in range(nbits) if bits[i >> 3] >> (i & 7) & 1)


def test_bitmap_runs_are_the_set_bits_lsb_first() -> None:
    rng = random.Random(15)
    for _ in range(300):
        size = rng.randrange(0, 40)
        bits = bytes(rng.choice((0, 0xFF, rng.randrange(256))) for _ in range(size))
        nbits = rng.randrange(0, size * 8 + 1)
        assert bitmap_runs(bits, nbits) == _naive_runs(bits, nbits)
    assert bitmap_runs(b"\x01\x80", 16) == ((0, 1), (15, 16))
    assert bitmap_runs(b"\xff\xff\x00\xfe", 32) == ((0, 16), (25, 32))


def test_set_arithmetic_matches_python_sets() -> None:
    rng = random.Random(16)

    def pick() -> tuple[tuple[int, int], ...]:
        starts = [rng.randrange(200) for _ in range(rng.randrange(8))]
        return normal((s, s + rng.randrange(1, 30)) for s in starts)

    def pfns(r: tuple[tuple[int, int], ...]) -> set[int]:
        return {p for a, b in r for p in range(a, b)}

    for _ in range(300):
        a, b = pick(), pick()
        assert pfns(subtract(a, b)) == pfns(a) - pfns(b)
        assert pfns(intersect(a, b)) == pfns(a) & pfns(b)
        assert pfns(union(a, b)) == pfns(a) | pfns(b)
        assert subtract(a, b) == normal(subtract(a, b))
    assert nth_pfns(((10, 13), (20, 22)), [0, 1, 3, 4]) == ((10, 12), (20, 22))
    with pytest.raises(IndexError):
        nth_pfns(((10, 13),), [3])
