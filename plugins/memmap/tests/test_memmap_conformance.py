"""dumpd's conformance kit (`dumpd.testing.HookConformance`), the hook attached to a
synthetic kernel: by default, and at dump level 31 on 7.1's layout."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from typing import ClassVar

import pytest
from dumpd.testing import HookConformance
from memmap_kernels import kernel_dump

HIGH = 0x200000  # the synthetic kernel's RAM at 8 GiB: its last pfns


class TestDefaultConformance(HookConformance):
    hook_name = "memmap"
    pfn_limit = HIGH + 3072
    expected: ClassVar[Mapping[int, int]] = {
        1: 1, 384: 0, 387: 0, 388: 0, 389: 0, 2304: 0, 2335: 0, 2336: 1,  # offline, hwpoison
        390: 1, 5120: 1, 6144: 1, 16384: 1, 12288: 1, HIGH: 1,
    }

    @pytest.fixture
    def hook_options(self, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
        self.path = kernel_dump(tmp_path_factory, "6.12")[1]
        return {}

    def dump_path(self, options: Mapping[str, object]) -> str | None:
        return self.path


class TestLevel31Conformance(TestDefaultConformance):
    expected: ClassVar[Mapping[int, int]] = {
        1: 1, 384: 0, 388: 0, 390: 0, 394: 0, 400: 0, 405: 1, 5120: 0, 6143: 0, 6144: 0,
        16384: 0, 24575: 0, 12288: 1, 12543: 1, HIGH: 1,
    }

    @pytest.fixture
    def hook_options(self, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
        self.path = kernel_dump(tmp_path_factory, "7.1")[1]
        return {"dump_level": 31}


def test_dumpd_hook_check_runs_the_kit_on_a_dump(tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    """`dumpd hook check memmap --dump FILE`: every check, the attach and explain ones
    included, and what the hook read of the dump; without a dump, one line says why."""
    path = kernel_dump(tmp_path_factory, "6.12")[1]
    done = subprocess.run([sys.executable, "-m", "dumpd", "hook", "check", "memmap",
                           "--hook-option", "dump_level=31", "--dump", path],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    first, *_, last = done.stdout.splitlines()
    assert first.startswith("hook 'memmap' (dumpd-memmap ")
    assert first.endswith("conforms: entry point, unknown option refused, attach, verdicts, "
                          "batched form agrees, explain agrees, close")
    assert last.startswith("dump read ") and last.endswith(" reads")
    bare = subprocess.run([sys.executable, "-m", "dumpd", "hook", "check", "memmap"],
                          capture_output=True, text=True, check=False)
    assert (bare.returncode, bare.stdout) == (1, "")
    assert bare.stderr == ("dumpd: conformance: hook 'memmap': attach: the hook reads the "
                           "dump it judges (it has attach()): give it one to be checked on "
                           "(dumpd hook check --dump FILE)\n")
