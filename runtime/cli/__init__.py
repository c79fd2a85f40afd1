"""The `g4rt` command line: `main` is the click group, `entry` the console script."""

from .main import entry, main, run

__all__ = ["entry", "main", "run"]
