"""Sources of a crashed kernel's memory: ELF cores (/proc/vmcore), raw oldmem, and saved
kdump-compressed dumps."""

from __future__ import annotations

import errno
import os
import stat

from dumpd.errors import StartupError
from dumpd.kernel.vmcoreinfo import VmcoreInfo
from dumpd.sources.base import Segment, Source
from dumpd.sources.elf import ELF_MAGIC, VMCOREINFO_MAX, is_valid_page_size, open_elf
from dumpd.sources.kdump import open_kdump
from dumpd.sources.mapped import MiB, procfs_device
from dumpd.sources.raw import open_raw, view_size
from dumpd.sources.signatures import (
    FLATTENED,
    HEAD_BYTES,
    SERVED_FORMATS,
    cut_short_format,
    known_format,
)

__all__ = ["KINDS", "MMAP_MODES", "Segment", "Source", "open_source"]

KINDS = ("auto", "elf", "raw", "kdump")
MMAP_MODES = ("auto", "on", "off")

NOT_A_FILE = "not a regular file or a device"


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _open_fd(path: str) -> int:
    """Open `path` read-only; only regular files and devices are accepted.

    O_NONBLOCK keeps a FIFO from blocking the open until a writer appears (it is refused
    right after); it is cleared again before anything is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        why = exc.strerror
        if exc.errno == errno.ENXIO and stat.S_ISSOCK(_mode(path)):
            why = NOT_A_FILE  # open(2) of a socket says "No such device or address"
        raise StartupError(f"{path}: cannot open: {why}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise StartupError(f"{path}: cannot open: {os.strerror(errno.EISDIR)}")
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):
            raise StartupError(f"{path}: cannot open: {NOT_A_FILE}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _head(path: str, fd: int) -> bytes:
    """The file's first bytes, enough for every signature (fewer if the file is shorter)."""
    try:
        return os.pread(fd, HEAD_BYTES, 0)
    except OSError as exc:
        raise StartupError(f"{path}: cannot read: {exc.strerror}") from exc


EXPECTED = {"auto": "an ELF core, a kdump-compressed dump or raw memory",
            "elf": 'an ELF core as kind = "elf" says',
            "raw": 'raw memory as kind = "raw" says',
            "kdump": 'a kdump-compressed dump as kind = "kdump" says'}


def _refuse_known_format(path: str, kind: str, head: bytes) -> None:
    """StartupError when `head` is the signature of a format dumpd does not serve, or
    of a kdump-compressed dump when `kind` says the file is something else."""
    fmt = known_format(head)
    if fmt is None and kind in ("elf", "raw"):
        fmt = known_format(head, SERVED_FORMATS)
    if fmt is not None:
        raise StartupError(f"{path}: {fmt.what}, not {EXPECTED[kind]}: "
                           f"{fmt.advice.replace('{path}', path)}")
    if kind == "kdump" and known_format(head, SERVED_FORMATS) is None:
        raise StartupError(f"{path}: not {EXPECTED[kind]} (no kdump-compressed or "
                           f"flattened signature at offset 0)")


def given_vmcoreinfo(source: Source, path: str) -> None:
    """Take the dead kernel's VMCOREINFO from the file `path` (a raw dump has no note;
    the text is what the kernel wrote, as `/sys/kernel/vmcoreinfo` points to it or a
    tool saved it). A dump with its own note, or text that is not VMCOREINFO, or a
    PAGESIZE other than the source's, is a one-line StartupError."""
    if source.vmcoreinfo_text is not None:
        raise StartupError(f"{path}: {source.path} has a VMCOREINFO note of its own; "
                           "source.vmcoreinfo is for dumps without one")
    try:
        with open(path, "rb") as f:
            data = f.read(VMCOREINFO_MAX + 1)
    except OSError as exc:
        raise StartupError(f"{path}: cannot read the VMCOREINFO: {exc.strerror}") from exc
    if len(data) > VMCOREINFO_MAX:
        raise StartupError(f"{path}: more than {VMCOREINFO_MAX} bytes: not a VMCOREINFO")
    text = data.split(b"\0", 1)[0].decode("utf-8", "replace")
    info = VmcoreInfo(text)
    if info.osrelease is None:
        raise StartupError(f"{path}: no OSRELEASE= line: not a VMCOREINFO")
    if info.get("PAGESIZE") not in (None, str(source.page_size)):
        raise StartupError(f"{path}: PAGESIZE={info.get('PAGESIZE')}, but {source.path} is "
                           f"served with pages of {source.page_size}: give --page-size")
    source.vmcoreinfo_text, source.vmcoreinfo_from = text, path
    if not source.arch and info.get("SYMBOL(init_top_pgt)") is not None:
        source.arch = "x86_64"  # only x86_64 exports its top page table by this name


def _refuse_cut_short(path: str, head: bytes) -> None:
    """StartupError when all of a file is the start of a known signature (auto only)."""
    fmt = cut_short_format(head)
    if fmt is not None:
        raise StartupError(f"{path}: only {len(head)} bytes, the start of {fmt.what} cut "
                           'short, not raw memory (kind = "raw" serves it as raw memory)')


def open_source(
    path: str, kind: str = "auto", page_size: int = 4096, size: int | None = None,
    mmap: str = "auto", window: int = 4 * MiB, windows: int = 8,
    vmcoreinfo: str | None = None,
) -> Source:
    """Open `path` as a source of kind "elf", "raw", "kdump" or "auto".

    A regular file or block device with the signature of a format dumpd does not
    serve (diskdump, gzip, ...: see `signatures`) is refused whatever the kind, and
    a kdump-compressed one as "elf" or "raw"; character devices (/dev/oldmem) are
    memory and are not sniffed. "auto" takes an ELF core by its magic, a
    kdump-compressed dump (or its flattened form) by its signature, and anything else
    as raw memory, saying so in the source's `guess` (the server logs it once
    start-up succeeded). `page_size`
    is used unless an ELF core's VMCOREINFO gives PAGESIZE; `size` overrides the
    detected file size (needed for devices that report 0). `mmap` says whether reads go
    through at most `windows` mmap windows of `window` bytes (see `_read_path`).
    `vmcoreinfo` names a file of the dead kernel's VMCOREINFO text, for a dump
    without the note (see `given_vmcoreinfo`).
    """
    if kind not in KINDS:
        raise StartupError(f"{path}: unknown source kind {kind!r} (expected auto, elf, raw "
                           "or kdump)")
    if not is_valid_page_size(page_size):
        raise StartupError(f"{path}: page_size {page_size} is not a power of two >= 512")
    fd = _open_fd(path)
    try:
        memory_device = stat.S_ISCHR(os.fstat(fd).st_mode)
        head = b"" if memory_device and kind in ("elf", "raw") else _head(path, fd)
        if not memory_device or kind == "kdump":
            _refuse_known_format(path, kind, head)
        # A file shorter than the ELF magic but starting it is a core cut short: open_elf
        # says so. Other signatures cut short are refused; kind = "raw" takes them as raw.
        elf = bool(head) and ELF_MAGIC.startswith(head[:4])
        kdump = not memory_device and known_format(head, SERVED_FORMATS) is not None
        if kind == "auto" and not memory_device and not elf and not kdump:
            _refuse_cut_short(path, head)
        if kind == "kdump" or (kind == "auto" and kdump):
            source: Source = open_kdump(path, fd, view_size(path, fd, size),
                                        known_format(head, (FLATTENED,)) is not None)
        elif kind == "elf" or (kind == "auto" and elf):
            source = open_elf(path, fd, page_size, size)
        else:
            source = open_raw(path, fd, page_size, size)
        if vmcoreinfo is not None:
            given_vmcoreinfo(source, vmcoreinfo)
    except BaseException:
        os.close(fd)
        raise
    if kind == "auto" and source.kind == "raw":
        source.guess = ("a character device with no ELF header" if memory_device
                        else "no ELF or known dump signature")
    return _read_path(source, mmap, window, windows)


def _read_path(source: Source, mode: str, window: int, windows: int) -> Source:
    """Have `source` read through mmap windows where that is right (`mode` auto), or
    asked (on), else with pread (off); where mapping fails it keeps pread.

    auto maps what cannot shrink under a mapping: /proc/vmcore (any file of /proc)
    and memory devices (/dev/oldmem). A regular file or a block device could be cut
    short while mapped, and the next touch of its lost pages would kill the server
    with SIGBUS. A source whose view is not its file's bytes (not `spliced`: a
    kdump-compressed file) reads as it reads, whatever `mode` says.
    """
    if mode not in MMAP_MODES:
        raise StartupError(f"{source.path}: mmap must be auto, on or off, not {mode!r}")
    if not source.spliced:
        if mode == "on":
            source.read_path_why += " (mmap = on does not apply: the view is not the file)"
        return source
    st = source.stat()
    if mode == "off":
        source.read_path_why = "mmap = off"
    elif mode == "on":
        source.map_windows(window, windows, "mmap = on")
    elif st.st_dev == procfs_device():
        source.map_windows(window, windows, "a file of /proc")
    elif stat.S_ISCHR(st.st_mode):
        source.map_windows(window, windows, "a memory device")
    else:
        source.read_path_why = ("a file that could be cut short while mapped (SIGBUS): "
                                "pread and sendfile")
    return source
