"""``python -m genesis_registry``: the ``genesis-registry`` command (see :mod:`genesis_registry.cli`).

Example::

    python -m genesis_registry demo
    python -m genesis_registry --endpoints 127.0.0.1:2379 list
"""

from __future__ import annotations

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
