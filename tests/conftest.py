"""pytest's hooks and fixtures only: every async test on both event loops; the
reliability figures (`tests.figures`) printed at the end; the TLS tests' certificates
(`pki`, from `tests.pki`). Helpers the tests share are in modules of their own
(servers, daemon, dumps, views, figures, pki); no test imports this file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop

from tests.figures import FIGURES, Figures

pytest_plugins = ["tests.pki"]  # its `pki` fixture, for every module with TLS tests


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the default loop and on uvloop."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's reliability figures (see `pytest_terminal_summary`)."""
    return FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES.lines:
        terminalreporter.write_sep("=", "reliability figures")
        for line in FIGURES.lines:
            terminalreporter.write_line(line)
