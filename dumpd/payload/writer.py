"""Run as a script in a child interpreter (`python -I -S -X no_debug_ranges writer.py
REQUEST`): the payload's Python files, compiled, into their files and zips.

REQUEST is JSON: {"root": DIR, "files": [[file, member, source, compile], ...]}: `file`
relative to DIR; `member` the name inside `file` (a zip), "" for a file of its own;
`compile`: `source` is a .py to compile, else its bytes go in as they are.

Design rules
- Compiled as `-OO` does (no docstrings, no asserts: dumpd reads no `__doc__` and its
  asserts only narrow types), and, since the child runs with `-X no_debug_ranges`,
  without column positions (a quarter smaller; tracebacks lose only their ^^^ marks).
- A sourceless .pyc: the header's mtime and size are the source's, never checked.
- Files are created, never replaced (`x`).
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import sys
import zipfile


def _pyc(source: str, name: str) -> bytes:
    with open(source, "rb") as f:
        text = f.read()
    st = os.stat(source)
    code = compile(text, name, "exec", optimize=2, dont_inherit=True)
    return b"".join([importlib.util.MAGIC_NUMBER, bytes(4),
                     (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
                     (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"), marshal.dumps(code)])


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    archives: dict[str, zipfile.ZipFile] = {}
    try:
        for file, member, source, compiled in request["files"]:
            if compiled:  # named in tracebacks as the .py it was, where it now is
                data = _pyc(source, "/" + (f"{file}/{member}" if member else file)[:-1])
            else:
                with open(source, "rb") as f:
                    data = f.read()
            path = os.path.join(request["root"], file)
            if member:
                if file not in archives:
                    archives[file] = zipfile.ZipFile(path, "x", zipfile.ZIP_DEFLATED,
                                                     compresslevel=9)
                archives[file].writestr(member, data)
            else:
                with open(path, "xb") as f:
                    f.write(data)
    finally:
        for archive in archives.values():
            archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
