"""Run as a script in a child interpreter (`python -I -S closure.py REQUEST`): the modules
dumpd can import, as {module name: file} in JSON on stdout.

REQUEST is JSON: {"path": the sys.path to import from, "packages": imported with every
module in them (one that fails to import fails this), "modules": imported, "roots": the
top-level names outside the standard library whose imports count}.

Design rules (the why is in the package's docstring)
- Only the standard library here, and nothing of dumpd is imported by this file itself:
  what ends up in `sys.modules` is what dumpd's code pulled in.
- Code outside the standard library is scanned whole, imports in functions included;
  the standard library's only for the lazy imports of a package's own parts, and never
  inside a module `__getattr__` (what it loads is found where dumpd names it).
- `from X import name` is done as Python does it: the attribute first (a lazy
  `__getattr__` runs), else the submodule `X.name`.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import sys
from collections.abc import Iterator
from types import ModuleType


def _want(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # another platform's module, behind a try or an `if`
        return None


def _named(tree: ast.Module, package: str, lazy_getattr: bool
           ) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it) for each import statement in `tree`."""
    nodes: list[ast.AST] = []
    for top in tree.body:
        if not lazy_getattr and isinstance(top, ast.FunctionDef) and top.name == "__getattr__":
            continue
        nodes.extend(ast.walk(top))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base, tuple(alias.name for alias in node.names)


def _load(name: str, attrs: tuple[str, ...], roots: set[str]) -> None:
    top = name.split(".")[0]
    if top not in sys.stdlib_module_names and top not in roots and name not in sys.modules:
        return
    module = _want(name)
    for attr in attrs:
        if module is not None and attr != "*" and not hasattr(module, attr):
            _want(f"{name}.{attr}")


def _file(module: ModuleType) -> str | None:
    file = getattr(module, "__file__", None)
    return file if isinstance(file, str) else None


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    sys.path[:] = request["path"]
    roots = set(request["roots"])
    for package in request["packages"]:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), package + "."):
            if not info.name.endswith(".__main__"):  # runs a command when imported
                importlib.import_module(info.name)
    for name in request["modules"]:
        _want(name)
    scanned: set[str] = set()
    while todo := [(n, m, path) for n, m in list(sys.modules.items()) if n not in scanned
                   and (path := _file(m)) is not None and path.endswith(".py")]:
        for name, module, file in todo:
            scanned.add(name)
            package = name if hasattr(module, "__path__") else name.rpartition(".")[0]
            with open(file, "rb") as source:
                tree = ast.parse(source.read(), file)
            ours = name.split(".")[0] not in sys.stdlib_module_names
            for target, attrs in _named(tree, package, ours):
                if ours or target.split(".")[0] == name.split(".")[0]:
                    _load(target, attrs, roots)
    found = {name: path for name, module in sorted(sys.modules.items())
             if (path := _file(module)) is not None}
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
