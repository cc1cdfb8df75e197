"""`ibert_tvm.record_replay`'s parent side with stand-in children (shell scripts as the interpreter): how a child's
death, its error and a failure of its own are reported. The real child reads real damaged databases in
`test_tuning.py`."""

from __future__ import annotations

import sys

import pytest

from ibert_tvm.record_replay import files_digest, replay_problem
from ibert_tvm.targets import resolve_target

NAMES = ["workloads.json", "records.json"]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / NAMES[0]).write_text("w1\nw2\n")
    (tmp_path / NAMES[1]).write_text("r1\nr2\nr3\n")
    return tmp_path


def _child(tmp_path, monkeypatch, script: str) -> None:
    """Make `script` (sh) the interpreter that `replay_problem` starts."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))


def _problem(folder, numbers=None):
    return replay_problem(folder, NAMES, resolve_target("llvm"), set(), "db", numbers)


def test_a_child_that_reads_every_line_finds_no_problem(folder, monkeypatch):
    _child(folder, monkeypatch, "for f in 'workloads.json 1' 'records.json 1'; do echo \"line $f\"; done; echo done")
    assert _problem(folder) is None


def test_a_childs_death_names_the_line_it_was_reading(folder, monkeypatch):
    """The last line the child named, by its number in the folder (`numbers`) where the files hold a selection."""
    _child(folder, monkeypatch, "echo 'line workloads.json 2'; echo 'line records.json 2'; kill -SEGV $$")
    assert _problem(folder) == "records.json line 2: TVM's reader died of SIGSEGV on it"
    assert _problem(folder, [4, 7, 9]) == "records.json line 7: TVM's reader died of SIGSEGV on it"
    _child(folder, monkeypatch, "echo 'line workloads.json 2'; kill -ABRT $$")
    assert _problem(folder, [4, 7, 9]) == "workloads.json line 2: TVM's reader died of SIGABRT on it"


def test_a_childs_error_is_reported_on_its_line(folder, monkeypatch):
    _child(folder, monkeypatch, "echo 'line records.json 3'; echo 'error TypeError: Mismatched type'; exit 1")
    assert _problem(folder) == "records.json line 3: TypeError: Mismatched type"


@pytest.mark.parametrize("script", ["echo 'ModuleNotFoundError: tvm' >&2; exit 3", "echo 'line records.json 1'"])
def test_a_child_that_fails_otherwise_is_an_error_of_its_own(folder, monkeypatch, script):
    """A child that cannot start its work, or stops without saying it is done, is not a corrupt database."""
    _child(folder, monkeypatch, script)
    with pytest.raises(RuntimeError, match="the child process reading .* exited with status"):
        _problem(folder)


def test_files_digest_changes_with_any_byte(folder):
    before = files_digest(folder, NAMES)
    (folder / NAMES[1]).write_text("r1\nr2\nr4\n")
    after = files_digest(folder, NAMES)
    assert before[NAMES[0]] == after[NAMES[0]] and before[NAMES[1]] != after[NAMES[1]]
