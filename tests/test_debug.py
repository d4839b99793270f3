"""`dumpd debug` and `dumpd.debug`: drgn reading the served dump through dumpd only,
held against drgn reading the same file itself (`set_core_dump`), on synthetic kernel
cores (CI) and on the lab's real dump with its debug vmlinux (slow, where present);
the client-side cache's exact counters; a read while a stream runs on another
connection; the CLI end to end, drgn hidden included."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bench.debugger import kernel_walk, local_program, real_dump, synthetic_walk
from dumpd.client import Client
from dumpd.debug import DebugMemory, MemoryStats, load_debug_info, memory_of, program
from dumpd.sources import open_source
from dumpd.testing.elfwriter import LoadSpec, Note, prstatus_note, write_elf_core
from dumpd.testing.kernel import SyntheticKernel
from tests.daemon import DUMPD, ENV, one_line_error, run, served
from tests.pki import Pki
from tests.servers import failing, free_port, serving

drgn = pytest.importorskip("drgn")

if TYPE_CHECKING:
    from dumpd.debug import Run

PAGE, KiB, MiB = 4096, 1 << 10, 1 << 20
STATS = re.compile(r"dumpd: debug: ([\d,]+) reads, ([\d,]+) from the cache \(\d+%\), "
                   r"([\d,]+) round trips, ([\d,]+) bytes received")


def irregular_loads(k: SyntheticKernel) -> list[LoadSpec]:
    """The synthetic kernel's memory in PT_LOADs as real dumps cut it: a boundary inside a
    page, a segment whose file part stops short of its memory (zeros after), holes
    between runs, and a later segment over an earlier one (the same bytes)."""
    return [
        LoadSpec(k.image_paddr, 2 * MiB, vaddr=k.text),
        LoadSpec(PAGE, 0x20123 - PAGE), LoadSpec(0x20123, 160 * PAGE - 0x20123),
        LoadSpec(256 * PAGE, 2304 * PAGE, filesz=2304 * PAGE - 0x1800),
        LoadSpec(4096 * PAGE, 4096 * PAGE), LoadSpec(5000 * PAGE, 100 * PAGE),
        LoadSpec(12288 * PAGE, 256 * PAGE), LoadSpec(16384 * PAGE, 8192 * PAGE),
        LoadSpec(0x200000 * PAGE, 3072 * PAGE),
    ]


@pytest.fixture(scope="module")
def cores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SyntheticKernel, Path]]:
    k = SyntheticKernel()
    where = tmp_path_factory.mktemp("cores")
    k.write(where / "vmcore")
    notes = [prstatus_note(0), Note("VMCOREINFO", 0, k.vmcoreinfo.encode())]
    write_elf_core(where / "irregular", irregular_loads(k), notes=notes, fill=k.read_phys,
                   sparse=True)
    return {"as written": (k, where / "vmcore"), "irregular": (k, where / "irregular")}


def outcome(prog: drgn.Program, address: int, size: int, physical: bool = True) -> Any:
    try:
        return prog.read(address, size, physical)
    except drgn.FaultError:
        return "fault"


def draw(rng: random.Random, runs: tuple[Run, ...]) -> tuple[int, int]:
    """A physical read near what makes reads hard: a run's edges, a page boundary, a
    hole; sizes from a byte to a few windows."""
    run = rng.choice(runs)
    anchor = rng.choice([run.start, run.end, run.start + rng.randrange(run.end - run.start)
                         // PAGE * PAGE, rng.randrange(run.start, run.end)])
    address = max(0, anchor + rng.randrange(-3 * PAGE, 3 * PAGE))
    size = rng.choice([1, 8, 64, PAGE - 1, PAGE, PAGE + 1, rng.randrange(1, 3 * PAGE),
                       rng.randrange(1, 300 * KiB)])
    return address, size


@contextmanager
def through_dumpd(sock: str, **memory: Any) -> Iterator[tuple[drgn.Program, DebugMemory]]:
    with Client.connect(sock) as client:
        mem = memory_of(client, **memory)
        yield program(client, mem), mem


@pytest.mark.parametrize("layout", ["as written", "irregular"])
async def test_drgn_reads_through_dumpd_what_it_reads_from_the_file(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]], layout: str) -> None:
    k, path = cores[layout]
    local = drgn.Program()
    local.set_core_dump(str(path))

    def compare() -> MemoryStats:
        with through_dumpd(sock) as (prog, memory):
            assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
            assert prog.platform == local.platform
            rng = random.Random(layout)
            faults = 0
            for _ in range(1500):
                address, size = draw(rng, memory.runs)
                want = outcome(local, address, size)
                assert outcome(prog, address, size) == want, (hex(address), size)
                faults += want == "fault"
            assert 100 < faults < 1000  # holes and run ends were crossed, and data read
            for vaddr, data in k.markers.values():  # drgn walks the page tables itself
                assert prog.read(vaddr, len(data)) == local.read(vaddr, len(data)) == data
            assert synthetic_walk(k)(prog) == synthetic_walk(k)(local)
            return memory.stats

    async with serving(tmp_path, path) as srv:
        sock = srv.config.server.socket
        stats = await asyncio.to_thread(compare)
    assert stats.round_trips < stats.reads // 5 and stats.hits > stats.reads // 2


async def test_the_cache_reads_ahead_and_keeps_pages_with_exact_counts(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]]) -> None:
    k, path = cores["as written"]
    base, window = 16 * MiB, 64 * KiB  # run [16 MiB, 32 MiB): every window inside it

    def read(prog: drgn.Program, memory: DebugMemory, address: int, size: int
             ) -> MemoryStats:
        assert prog.read(address, size, True) == k.read_phys(address, size)
        return memory.stats

    def check() -> None:
        with through_dumpd(sock) as (prog, memory):
            assert read(prog, memory, base + 0x100, 8) == MemoryStats(1, 0, 1, window)
            rng = random.Random(1)
            for _ in range(15):  # inside the window read ahead: no round trip
                read(prog, memory, base + rng.randrange(window - 64), rng.randrange(1, 64))
            assert memory.stats == MemoryStats(16, 15, 1, window)
            # across the window's end: one page kept, the next missed where the last
            # fetch ended, so the window doubles and reads on from there
            assert read(prog, memory, base + window - 4, 8) == MemoryStats(17, 15, 2, 3 * window)
            at = received = 3 * window
            for grown in (4, 8, 16, 16):  # sequential misses: doubled up to 1 MiB
                read(prog, memory, base + at + 8, 8)
                at, received = at + grown * window, received + grown * window
                assert memory.stats.received == received, grown
            assert memory.stats.round_trips == 6
            read(prog, memory, base + 8 * MiB + 0x10, 8)  # a jump: the aligned 64 KiB again
            assert memory.stats.received == received + window
            read(prog, memory, PAGE + 8, 8)  # the first run starts at 4 KiB: cut there
            assert memory.stats == MemoryStats(23, 15, 8, received + 2 * window - PAGE)

        with through_dumpd(sock, cache_bytes=2 * window) as (prog, memory):
            for address in (base, base + MiB, base + 2 * MiB):  # apart: no growth
                read(prog, memory, address, 8)
            assert memory.stats.round_trips == 3
            read(prog, memory, base + 2 * MiB + 100, 8)  # kept
            read(prog, memory, base + MiB + 100, 8)  # kept
            read(prog, memory, base + 100, 8)  # the oldest window, evicted
            assert memory.stats == MemoryStats(6, 2, 4, 4 * window)

    async with serving(tmp_path, path) as srv:
        sock = srv.config.server.socket
        await asyncio.to_thread(check)


async def test_reads_are_exact_while_a_stream_runs_on_another_connection(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]]) -> None:
    _, path = cores["as written"]
    local = drgn.Program()
    local.set_core_dump(str(path))
    image = path.read_bytes()

    def interleaved() -> int:
        rng = random.Random(4)
        pieces = 0
        with Client.connect(sock) as streamer, through_dumpd(sock) as (prog, memory):
            stream = streamer.stream(0, len(image), chunk=64 * KiB)
            for piece in stream:  # the stream is open on the server at each read
                data = getattr(piece, "data", None)
                if data is not None:
                    assert bytes(data) == image[piece.offset : piece.offset + len(data)]
                for _ in range(3):
                    address, size = draw(rng, memory.runs)
                    assert outcome(prog, address, size) == outcome(local, address, size)
                pieces += 1
            assert stream.summary is not None and not stream.summary["cancelled"]
        return pieces

    async with serving(tmp_path, path) as srv:
        sock = srv.config.server.socket
        assert await asyncio.to_thread(interleaved) > 100


async def test_a_page_the_server_cannot_read_is_a_fault_to_drgn(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]]) -> None:
    _, path = cores["as written"]
    source = open_source(str(path))
    try:
        where = source.phys_to_file(17 * MiB, PAGE)[0].file_offset
    finally:
        source.close()
    assert where is not None

    def read() -> str:
        with through_dumpd(sock) as (prog, _memory), pytest.raises(drgn.FaultError) as err:
            prog.read(17 * MiB + 8, 8, True)
        return str(err.value)

    async with serving(tmp_path, path) as srv:
        sock = srv.config.server.socket
        with failing(srv.source, range(where, where + PAGE)):
            said = await asyncio.to_thread(read)
    assert said.startswith("dumpd: EIO: ") and said.endswith(f": {17 * MiB + 8:#x}")


async def test_the_walk_takes_as_many_round_trips_over_tls_as_over_a_unix_socket(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]], pki: Pki) -> None:
    k, path = cores["as written"]
    port = free_port()

    def walk(connect: Any) -> tuple[Any, MemoryStats]:
        with connect() as client:
            memory = memory_of(client)
            return synthetic_walk(k)(program(client, memory)), memory.stats

    async with serving(tmp_path, path, tcp=f"127.0.0.1:{port}", **pki.server_options()) as srv:
        unix = await asyncio.to_thread(walk, lambda: Client.connect(srv.config.server.socket))
        tls = await asyncio.to_thread(
            walk, lambda: Client.connect_tcp("127.0.0.1", port, tls=pki.client()))
    assert tls == unix and unix[1].round_trips > 10


SCRIPT = """\
import sys
print(sys.argv[1:])
print(prog.read({vaddr:#x}, {size}).decode())
print(prog.read(0x1000, 8, True).hex())
sys.exit(int(sys.argv[1]))
"""


def test_dumpd_debug_runs_a_script_with_prog_and_says_what_its_reads_cost(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]]) -> None:
    k, path = cores["as written"]
    vaddr, release = k.markers["uts_release"]
    release = release.rstrip(b"\0")
    script = tmp_path / "walk.py"
    script.write_text(SCRIPT.format(vaddr=vaddr, size=len(release)))
    with served(tmp_path, str(path)) as sock:
        done = run("debug", "--socket", sock, str(script), "3", "--flag")
        assert done.stdout.decode().splitlines() == [
            "['3', '--flag']", release.decode(), k.read_phys(0x1000, 8).hex()]
        assert done.returncode == 3
        missing, cost = done.stderr.decode().splitlines()
        assert missing.startswith("dumpd: debug: missing debugging symbols for kernel "
                                  "6.1.0-synth; give --vmlinux FILE")
        reads, hits, trips, received = (int(n.replace(",", "")) for n in
                                        STATS.fullmatch(cost).groups())  # type: ignore[union-attr]
        assert reads >= 4 and hits + trips >= reads and received >= trips * PAGE

        script.write_text("print(prog.read(0x1000, 4, True).hex())\nraise KeyError('x')\n")
        failed = run("debug", "--socket", sock, str(script))
        assert failed.returncode == 1 and failed.stdout.decode() == k.read_phys(
            0x1000, 4).hex() + "\n"
        trace = failed.stderr.decode()
        assert f'File "{script}", line 2' in trace and "KeyError: 'x'" in trace
        assert "runpy" not in trace and "dumpd/debug" not in trace


def test_dumpd_debug_without_a_script_is_drgns_shell_with_prog(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]]) -> None:
    k, path = cores["as written"]
    vaddr, release = k.markers["uts_release"]
    release = release.rstrip(b"\0")
    env = {**ENV, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    lines = f"print(prog.read({vaddr:#x}, {len(release)}).decode())\nfor_each_task\n"
    with served(tmp_path, str(path)) as sock:
        done = subprocess.run([*DUMPD, "debug", "--socket", sock], input=lines.encode(),
                              capture_output=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert release.decode() in out and "<function for_each_task" in out
    err = done.stderr.decode()
    assert f"dumpd: the dump served at {sock}, 6 runs of physical memory" in err
    assert STATS.search(err)


def test_without_drgn_dumpd_debug_says_how_to_install_it(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['drgn'] = None; from dumpd.cli import main; " \
           "sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", hide, "debug", "--socket",
                           str(tmp_path / "none.sock")], capture_output=True, env=ENV,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    line = one_line_error(done, 2)
    assert line == ("dumpd: debug needs drgn, which is not installed: "
                    "pip install 'dumpd[debug]'")


def test_a_vmlinux_that_is_missing_or_unusable_is_one_line(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]]) -> None:
    _, path = cores["as written"]
    not_elf = tmp_path / "vmlinux"
    not_elf.write_text("not a kernel\n")
    with served(tmp_path, str(path)) as sock:
        absent = run("debug", "--socket", sock, "--vmlinux", str(tmp_path / "absent"))
        assert one_line_error(absent, 2) == f"dumpd: --vmlinux {tmp_path / 'absent'}: no such file"
        unusable = run("debug", "--socket", sock, "--vmlinux", str(not_elf))
        line = one_line_error(unusable, 2)
        assert line.startswith(f"dumpd: --vmlinux {not_elf}: ") and "not an ELF file" in line
        nothing = run("debug", "--socket", sock, str(tmp_path / "absent.py"))
        assert one_line_error(nothing, 2) == (
            f"dumpd: SCRIPT {tmp_path / 'absent.py'}: no such file")


def test_a_dump_without_vmcoreinfo_is_refused_in_one_line(tmp_path: Path) -> None:
    from tests.dumps import IRREGULAR, build_elf

    dump = build_elf(tmp_path / "plain", IRREGULAR)
    script = tmp_path / "s.py"
    script.write_text("print(1)\n")
    with served(tmp_path, dump.path) as sock:
        done = run("debug", "--socket", sock, str(script))
    assert one_line_error(done, 1).startswith("dumpd: ENOSYS: ")


async def test_load_debug_info_says_what_is_missing(
        tmp_path: Path, cores: dict[str, tuple[SyntheticKernel, Path]]) -> None:
    def load() -> str:
        with through_dumpd(sock) as (prog, _memory):
            return load_debug_info(prog)

    async with serving(tmp_path, cores["as written"][1]) as srv:
        sock = srv.config.server.socket
        assert await asyncio.to_thread(load) == (
            "missing debugging symbols for kernel 6.1.0-synth")


@pytest.mark.slow
async def test_a_kernel_walk_of_the_real_dump_through_dumpd_is_drgns_on_the_file(
        tmp_path: Path) -> None:
    found = real_dump(None)
    if isinstance(found, str):
        pytest.skip(found)
    dump, vmlinux = found
    want = kernel_walk(local_program(dump, vmlinux))
    assert want.release == Path(f"{dump}.version").read_text().strip() and want.tasks

    def walk() -> Any:
        with through_dumpd(sock) as (prog, memory):
            assert load_debug_info(prog, str(vmlinux)) == ""
            return kernel_walk(prog), memory.stats

    async with serving(tmp_path, dump) as srv:
        sock = srv.config.server.socket
        got, stats = await asyncio.to_thread(walk)
    assert got == want
    assert "panic" in got.trace and 0 < stats.round_trips < stats.reads // 10
