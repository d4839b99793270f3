"""bench.kdump (scenario 7) on the synthetic kernel's dump, run as CI runs it (`python -m
bench --quick --only 7`): its baselines are makedumpfile's own figures for the same dump,
and every dumpd row either measured and checked out or says in one line what it waits
for; `python -m bench.kdump` without a dump skips in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dumpd.testing.kernel import SyntheticKernel

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                reason="makedumpfile is not installed")


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def test_scenario_7_sets_dumpd_beside_makedumpfiles_own_figures(tmp_path: Path) -> None:
    done = _bench("bench", "--quick", "--only", "7", "--out-dir", str(tmp_path),
                  "--work-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    dump = tmp_path / "synthetic.elf"
    SyntheticKernel().write(dump)
    for option, level in (("-c", 31), ("-l", 31), ("-c", 0)):
        out = tmp_path / f"{option}{level}.kdump"
        subprocess.run(["makedumpfile", option, "-d", str(level), "--message-level", "0",
                        str(dump), str(out)], check=True, capture_output=True)
        (row,) = [r for r in rows if r["measure"] == f"`makedumpfile {option} -d {level}` "
                  "(baseline)"]
        assert row["values"]["bytes"] == out.stat().st_size
    dumpd_rows = [r for r in rows if r["dumpd"]]
    assert dumpd_rows
    for row in dumpd_rows:
        if row["dumpd"].startswith("not measured: "):
            assert row["target"] == "" and "\n" not in row["dumpd"]
            continue
        assert row["values"].get("check", "equal") == "equal", row
        assert row["values"].get("same_bytes", True), row


def test_no_dump_is_one_line_and_no_report(tmp_path: Path) -> None:
    out = tmp_path / "kdump.md"
    done = _bench("bench.kdump", str(tmp_path / "absent"), "--out", str(out))
    assert done.returncode == 0
    assert done.stderr == (f"kdump: skipped: no dump at {tmp_path / 'absent'} "
                           "(python -m bench.lab --keep DIR keeps one)\n")
    assert not out.exists()
