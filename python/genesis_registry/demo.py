"""``python -m genesis_registry.demo``: the same as ``genesis-registry demo``.

The demo lives in :mod:`genesis_registry.cli.demo`; this module keeps the ``-m`` entry
point and the names it had.

Example::

    python -m genesis_registry.demo --keep-etcd
"""

from __future__ import annotations

import sys

from .cli.demo import (
    CALL_INTERVAL,
    CHANGE_TIMEOUT,
    METHOD,
    NAMESPACE,
    PHASE_SECONDS,
    SERVICE,
    GreeterServer,
    main,
    run,
    tour,
)

__all__ = [
    "CALL_INTERVAL",
    "CHANGE_TIMEOUT",
    "METHOD",
    "NAMESPACE",
    "PHASE_SECONDS",
    "SERVICE",
    "GreeterServer",
    "main",
    "run",
    "tour",
]

if __name__ == "__main__":
    sys.exit(main())
