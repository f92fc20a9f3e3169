"""Where the tests live, and how a child process finds ``support``."""

from __future__ import annotations

import os
from pathlib import Path

#: The ``tests/`` directory: ``support`` is a package in it.
TESTS = Path(__file__).resolve().parent.parent


def child_pythonpath(env: dict[str, str] | None = None) -> str:
    """``PYTHONPATH`` for a child that imports ``support``: ``tests/`` first, then whatever
    ``env`` (default: ours) already had, so the child finds the same ``genesis_registry``."""
    current = (os.environ if env is None else env).get("PYTHONPATH", "")
    return os.pathsep.join(part for part in (str(TESTS), current) if part)
