"""What crash itself shows of a dump, with the dead kernel's debug vmlinux, so that two
dumps of one crash (the ELF original and a copy in another format) can be compared.

`python -m bench.crashcheck DUMP [DUMP...]` prints whether crash shows the same of each
as of the first: `sys`, `log`, `bt` and `ps` (the release, the panic, the whole kernel log,
the panicking task's stack and every task, all read through the dump's page tables and
mem_map by crash, not by dumpd). The vmlinux is Debian's `linux-image-VERSION-dbg`
(858 MB; downloaded once into the lab's cache and only `vmlinux` kept: about 15 s), or
`--vmlinux FILE`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.lab.images import LabError, run

COMMANDS = ("sys", "log", "bt", "ps")
CACHE = Path("/var/tmp/dumpd-lab/cache")
_DUMPFILE = re.compile(r"^(\s*DUMPFILE: )\S+", re.M)


def debug_vmlinux(version: str, cache: Path = CACHE) -> Path:
    """The vmlinux with debug info of Debian's kernel `version` (e.g. 6.1.0-57-amd64),
    downloaded and unpacked once into `cache`; LabError where apt cannot get it."""
    target = cache / f"vmlinux-{version}"
    if target.exists():
        return target
    if shutil.which("apt-get") is None:
        raise LabError(f"no apt-get to download linux-image-{version}-dbg")
    package = f"linux-image-{version}-dbg"
    work = cache / f"{package}.download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        run("apt-get", "download", package, cwd=work)
        (deb,) = work.glob(f"{package}_*.deb")
        member = f"./usr/lib/debug/boot/vmlinux-{version}"
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert tar.stdout is not None
        with tar.stdout:  # closed here too, or dpkg-deb never gets its SIGPIPE and hangs
            subprocess.run(["tar", "-x", "-C", str(work), "--occurrence=1", member],
                           stdin=tar.stdout, check=True)
        tar.wait()  # killed by SIGPIPE once tar has its one member: expected
        (work / member).rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def crash_shows(vmlinux: Path, dump: Path, commands: tuple[str, ...] = COMMANDS) -> str:
    """crash's output for `commands` on `dump`, the dump's own path taken out; LabError
    naming the dump when crash fails."""
    if shutil.which("crash") is None:
        raise LabError("crash is not installed (apt-get install crash)")
    script = "".join(f"{command}\n" for command in commands) + "quit\n"
    done = subprocess.run(["crash", "-s", str(vmlinux), str(dump)], input=script,
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise LabError(f"crash {dump}: exit {done.returncode}: {' '.join(tail)}")
    return _DUMPFILE.sub(r"\1DUMP", done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crashcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", nargs="+", type=Path)
    parser.add_argument("--vmlinux", type=Path)
    parser.add_argument("--version", default="6.1.0-57-amd64",
                        help="the kernel whose -dbg package has the vmlinux")
    args = parser.parse_args(argv)
    try:
        vmlinux = args.vmlinux or debug_vmlinux(args.version)
        first = crash_shows(vmlinux, args.dumps[0])
        same = True
        for dump in args.dumps[1:]:
            shown = crash_shows(vmlinux, dump)
            same &= shown == first
            print(f"{dump}: {'the same' if shown == first else 'DIFFERENT'} "
                  f"({len(shown.splitlines())} lines of {' / '.join(COMMANDS)})")
    except LabError as exc:
        print(f"crashcheck: {exc}", file=sys.stderr)
        return 2
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
