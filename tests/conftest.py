"""Shared pytest plumbing: a `report` fixture whose lines are printed after the run.

Tests that measure something (agreement with HuggingFace's I-BERT modules, approximation errors) call
`report("...")`; the lines appear under "ibert-tvm measurements" in the terminal summary of a normal
`pytest -q` run, in the order they were reported, whether the tests passed or failed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

_MEASUREMENTS: list[str] = []
_HEADER = "ibert-tvm measurements"


@pytest.fixture(scope="session")
def report() -> Callable[[str], None]:
    """`report(line)` records one measurement line for the terminal summary."""

    def _report(line: str) -> None:
        _MEASUREMENTS.append(str(line))

    return _report


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 (pytest hook signature)
    if not _MEASUREMENTS:
        return
    terminalreporter.section(_HEADER)
    for line in _MEASUREMENTS:
        terminalreporter.write_line(line)
