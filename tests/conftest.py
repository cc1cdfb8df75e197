"""Shared pytest plumbing: a `report` fixture whose lines are printed after the run.

Tests that measure something (agreement with HuggingFace's I-BERT modules, approximation errors) call
`report("...")`; the lines appear under "ibert-tvm measurements" in the terminal summary of a normal
`pytest -q` run (also with pytest-xdist's workers), test by test as they finish, whether they passed or failed.

`tiny_bert` is the calibrated tiny BERT program that several files build and check against its unscheduled
build; the session compiles that reference once (about 13 s per compile).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

_MEASUREMENTS: list[str] = []
_HEADER = "ibert-tvm measurements"


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """`report(line)` records one measurement line for the terminal summary, as a property of the test, which
    pytest-xdist sends from its workers with the test's report."""

    def _report(line: str) -> None:
        request.node.user_properties.append((_HEADER, str(line)))

    return _report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect a test's measurement lines once it is torn down (its last report carries all its properties)."""
    if report.when == "teardown":
        _MEASUREMENTS.extend(line for name, line in report.user_properties if name == _HEADER)


class TinyProgram(NamedTuple):
    """A program, its inputs and the outputs of its unscheduled build."""

    mod: Any  # tvm.IRModule
    inputs: list  # [int64 ids, int32 mask, int32 token types] numpy arrays
    reference: Any  # numpy int8 outputs of the unscheduled build


@pytest.fixture(scope="session")
def tiny_bert() -> TinyProgram:
    """test_model.tiny("bert") calibrated ('ibert' semantics) as a batch 3 x length 20 program, its inputs (row 1
    padded) and the outputs of its unscheduled build (LegalizeOps + tvm.compile for plain llvm, no project pass)."""
    import numpy as np
    import tvm
    from tvm import relax

    from ibert_tvm.model import from_pretrained
    from test_model import batches, program_inputs, tiny

    qm = from_pretrained(tiny("bert"), calibration=batches(0, 2, 4, 16, seed=1))
    b = batches(0, 1, 3, 20, seed=5)[0]
    mod, inputs = qm.program(3, 20), program_inputs(b)
    vm = relax.VirtualMachine(tvm.compile(relax.transform.LegalizeOps()(mod), "llvm"), tvm.cpu())
    return TinyProgram(mod, inputs, vm["main"](*map(tvm.runtime.tensor, inputs)).numpy())


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 (pytest hook signature)
    if not _MEASUREMENTS:
        return
    terminalreporter.section(_HEADER)
    for line in _MEASUREMENTS:
        terminalreporter.write_line(line)
