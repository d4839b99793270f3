"""The `dumpd-balloon` command: convert balloon files between formats, show one.

    dumpd-balloon convert INPUT OUTPUT [--to text|bitmap] [--first PFN] [--count N]
    dumpd-balloon show FILE

Errors print one line, `dumpd-balloon: ...`, and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from dumpd.hooks.contract import HookConfigError

from .bitmap import VERSION, PfnBitmap, write_bitmap
from .formats import load
from .ranges import PfnRanges, format_range, write_text

PROG = "dumpd-balloon"
EXIT_ERROR = 2
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+", re.ASCII)


class ToolError(Exception):
    """A failure to report as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line `dumpd-balloon: ...`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise ToolError(message)


def _number(text: str) -> int:
    """A decimal or 0x hex number, spelled as in balloon lists."""
    if _NUMBER.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal or 0x hex number")
    return int(text, 16 if text[:2] in ("0x", "0X") else 10)


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Convert and inspect dumpd-balloon files.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser(
        "convert",
        help="convert a balloon file to the other format (text <-> bitmap)",
        description="Convert INPUT (text or bitmap, detected) to OUTPUT. OUTPUT is"
        " replaced atomically: written beside it, fsynced, renamed over it.",
    )
    convert.add_argument("input", metavar="INPUT")
    convert.add_argument("output", metavar="OUTPUT")
    convert.add_argument(
        "--to",
        choices=("text", "bitmap"),
        help="the output format (default: the other one than INPUT's)",
    )
    convert.add_argument(
        "--first",
        type=_number,
        metavar="PFN",
        help="the bitmap's first pfn (default: the lowest listed pfn)",
    )
    convert.add_argument(
        "--count",
        type=_number,
        metavar="N",
        help="pfns the bitmap spans (default: up to past the highest listed pfn)",
    )
    show = commands.add_parser("show", help="show a balloon file's format, span and count")
    show.add_argument("file", metavar="FILE")
    return parser


def _load(path: str) -> PfnRanges | PfnBitmap:
    """The balloon file at `path`; ToolError naming it when it is bad."""
    try:
        return load(path)
    except HookConfigError as e:
        raise ToolError(str(e).removeprefix("balloon: ")) from None


def convert(args: argparse.Namespace) -> str:
    """Write INPUT's ballooned pfns to OUTPUT; a one-line summary."""
    data = _load(args.input)
    try:
        to = args.to or ("text" if isinstance(data, PfnBitmap) else "bitmap")
        if to == "text" and (args.first is not None or args.count is not None):
            raise ToolError("--first and --count apply to bitmap output only (see --to)")
        ranges = data if isinstance(data, PfnRanges) else PfnRanges(data)
    finally:
        data.close()
    try:
        if to == "text":
            write_text(args.output, ranges)
            return f"{args.output}: text, {ranges.describe()}"
        first, count = write_bitmap(args.output, ranges, args.first, args.count)
    except ValueError as e:
        raise ToolError(f"{args.input}: {e}") from None
    except OSError as e:
        raise ToolError(f"{args.output}: cannot write: {e.strerror or e}") from None
    return f"{args.output}: bitmap of {count} pfns from {first:#x}, {ranges.count} ballooned"


def show(args: argparse.Namespace, out: TextIO) -> None:
    """Print FILE's format, its ranges (text) or span (bitmap), and the ballooned count."""
    data = _load(args.file)
    try:
        print(f"file: {args.file}", file=out)
        if isinstance(data, PfnBitmap):
            first, count = data.first_pfn, data.pfn_count
            span = f"{first:#x}-{first + count - 1:#x}" if count else "empty"
            print(f"format: bitmap, version {VERSION}, header {data.header_size} bytes", file=out)
            print(f"span: {span} ({count} pfns)", file=out)
            print(f"ballooned: {data.count} pfns", file=out)
        else:
            print("format: text", file=out)
            print(f"ranges: {len(data)}", file=out)
            print(f"ballooned: {data.count} pfns", file=out)
            for start, end in data:
                print(format_range(start, end), file=out)
    finally:
        data.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "convert":
            print(convert(args))
        else:
            show(args, sys.stdout)
        sys.stdout.flush()
    except ToolError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0
