"""docs/plugins.md stays true: its twenty-line plugin, declared by its pyproject.toml,
installs through its entry point, passes the conformance kit through the guide's own
test class, and `dumpd hook check` prints what the guide shows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dumpd.hooks.contract import ENTRY_POINT_GROUP
from dumpd.hooks.pfnrange import parse_pfn_range
from dumpd.testing import check_plugin
from dumpd.testing.kernel import SyntheticKernel
from tests.docblocks import code_blocks
from tests.plugindist import write_distribution


@pytest.fixture
def holes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The guide's plugin installed as its pyproject.toml declares it."""
    project = tomllib.loads(next(b for b in code_blocks("plugins.md", "toml") if "[project]" in b))
    entry_points = project["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert entry_points == {"holes": "dumpd_holes:create"}
    root = write_distribution(tmp_path / "site", project["project"]["name"], "dumpd_holes",
                              code_blocks("plugins.md", "python")[0], entry_points,
                              project["project"]["version"])
    monkeypatch.syspath_prepend(str(root))
    return root


def test_the_guide_plugin_conforms(holes: Path) -> None:
    report = check_plugin("holes", {"ranges": ["0x100-0x1ff"]},
                          expected={0x100: 0, 0x1FF: 0, 0x200: 1}, measure_seconds=0.01)
    assert (report.distribution, report.version) == ("dumpd-holes", "0.1.0")
    assert report.checks == ["entry point", "unknown option refused", "verdicts", "close"]


def test_the_guide_test_class_passes(holes: Path, tmp_path: Path) -> None:
    test_file = tmp_path / "test_holes.py"
    test_file.write_text(code_blocks("plugins.md", "python")[1])
    env = {**os.environ, "PYTHONPATH": str(holes)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(test_file)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1].startswith("3 passed, 4 skipped")


def test_the_guide_check_command(holes: Path) -> None:
    shown = next(b for b in code_blocks("plugins.md", "")
                 if b.startswith("$ dumpd hook check")).splitlines()
    argv = shlex.split(shown[0].removeprefix("$ dumpd "))
    env = {**os.environ, "PYTHONPATH": str(holes)}
    result = subprocess.run([sys.executable, "-m", "dumpd", *argv], capture_output=True,
                            text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == shown[1]
    assert out[2] == shown[3]
    assert re.fullmatch(r"single lookups   [\d,]+/s", out[1])


def test_the_guide_hook_that_reads_the_dump_conforms(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's `dumpd-offline` (attach, read_phys, VMCOREINFO, explain) passes the kit
    attached to a synthetic kernel, and says offline exactly for its offline pages."""
    source = next(b for b in code_blocks("plugins.md", "python") if "dumpd-offline" in b)
    root = write_distribution(tmp_path / "site", "dumpd-offline", "dumpd_offline", source,
                              {"offline": "dumpd_offline:create"}, "0.1.0")
    monkeypatch.syspath_prepend(str(root))
    kernel = SyntheticKernel("6.12")
    kernel.write(str(tmp_path / "vmcore"))
    offline = {pfn for pfn, kind in kernel.kinds.items() if kind == "offline"}
    assert len(offline) == 36
    report = check_plugin("offline", {}, expected={**dict.fromkeys(offline, 0), 1: 1, 383: 1,
                                                   388: 1}, dump=str(tmp_path / "vmcore"),
                          measure_seconds=0.01)
    assert report.checks == ["entry point", "unknown option refused", "attach", "verdicts",
                             "explain agrees", "close"]


def test_the_guide_says_what_parse_pfn_range_returns() -> None:
    """Each `parse_pfn_range("TEXT") == (START, END)` in the guide holds."""
    text = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    claims = re.findall(r'`parse_pfn_range\("([^"]+)"\) == \((\w+), (\w+)\)`', text)
    assert len(claims) == 3
    for item, start, end in claims:
        assert parse_pfn_range(item) == (int(start, 0), int(end, 0)), item


def test_the_docs_agree_on_the_stub_map_path() -> None:
    """README.md and the xen plugin's README show one path for the stub's map file."""
    root = Path(__file__).parent.parent
    paths = {path for doc in ("README.md", "plugins/xen/README.md", "docs/configuration.md",
                              "systemd/README.md")
             for path in re.findall(r'map ?= ?"?(/[\w/.-]+)', (root / doc).read_text())}
    assert paths == {"/etc/dumpd/xen-memtypes.txt"}
