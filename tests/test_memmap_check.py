"""bench.memmap_check on real dumps: the memmap hook's non-RAM pages, through a real
`dumpd serve`, page for page against makedumpfile's exclusions at each level, on the
dumps the crash-kernel lab kept (`python -m bench.lab --keep /var/tmp/dumpd-lab/dumps`,
KASLR on and off, a balloon inflated). And the check itself, with a stand-in hook named
memmap that answers makedumpfile's own pages but for two: it must say equal where they
agree, and name those two pfns with both sides' reasons.

Slow (makedumpfile and a server per dump and level); each skips in one line without
makedumpfile, without the kept dumps, or (the first) before the hook is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.kdumpbitmap import Makedumpfile, kept_dumps
from bench.memmap_check import SKIP, hook_installed
from bench.pfnranges import subtract
from tests.plugindist import write_distribution

ROOT = Path(__file__).resolve().parents[1]
LAB = Path("/var/tmp/dumpd-lab")
KEPT = kept_dumps(LAB / "dumps")
REAL = [p for p in [*KEPT, LAB / "fetched.vmcore"] if p.exists()]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                 reason="makedumpfile is not installed")]

STANDIN = '''
"""A stand-in memmap hook: makedumpfile's answers, from a JSON file named in the
environment (MEMMAP_STANDIN): {"LEVEL": [[first, end], ...]} of pfns not RAM."""
import bisect, json, os

class Hook:
    def __init__(self, runs):
        self.starts = [a for a, _ in runs]
        self.runs = runs

    def pfn_is_ram(self, pfn):
        i = bisect.bisect_right(self.starts, pfn) - 1
        return 0 if i >= 0 and pfn < self.runs[i][1] else 1

    def pfn_range_is_ram(self, first, count):
        return [(1, self.pfn_is_ram(p)) for p in range(first, first + count)]

def factory(options):
    answers = json.load(open(os.environ["MEMMAP_STANDIN"]))
    return Hook([tuple(r) for r in answers[str(options["dump_level"])]])
'''


def _check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.memmap_check", "--compare-only",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          check=False, env=env)


@pytest.mark.skipif(not KEPT, reason=f"no lab dumps kept in {LAB / 'dumps'} "
                    "(python -m bench.lab --keep DIR, --kaslr off, --balloon 64)")
def test_the_memmap_hook_excludes_what_makedumpfile_excludes(tmp_path: Path) -> None:
    done = _check("--out", str(tmp_path / "memmap.md"), *map(str, KEPT))
    if done.returncode == SKIP:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len([ln for ln in lines if ": equal," in ln]) == 6 * len(KEPT), done.stdout


@pytest.mark.skipif(not REAL, reason=f"no real dump in {LAB} (python -m bench.lab)")
@pytest.mark.skipif(hook_installed(), reason="the real memmap hook is installed: the test "
                    "above checks it, a stand-in would make its name ambiguous")
def test_the_check_names_the_pages_a_hook_gets_wrong(tmp_path: Path) -> None:
    dump = REAL[0]
    mdf = Makedumpfile(dump)
    answers = {level: list(mdf.run(level).kdump.excluded) for level in (0, 2, 16)}
    right = mdf.run(18).kdump.excluded
    missed = mdf.reasons(18)["free"][0][0]  # a free page the stand-in keeps
    kept = subtract(mdf.run(19).kdump.dumped, mdf.run(19).kdump.zero)[0][0]  # one it drops
    answers[18] = [*subtract(right, ((missed, missed + 1),)), (kept, kept + 1)]
    answers[18].sort()
    (tmp_path / "answers.json").write_text(json.dumps({str(k): v for k, v in answers.items()}))
    site = write_distribution(tmp_path / "site", "standin-memmap", "standin_memmap", STANDIN,
                              {"memmap": "standin_memmap:factory"})
    env = {**os.environ, "MEMMAP_STANDIN": str(tmp_path / "answers.json"),
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = _check("--levels", "2,19", "--out", str(tmp_path / "memmap.md"), str(dump),
                  env=env)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    level2, level19 = done.stdout.splitlines()
    assert f"{dump.name} level 2: equal, " in level2
    assert f"{dump.name} level 19: DIFFER: only makedumpfile excludes 1 ({missed:#x}), " \
           f"only dumpd 1 ({kept:#x}); " in level19
    assert f"pfn {missed:#x}: makedumpfile free, dumpd RAM" in level19
    assert f"pfn {kept:#x}: makedumpfile kept, dumpd not RAM" in level19
    assert "## Page for page" in (tmp_path / "memmap.md").read_text()
