"""The fenced code blocks of a document, so tests can run what the docs say."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def code_blocks(doc: str, language: str) -> list[str]:
    """`docs/DOC`'s fenced code blocks in `language` ("" for plain ones), in order."""
    found: list[str] = []
    current: list[str] | None = None
    lang = ""
    for line in (DOCS / doc).read_text().splitlines(keepends=True):
        if line.startswith("```") and current is None:
            current, lang = [], line[3:].strip()
        elif line.startswith("```"):
            if lang == language and current is not None:
                found.append("".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return found
