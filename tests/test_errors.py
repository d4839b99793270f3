"""The error codes: the ones docs/protocol.md lists, the ones the code sends, and `CODES`
are the same set."""

from __future__ import annotations

import ast
import errno
import re
from pathlib import Path

import pytest

from dumpd.errors import CODES, DumpdError

ROOT = Path(__file__).resolve().parent.parent


def documented_codes() -> set[str]:
    """The first column of the table under `| code | meaning |` in docs/protocol.md."""
    lines = (ROOT / "docs" / "protocol.md").read_text().splitlines()
    start = lines.index("| code | meaning |") + 2  # past the header and its rule
    codes = set()
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        match = re.fullmatch(r"\| `(E[A-Z0-9]+)` \|.*\|", line)
        assert match, f"not a row of the code table: {line!r}"
        codes.add(match.group(1))
    return codes


def codes_in_source() -> dict[str, list[str]]:
    """Every string literal in dumpd/ (but errors.py) that is an errno name, and where."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "dumpd").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "dumpd":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.fullmatch(r"E[A-Z0-9]+", node.value) and hasattr(errno, node.value)):
                found.setdefault(node.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_protocol_document_lists_exactly_the_codes() -> None:
    assert documented_codes() == set(CODES)
    assert "ETIMEDOUT" in CODES


def test_every_code_the_source_names_is_a_code() -> None:
    found = codes_in_source()
    unknown = {code: where for code, where in found.items() if code not in CODES}
    assert unknown == {}
    assert set(found) == set(CODES)  # and none of CODES is left unused


@pytest.mark.parametrize("code", sorted(CODES))
def test_each_code_makes_an_error(code: str) -> None:
    error = DumpdError(code, "what went wrong")
    assert (error.code, error.message, str(error)) == (code, "what went wrong",
                                                      f"{code}: what went wrong")


def test_an_unknown_code_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^unknown error code 'ETIME'$"):
        DumpdError("ETIME", "no such code")
