"""`dumpd fetch` never destroys a file: not the served dump (by any path), not a file the
operator did not ask it to replace, not a foreign resume state; a full or read-only
file system, a pipe, a device or bad arguments get one line and leave no stray files.
All through the real CLI against a real `dumpd serve`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.kdumppages import pages, rearrange
from dumpd.errors import StartupError
from dumpd.fetch import output
from dumpd.fetch.progress import size
from tests.daemon import DUMPD, ENV, info_json, one_line_error, run, served, slow_server
from tests.dumps import build_raw, file_bytes
from tests.views import PAGE, balloon_file, expected_view

MiB = 1 << 20


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `where` with `options` (size=1m: a full disk soon; ro: a
    read-only one); skipped where mounting is not permitted."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_fetch_refuses_the_served_dump_by_any_name(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    before = sha(dump.path)
    (tmp_path / "sub").mkdir()
    os.link(dump.path, tmp_path / "sub" / "hardlink")
    os.symlink(dump.path, tmp_path / "sub" / "symlink")
    names = [dump.path, str(tmp_path / "sub" / ".." / "oldmem"), str(tmp_path / "sub" /
             "hardlink"), str(tmp_path / "sub" / "symlink")]
    with served(tmp_path, dump.path) as sock:
        for name in names:
            for flags in ([], ["--force"], ["--resume"], ["--force", "--verify"]):
                refused = run("fetch", "-o", name, *flags, "--socket", sock)
                assert one_line_error(refused, 2) == (
                    f"dumpd: fetch: {name} and the served dump {dump.path} are the same file")
        # A directory: DIR/<the source's name>, which is the dump itself here.
        in_dir = run("fetch", "-o", str(tmp_path), "--force", "--socket", sock)
        # No -o: the source's name in the current directory.
        here = run("fetch", "--force", "--socket", sock, cwd=tmp_path)
    assert one_line_error(in_dir, 2) == (f"dumpd: fetch: {tmp_path / 'oldmem'} and the served"
                                         f" dump {dump.path} are the same file")
    assert one_line_error(here, 2) == (f"dumpd: fetch: oldmem and the served dump "
                                       f"{dump.path} are the same file")
    assert sha(dump.path) == before
    assert sorted(os.listdir(tmp_path / "sub")) == ["hardlink", "symlink"]
    assert not list(tmp_path.glob("*.dumpd-fetch*"))


def test_read_output_refuses_the_served_dump_by_any_name(tmp_path: Path) -> None:
    """`read -o` opens its output as fetch does: it once truncated the served dump."""
    dump = build_raw(tmp_path / "oldmem", MiB)
    before = sha(dump.path)
    os.link(dump.path, tmp_path / "hardlink")
    os.symlink(dump.path, tmp_path / "symlink")
    names = [dump.path, str(tmp_path / "hardlink"), str(tmp_path / "symlink"),
             "/proc/self/fd/0"]  # stdin is the dump
    with served(tmp_path, dump.path) as sock, open(dump.path, "rb") as stdin:
        for name in names:
            for flags in ([], ["--force"]):
                refused = subprocess.run([*DUMPD, "read", "0", "16", "-o", name, *flags,
                                          "--socket", sock], capture_output=True, env=ENV,
                                         stdin=stdin, check=False)
                assert one_line_error(refused, 2) == (
                    f"dumpd: read: {name} and the served dump {dump.path} are the same file")
    assert sha(dump.path) == before


def test_the_resume_state_may_not_be_the_served_dump_either(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "copy.dumpd-fetch", MiB)
    before = sha(dump.path)
    with served(tmp_path, dump.path) as sock:
        refused = run("fetch", "-o", str(tmp_path / "copy"), "--socket", sock)
    assert one_line_error(refused, 2) == (f"dumpd: fetch: {dump.path} and the served dump "
                                          f"{dump.path} are the same file")
    assert sha(dump.path) == before
    assert sorted(os.listdir(tmp_path)) == ["copy.dumpd-fetch", "run", "serve.log"]


def test_the_opened_descriptor_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    """The name may change between the check and the open: the descriptor is compared
    again before a truncate or a write."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"the dump" * 512)
    st = victim.stat()
    served_file = output.Served(str(victim), st.st_dev, st.st_ino, 0, None)
    for attempt in (lambda: output.replace(str(victim), served_file, MiB),
                    lambda: output.reopen(str(victim), served_file, 0, MiB)):
        with pytest.raises(StartupError, match="are the same file"):
            attempt()
    assert victim.read_bytes() == b"the dump" * 512
    elsewhere = output.Served(str(victim), st.st_dev, st.st_ino, 0, "another machine's boot")
    assert not elsewhere.is_file(st)  # equal numbers on another host are another file


def test_an_existing_file_is_kept_unless_forced_and_copies_are_0600(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    text = tmp_path / "notes.txt"
    text.write_text("precious\n")
    text.chmod(0o644)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with served(tmp_path, dump.path) as sock:
        kept = run("fetch", "-o", str(text), "--socket", sock)
        not_partial = run("fetch", "-o", str(text), "--resume", "--socket", sock)
        unchanged = text.read_text()
        forced = run("fetch", "-o", str(text), "--force", "-q", "--socket", sock)
        new = run("fetch", "-o", str(out_dir), "-q", "--verify", "--socket", sock)
    assert one_line_error(kept, 2) == (f"dumpd: fetch: {text} exists; --force replaces it, "
                                       "--resume continues a partial copy")
    assert one_line_error(not_partial, 2) == (
        f"dumpd: fetch: {text} exists but {text}.dumpd-fetch does not: it is no partial copy "
        "fetch can resume; --force replaces it")
    assert unchanged == "precious\n"
    assert (forced.returncode, forced.stderr) == (0, b"")
    assert text.read_bytes() == file_bytes(dump.path)
    assert mode(text) == 0o600  # was 0644: a dump must not become world-readable
    assert (new.returncode, new.stderr) == (0, b"")
    assert os.listdir(out_dir) == ["oldmem"]  # -o DIR: DIR/<the source's name>, as cp
    assert mode(out_dir / "oldmem") == 0o600
    assert (out_dir / "oldmem").read_bytes() == file_bytes(dump.path)


def test_resume_with_nothing_to_resume_starts_a_new_copy(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path) as sock:
        started = run("fetch", "-o", str(copy), "--resume", "--socket", sock)
        quiet = run("fetch", "-o", str(tmp_path / "quiet"), "--resume", "-q", "--socket", sock)
    lines = started.stderr.decode().splitlines()
    assert started.returncode == 0, lines
    assert lines[0] == f"fetch: no partial copy of {copy} to resume: starting a new one"
    assert lines[-1].startswith(f"fetched 2.0 MiB of {copy} in ")
    assert (quiet.returncode, quiet.stderr) == (0, b"")
    assert copy.read_bytes() == (tmp_path / "quiet").read_bytes() == file_bytes(dump.path)
    assert sorted(os.listdir(tmp_path)) == ["copy", "oldmem", "quiet", "run", "serve.log"]


def test_a_foreign_file_at_the_state_path_is_not_overwritten(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", MiB)
    foreign = tmp_path / "copy.dumpd-fetch"
    foreign.write_text("my notes, not JSON\n")
    with served(tmp_path, dump.path) as sock:
        fresh = run("fetch", "-o", str(tmp_path / "copy"), "--socket", sock)
        forced = run("fetch", "-o", str(tmp_path / "copy"), "--force", "--socket", sock)
        resumed = run("fetch", "-o", str(tmp_path / "copy"), "--resume", "--socket", sock)
    for result in (fresh, forced, resumed):
        assert one_line_error(result, 2) == (
            f"dumpd: {foreign}: unreadable resume state (Expecting value: line 1 column 1 "
            "(char 0)); move it away")
    assert foreign.read_text() == "my notes, not JSON\n"
    assert not (tmp_path / "copy").exists()


def test_arguments_are_checked_before_any_file_is_touched(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    copy = tmp_path / "copy"
    with served(tmp_path, dump.path) as sock:
        chunk = run("fetch", "-o", str(copy), "--chunk", "100", "--socket", sock)
        chunk_resume = run("fetch", "-o", str(copy), "--chunk", "100", "--resume", "--socket",
                           sock)
        past = run("fetch", "-o", str(copy), "--range", f"{2 * MiB}:16", "--socket", sock)
        empty = run("fetch", "-o", str(copy), "--range", "0:0", "--socket", sock)
        listing = sorted(os.listdir(tmp_path))
        clipped = run("fetch", "-o", str(copy), "--range", f"{2 * MiB - PAGE}:{MiB}",
                      "--socket", sock)
    chunk_line = ("dumpd: fetch: --chunk 100: EINVAL: the server takes a multiple of its page "
                  "size 4096 in [4096, 8388608]")
    assert one_line_error(chunk, 2) == one_line_error(chunk_resume, 2) == chunk_line
    assert one_line_error(past, 2) == ("dumpd: fetch: --range 0x200000:...: ERANGE: it starts"
                                       " at or past the end of the view (0x200000 bytes)")
    assert one_line_error(empty, 2) == "dumpd: fetch: --range 0x0:0: EINVAL: the range is empty"
    assert listing == ["oldmem", "run", "serve.log"]
    assert clipped.returncode == 0
    assert clipped.stderr.decode().splitlines()[-1].endswith(
        "data 4.0 KiB, holes 0 B, errors 0 B (the range ends at the end of the view, "
        "0x200000)")
    assert copy.read_bytes()[-PAGE:] == file_bytes(dump.path, 2 * MiB - PAGE)


def test_a_pipe_gets_the_kdump_copy_flattened_and_nothing_that_needs_seeking(
        tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    runs = [(first, first + 7) for first in range(0, dump.size // PAGE, 16)]
    balloon = balloon_file(tmp_path / "balloon.txt", runs)
    zero_pfns = {p for a, b in runs for p in range(a, b + 1)}
    with served(tmp_path, dump.path, "--hook", "balloon", "--hook-option",
                f"file={balloon}") as sock:
        whole = run("fetch", "-o", "-", "--verify", "--socket", sock)
        part = run("fetch", "-o", "/dev/stdout", "--range", "0x1800:0x10000", "-q", "--socket",
                   sock)
        elf = run("fetch", "-o", "/dev/stdout", "--format", "elf", "-q", "--socket", sock)
        resume = run("fetch", "-o", "-", "--resume", "--socket", sock)
        null = run("fetch", "-o", "/dev/null", "--socket", sock)
        reader, writer = os.openpty()
        try:
            tty = subprocess.run([*DUMPD, "fetch", "-o", "-", "--socket", sock], stdout=writer,
                                 stderr=subprocess.PIPE, env=ENV, timeout=30, check=False)
        finally:
            os.close(reader)
            os.close(writer)
    assert whole.returncode == 0, whole.stderr.decode()
    rearrange(whole.stdout, tmp_path / "copy")  # what makedumpfile -R does
    assert dict(pages(tmp_path / "copy")) == {
        pfn: file_bytes(dump.path, pfn * PAGE, PAGE) for pfn in range(dump.size // PAGE)
        if pfn not in zero_pfns}
    assert whole.stderr.decode().splitlines()[-1] == (
        "verify: the copy matches 2.0 MiB of the view (1 runs of memory, 0 PT_NOTE)")
    assert one_line_error(part, 2) == (
        "dumpd: fetch: --range: a kdump-compressed copy holds the whole dump; copy a range "
        "with --format elf")
    assert one_line_error(elf, 2) == (
        "dumpd: fetch: --format elf: /dev/stdout is a pipe, and an ELF copy needs seeking "
        "(its holes); write it to a file, or send the kdump-compressed form (--format kdump, "
        "a pipe's default)")
    assert one_line_error(resume, 2) == ("dumpd: fetch: --resume: stdout is not a regular file: "
                                         "there is no partial copy to resume (fetch again "
                                         "without --resume)")
    assert one_line_error(null, 2) == (
        "dumpd: fetch: /dev/null is a character device (a terminal?); name a regular file, a "
        "block device (with --force), a pipe or - (stdout)")
    assert (tty.returncode, tty.stderr.decode()) == (2, "dumpd: fetch: stdout is a terminal: "
                                                     "name a file with -o, or pipe the dump to "
                                                     "a program\n")
    assert sorted(os.listdir(tmp_path)) == ["balloon.txt", "copy", "oldmem", "run", "serve.log"]


def test_a_closed_pipe_is_one_line(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * MiB)
    with served(tmp_path, dump.path) as sock:
        fetcher = subprocess.Popen([*DUMPD, "fetch", "-o", "-", "-q", "--socket", sock],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        assert fetcher.stdout is not None and fetcher.stderr is not None
        # The flattened header: signature, type 1 and version 1 (big-endian), zeros.
        assert fetcher.stdout.read(100) == (b"makedumpfile" + bytes(4)
                                            + (1).to_bytes(8, "big") * 2 + bytes(68))
        fetcher.stdout.close()  # as `| head -c 100`
        err = fetcher.stderr.read().decode()
        fetcher.wait(30)
    assert (fetcher.returncode, err) == (1, "dumpd: fetch: stdout: Broken pipe; fetch again "
                                            "for a complete copy\n")


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 4 MiB loop block device over a file of 0xff bytes."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xff" * (4 * MiB))
    made = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                          check=False)
    if made.returncode:
        pytest.skip(f"cannot make a loop device: {made.stderr.decode().strip()}")
    device = made.stdout.decode().strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def test_a_block_device_needs_force_and_gets_zeros_for_holes(tmp_path: Path,
                                                             loop_device: str) -> None:
    dump = build_raw(tmp_path / "oldmem", 2 * MiB)
    big = build_raw(tmp_path / "big", 8 * MiB)
    runs = [(first, first + 7) for first in range(0, dump.size // PAGE, 16)]
    balloon = balloon_file(tmp_path / "balloon.txt", runs)
    zero_pfns = {p for a, b in runs for p in range(a, b + 1)}
    with served(tmp_path, dump.path, "--hook", "balloon", "--hook-option",
                f"file={balloon}") as sock:
        refused = run("fetch", "-o", loop_device, "--socket", sock)
        untouched = file_bytes(loop_device)
        forced = run("fetch", "-o", loop_device, "--force", "--verify", "-q", "--socket", sock)
    (tmp_path / "run").rmdir()
    with served(tmp_path, big.path) as sock:
        small = run("fetch", "-o", loop_device, "--force", "--socket", sock)
    assert one_line_error(refused, 2) == (f"dumpd: fetch: {loop_device} is a block device; "
                                          "--force writes the copy over its content")
    assert untouched == b"\xff" * (4 * MiB)
    assert (forced.returncode, forced.stderr) == (0, b"")
    got = file_bytes(loop_device)
    assert got[: dump.size] == expected_view(dump.path, dump.segments, zero_pfns)
    assert got[dump.size :] == b"\xff" * (2 * MiB)  # past the view: not the copy's
    assert one_line_error(small, 2) == (f"dumpd: fetch: {loop_device}: the device holds "
                                        f"{4 * MiB} bytes, the copy needs {8 * MiB}")
    assert not list(Path(loop_device).parent.glob(f"{Path(loop_device).name}.dumpd-fetch*"))


def test_a_read_only_file_system_is_one_line(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", MiB)
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt, served(tmp_path, dump.path) as sock:
        refused = run("fetch", "-o", str(mnt / "vmcore"), "--socket", sock)
        listing = os.listdir(mnt)
    assert one_line_error(refused, 1) == (f"dumpd: fetch: {mnt / 'vmcore'}: cannot create it: "
                                          "Read-only file system")
    assert listing == []


def test_a_full_file_system_says_what_is_needed_and_resume_finishes(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * MiB)
    chunk = 64 * 1024
    with tmpfs(tmp_path / "small", "size=1m") as mnt, served(tmp_path, dump.path) as sock:
        copy = mnt / "vmcore"
        full = run("fetch", "-o", str(copy), "--chunk", str(chunk), "--socket", sock)
        after = sorted(os.listdir(mnt))
        held, vfs = copy.stat().st_blocks * 512, os.statvfs(mnt)
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        resumed = run("fetch", "-o", str(copy), "--resume", "--verify", "--chunk", str(chunk),
                      "--socket", sock)
        final = sorted(os.listdir(mnt))
        copied = file_bytes(copy)
    lines = full.stderr.decode().splitlines()
    assert full.returncode == 1 and "Traceback" not in full.stderr.decode()
    # The copy stopped after whole chunks: what is left of the view is all RAM here.
    left = {size(dump.size - done) for done in range(0, held + 1, chunk)}
    head, _, tail = lines[-1].partition(" of RAM pages still to write, ")
    assert head.startswith(f"dumpd: fetch: {copy}: No space left on device (")
    assert head.rpartition("(")[2] in left
    assert tail == (f"{size(held)} on disk already, {size(vfs.f_bavail * vfs.f_frsize)} free);"
                    f" {copy}.dumpd-fetch could not be updated (No space left on device): "
                    "--resume continues from its last checkpoint")
    assert after == ["vmcore", "vmcore.dumpd-fetch"]  # no temporary file left
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert copied == file_bytes(dump.path)
    assert final == ["vmcore"]


def test_a_stream_to_a_full_file_system_says_what_was_written(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * MiB)
    with tmpfs(tmp_path / "small", "size=1m") as mnt, served(tmp_path, dump.path) as sock:
        with open(mnt / "stream", "wb") as stdout:
            full = subprocess.run([*DUMPD, "fetch", "-o", "-", "-q", "--socket", sock],
                                  stdout=stdout, stderr=subprocess.PIPE, env=ENV, timeout=30,
                                  check=False)
        written, vfs = (mnt / "stream").stat().st_size, os.statvfs(mnt)
        listing = os.listdir(mnt)
    assert 0 < written <= MiB
    assert (full.returncode, full.stderr.decode()) == (1, (
        f"dumpd: fetch: stdout: No space left on device ({size(written)} written, "
        f"{size(vfs.f_bavail * vfs.f_frsize)} free); fetch again for a complete copy\n"))
    assert listing == ["stream"]


def test_verify_fails_when_the_source_changes_under_the_copy(tmp_path: Path) -> None:
    dump = build_raw(tmp_path / "oldmem", 4 * MiB)
    sock, copy = tmp_path / "dumpd.sock", tmp_path / "copy"
    original = file_bytes(dump.path, 0, 7)
    assert original != b"changed"
    server = slow_server(tmp_path, dump.path, sock)
    try:
        fetcher = subprocess.Popen([*DUMPD, "fetch", "-o", str(copy), "--verify", "--chunk",
                                    "65536", "--socket", str(sock)], stderr=subprocess.PIPE,
                                   env=ENV)
        assert fetcher.stderr is not None
        first = fetcher.stderr.readline().decode()  # the first tenth is copied
        with open(dump.path, "r+b") as source:  # the first page changes: copied already
            source.write(b"changed")
        rest = fetcher.stderr.read().decode()
        fetcher.wait(60)
        info = info_json(str(sock))
    finally:
        server.terminate()
        server.wait()
    assert first.startswith("fetch: ") and "of 4.0 MiB" in first
    assert fetcher.returncode == 1
    assert rest.splitlines()[-1] == ("dumpd: verify: the served dump changed during the copy "
                                     f"(mtime_ns differs): {copy} cannot equal it")
    assert file_bytes(copy, 0, 7) == original  # copied before the change
    assert info["source"]["mtime_ns"] == os.stat(dump.path).st_mtime_ns
