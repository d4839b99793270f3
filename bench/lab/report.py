"""The lab's table: every figure of one boot beside its baseline from the same boot."""

from __future__ import annotations

from typing import Any

from bench.lab.machine import Options, Outcome

MiB = 1 << 20
Row = tuple[str, str, str, str, str]


def _rate(size: int, seconds: float) -> float:
    return size / seconds / 1e6 if seconds > 0 else 0.0


def _verdict(ok: bool, target: str) -> str:
    return f"{target}: {'met' if ok else 'MISSED'}"


def rows(outcome: Outcome, opts: Options, payload: int, identical: dict[str, bool]) -> list[Row]:
    """The table; `identical`: each host fetch's copy against the `dd` copy."""
    rec, host = outcome.records, outcome.host
    size = rec.get("capture", {}).get("size", 0)
    base, d = rec.get("baseline", {}), rec.get("dumpd", {})
    out: list[Row] = []
    if not (size and base and d):
        return [("capture", "the run did not reach the measurements", "", "", "see console.log")]
    mmap = _rate(size, base["mmap"])
    dd = _rate(size, base["dd_1m"])
    out.append(("`mmap` 4 MiB windows + memcpy (C)", f"{mmap:,.0f} MB/s", "", "", ""))
    out.append(("`dd bs=1M` to /dev/null", f"{dd:,.0f} MB/s", "", "", ""))
    out.append(("`dd bs=4k` (pread 4 KiB)", f"{_rate(size, base['pread_4k']):,.0f} MB/s",
                "", "", ""))
    stream = _rate(size, d["stream"])
    out.append((f"dumpd `Client.stream` of the whole dump in {d['stream_chunk'] // MiB} MiB "
                "frames, local client discards",
                f"{stream:,.0f} MB/s", f"mmap {mmap:,.0f}", f"{stream / mmap:.2f}x",
                _verdict(stream >= 0.5 * mmap, ">= 0.5x mmap")))
    out.append(("", "", f"dd {dd:,.0f}", f"{stream / dd:.2f}x",
                _verdict(stream >= 3 * dd, ">= 3x dd")))
    read = _rate(size, d["read"])
    out.append((f"dumpd `read` in {d['read_piece'] // MiB} MiB pieces", f"{read:,.0f} MB/s",
                f"mmap {mmap:,.0f}", f"{read / mmap:.2f}x",
                _verdict(read >= 0.5 * mmap, ">= 0.5x mmap")))
    rt, echo = d["read_phys_p50"] * 1e6, d["echo_p50"] * 1e6
    out.append(("dumpd dependent 8-byte `read_phys`, p50", f"{rt:,.0f} us",
                f"bare msgpack-RPC echo {echo:,.0f} us", f"{rt / echo:.2f}x",
                _verdict(rt <= 1.5 * echo, "<= 1.5x echo")))
    bare, fetched = host.get("bare_tls", {}), host.get("fetch", {})
    if bare and fetched:
        f_rate = _rate(size, fetched["seconds"])
        b_rate = _rate(bare["bytes"], bare["seconds"])
        out.append(("host `dumpd fetch --tcp --verify` (TLS, QEMU user networking)",
                    f"{f_rate:,.1f} MB/s (exit {fetched['exit']})",
                    f"bare TLS sendall from mmap {b_rate:,.1f}", f"{f_rate / b_rate:.2f}x",
                    _verdict(f_rate >= 0.8 * b_rate, ">= 0.8x bare TLS")))
    squeezed = host.get("fetch_compressed", {})
    if fetched and squeezed:
        out += compressed_rows(size, fetched, squeezed)
    for name, same in identical.items():
        what = "fetched copy" if name == "fetch" else "compressed fetch's copy"
        out.append((f"{what} == capture kernel's `dd` copy", "yes" if same else "NO", "",
                    "", _verdict(same, "byte-identical")))
    low = min(d["available_low_stream"], d["available_low_many"])
    out.append(("MemAvailable: before dumpd / lowest while streaming (1 client, "
                f"{d['many_clients']} at once)",
                f"{d['available_before'] / MiB:.0f} / {d['available_low_stream'] / MiB:.0f}, "
                f"{d['available_low_many'] / MiB:.0f} MiB", "", "",
                _verdict(low >= 32 * MiB, ">= 32 MiB")))
    oom = rec.get("end", {}).get("oom", [])
    served = d["many_ends"].count("ok")
    refused = sorted({end for end in d["many_ends"] if end != "ok"})
    out.append((f"{d['many_clients']} clients streaming 32 MiB each at once",
                f"{served} served, {len(d['many_ends']) - served} refused"
                f"{': ' + '; '.join(refused) if refused else ''}; OOM kills: {len(oom)}",
                "", "", _verdict(not oom, "no OOM kill")))
    peak = max(d["peak_rss"], d["peak_rss_many"])
    out.append(("dumpd RSS idle / peak (VmHWM)", f"{d['idle_rss'] / MiB:.1f} / "
                f"{peak / MiB:.1f} MiB", "", "", _verdict(peak <= 48 * MiB, "peak <= 48 MiB")))
    out.append(("exec to listening socket", f"{d['exec_to_socket']:.1f} s", "", "", ""))
    out.append(("read path", d["read_path"], "", "", ""))
    unmapped = rec.get("bare", {}).get("unmapped_windows", [])
    out.append(("4 MiB windows of /proc/vmcore its mmap refused (EAGAIN), read instead",
                f"{len(unmapped)}: " + ", ".join(f"{o:#x}" for o in unmapped[:6]), "", "",
                ""))
    out.append(("capture initramfs unpacked (payload, busybox, modules, lab)",
                f"{payload / 1e6:.1f} MB", "", "", ""))
    if "balloon" in host:
        b = host["balloon"]
        out.append(("balloon before the crash", f"{(opts.guest_mem * MiB - b['actual']) / MiB:.0f}"
                    f" MiB out (asked {opts.balloon})", "", "", ""))
    return out


def compressed_rows(size: int, plain: dict[str, Any], squeezed: dict[str, Any]) -> list[Row]:
    """The host fetch with compression beside the one without, same boot: rate, and the
    bytes the host received on the fetch's connections (the wire's bytes)."""
    options = " ".join(squeezed["options"])
    rate, base = _rate(size, squeezed["seconds"]), _rate(size, plain["seconds"])
    wire, base_wire = squeezed["wire_bytes"], plain["wire_bytes"]
    return [(f"host `dumpd fetch --tcp --verify {options}`",
             f"{rate:,.1f} MB/s (exit {squeezed['exit']})",
             f"{' '.join(plain['options'])}: {base:,.1f}", f"{rate / base:.2f}x", ""),
            ("", f"{wire / 1e6:,.1f} MB on the wire (received, TCP_INFO)",
             f"{base_wire / 1e6:,.1f}", f"{wire / base_wire:.2f}x" if base_wire else "", "")]


def markdown(table: list[Row], opts: Options, version: str, took: float) -> str:
    head = (f"`python -m bench.lab`: Debian {version} under QEMU TCG, guest "
            f"{opts.guest_mem} MiB, crashkernel={opts.crashkernel}, capture kernel "
            f"nr_cpus=1, KASLR {'on' if opts.kaslr else 'off'}"
            f"{f', balloon {opts.balloon} MiB' if opts.balloon else ''}; {took:.0f} s\n\n")
    lines = ["| measure | dumpd | baseline (same boot) | ratio | target |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return head + "\n".join(lines) + "\n"
