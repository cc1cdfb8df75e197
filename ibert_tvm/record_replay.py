"""Read a MetaSchedule database in a child process before this process does, line by line as TVM's reader does.

TVM's reader replays every record's trace, and some damaged traces kill the process with SIGSEGV there (a null
where an instruction takes a number, as a `SampleCategorical` probability): where the null is allowed depends on
each instruction's C++ code, so no parse of the JSON foresees it. A child that dies names the line instead.
`tune` records the files' digests (`files_digest`) in the folder's metadata, so that a folder it wrote is not
read twice; a folder edited since is.

Run as `python -m ibert_tvm.record_replay FOLDER SPEC INTRINSICS WORKLOADS RECORDS` (SPEC and INTRINSICS as JSON,
then the two files' names): it prints
`line FILE NUMBER` before reading each line, `done` at the end, or `error MESSAGE` and exits 1 on a Python error.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .targets import TargetSpec

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder that holds `ibert_tvm`, for the child
_PROGRESS_DELAY_S = 2.0  # the bar shows only where the reading takes longer (the child's start alone takes 3-4 s)


def files_digest(folder: Path, names: Sequence[str]) -> dict[str, str]:
    """The SHA-256 of each of the folder's files `names` that exists."""
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names
            if (folder / name).is_file()}


def replay_problem(files: Path, names: Sequence[str], spec: TargetSpec, intrinsics: set[str], shown_as: str,
                   numbers: Sequence[int] | None = None) -> str | None:
    """What stops TVM reading the database files `names` (workloads first, then records) in folder `files`,
    as '<file> line <n>: <problem>', or None where a child process reads them all. `numbers[i]` is the line
    number to report for the records file's line i + 1 (where `files` holds a selection of another file's lines).
    `intrinsics` are the tensor intrinsics the records name, registered in the child as `spec` registers them.
    A progress bar named `shown_as` counts the lines where the reading takes more than a few seconds."""
    target = json.dumps({"name": spec.name, "family": spec.family, "target": str(spec.target)})
    command = [sys.executable, "-m", __name__, str(files), target, json.dumps(sorted(intrinsics)), *names]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    total = sum(len((files / name).read_bytes().splitlines()) for name in names)
    at, outcome = None, None
    with tempfile.TemporaryFile() as stderr, tqdm(total=total, unit="line", desc=f"checking {shown_as}",
                                                  delay=_PROGRESS_DELAY_S, leave=False) as bar:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env) as child:
            for message in child.stdout:
                kind, _, rest = message.rstrip("\n").partition(" ")
                if kind == "line":
                    name, _, number = rest.rpartition(" ")
                    at = (name, int(number))
                    bar.update(1)
                else:
                    outcome = (kind, rest)
        if child.returncode == 0 and outcome == ("done", ""):
            return None
        where = "" if at is None else f"{at[0]} line {_reported(at, names, numbers)}: "
        if child.returncode < 0:
            return f"{where}TVM's reader died of {signal.Signals(-child.returncode).name} on it"
        if outcome is not None and outcome[0] == "error":
            return f"{where}{outcome[1]}"
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"the child process reading {shown_as} exited with status {child.returncode} before "
                           f"reading every line: {tail[0] if tail else 'no message'}")


def _reported(at: tuple[str, int], names: Sequence[str], numbers: Sequence[int] | None) -> int:
    """The line number to report for line `at` = (file, number) of the child's reading."""
    return numbers[at[1] - 1] if numbers is not None and at[0] == names[-1] else at[1]


def _read(folder: Path, spec_json: str, intrinsics_json: str, names: Sequence[str]) -> None:
    """Read the workloads (the first file) and the records (the second) as MetaSchedule's JSONDatabase does,
    naming each line on stdout before reading it."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import ScheduleError, Trace
    from tvm.target import Target

    from . import tuning
    from .targets import TargetSpec

    given = json.loads(spec_json)
    spec = TargetSpec(name=given["name"], family=given["family"], target=Target(given["target"]))
    tuning._register_intrinsics(folder, spec, set(json.loads(intrinsics_json)))
    workloads_file, records_file = names
    workloads = []
    for number, line in enumerate((folder / workloads_file).read_text(encoding="utf-8").splitlines(), 1):
        print("line", workloads_file, number, flush=True)
        workloads.append(ms.database.Workload.from_json(json.loads(line)))
    for number, line in enumerate((folder / records_file).read_text(encoding="utf-8").splitlines(), 1):
        print("line", records_file, number, flush=True)
        index, record = json.loads(line)
        try:
            ms.database.TuningRecord.from_json(record, workloads[index])
        except ScheduleError:  # its message is '(not rendered)': replay the trace where TVM renders it
            Trace.apply_json_to_schedule(record[0], Schedule(workloads[index].mod, error_render_level="fast"))
            raise


def main(argv: Sequence[str]) -> int:
    folder, spec_json, intrinsics_json, *names = argv
    try:
        _read(Path(folder), spec_json, intrinsics_json, names)
    except Exception as err:  # noqa: BLE001 (every error TVM raises for a line is reported, on one line)
        from .tuning import _one_line

        print("error", _one_line(str(err) or type(err).__name__), flush=True)
        return 1
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
