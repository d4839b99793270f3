"""`dumpd fetch --zeros-as-holes` and the record of the pages a copy left out
(`COPY.dumpd-holes`), as an operator runs them: real servers, the real command, copies
on disk compared byte for byte, records line for line, resumed copies included.

Expected records are computed here from BALLOONED, WORDS and ZEROED, never by dumpd."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from dumpd.cli import main
from dumpd.fetch import progress
from tests import daemon
from tests.daemon import one_line_error, run, served
from tests.plugindist import explaining
from tests.servers import failing, serving
from tests.views import BALLOONED, EXPLAINED, PAGE, WORDS, ZERO_PFNS, ZEROED, expected_view
from tests.views import zeroed_dump as dump_of

PAGES = 0x600  # of the raw image `zeroed_dump` writes
HOOK = ["--hook", "explaining", "--hook-option", f"runs={EXPLAINED}"]


def expected_record(zeros: bool) -> list[list[Any]]:
    """The runs of a record of the whole raw image, in order: the hook's pages with
    their words, and (with `zeros`) the zeroed RAM pages."""
    words = {pfn: w for (a, b), w in zip(BALLOONED, WORDS, strict=True)
             for pfn in range(a, b + 1)}
    runs: list[list[Any]] = []
    for pfn in range(PAGES):
        reason = f"hook:{words[pfn]}" if pfn in words else (
            "zero" if zeros and pfn in ZEROED else None)
        if reason is None:
            continue
        if runs and sum(runs[-1][:2]) == pfn and runs[-1][2] == reason:
            runs[-1][1] += 1
        else:
            runs.append([pfn, 1, reason])
    return runs


def totals(runs: list[list[Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, count, reason in runs:
        counts[reason] = counts.get(reason, 0) + count
    return counts


def record_of(copy: Path) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """The header, runs and trailer of the record beside `copy`."""
    lines = [json.loads(line) for line in Path(f"{copy}{'.dumpd-holes'}").read_text()
             .splitlines()]
    return lines[0], lines[1:-1], lines[-1]


def holes_of(path: Path) -> list[tuple[int, int]]:
    """The holes of the file at `path` as `[start, end)`, as SEEK_HOLE says."""
    found, pos = [], 0
    size = path.stat().st_size
    with open(path, "rb") as f:
        fd = f.fileno()
        while pos < size:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            if hole >= size:
                break
            try:
                pos = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError:
                pos = size
            found.append((hole, pos))
    return found


def pfn_ranges(pfns: set[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for pfn in sorted(pfns):
        if ranges and ranges[-1][1] == pfn * PAGE:
            ranges[-1] = (ranges[-1][0], (pfn + 1) * PAGE)
        else:
            ranges.append((pfn * PAGE, (pfn + 1) * PAGE))
    return ranges


@pytest.fixture
def hook_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `explaining` hook, installed for the commands and for this process."""
    site = explaining(tmp_path / "site")
    monkeypatch.setitem(daemon.ENV, "PYTHONPATH", str(site))
    monkeypatch.syspath_prepend(str(site))


@pytest.mark.usefixtures("hook_site")
def test_a_copy_leaves_zero_pages_as_holes_and_records_why_pages_are_left_out(
        tmp_path: Path) -> None:
    path, _, segments = dump_of(tmp_path, "raw")
    copy, plain = tmp_path / "copy", tmp_path / "plain"
    with served(tmp_path, path, *HOOK) as sock:
        zeros = run("fetch", "-o", str(copy), "--zeros-as-holes", "--verify", "--socket", sock)
        without = run("fetch", "-o", str(plain), "--socket", sock)
        piped = run("fetch", "-o", "-", "--zeros-as-holes", "--socket", sock)
    assert (zeros.returncode, without.returncode, piped.returncode) == (0, 0, 0)
    want = expected_view(path, segments, ZERO_PFNS)
    assert copy.read_bytes() == plain.read_bytes() == want
    assert piped.stdout.startswith(b"makedumpfile\0")  # the flattened kdump copy
    # The zero pages are holes of the copy too: fewer blocks on disk.
    zero_ram = ZEROED - ZERO_PFNS
    assert holes_of(copy) == pfn_ranges(ZERO_PFNS | zero_ram)
    assert holes_of(plain) == pfn_ranges(ZERO_PFNS)
    assert copy.stat().st_blocks < plain.stat().st_blocks
    header, runs, trailer = record_of(copy)
    assert {k: v for k, v in header.items() if k != "reasons"} == {
        "dumpd_holes": 1, "complete": True, "copy": "copy", "source": path,
        "page_size": PAGE, "hook": "explaining", "hook_options": {"runs": EXPLAINED},
        "hook_generation": 1}
    assert sorted(header["reasons"]) == ["excluded", "file_hole", "hook", "hook:WORD", "zero"]
    assert runs == expected_record(zeros=True)
    assert trailer == {"pages": {"zero": 10, "hook:ballooned": 178, "hook:offline": 16,
                                 "hook:hwpoison": 16}}
    assert record_of(plain)[1:] == (expected_record(zeros=False), {"pages": {
        "hook:ballooned": 178, "hook:offline": 16, "hook:hwpoison": 16}})
    assert os.stat(f"{copy}.dumpd-holes").st_mode & 0o777 == 0o600
    lines = zeros.stderr.decode().splitlines()
    assert lines[-2].endswith("; pages left out: 178 hook:ballooned, 16 hook:hwpoison, "
                              "16 hook:offline, 10 zero")
    assert without.stderr.decode().splitlines()[-1].endswith(
        "; pages left out: 178 hook:ballooned, 16 hook:hwpoison, 16 hook:offline")
    # A stream has no room for a record beside it: the pages are counted, not explained.
    assert piped.stderr.decode().splitlines()[-1].endswith(
        "; pages left out: 210 hook, 10 zero")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("copy", "plain"))
                  ) == ["copy", "copy.dumpd-holes", "plain", "plain.dumpd-holes"]


async def test_an_interrupted_copy_resumes_to_the_same_record(
        tmp_path: Path, hook_site: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A fetch stopped half-way checkpoints its record; lines written after that (as a
    fetch killed after its checkpoint leaves them) are cut away on --resume, and the
    hole it stopped in (recorded, not yet counted done) is recorded once."""
    path, _, segments = dump_of(tmp_path, "raw")
    copy = tmp_path / "copy"
    real_add = progress.Progress.add

    def interrupted(self: progress.Progress, **counts: int) -> None:
        real_add(self, **counts)
        if self.done >= 0x300 * PAGE:  # past the first two ballooned runs and zero pages
            raise KeyboardInterrupt

    async with serving(tmp_path, path, hook="explaining",
                       hook_options={"runs": EXPLAINED}) as server:
        fetch = ["fetch", "-o", str(copy), "--zeros-as-holes", "--chunk", "65536", "-q",
                 "--socket", server.config.server.socket]
        monkeypatch.setattr(progress.Progress, "add", interrupted)
        first = await asyncio.to_thread(main, fetch)
        monkeypatch.setattr(progress.Progress, "add", real_add)
        state = json.loads(Path(f"{copy}.dumpd-fetch").read_text())
        record = Path(f"{copy}.dumpd-holes")
        partial = record.read_text()
        assert len(partial) == state["record_bytes"]
        record.rename(f"{record}.kept")
        lost = await asyncio.to_thread(main, [*fetch, "--resume"])  # the record is gone
        Path(f"{record}.kept").rename(record)
        with record.open("a") as f:  # what a fetch killed after its checkpoint may leave
            f.write('[1280, 7, "zero"]\n')
        second = await asyncio.to_thread(main, [*fetch, "--resume", "--verify"])
    assert (first, lost, second) == (130, 2, 0)
    assert capsys.readouterr().err.splitlines()[:2] == [
        "dumpd: fetch interrupted at 0x250000; run the same command with --resume to continue",
        f"dumpd: fetch: {record} holds less than the partial copy's state counts on: the "
        "record is lost; fetch again without --resume"]
    assert [json.loads(line) for line in partial.splitlines()[1:]] == [
        run for run in [[2, 3, "zero"], [0x21, 2, "not_ram"], [0x30, 16, "not_ram"],
                        [0x40, 2, "zero"], [0x250, 0xB0, "not_ram"]]]
    assert copy.read_bytes() == expected_view(path, segments, ZERO_PFNS)
    _, runs, trailer = record_of(copy)
    assert runs == expected_record(zeros=True)
    assert trailer == {"pages": totals(runs)}
    assert not Path(f"{copy}.dumpd-fetch").exists()


async def test_pages_that_failed_are_recorded_once_when_retried(
        tmp_path: Path, hook_site: None) -> None:
    path, _, segments = dump_of(tmp_path, "raw")
    copy = tmp_path / "copy"
    bad = range(0x2FE * PAGE, 0x303 * PAGE)  # RAM zero pages 0x300, 0x301 among them
    async with serving(tmp_path, path, hook="explaining",
                       hook_options={"runs": EXPLAINED}) as server:
        assert server.source is not None
        fetch = ["fetch", "-o", str(copy), "--zeros-as-holes", "-q",
                 "--socket", server.config.server.socket]
        with failing(server.source, bad):
            first = await asyncio.to_thread(main, fetch)
        partial = [json.loads(line) for line in
                   Path(f"{copy}.dumpd-holes").read_text().splitlines()[1:]]
        second = await asyncio.to_thread(main, [*fetch, "--resume"])
    assert (first, second) == (1, 0)
    assert [0x300, 2, "zero"] not in partial  # they failed: not left out, not yet known
    assert copy.read_bytes() == expected_view(path, segments, ZERO_PFNS)
    runs = record_of(copy)[1]
    assert runs[-1] == [0x300, 2, "zero"]  # runs come as the copy got them: retried last
    assert sorted(runs) == expected_record(zeros=True)


@pytest.mark.usefixtures("hook_site")
def test_a_record_fetch_did_not_write_is_never_overwritten(tmp_path: Path) -> None:
    path, _, _ = dump_of(tmp_path, "raw")
    copy = tmp_path / "copy"
    record = tmp_path / "copy.dumpd-holes"
    record.write_text("notes of mine\n")
    with served(tmp_path, path, *HOOK) as sock:
        refused = run("fetch", "-o", str(copy), "--socket", sock)
        forced = run("fetch", "-o", str(copy), "--force", "--socket", sock)
        assert (record.read_text(), copy.exists()) == ("notes of mine\n", False)
        record.unlink()
        made = run("fetch", "-o", str(copy), "--socket", sock)
        copy.unlink()  # the record of a copy that is gone is still not fetch's to drop
        again = run("fetch", "-o", str(copy), "--socket", sock)
        assert not copy.exists()
        replaced = run("fetch", "-o", str(copy), "--force", "--socket", sock)
    message = f"dumpd: fetch: {record} exists and is not a record fetch wrote; move it away"
    assert one_line_error(refused, 2) == one_line_error(forced, 2) == message
    assert made.returncode == 0
    assert one_line_error(again, 2) == (f"dumpd: fetch: {record} exists (the record of "
                                        "another copy); move it away, or --force replaces "
                                        "it with the copy")
    assert replaced.returncode == 0
    assert record_of(copy)[1] == expected_record(zeros=False)
