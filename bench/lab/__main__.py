"""`python -m bench.lab`: build, boot, crash, measure, compare, report.

Exit status: 0 when the fetched copy (each, with and without compression, once fetch
compresses) is byte for byte the capture kernel's own `dd` copy of /proc/vmcore
(whatever the figures), 1 when it is not or a step failed, 77 when
the lab cannot run on this machine (no QEMU or kernel package to be had: one line says
why).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from bench.lab import images, machine, report

SKIP = 77


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.lab", description=__doc__)
    parser.add_argument("--guest-mem", type=int, help="guest memory, MiB (512)")
    parser.add_argument("--crashkernel", default="160M", help="crashkernel= (160M)")
    parser.add_argument("--kaslr", choices=["on", "off"], default="on")
    parser.add_argument("--la57", action="store_true", help="5-level paging (-cpu max)")
    parser.add_argument("--balloon", type=int, default=0, metavar="MiB",
                        help="inflate a virtio balloon by this much before the crash")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the captured dump, its kernel's version, VMCOREINFO and "
                        "the run's options and balloon (NAME.json) here")
    parser.add_argument("--serve-option", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="change the shipped crash-kernel "
                        "configuration dumpd serves with (repeatable; TOML values)")
    parser.add_argument("--quick", action="store_true",
                        help="the report to the work dir, not bench/results (CI)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dumpd-lab"),
                        help="images, the kernel package cache and the copies")
    parser.add_argument("--out", type=Path, help="the report (bench/results/lab.md; "
                        "--quick: the work dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    opts = machine.Options(guest_mem=args.guest_mem or 512,
                           crashkernel=args.crashkernel, kaslr=args.kaslr == "on",
                           la57=args.la57, balloon=args.balloon)
    work = args.work
    started = time.monotonic()
    try:
        images.install_packages()
        vmlinuz, modules, version = images.guest_kernel(work / "cache")
    except images.LabError as exc:
        print(f"lab: skipped: {exc}", file=sys.stderr)
        return SKIP
    try:
        images.certificates(work / "pki")
        kaslr = "" if opts.kaslr else "nokaslr"
        fetches = machine.host_fetches()
        capture = images.capture_image(work, modules, work / "pki", args.serve_option,
                                       len(fetches))
        guest = images.guest_image(work, vmlinuz, modules, capture, kaslr)
    except images.LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    payload = images.unpacked_size(work / "capture-root")
    print(f"lab: {version}, guest {opts.guest_mem} MiB, crashkernel={opts.crashkernel}, "
          f"capture initramfs {payload / 1e6:.1f} MB unpacked", file=sys.stderr)
    outcome = machine.boot(opts, vmlinuz, guest, work, work / "pki", fetches)
    took = time.monotonic() - started
    size = outcome.records.get("capture", {}).get("size", 0)
    disk = work / "reference.img"
    copy = work / machine.COPIES["fetch"]
    identical = {name: _copy_equal(work / machine.COPIES[name], disk, size)
                 for name, _ in fetches}
    same = all(identical.values())
    rows = report.rows(outcome, opts, payload, identical)
    text = report.markdown(rows, opts, version, took)
    out = args.out or (work / "lab.md" if args.quick else
                       Path(__file__).resolve().parents[1] / "results" / "lab.md")
    out.write_text(text)
    (work / "records.json").write_text(json.dumps({"records": outcome.records,
                                                    "host": outcome.host}, indent=1))
    print(text)
    if args.keep and size:
        keep(args.keep, copy, version, outcome, opts)
    (work / machine.COPIES["fetch_compressed"]).unlink(missing_ok=True)
    if not same:
        tail = "\n".join(outcome.console[-15:])
        wrong = ", ".join(name for name, equal in identical.items() if not equal)
        print(f"lab: the fetched copy ({wrong}) is not the capture kernel's dd copy\n{tail}",
              file=sys.stderr)
        return 1
    return 0


def _copy_equal(copy: Path, disk: Path, size: int) -> bool:
    """Whether `copy` has `size` bytes, byte for byte the first `size` bytes of `disk`."""
    if not (size and copy.exists() and copy.stat().st_size == size):
        return False
    chunk = 8 << 20
    with open(copy, "rb") as a, open(disk, "rb") as b:
        done = 0
        while done < size:
            want = min(chunk, size - done)
            if a.read(want) != b.read(want):
                return False
            done += want
    return True


def keep(where: Path, copy: Path, version: str, outcome: machine.Outcome,
         opts: machine.Options) -> None:
    """The dump, the kernel's version string, VMCOREINFO and the run (its options and the
    balloon QMP reported), for later work and tests: several runs keep several dumps."""
    where.mkdir(parents=True, exist_ok=True)
    name = (f"vmcore-{version}-kaslr-{'on' if opts.kaslr else 'off'}-balloon-{opts.balloon}"
            f"-{int(time.time())}")
    shutil.copy(copy, where / name)
    with open(copy, "rb") as dump:
        data = dump.read(1 << 20)  # the ELF headers and notes: VMCOREINFO is among them
    start = data.find(b"OSRELEASE=")
    info = data[start : data.find(b"\0", start)].decode() if start >= 0 else ""
    (where / f"{name}.vmcoreinfo").write_text(info)
    (where / f"{name}.version").write_text(
        outcome.records.get("capture", {}).get("kernel", version) + "\n")
    run = {"kaslr": opts.kaslr, "la57": opts.la57, "guest_mem_mib": opts.guest_mem,
           "crashkernel": opts.crashkernel, "balloon_mib": opts.balloon,
           "balloon_qmp": outcome.host.get("balloon")}
    (where / f"{name}.json").write_text(json.dumps(run, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
