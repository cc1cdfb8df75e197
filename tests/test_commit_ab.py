"""bench/commit_ab.py, the whole-build A/B of another commit against this tree: it builds each side from its own
source (checked by the subprocess that imports it), times both, compares their integers, and refuses a
revision git does not know in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--model", "minilm-random", "--shape", "1x16", "--target", "llvm", "--rounds", "2", "--repeats", "1"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench/commit_ab.py"), *args], cwd=ROOT / "bench",
                          capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the repository's git history (a clone)")
def test_head_against_this_tree_times_both_and_compares_integers():
    run = _run("--against", "HEAD", *ARGS)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert any("A (HEAD): median" in line for line in lines) and any("B (this tree): median" in line for line in lines)
    assert lines[-1].startswith("B / A: ") and ("identical" in lines[-1] or "DIFFER" in lines[-1])
    compiler_unchanged = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "ibert_tvm",
                                         "relay_passes", "schedules"]).returncode == 0
    if compiler_unchanged:  # as in CI's clean clone: both sides build the same program
        assert "integer outputs identical" in lines[-1]


def test_unknown_revision_is_refused_in_one_line():
    run = _run("--against", "no-such-revision-xyz", *ARGS)
    assert run.returncode != 0
    assert "no-such-revision-xyz" in run.stderr and "Traceback" not in run.stderr
