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
