"""Kdump copies of a real dump held against the dump itself, by the tools that read
both: for tests/test_lab.py (CI, on the dump the lab has just made) and
tests/test_fetch_kdump.py (on the dumps the lab kept).

Served with the memmap hook at dump level 31 and fetched with --zeros-as-holes, each
copy must be: makedumpfile's own `-d 31` file byte for byte (zlib, and LZO where this
makedumpfile has it); every page the independent reader (bench.kdumppages) decodes
equal to the ELF original's at that physical address; the same kernel log for
`makedumpfile --dump-dmesg` as the original's; the release for `crash --osrelease`;
the same pages for drgn; and, with the dead kernel's debug vmlinux (bench.crashcheck),
what crash shows of the original (`sys`, `log`, `bt`, `ps`), but that it is a partial
dump.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.crashcheck import crash_shows, debug_vmlinux
from bench.kdumpbitmap import compression, makedumpfile_version
from bench.kdumppages import pages
from bench.lab.images import LabError
from dumpd import codecs
from dumpd.fetch import FetchRequest, fetch
from dumpd.sources import open_source
from tests.servers import serving

FLAGS = {"zlib": "-c", "lzo": "-l", "snappy": "-p", "zstd": "-z"}


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def _dmesg(dump: Path, out: Path) -> str:
    done = _run("makedumpfile", "--dump-dmesg", str(dump), str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    return out.read_text(errors="replace")


async def kdump_copies_read_as_the_original(tmp_path: Path, dump: Path,
                                            vmlinux: bool = True) -> dict[str, int]:
    """Fetch `dump` in each codec this machine has and check the copies as the module
    says; the copies' sizes by codec. `vmlinux`: also with crash and the debug vmlinux
    (downloaded once into the lab's cache; left out where it cannot be had)."""
    names = codecs.available()
    async with serving(tmp_path, dump, hook="memmap", hook_options={"dump_level": 31}) as srv:
        sock = srv.config.server.socket
        for name in names:
            request = FetchRequest(sock, str(tmp_path / f"copy.{name}"), verify=True,
                                   quiet=True, zeros=True, format="kdump", codec=name)
            assert await asyncio.to_thread(fetch, request) == 0, name
    copies = {name: tmp_path / f"copy.{name}" for name in names}
    lzo = compression() == "-l"  # Debian's makedumpfile has LZO, not snappy or zstd
    for name in ("zlib", "lzo") if lzo else ("zlib",):
        want = tmp_path / f"makedumpfile.{name}"
        done = _run("makedumpfile", FLAGS[name], "-d", "31", str(dump), str(want))
        assert done.returncode == 0, done.stdout + done.stderr
        assert copies[name].read_bytes() == want.read_bytes(), (name, makedumpfile_version())
    source = open_source(str(dump))
    try:
        size = source.page_size
        for name, copy in copies.items():
            wrong = [pfn for pfn, page in pages(copy)
                     if page != source.read_phys(pfn * size, size)]
            assert wrong == [], (name, wrong[:8])
    finally:
        source.close()
    original = _dmesg(dump, tmp_path / "dmesg.elf")
    assert original.count("\n") > 100
    for name in ("zlib", "lzo") if lzo else ("zlib",):
        assert _dmesg(copies[name], tmp_path / f"dmesg.{name}") == original, name
    release = Path(f"{dump}.version").read_text().strip() if Path(
        f"{dump}.version").exists() else None
    if shutil.which("crash"):
        for name, copy in copies.items():
            said = _run("crash", "--osrelease", str(copy))
            assert said.returncode == 0 and said.stdout.strip() == (
                release or said.stdout.strip()), (name, said.stdout, said.stderr)
    drgn = pytest.importorskip("drgn")
    for name, copy in copies.items():
        prog = drgn.Program()
        prog.set_core_dump(str(copy))
        for pfn, page in list(pages(copy))[::997]:
            assert prog.read(pfn * size, size, True) == page, (name, pfn)
    if vmlinux and shutil.which("crash") and release:
        try:
            kernel = debug_vmlinux(release)
        except LabError:
            return {name: copy.stat().st_size for name, copy in copies.items()}
        shown = crash_shows(kernel, dump)
        for name, copy in copies.items():  # crash says a kdump file with excluded pages
            # is a partial dump, nothing else differs
            assert crash_shows(kernel, copy) == shown.replace(
                "DUMPFILE: DUMP\n", "DUMPFILE: DUMP  [PARTIAL DUMP]\n", 1), name
    return {name: copy.stat().st_size for name, copy in copies.items()}
