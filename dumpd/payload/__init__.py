"""`dumpd payload`: the smallest root tree that runs dumpd, for a crash kernel's initramfs.

Design rules
- One list. `plan()` computes every file of the payload as (SOURCE, DEST): SOURCE a file
  of this host, DEST its path in the tree. `--list` prints it, `--into` makes it (copies,
  strips, compiles, zips); nothing is in the tree that the list lacks. dracut's module
  builds with `--into` and installs the files `--list` names from that tree.
- The payload is for the interpreter this runs under: its binary (`usr/bin/<real name>`
  and `usr/bin/python3`), the shared libraries `ldd` names for it and for every
  extension module (at their own paths, the dynamic loader included), and a launcher
  (`usr/bin/dumpd`, the `launcher` file beside this module).
- Which modules: found for real, not listed by hand. A child interpreter (`closure.py`,
  run with `-I -S`, so that no `.pth` file of this environment runs in it) imports
  every module of dumpd and of each installed hook plugin, then every module named by
  an `import` statement anywhere in the code it has loaded outside the standard library
  (dumpd, the plugins, msgpack, uvloop, aiofiles): imports inside functions (ssl,
  hashlib, tomllib, the hooks' lazily loaded modules) count, and `from X import name`
  is done as Python does it (a lazy `__getattr__`, concurrent.futures' executors,
  runs). It repeats until no new module appears; its `sys.modules` is the closure.
  Scanning the source finds the lazy imports a recorded run would miss on the paths it
  did not take; importing closes over what those modules import in turn. In the
  standard library's own code only the lazy imports of a package's own parts count
  (importlib.metadata's email.parser), not those of other packages (pydoc, pdb,
  multiprocessing: features dumpd never calls), nor a module `__getattr__`'s (what it
  loads is found where dumpd names it). The codecs looked up by name at run time are
  imported by name too (`CODECS`).
- Smaller, still correct: every `.py` is compiled (`writer.py`, in a child) as `-OO`
  does (no docstrings, no asserts; dumpd reads no `__doc__` and its asserts only narrow
  types) and without column positions (`-X no_debug_ranges`), and goes in sourceless.
  Pure-Python modules and every `.dist-info` go into the stdlib's zip
  (`usr/lib/python3X.zip`, first on the interpreter's own sys.path; importlib.metadata
  reads entry points there); extension modules, and the packages that hold one
  (msgpack, uvloop), stay files. A DEST inside the zip reads
  `usr/lib/python311.zip/MEMBER`. ELF files (the interpreter, extension modules,
  libraries) are copied and `strip --strip-unneeded` runs on the copy, never on the
  original. A host file named by two DESTs (the interpreter as python3 and by its real
  name) is copied to the first and linked (symlink) from the others.
- It never overwrites: DIR must be absent or an empty directory.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import Distribution, PackageNotFoundError, distribution, entry_points
from pathlib import Path

from dumpd.errors import Refused, StartupError
from dumpd.hooks.contract import ENTRY_POINT_GROUP

DEPENDENCIES = ("dumpd", "msgpack", "uvloop", "aiofiles")
"""The distributions dumpd runs with (pyproject's dependencies and dumpd itself), but
backports.zstd: its 1.2 MB would put the payload over its 20 MiB, so in the crash
kernel zstd is ENOSYS and streams are compressed with zlib (`info.codecs` says so); the
host compresses the zstd pages of `fetch --format kdump --compress zstd` itself."""
CODECS = ("encodings.idna", "encodings.utf_8", "encodings.ascii", "encodings.latin_1",
          "encodings.cp437", "encodings.aliases")
"""Codecs looked up by name at run time, which no import statement names: idna (every
host name a socket resolves), cp437 (zipfile's member names: importlib.metadata reads
the hooks' entry points out of the payload's zip), and the usual text encodings."""
SITE_DIRS = ("site-packages", "dist-packages")
LAUNCHER = Path(__file__).with_name("launcher")
PATH_ENTRY = str(Path(__file__).resolve().parents[2])  # where this dumpd is imported from
CLOSURE = Path(__file__).with_name("closure.py")  # run in a child: the modules dumpd imports
WRITER = Path(__file__).with_name("writer.py")  # run in a child: Python's files compiled
ELF_MAGIC = b"\x7fELF"
LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")

@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the payload: the host's SOURCE, copied to DEST (relative to DIR)."""

    source: str
    dest: str


def _stdlib_dirs() -> tuple[str, ...]:
    """The interpreter's own library directories (a venv's are its base's)."""
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    return tuple(os.path.realpath(paths[key]) + os.sep for key in ("stdlib", "platstdlib"))


def _plugin_distributions() -> list[Distribution]:
    """The distributions that provide an entry point in the hook group (dumpd's own
    `none` included), each once."""
    found: dict[str, Distribution] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None:
            found.setdefault(ep.dist.name, ep.dist)
    return list(found.values())


def _top_levels(dist: Distribution) -> list[str]:
    """The importable top-level names a distribution installs, from its RECORD."""
    names = set()
    for file in dist.files or ():
        first = file.parts[0] if file.parts else ".."
        if first.startswith(("..", "__")) or first.endswith(".dist-info"):
            continue
        if len(file.parts) > 1 or first.endswith((".py", ".so")):
            names.add(first.split(".")[0])
    return sorted(names)


def _closure(packages: Iterable[str], modules: Iterable[str],
             roots: Iterable[str]) -> dict[str, str]:
    """{module: file} of every module dumpd can import here, computed in a child:
    `packages` with all their modules, `modules`, and what their code imports from the
    standard library and from `roots` (the distributions' top-level names)."""
    here = [PATH_ENTRY]
    request = {"path": [*here, *(p for p in sys.path if p and p not in here)],
               "packages": sorted(set(packages)), "modules": sorted(set(modules)),
               "roots": sorted(set(roots))}
    result = subprocess.run([sys.executable, "-I", "-S", str(CLOSURE), json.dumps(request)],
                            capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StartupError(f"payload: importing dumpd's modules failed: {last}")
    found: dict[str, str] = json.loads(result.stdout)
    return found


@functools.cache
def _python_dirs() -> tuple[str, str, str]:
    """(stdlib, site-packages, the stdlib's zip) in the payload, where its interpreter
    looks with its prefix at /usr (found from usr/bin/python3 by the landmark
    lib-dynload, with the zip first on its sys.path). Site-packages is the first the
    interpreter's own `site` names for /usr, asked of the binary itself: in a venv
    (and Debian's `site` answers otherwise in one) the payload is none."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = f"usr/{sys.platlibdir}/python{version}"
    archive = f"usr/{sys.platlibdir}/python{version.replace('.', '')}.zip"
    asked = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c",
                            "import site; print(site.getsitepackages(['/usr'])[0])"],
                           capture_output=True, text=True, check=True,
                           stdin=subprocess.DEVNULL)
    return stdlib, asked.stdout.strip().lstrip("/"), archive


def _module_entries(files: dict[str, str]) -> list[Entry]:
    """Pure-Python modules compiled into the zip; extension modules, and the packages
    that hold one (a package is in one place), in the stdlib and site-packages dirs."""
    stdlib_dest, site_dest, archive = _python_dirs()
    stdlib_dirs = _stdlib_dirs()
    roots = sorted({os.path.realpath(p) + os.sep for p in sys.path if p and os.path.isdir(p)}
                   | {PATH_ENTRY + os.sep},
                   key=len, reverse=True)
    placed: list[tuple[str, str, str]] = []  # (source, its dir in the payload, relative)
    for path in sorted({os.path.realpath(f) for f in files.values()}):
        base = next((d for d in stdlib_dirs if path.startswith(d)), None)
        dest_dir = stdlib_dest
        if base is None or path[len(base):].split(os.sep)[0] in SITE_DIRS:
            base = next((r for r in roots if path.startswith(r)), None)
            dest_dir = site_dest
        if base is None:
            raise StartupError(f"payload: {path}: imported from outside sys.path")
        placed.append((path, dest_dir, path[len(base):]))
    native = {rel.split(os.sep)[0] for path, _, rel in placed
              if not path.endswith((".py", ".pyc")) and os.sep in rel}
    entries: list[Entry] = []
    for path, dest_dir, rel in placed:
        if path.endswith((".py", ".pyc")) and rel.split(os.sep)[0] not in native:
            dest_dir = archive
        entries.append(Entry(path, f"{dest_dir}/{rel}c" if path.endswith(".py")
                             else f"{dest_dir}/{rel}"))
    return entries


def _dist_info_entries(dists: Iterable[Distribution]) -> list[Entry]:
    """Each distribution's metadata directory, in the zip (importlib.metadata reads it
    there as in a directory)."""
    archive = _python_dirs()[2]
    entries: list[Entry] = []
    for dist in dists:
        for file in dist.files or ():
            if file.parts and file.parts[0].endswith(".dist-info"):
                source = Path(str(dist.locate_file(file)))
                if source.is_file():
                    entries.append(Entry(str(source.resolve()), f"{archive}/{file}"))
    return entries


def _libraries(elf_files: Iterable[str]) -> list[Entry]:
    """The shared libraries `ldd` names for these files, at the paths it names them by
    (the dynamic loader at the path the interpreter's PT_INTERP names)."""
    needed: set[str] = set()
    for path in elf_files:
        result = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            match = LDD_LINE.match(line)
            if match:
                needed.add(match.group(1))
    return [Entry(os.path.realpath(p), p.lstrip("/")) for p in sorted(needed)]


def _is_elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ELF_MAGIC


def plan() -> list[Entry]:
    """Every file of the payload for this interpreter, sorted by DEST."""
    dists: dict[str, Distribution] = {}
    for name in DEPENDENCIES:
        try:
            dists[name] = distribution(name)
        except PackageNotFoundError:
            if name != "dumpd":  # dumpd itself may run from a checkout (PYTHONPATH)
                raise StartupError(f"payload: {name} is not installed for {sys.executable} "
                                   f"(`{sys.executable} -m pip install {name}`)") from None
    # dumpd and the hooks: every module of their packages (a plugin's distribution may
    # install its tests too: only the packages its entry points name are its code).
    packages = {"dumpd"}
    for dist in _plugin_distributions():
        dists.setdefault(dist.name, dist)
        packages |= {ep.module.split(".")[0] for ep in dist.entry_points
                     if ep.group == ENTRY_POINT_GROUP}
    deps = [top for name in DEPENDENCIES[1:] for top in _top_levels(dists[name])]
    files = _closure(packages, ["site", *CODECS, *deps,
                                f"encodings.{_codec(sys.getfilesystemencoding())}"],
                     [*packages, *deps])
    interpreter = os.path.realpath(sys.executable)
    name = os.path.basename(interpreter)
    entries = [Entry(interpreter, f"usr/bin/{name}"), Entry(str(LAUNCHER), "usr/bin/dumpd")]
    if name != "python3":
        entries.append(Entry(interpreter, "usr/bin/python3"))
    entries += _module_entries(files)
    entries += _dist_info_entries(dists.values())
    elf = [e.source for e in entries if _is_elf(e.source)]
    entries += _libraries(elf)
    unique = {e.dest: e for e in entries}
    return sorted(unique.values(), key=lambda e: e.dest)


def _codec(encoding: str) -> str:
    """The `encodings` module for an encoding name (utf-8 -> utf_8)."""
    import encodings

    return encodings.normalize_encoding(encoding).lower()


def check_target(into: Path) -> None:
    """Refuse a DIR that holds anything (or is not a directory): a payload never
    overwrites."""
    try:
        if any(into.iterdir()):
            raise Refused(f"{into}: File exists (EEXIST): a payload goes into an absent or "
                          "empty directory, never over files")
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise Refused(f"{into}: File exists (EEXIST) and is not a directory") from None


def _split(dest: str) -> tuple[str, str]:
    """(the file in the tree, the member inside it): a DEST inside a zip has both."""
    head, sep, member = dest.partition(".zip/")
    return (head + ".zip", member) if sep else (dest, "")


def _compiled(entry: Entry) -> bool:
    return entry.source.endswith(".py") and entry.dest.endswith(".pyc")


def build(into: Path, entries: list[Entry]) -> tuple[int, int]:
    """Make the tree in `into`: copies (ELF copies stripped), modules compiled, the zip.
    The tree's files and bytes (a symlink counts its own size)."""
    check_target(into)
    strip = shutil.which("strip")
    if strip is None:
        raise StartupError("payload: `strip` (binutils) is needed to strip the ELF copies")
    into.mkdir(parents=True, exist_ok=True)
    elf: list[str] = []
    python: list[tuple[str, str, str, bool]] = []
    copied: dict[str, str] = {}  # host file: where it went first
    for entry in entries:
        file, member = _split(entry.dest)
        dest = into / file
        dest.parent.mkdir(parents=True, exist_ok=True)
        if member or _compiled(entry):
            python.append((file, member, entry.source, _compiled(entry)))
            continue
        if entry.source in copied:  # the same file again (python3.11 beside python3)
            os.symlink(os.path.relpath(into / copied[entry.source], dest.parent), dest)
            continue
        copied[entry.source] = file
        shutil.copyfile(entry.source, dest)
        native = _is_elf(entry.source)
        os.chmod(dest, 0o755 if native or file.startswith("usr/bin/") else 0o644)
        if native:
            elf.append(str(dest))
    request = json.dumps({"root": str(into), "files": python})
    subprocess.run([sys.executable, "-I", "-S", "-X", "no_debug_ranges", str(WRITER), request],
                   check=True, stdin=subprocess.DEVNULL)
    if elf:
        subprocess.run([strip, "--strip-unneeded", *elf], check=True,
                       stdin=subprocess.DEVNULL)
    files = {_split(e.dest)[0] for e in entries}
    return len(files), sum((into / f).lstat().st_size for f in files)
