"""The dracut module (packaging/dracut/99dumpd) without dracut: its shell is valid (bash -n,
shellcheck where installed), check() asks to be named, and install(), run with dracut's
few functions standing in, installs exactly the files `dumpd payload --list` names, the
configuration and what it names, and the unit; as root, the tree it made runs dumpd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import ENV, ROOT, ok

MODULE = Path(ROOT) / "packaging" / "dracut" / "99dumpd"
SETUP = MODULE / "module-setup.sh"

# dracut's functions and variables as module-setup.sh uses them: inst_simple SRC [DST]
# copies into $initdir and is a no-op for a file already there, ln_r TARGET LINK makes a
# relative link in it; each call is logged.
DRACUT = r"""
set -u
initdir=$1; moddir=$2; systemdsystemunitdir=/usr/lib/systemd/system
inst_simple() {
    local dst=${2:-$1}
    [[ -e $initdir/$dst ]] && return 0
    mkdir -p "$(dirname "$initdir/$dst")" && cp -p "$1" "$initdir/$dst" || return 1
    printf 'inst_simple\t%s\t%s\n' "$1" "$dst" >> "$LOG"
}
ln_r() {  # a relative link, as dracut's
    local rel
    rel=$(realpath -ms --relative-to="$(dirname "$2")" "$1")
    mkdir -p "$(dirname "$initdir/$2")" && ln -s "$rel" "$initdir/$2" || return 1
    printf 'ln_r\t%s\t%s\n' "$1" "$2" >> "$LOG"
}
dinfo() { printf 'dinfo\t%s\n' "$*" >> "$LOG"; }
dfatal() { printf 'dfatal\t%s\n' "$*" >> "$LOG"; }
fake_systemctl() { printf 'systemctl\t%s\n' "$*" >> "$LOG"; }
SYSTEMCTL=fake_systemctl
. "$moddir/module-setup.sh"
"$3"
"""


def _run(tmp_path: Path, function: str, config: Path) -> tuple[int, list[list[str]], Path]:
    initdir = tmp_path / "initramfs"
    initdir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    env = {**ENV, "DUMPD_PYTHON": sys.executable, "DUMPD_KDUMP_CONFIG": str(config),
           "LOG": str(log), "DRACUT_TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", "-c", DRACUT, "dracut", str(initdir), str(MODULE),
                             function], env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.stderr == "", result.stderr
    calls = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    return result.returncode, calls, initdir


def test_the_shell_is_valid() -> None:
    assert subprocess.run(["bash", "-n", str(SETUP)], check=False).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shellcheck_is_clean() -> None:
    result = subprocess.run(["shellcheck", "-s", "bash", str(SETUP)], capture_output=True,
                            text=True, check=False)
    assert (result.returncode, result.stdout) == (0, "")


def _config(tmp_path: Path) -> Path:
    (tmp_path / "tls").mkdir()
    for name in ("server.pem", "ca.pem"):
        (tmp_path / "tls" / name).write_text(f"{name}\n")
    (tmp_path / "balloon.txt").write_text("0x100-0x1ff\n")
    config = tmp_path / "dumpd-kdump.toml"
    tls = (f'tcp = "0.0.0.0:7300"\ntls_cert = "{tmp_path}/tls/server.pem"\n'
           f'tls_key = "{tmp_path}/tls/server.pem"\ntls_client_ca = "{tmp_path}/tls/ca.pem"\n')
    shipped = Path(ROOT, "systemd", "dumpd-kdump.toml").read_text()
    config.write_text(shipped.replace("[server]\n", "[server]\n" + tls)
                      + f'\n[hook]\nname = "balloon"\n[hook.options]\n'
                      f'file = "{tmp_path}/balloon.txt"\n')
    return config


def test_check_asks_to_be_named_and_needs_the_configuration(tmp_path: Path) -> None:
    assert _run(tmp_path, "check", _config(tmp_path))[0] == 255
    assert _run(tmp_path, "check", tmp_path / "absent.toml")[0] == 1


def test_install_installs_what_payload_lists(tmp_path: Path) -> None:
    config = _config(tmp_path)
    status, calls, initdir = _run(tmp_path, "install", config)
    assert status == 0, calls
    assert [c for c in calls if c[0] == "dfatal"] == []
    listed = [line.split("\t") for line in ok("payload", "--list", timeout=300).splitlines()]
    files = {d.partition(".zip/")[0] + ".zip" if ".zip/" in d else d for _, d in listed}
    installed = [c for c in calls if c[0] == "inst_simple"]
    from_payload = {dst.lstrip("/") for _, src, dst in installed if "/root/" in src
                    and src.startswith(str(tmp_path))}
    linked = {c[2].lstrip("/") for c in calls if c[0] == "ln_r"}
    assert from_payload | linked == files
    assert linked == {"usr/bin/python3.11"}  # python3, by the interpreter's real name
    assert os.path.realpath(initdir / "usr/bin/python3.11") == str(initdir / "usr/bin/python3")
    others = [(src, dst) for _, src, dst in installed if dst.lstrip("/") not in files]
    assert others == [
        (str(config), "/etc/dumpd/dumpd.toml"),
        (f"{tmp_path}/tls/server.pem", f"{tmp_path}/tls/server.pem"),
        (f"{tmp_path}/tls/ca.pem", f"{tmp_path}/tls/ca.pem"),
        (f"{tmp_path}/balloon.txt", f"{tmp_path}/balloon.txt"),
        (str(MODULE / "dumpd-kdump.service"),
         "/usr/lib/systemd/system/dumpd-kdump.service")]
    assert ["systemctl", f"-q --root {initdir} add-wants initrd.target dumpd-kdump.service"
            ] in calls
    assert os.access(initdir / "usr/bin/dumpd", os.X_OK)
    assert (initdir / "etc/dumpd/dumpd.toml").read_bytes() == config.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("dumpd.")] == []
    if os.geteuid() == 0 and shutil.which("chroot"):  # the initramfs's tree runs dumpd
        check = subprocess.run([shutil.which("chroot") or "chroot", str(initdir),
                                "/usr/bin/dumpd", "serve", "--check", "-c",
                                "/etc/dumpd/dumpd.toml", "--memory", "off"],
                               capture_output=True, text=True, env={}, check=False)
        assert (check.returncode, check.stderr) == (0, ""), check.stderr
        assert check.stdout.splitlines()[-1] == "worst case: 33.88 MiB"  # TLS: streams read
