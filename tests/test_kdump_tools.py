"""The kdump-tools drop-in (systemd/kdump-tools-dump.service.d/dumpd.conf): with the
unit kdump-tools 1:1.8.1 ships (Debian 12) and dumpd's units, `systemd-analyze verify`
finds nothing wrong in ours, and it orders and holds kdump's save after dumpd."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon import ROOT
from tests.units import runnable_copy

DROPIN = Path(ROOT, "systemd", "kdump-tools-dump.service.d", "dumpd.conf")
# /lib/systemd/system/kdump-tools-dump.service of kdump-tools 1:1.8.1, as shipped, but
# for ExecStart/ExecStop (its /etc/init.d script is not installed here: verify checks
# that the binary exists).
KDUMP_TOOLS_DUMP = """[Unit]
Description=Kernel crash dump capture service
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
StandardOutput=journal+console
EnvironmentFile=-/etc/default/kdump-tools
ExecStart=/bin/true
ExecStop=/bin/true
RemainAfterExit=yes
"""


def test_the_dropin_holds_kdump_until_dumpd_has_ended() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(DROPIN.read_text())
    assert parser["Unit"]["Wants"].split() == ["dumpd.socket", "dumpd.service"]
    assert parser["Unit"]["After"] == "dumpd.service"
    wait = parser["Service"]["ExecStartPre"]
    assert wait.startswith("-/bin/sh -c ")  # a failure of dumpd never stops the save
    assert "systemctl -q is-active dumpd.service" in wait


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    units = runnable_copy(tmp_path / "units")
    (units / "kdump-tools-dump.service").write_text(KDUMP_TOOLS_DUMP)
    (units / "kdump-tools-dump.service.d").mkdir()
    shutil.copy(DROPIN, units / "kdump-tools-dump.service.d" / "dumpd.conf")
    done = subprocess.run([str(shutil.which("systemd-analyze")), "verify", "--man=no",
                           str(units / "kdump-tools-dump.service")], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"})
    lines = (done.stdout + done.stderr).splitlines()
    ours = [line for line in lines if "dumpd" in line or "kdump" in line]
    assert (done.returncode, ours) == (0, [])
