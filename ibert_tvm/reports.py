"""Writing a command's results as JSON, Markdown and a PNG side by side, the machine and date beside them
(what `ibert-tvm bench` and `ibert-tvm eval` write)."""

from __future__ import annotations

import errno
import json
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from .targets import host_cpu_name

__all__ = ["folder_problem", "pyplot", "stamped", "write_results"]


def folder_problem(path: str | Path) -> str | None:
    """Why files cannot be written into folder `path` (made if need be): the nearest existing path on its way
    is a file, or a folder that cannot be written; None where they can (checked before a command's work). The
    check writes and removes a temporary file there: permission bits do not bind root, and /proc, /sys or a
    read-only mount refuse files whatever they say."""
    path = Path(path)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"{path}{'' if existing == path.absolute() else f': {existing}'} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:  # the reason, where it says more than that (/proc answers "No such file")
        reason = f" ({err.strerror})" if err.strerror and err.errno != errno.ENOENT else ""
        return f"{path}: the folder {existing} cannot be written{reason}"
    return None


def stamped(context: dict[str, Any]) -> dict[str, Any]:
    """`context` with the machine (its CPU) and today's date, which every reported figure carries."""
    return {**context, "machine": host_cpu_name(), "date": date.today().isoformat()}


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_results(out_dir: str | Path, stem: str, payload: dict[str, Any], markdown: str,
                  draw: Callable[[Path], None]) -> dict[str, Path]:
    """`stem.json` (the payload), `stem.md` and `stem.png` (drawn by `draw(path)`) in `out_dir`, made if
    missing; their paths by kind ("json", "markdown", "plot")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(payload, indent=1), encoding="utf-8")
    paths["markdown"].write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    draw(paths["plot"])
    return paths
