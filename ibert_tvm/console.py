"""The `ibert-tvm` console script's entry point. It imports nothing heavy and imports the CLI (numpy and the
command line's modules, 0.1 to 0.2 s) inside its Ctrl-C handling, so that a Ctrl-C then ends as one during a
command does: one line and exit status 130, not a KeyboardInterrupt traceback. What comes before it, Python's
start and the package's own import (`configure_threads`, which imports psutil), takes some 40 ms."""

from __future__ import annotations

import sys

__all__ = ["INTERRUPTED", "interrupted", "main"]

#: the exit status of a command stopped by Ctrl-C (SIGINT), as shells report it
INTERRUPTED = 130


def interrupted(kept: str = "") -> int:
    """Print the one line of a command stopped by Ctrl-C (`kept`: where its work stands) and return the status."""
    print(f"\nibert-tvm: interrupted{kept}", file=sys.stderr)
    return INTERRUPTED


def main() -> int:
    """`cli.main`, imported here: a Ctrl-C before the command's own handling begins (while the CLI loads or
    parses the command line) ends with the same line."""
    try:
        from . import cli

        return cli.main()
    except KeyboardInterrupt:
        return interrupted()
