"""``python -m genesis_registry.cli``: the same as ``genesis-registry``."""

from __future__ import annotations

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
