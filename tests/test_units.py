"""The systemd units and the sample configuration in `systemd/`: `systemd-analyze verify`
accepts the units, the hardening is there, and `dumpd.toml` shows every option of
`dumpd.config` with its default."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dumpd.config import DEFAULT_SOCKET, Config, ServerConfig, load
from dumpd.runner import EXIT_FINISHED
from tests.units import INSTALLED, SERVICE, SOCKET, SYSTEMD, runnable_copy, unit

SAMPLE = SYSTEMD / "dumpd.toml"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def one(sections: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    """The value of `key` in `section`, set exactly once."""
    values = sections.get(section, {}).get(key)
    assert values is not None, f"[{section}] has no {key}="
    assert len(values) == 1, f"[{section}] sets {key}= {len(values)} times: {values}"
    return values[0]


def seconds(text: str) -> float:
    """A systemd time span of whole units ("15s", "1min 30s", "500ms", "10") in seconds."""
    scale = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "min": 60.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * scale[u] for n, u in parts)


# --- systemd-analyze verify ------------------------------------------------------------

def verify(directory: Path) -> tuple[int, list[str]]:
    """`systemd-analyze verify` on the units in `directory`: exit status and the output
    lines about them. Lines naming neither unit nor `directory` are other units'
    noise; they are shown but never accepted for ours."""
    files = [str(directory / "dumpd.service"), str(directory / "dumpd.socket")]
    done = subprocess.run([str(ANALYZE), "verify", "--man=no", *files],
                          capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    ours = [line for line in lines if "dumpd" in line or str(directory) in line]
    noise = [line for line in lines if line not in ours]
    if noise:
        print("systemd-analyze verify, not about dumpd's units:", *noise, sep="\n  ")
    return done.returncode, ours


@needs_analyze
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    status, complaints = verify(runnable_copy(tmp_path / "units"))
    assert complaints == []
    assert status == 0


@needs_analyze
def test_verify_would_report_a_mistake_in_the_units(tmp_path: Path) -> None:
    """The check above can fail: verify names the unit in what it reports."""
    _, complaints = verify(runnable_copy(tmp_path / "units", "ProtectSystem=stricter"))
    assert any("dumpd.service" in line and "stricter" in line for line in complaints), complaints


# --- the sample configuration ------------------------------------------------------------

def test_sample_config_shows_every_option_with_its_default() -> None:
    raw = tomllib.loads(SAMPLE.read_text())
    defaults = Config()
    for option in dataclasses.fields(Config):
        default = getattr(defaults, option.name)
        assert option.name in raw, f"{SAMPLE.name}: no {option.name}"
        if not dataclasses.is_dataclass(default):
            assert raw[option.name] == default, option.name
            continue
        table = raw[option.name]
        assert isinstance(table, dict), f"{SAMPLE.name}: {option.name} is not a [table]"
        names = {f.name for f in dataclasses.fields(default)}
        missing = sorted(names - table.keys())
        assert not missing, f"{SAMPLE.name}: [{option.name}] lacks {missing}"
        assert not table.keys() - names, f"[{option.name}] has unknown {table.keys() - names}"
    config = load(str(SAMPLE))  # as dumpd reads it: types converted, validated
    for option in dataclasses.fields(Config):
        ours, default = getattr(config, option.name), getattr(defaults, option.name)
        if dataclasses.is_dataclass(default):
            for f in dataclasses.fields(default):
                got, want = getattr(ours, f.name), getattr(default, f.name)
                assert got == want, f"{option.name}.{f.name}: {got!r} != default {want!r}"
        else:
            assert ours == default, option.name
    assert config == defaults


def test_sample_config_comments_every_option() -> None:
    for number, line in enumerate(SAMPLE.read_text().splitlines(), 1):
        if re.match(r"\s*[a-z_]+\s*=", line):
            assert "#" in line, f"{SAMPLE.name}:{number}: no comment: {line!r}"


# --- what the units must say ---------------------------------------------------------------

def test_service_hardening_and_lifecycle() -> None:
    s = unit(SERVICE)
    assert one(s, "Unit", "ConditionPathExists") == "/proc/vmcore"
    assert "dumpd.socket" in one(s, "Unit", "Requires").split()
    assert "dumpd.socket" in one(s, "Unit", "After").split()
    expected = {
        "Type": "notify", "NotifyAccess": "main",
        "ExecStart": f"{INSTALLED} serve -c /etc/dumpd/dumpd.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",  # a start-up error: a restart would repeat it
        "SuccessExitStatus": str(EXIT_FINISHED),  # finished: neither restarted nor failed
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "RuntimeDirectory": "dumpd", "RuntimeDirectoryMode": "0700",
        "RuntimeDirectoryPreserve": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
        "ProtectHostname": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert one(s, "Service", key) == value, key
    assert s["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert seconds(one(s, "Service", "RestartSec")) > 0
    assert seconds(one(s, "Service", "WatchdogSec")) > 0
    # SIGKILL only after dumpd's own deadline for running requests and streams
    assert seconds(one(s, "Service", "TimeoutStopSec")) > ServerConfig().shutdown_timeout
    assert one(s, "Service", "MemoryMax").endswith("M")
    # ProcSubset=pid would hide /proc/vmcore itself
    assert "ProcSubset" not in s["Service"]
    assert one(s, "Install", "WantedBy") == "multi-user.target"
    assert one(s, "Install", "Also") == "dumpd.socket"


def test_socket_unit() -> None:
    s = unit(SOCKET)
    assert one(s, "Unit", "ConditionPathExists") == "/proc/vmcore"
    expected = {
        "ListenStream": DEFAULT_SOCKET,  # where clients look by default
        "SocketMode": "0600", "SocketUser": "root", "DirectoryMode": "0700",
        "Service": "dumpd.service", "FileDescriptorName": "dumpd",
    }
    for key, value in expected.items():
        assert one(s, "Socket", key) == value, key
    assert one(s, "Install", "WantedBy") == "sockets.target"


# --- systemd-analyze security ----------------------------------------------------------------

def offline_security() -> bool:
    """`systemd-analyze security --offline=` exists from systemd 250 on."""
    if ANALYZE is None:
        return False
    version = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    found = re.match(r"systemd (\d+)", version)
    return found is not None and int(found.group(1)) >= 250


@pytest.mark.skipif(not offline_security(),
                    reason="systemd-analyze security --offline needs systemd >= 250")
@needs_analyze
def test_systemd_analyze_security_runs(record_property: Any) -> None:
    done = subprocess.run([str(ANALYZE), "security", "--offline=yes", str(SERVICE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for dumpd\.service: (\d+\.\d+) (\w+)",
                      done.stdout)
    assert found, done.stdout[-2000:]
    record_property("exposure", found.group(1))
    print(f"systemd-analyze security --offline=yes: exposure {found.group(1)} "
          f"{found.group(2)}")
