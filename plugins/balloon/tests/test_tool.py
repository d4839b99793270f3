"""The `dumpd-balloon` command: convert, show, atomic writes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import dumpd_balloon
from dumpd_balloon import PfnBitmap, PfnRanges, atomic
from dumpd_balloon.bitmap import header
from dumpd_balloon.tool import main

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
SCRIPT = Path(sys.executable).parent / "dumpd-balloon"

TINY = "# two ranges\n0x110\n0x102-0x105\n"


def run(*args: str | Path, script: bool = False) -> subprocess.CompletedProcess[str]:
    """The command in a child process: the installed script or `python -m dumpd_balloon`."""
    if script and not SCRIPT.exists():
        pytest.skip("the dumpd-balloon script is not installed beside this Python")
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "dumpd_balloon"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def error_line(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """Run `main` in process, expecting exit status 2 and one line on stderr."""
    assert main([str(a) for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1
    assert err.startswith("dumpd-balloon: ")
    return err.rstrip("\n")


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- convert ----------------------------------------------------------------------------


def test_convert_text_to_bitmap_exact_bytes(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text(TINY)
    done = run(
        "convert", tmp_path / "tiny.txt", tmp_path / "tiny.bmp", "--first", "0x100", "--count", "20"
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{tmp_path / 'tiny.bmp'}: bitmap of 20 pfns from 0x100, 5 ballooned\n"
    assert (tmp_path / "tiny.bmp").read_bytes() == header(0x100, 20) + b"\x3c\x00\x01"
    assert listing(tmp_path) == ["tiny.bmp", "tiny.txt"]


def test_convert_default_span(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text(TINY)
    assert main(["convert", str(tmp_path / "tiny.txt"), str(tmp_path / "tiny.bmp")]) == 0
    bitmap = dumpd_balloon.load(tmp_path / "tiny.bmp")
    assert isinstance(bitmap, PfnBitmap)
    assert (bitmap.first_pfn, bitmap.pfn_count) == (0x102, 15)
    bitmap.close()


def test_convert_with_first_only_or_count_only(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text(TINY)
    for options, span in ((["--first", "0"], (0, 0x111)), (["--count", "100"], (0x102, 100))):
        out = tmp_path / "o.bmp"
        assert main(["convert", str(tmp_path / "tiny.txt"), str(out), *options]) == 0
        bitmap = dumpd_balloon.load(out)
        assert isinstance(bitmap, PfnBitmap)
        assert (bitmap.first_pfn, bitmap.pfn_count) == span
        assert list(bitmap) == [(0x102, 0x106), (0x110, 0x111)]
        bitmap.close()


def test_round_trip_text_bitmap_text(tmp_path: Path) -> None:
    ranges = [(0, 3), (9, 10), (0x1000, 0x2345), (0x10000, 0x10001), (0xFFFF0, 0x100000)]
    messy = "\n".join(f"{s}+{e - s}  # item" for s, e in reversed(ranges)) + "\n\n"
    (tmp_path / "in.txt").write_text(messy)
    assert (
        main(
            [
                "convert",
                str(tmp_path / "in.txt"),
                str(tmp_path / "mid.bmp"),
                "--first",
                "0",
                "--count",
                "0x100000",
            ]
        )
        == 0
    )
    assert dumpd_balloon.detect(tmp_path / "mid.bmp") == "bitmap"
    assert main(["convert", str(tmp_path / "mid.bmp"), str(tmp_path / "out.txt")]) == 0
    assert dumpd_balloon.detect(tmp_path / "out.txt") == "text"
    back = dumpd_balloon.read_file(tmp_path / "out.txt")
    assert list(back) == ranges
    assert (tmp_path / "out.txt").read_text() == dumpd_balloon.format_text(ranges)


def test_convert_to_the_same_format(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("5\n1-4\n")
    assert (
        main(["convert", str(tmp_path / "in.txt"), str(tmp_path / "out.txt"), "--to", "text"]) == 0
    )
    assert list(dumpd_balloon.read_file(tmp_path / "out.txt")) == [(1, 6)]
    dumpd_balloon.write_bitmap(tmp_path / "a.bmp", [(1, 6)], 0, 8)
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.bmp"),
                str(tmp_path / "b.bmp"),
                "--to",
                "bitmap",
                "--count",
                "64",
            ]
        )
        == 0
    )
    assert (tmp_path / "b.bmp").read_bytes() == header(1, 64) + b"\x1f" + bytes(7)


def test_convert_in_place(tmp_path: Path) -> None:
    path = tmp_path / "balloon"
    path.write_text(TINY)
    assert main(["convert", str(path), str(path)]) == 0
    assert dumpd_balloon.detect(path) == "bitmap"
    assert main(["convert", str(path), str(path)]) == 0
    assert list(dumpd_balloon.read_file(path)) == [(0x102, 0x106), (0x110, 0x111)]
    assert listing(tmp_path) == ["balloon"]


# --- atomic writes ----------------------------------------------------------------------


def test_an_error_leaves_the_target_unchanged_and_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text(TINY)
    (tmp_path / "out.bmp").write_bytes(b"previous contents")
    done = run("convert", tmp_path / "tiny.txt", tmp_path / "out.bmp", "--first", "0x103")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"dumpd-balloon: {tmp_path / 'tiny.txt'}: listed pfn 0x102 lies below the span 0x103+0xe\n"
    )
    assert (tmp_path / "out.bmp").read_bytes() == b"previous contents"
    assert listing(tmp_path) == ["out.bmp", "tiny.txt"]


@pytest.mark.parametrize("to", ["bitmap", "text"])
def test_a_failed_write_leaves_the_target_unchanged_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], to: str
) -> None:
    (tmp_path / "tiny.txt").write_text(TINY)
    (tmp_path / "out").write_bytes(b"previous contents")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    line = error_line(capsys, "convert", tmp_path / "tiny.txt", tmp_path / "out", "--to", to)
    assert line == f"dumpd-balloon: {tmp_path / 'out'}: cannot write: No space left on device"
    assert (tmp_path / "out").read_bytes() == b"previous contents"
    assert listing(tmp_path) == ["out", "tiny.txt"]


def test_replacing_removes_the_temp_file_when_the_body_raises(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as out:
        out.write(b"half")
        assert len(listing(tmp_path)) == 2  # the temporary file, beside the target
        raise RuntimeError("stop")
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["t"]


def test_new_files_get_the_usual_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        dumpd_balloon.write_bitmap(tmp_path / "b.bmp", [(1, 2)])
        dumpd_balloon.write_text(tmp_path / "b.txt", [(1, 2)])
    finally:
        os.umask(umask)
    assert (tmp_path / "b.bmp").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


# --- show -------------------------------------------------------------------------------


def test_show_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.txt").write_text(TINY)
    assert main(["show", str(tmp_path / "tiny.txt")]) == 0
    assert capsys.readouterr().out == (
        f"file: {tmp_path / 'tiny.txt'}\n"
        "format: text\n"
        "ranges: 2\n"
        "ballooned: 5 pfns\n"
        "0x102-0x105\n"
        "0x110\n"
    )


def test_show_bitmap(tmp_path: Path) -> None:
    dumpd_balloon.write_bitmap(tmp_path / "tiny.bmp", [(0x102, 0x106), (0x110, 0x111)], 0x100, 20)
    done = run("show", tmp_path / "tiny.bmp", script=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"file: {tmp_path / 'tiny.bmp'}\n"
        "format: bitmap, version 1, header 32 bytes\n"
        "span: 0x100-0x113 (20 pfns)\n"
        "ballooned: 5 pfns\n"
    )


def test_show_counts_a_large_bitmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ones = [(0, 1 << 20), (1 << 26, (1 << 26) + 12345), ((1 << 30) - 1, 1 << 30)]
    dumpd_balloon.write_bitmap(tmp_path / "big.bmp", ones, 0, 1 << 30)
    assert main(["show", str(tmp_path / "big.bmp")]) == 0
    out = capsys.readouterr().out
    assert "span: 0x0-0x3fffffff (1073741824 pfns)\n" in out
    assert f"ballooned: {(1 << 20) + 12345 + 1} pfns\n" in out


def test_show_an_empty_bitmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "e.bmp").write_bytes(header(7, 0))
    assert main(["show", str(tmp_path / "e.bmp")]) == 0
    assert "span: empty (0 pfns)\nballooned: 0 pfns\n" in capsys.readouterr().out


# --- errors: one line, exit 2 -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frob"], "argument COMMAND: invalid choice: 'frob' (choose from 'convert', 'show')"),
        (["convert", "a"], "the following arguments are required: OUTPUT"),
        (["show"], "the following arguments are required: FILE"),
        (["show", "a", "b"], "unrecognized arguments: b"),
        (
            ["convert", "a", "b", "--first", "-1"],
            "argument --first: '-1' is not a decimal or 0x hex number",
        ),
        (
            ["convert", "a", "b", "--count", "1_0"],
            "argument --count: '1_0' is not a decimal or 0x hex number",
        ),
        (
            ["convert", "a", "b", "--to", "csv"],
            "argument --to: invalid choice: 'csv' (choose from 'text', 'bitmap')",
        ),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert error_line(capsys, *args) == f"dumpd-balloon: {message}"


def test_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent"
    assert error_line(capsys, "show", missing) == (
        f"dumpd-balloon: {missing}: cannot read: No such file or directory"
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n0x20-0x10\n")
    assert error_line(capsys, "convert", bad, tmp_path / "o") == (
        f"dumpd-balloon: {bad}:2: END 0x10 is below START 0x20"
    )
    short = tmp_path / "short.bmp"
    short.write_bytes(header(0, 1024) + bytes(100))
    assert error_line(capsys, "show", short) == (
        f"dumpd-balloon: {short}: bitmap holds 100 bytes, header says 128"
    )
    dumpd_balloon.write_bitmap(tmp_path / "ok.bmp", [(1, 2)])
    assert error_line(capsys, "convert", tmp_path / "ok.bmp", tmp_path / "o", "--first", "0") == (
        "dumpd-balloon: --first and --count apply to bitmap output only (see --to)"
    )
    assert error_line(
        capsys,
        "convert",
        tmp_path / "ok.bmp",
        tmp_path / "o",
        "--to",
        "bitmap",
        "--count",
        "0x10000000000000000",
    ) == (
        f"dumpd-balloon: {tmp_path / 'ok.bmp'}: span count 0x10000000000000000 does not fit"
        " pfn_count, a u64"
    )
    assert listing(tmp_path) == ["bad.txt", "ok.bmp", "short.bmp"]


@pytest.mark.parametrize("script", [False, True])
def test_errors_in_a_child_process_are_one_line(tmp_path: Path, script: bool) -> None:
    for args in (["show", tmp_path / "absent"], ["convert"], ["nope"]):
        done = run(*args, script=script)
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.startswith("dumpd-balloon: ")
        assert done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["convert", "--help"])
    assert caught.value.code == 0
    assert "--first PFN" in capsys.readouterr().out


# --- packaging --------------------------------------------------------------------------


def test_pyproject_declares_the_script() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["scripts"] == {"dumpd-balloon": "dumpd_balloon.tool:main"}


def test_text_written_by_the_tool_is_a_valid_list(tmp_path: Path) -> None:
    dumpd_balloon.write_bitmap(tmp_path / "a.bmp", [(5, 6), (8, 100)])
    assert main(["convert", str(tmp_path / "a.bmp"), str(tmp_path / "a.txt")]) == 0
    assert dumpd_balloon.load(tmp_path / "a.txt") == PfnRanges([(5, 6), (8, 100)])
