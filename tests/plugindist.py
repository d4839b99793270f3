"""Installing a throwaway hook plugin distribution for a test: a module plus its
`.dist-info` (METADATA, entry_points.txt) in a directory put on the path, which
is what pip leaves in site-packages. Entry points are found through it exactly
as through an installed wheel."""

from __future__ import annotations

import textwrap
from pathlib import Path

from dumpd.hooks.contract import ENTRY_POINT_GROUP


def write_distribution(root: Path, name: str, module: str, source: str,
                       entry_points: dict[str, str], version: str = "0.1") -> Path:
    """Write distribution `name` with module `module` (holding `source`) declaring
    `entry_points` (name -> "module:attr") under `root`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    return root


EXPLAINING = '''
from dumpd.hooks.contract import HookConfigError


class Explaining:
    """Not RAM: the pfns of its runs, each run explained by its word; the rest RAM."""

    def __init__(self, runs, broken):
        self.runs = runs
        self.broken = broken

    def _word(self, pfn):
        for first, last, word in self.runs:
            if first <= pfn <= last:
                return word
        return ""

    def pfn_is_ram(self, pfn):
        return 0 if self._word(pfn) else 1

    def explain(self, first_pfn, count):
        if self.broken:
            return [(count + 1, "too long")]
        return [(1, self._word(pfn)) for pfn in range(first_pfn, first_pfn + count)]


def create(options):
    """`runs`: "FIRST-LAST=WORD,..." (pfns, inclusive); `broken`: explain answers wrong."""
    try:
        runs = [(int(span.split("-")[0], 0), int(span.split("-")[1], 0), word)
                for span, _, word in (item.partition("=")
                                      for item in str(options["runs"]).split(","))]
    except (KeyError, ValueError, IndexError) as exc:
        raise HookConfigError(f"explaining: runs must be FIRST-LAST=WORD,...: {exc}") from exc
    return Explaining(runs, bool(options.get("broken")))
'''
"""A hook that says why its pages are not RAM (`explain`), for the record tests."""


def explaining(root: Path) -> Path:
    """The distribution `dumpd-explaining` (hook `explaining`) under `root`."""
    return write_distribution(root, "dumpd-explaining", "dumpd_explaining", EXPLAINING,
                              {"explaining": "dumpd_explaining:create"})
