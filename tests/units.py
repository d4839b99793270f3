"""The shipped systemd units as the tests read them: a unit file as sections of keys,
and the units copied where `systemd-analyze verify` can run them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = SYSTEMD / "dumpd.service"
SOCKET = SYSTEMD / "dumpd.socket"
INSTALLED = "/usr/local/bin/dumpd"  # the ExecStart binary the shipped unit assumes


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}: comments and blank lines
    dropped, backslash continuations joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any [section]"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def runnable_copy(directory: Path, extra: str = "") -> Path:
    """The units copied into `directory`, ExecStart pointing at this environment's
    `dumpd` script (verify wants the binary to exist), `extra` added to [Service]."""
    script = Path(sys.executable).parent / "dumpd"
    assert script.exists(), f"{script}: no dumpd console script beside {sys.executable}"
    text = SERVICE.read_text()
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    text = text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={script} ")
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n", 1)
    directory.mkdir()
    (directory / "dumpd.service").write_text(text)
    shutil.copy(SOCKET, directory / "dumpd.socket")
    return directory
