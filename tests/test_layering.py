"""The package's shape, checked against docs/architecture.md: no import cycle inside
dumpd/, every import between components one its layering table lists (and every one it
lists made), every module named in its module table, none over MAX_LINES lines.

Imports are read from the source (ast), so a lazy import inside a function counts as
much as one at the top; only imports under `if TYPE_CHECKING:` are left out (they never
run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "dumpd"  # the checkout's package, whatever is installed
DOC = ROOT.parent / "docs" / "architecture.md"
MAX_LINES = 400


def layering(doc: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """From the table between the `layering` markers of docs/architecture.md: each
    module name's component, and the components each component imports."""
    table = doc.split("<!-- layering: ", 1)[1].split("<!-- end layering -->", 1)[0]
    members: dict[str, str] = {}
    imports_of: dict[str, set[str]] = {}
    for row in table.splitlines()[3:]:
        name, names, uses = (cell.strip() for cell in row.strip("|").split("|"))
        members.update((module.strip("` "), name) for module in names.split(","))
        imports_of[name] = set() if uses == "nothing" else {u.strip() for u in uses.split(",")}
    return members, imports_of


COMPONENTS, MAY_IMPORT = layering(DOC.read_text())


def module_of(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_of(path, root): path for path in sorted(root.rglob("*.py"))}


def _runs(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` outside `if TYPE_CHECKING:` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _runs(child)
            continue
        yield node
        yield from _runs(node)


def imports(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The modules of the package that module `name` (at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runs(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in found if target in known and target != name}


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles of `edges` (Tarjan's strongly connected components of more than
    one module), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def component(name: str) -> str:
    prefixes = [p for p in COMPONENTS
                if name == p or (name.startswith(p + ".") and p != "dumpd")]
    if not prefixes:
        raise AssertionError(f"{name} belongs to no component: add it to the layering "
                             "table of docs/architecture.md")
    return COMPONENTS[max(prefixes, key=len)]


def violations(edges: Mapping[str, set[str]]) -> list[str]:
    """`a -> b (from component -> to component)` for each import against MAY_IMPORT."""
    found = []
    for name, targets in sorted(edges.items()):
        mine = component(name)
        for target in sorted(targets):
            theirs = component(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                found.append(f"{name} -> {target} ({mine} -> {theirs})")
    return found


def test_no_import_cycle_in_dumpd() -> None:
    assert cycles(graph(ROOT)) == []


def test_imports_follow_the_layering() -> None:
    assert violations(graph(ROOT)) == []


def component_edges(edges: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """Which components each component's modules import (itself left out)."""
    found: dict[str, set[str]] = {name: set() for name in MAY_IMPORT}
    for name, targets in edges.items():
        mine = component(name)
        found[mine].update(component(t) for t in targets if component(t) != mine)
    return found


def test_the_layering_table_is_what_the_code_imports() -> None:
    assert component_edges(graph(ROOT)) == MAY_IMPORT


def test_components_import_only_those_above_them_in_the_table() -> None:
    order = list(MAY_IMPORT)
    assert {name: sorted(used for used in uses if order.index(used) >= order.index(name))
            for name, uses in MAY_IMPORT.items()} == {name: [] for name in order}


def test_architecture_names_every_module() -> None:
    table = DOC.read_text().split("## Every module", 1)[1].split("\n## ", 1)[0]
    named = {cell.strip("` ") for row in table.splitlines()[3:] if row.startswith("| `dumpd/")
             for cell in [row.split("|")[1]]}
    assert named == {str(path.relative_to(ROOT.parent)) for path in modules(ROOT).values()}


def test_modules_stay_short() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules(ROOT).items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_every_component_has_modules() -> None:
    assert sorted({component(name) for name in modules(ROOT)}) == sorted(MAY_IMPORT)


# The checks themselves, on a package made to break them.

def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / "dumpd"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_cycle_is_found_through_lazy_and_relative_imports(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "client/__init__.py": "from dumpd.client.blocking import Client\n",
        "client/blocking.py": "def f():\n    from . import aio\n",
        "client/aio.py": "from dumpd.client import Client\n",
        "protocol.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from dumpd.client import Client\n",
    })
    edges = graph(root)
    assert edges["dumpd.client.blocking"] == {"dumpd.client.aio"}
    assert edges["dumpd.protocol"] == set()  # a TYPE_CHECKING import never runs
    assert cycles(edges) == [["dumpd.client", "dumpd.client.aio", "dumpd.client.blocking"]]


def test_an_import_against_the_layering_is_named(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "engine/__init__.py": "",
        "engine/engine.py": "import dumpd.server.app\nfrom dumpd.protocol import encode\n",
        "server/__init__.py": "",
        "server/app.py": "from dumpd.engine import engine\n",
        "protocol.py": "",
    })
    assert violations(graph(root)) == [
        "dumpd.engine.engine -> dumpd.protocol (engine -> protocol)",
        "dumpd.engine.engine -> dumpd.server.app (engine -> server)",
    ]


def test_a_module_outside_every_component_is_an_error() -> None:
    with pytest.raises(AssertionError, match=r"dumpd\.newthing belongs to no component"):
        component("dumpd.newthing")
