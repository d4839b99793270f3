"""Where `fetch` (and `read -o`) write, opened so that no file is destroyed by mistake.

Design rules:
- Never the served dump: the output's `st_dev`/`st_ino` (and `st_rdev` for a device)
  are compared with the source's identity from `info` (paths, hard links and symlinks
  cannot fool it), before the output is opened and again on the opened descriptor,
  before anything is written or truncated (it is opened without O_TRUNC).
- Never an existing file unless the operator said so (--force, or --resume of fetch's
  own partial copy). A new or replaced copy is mode 0600: a dump holds secrets.
- The kind of output decides how it is written: a regular file at its offsets, holes
  kept ("file"); a block device (only with --force) the view at its offsets with holes
  written as zeros, so its old content cannot show through ("device"); a pipe or
  socket in order, never seeking ("stream": `read -o`'s bytes, fetch's flattened kdump
  copy). Anything else (a terminal, a character device) is refused.
- Every failure of the OS on the output is one line naming the file (`OutputError`;
  writes raise `SinkError`, as the stream receiver's own writes do); a refusal is
  `Refused`, whose line the CLI starts with the command that refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dumpd.bootid import boot_id
from dumpd.client import SinkError
from dumpd.errors import OutputError, Refused

STDOUT = "-"
STDOUT_FD = 1
ZEROS = bytes(1 << 20)  # written for holes where the output cannot have holes
BLOCK = 1 << 20  # bytes per read of the copy (fetch --verify)


def os_error(name: str, what: str, exc: OSError) -> OutputError:
    """`NAME: cannot WHAT: REASON`."""
    return OutputError(f"{name}: cannot {what}: {exc.strerror or exc}")


@dataclass(frozen=True, slots=True)
class Served:
    """The served dump as `info` identifies it: a file of the machine whose boot is
    `boot_id` (None: not said)."""

    path: str
    device: int | None
    inode: int | None
    rdev: int
    boot_id: str | None

    @classmethod
    def of(cls, info: dict[str, Any]) -> Served:
        source = info["source"]
        return cls(source["path"], source.get("device"), source.get("inode"),
                   source.get("rdev", 0), source.get("boot_id"))

    def is_file(self, st: os.stat_result) -> bool:
        """Whether `st` is the served file. Unless the server is known to run on another
        machine (both boot ids known and different), equal numbers count: refusing a
        copy by mistake is better than overwriting the dump."""
        mine = boot_id()
        if self.boot_id is not None and mine is not None and self.boot_id != mine:
            return False
        if (st.st_dev, st.st_ino) == (self.device, self.inode):
            return True
        device = stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)
        return device and self.rdev != 0 and st.st_rdev == self.rdev

    def refuse(self, name: str, st: os.stat_result | None) -> None:
        """Refused when `st` (of `name`) is the served dump."""
        if st is not None and self.is_file(st):
            raise Refused(f"{name} and the served dump {self.path} are the same "
                               "file")


def look(path: str, served: Served) -> os.stat_result | None:
    """`stat` of `path` (None: nothing there), refused when it is the served dump."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(path, "look at it", exc) from exc
    served.refuse(path, st)
    return st


def no_sync(fd: int) -> None:
    """Without --fsync: the kernel keeps what was written if the fetch process dies."""


@contextlib.contextmanager
def blamed(filename: str | None = None) -> Iterator[None]:
    """An OSError inside is a SinkError naming `filename` (None: the copy)."""
    try:
        yield
    except SinkError:
        raise
    except OSError as exc:
        raise SinkError(exc.errno, exc.strerror, filename) from exc


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """All of `data` at `offset` of `fd` (pwrite may write less); SinkError if it fails."""
    view = memoryview(data)
    while view:
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise SinkError(exc.errno, exc.strerror) from exc
        view, offset = view[n:], offset + n


class Output:
    """An opened output: `kind` is "file", "device" or "stream"; `created` when fetch
    made the file (it is removed again if the copy cannot start)."""

    def __init__(self, name: str, fd: int, kind: str, created: bool = False,
                 owned: bool = True) -> None:
        self.name = name
        self.fd = fd
        self.owned = owned  # fetch opened `fd` (standard output is not fetch's to close)
        self.kind = kind
        self.created = created
        self.position = 0  # bytes written by `write`

    def put(self, offset: int, data: memoryview) -> None:
        """Data at view offset `offset` of a file or a device, written at its offset, as
        the receiver writes what it splices."""
        pwrite_all(self.fd, data, offset)

    def zeros(self, offset: int, length: int) -> None:
        """Zeros over `[offset, offset+length)` of a file or a device."""
        end = offset + length
        while offset < end:
            n = min(len(ZEROS), end - offset)
            try:
                offset += os.pwrite(self.fd, memoryview(ZEROS)[:n], offset)
            except OSError as exc:
                raise SinkError(exc.errno, exc.strerror) from exc

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """`data` after what was written so far (`read -o`, a flattened kdump copy; a
        file or a device: from its offset 0)."""
        self._write(memoryview(data))

    def _write(self, data: memoryview) -> None:
        while data:
            try:
                n = (os.write(self.fd, data) if self.kind == "stream" else
                     os.pwrite(self.fd, data, self.position))
            except OSError as exc:
                raise SinkError(exc.errno, exc.strerror) from exc
            data = data[n:]
            self.position += n

    def sha256(self, offset: int, end: int) -> str:
        """The hex sha256 of the copy's `[offset, end)`, read back through the
        descriptor (as it is on disk)."""
        h = hashlib.sha256()
        try:
            while offset < end:
                block = os.pread(self.fd, min(BLOCK, end - offset), offset)
                if not block:
                    break
                h.update(block)
                offset += len(block)
        except OSError as exc:
            raise os_error(self.name, "read the copy back", exc) from exc
        return h.hexdigest()

    def remove_if_created(self) -> None:
        """Undo the creation of a copy that never started."""
        if self.created:
            os.unlink(self.name)
            self.created = False

    def close(self) -> None:
        """Close the descriptor if fetch opened it."""
        if self.fd >= 0:
            if self.owned:
                os.close(self.fd)
            self.fd = -1


def _open(path: str, flags: int, served: Served, what: str) -> tuple[int, os.stat_result]:
    """`os.open` and `fstat`, refused (and closed) when it is the served dump."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise os_error(path, what, exc) from exc
    try:
        st = os.fstat(fd)
        served.refuse(path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _sized(name: str, fd: int, size: int, created: bool) -> Output:
    """A regular file of `size` bytes, holes all through, mode 0600. A file fetch
    created is empty already: cutting it to 0 would make ext4 (auto_da_alloc) start
    writing the whole copy back when it is closed, as for a file rewritten in place."""
    try:
        os.fchmod(fd, 0o600)
        if not created:
            os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    except OSError as exc:
        output = Output(name, fd, "file", created)
        output.close()
        output.remove_if_created()
        raise os_error(name, f"make it a file of {size} bytes", exc) from exc
    return Output(name, fd, "file", created)


def create(path: str, served: Served, size: int) -> Output:
    """A new copy (O_EXCL: a name that appeared meanwhile is not overwritten)."""
    fd, _ = _open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, served, "create it")
    return _sized(path, fd, size, True)


def replace(path: str, served: Served, size: int) -> Output:
    """An existing regular file replaced by a new copy (--force)."""
    fd, st = _open(path, os.O_RDWR, served, "open it")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Refused(f"{path} is no longer a regular file; not replaced")
    return _sized(path, fd, size, False)


def reopen(path: str, served: Served, keep: int, size: int) -> Output:
    """fetch's partial copy, cut back to its first `keep` bytes (the rest is fetched
    again, so it becomes a hole first: holes of the view must stay holes)."""
    fd, st = _open(path, os.O_RDWR, served, "reopen the partial copy")
    try:
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path} is not a regular file; not resumed")
        if keep < size:
            os.ftruncate(fd, keep)
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        raise os_error(path, "reopen the partial copy", exc) from exc
    except BaseException:
        os.close(fd)
        raise
    return Output(path, fd, "file")


def device(path: str, served: Served, end: int) -> Output:
    """A block device written at the view's offsets up to `end` (O_EXCL: not while it
    is mounted)."""
    fd, st = _open(path, os.O_RDWR | os.O_EXCL, served, "open the device")
    try:
        held = os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        os.close(fd)
        raise os_error(path, "tell the device's size", exc) from exc
    if not stat.S_ISBLK(st.st_mode) or held < end:
        os.close(fd)
        if not stat.S_ISBLK(st.st_mode):
            raise Refused(f"{path} is no longer a block device")
        raise Refused(f"{path}: the device holds {held} bytes, the copy needs "
                           f"{end}")
    return Output(path, fd, "device")


def stream(path: str, served: Served) -> Output:
    """A pipe or socket (`-`: standard output), written in order."""
    if path == STDOUT:
        fd = STDOUT_FD
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise os_error("stdout", "look at it", exc) from exc
        served.refuse("stdout", st)
        if os.isatty(fd):
            raise Refused("stdout is a terminal: name a file with -o, or pipe "
                               "the dump to a program")
        return Output("stdout", fd, "stream", owned=False)
    fd, st = _open(path, os.O_WRONLY, served, "open it")
    if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        os.close(fd)
        raise Refused(f"{path} is no longer a pipe")
    return Output(path, fd, "stream")


def kind_of(path: str, st: os.stat_result | None) -> str:
    """How `path` is written: "file" (also when there is none yet), "device" or
    "stream"; Refused for outputs fetch does not write to."""
    if path == STDOUT:
        return "stream"
    if st is None or stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISBLK(st.st_mode):
        return "device"
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return "stream"
    what = ("a directory" if stat.S_ISDIR(st.st_mode) else
            "a character device (a terminal?)" if stat.S_ISCHR(st.st_mode) else
            "not a file fetch writes to")
    raise Refused(f"{path} is {what}; name a regular file, a block device "
                       "(with --force), a pipe or - (stdout)")


def for_bytes(path: str, served: Served, length: int, force: bool) -> Output:
    """Where `read -o` writes `length` bytes in order: the rules of a fetch without
    resume (never the dump, no existing file or a block device without --force)."""
    st = look(path, served)
    kind = kind_of(path, st)
    if kind == "stream":
        return stream(path, served)
    if st is not None and not force:
        what = "exists" if kind == "file" else "is a block device"
        raise Refused(f"{path} {what}; --force writes over it")
    if kind == "device":
        return device(path, served, length)
    return create(path, served, 0) if st is None else replace(path, served, 0)


def free_space(fd: int) -> int | None:
    """Bytes free for unprivileged users on the output's file system (None: unknown)."""
    try:
        vfs = os.fstatvfs(fd)
    except OSError:
        return None
    return vfs.f_bavail * vfs.f_frsize


def allocated(fd: int) -> int | None:
    """Bytes the output holds on disk (None: unknown)."""
    try:
        return os.fstat(fd).st_blocks * 512
    except OSError:
        return None


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
