"""Process lifecycle: close what is still open when the interpreter exits, and give a
forked child a fresh runtime.

Registries and connectors register themselves here. At exit (before non-daemon threads
are joined, so that threads blocked in a watch are released) registries are closed
first (their leases revoked), then connectors, then the runtime stops.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Protocol

from . import _core

__all__ = ["track"]


class Closable(Protocol):
    def _close_at_exit(self) -> None: ...


_registries: weakref.WeakSet[Closable] = weakref.WeakSet()
_connectors: weakref.WeakSet[Closable] = weakref.WeakSet()


def track(obj: Closable, *, connector: bool = False) -> None:
    """Close ``obj`` at interpreter exit if it is still open then. Held weakly: an object
    collected before exit is simply forgotten.

    >>> class Pool:
    ...     def _close_at_exit(self):
    ...         print("closed at exit")
    >>> pool = Pool()
    >>> track(pool)
    >>> pool in _registries
    True
    >>> del pool
    >>> len([obj for obj in _registries if isinstance(obj, Pool)])
    0
    """
    (_connectors if connector else _registries).add(obj)


def _close_everything() -> None:
    for group in (_registries, _connectors):
        for obj in list(group):
            try:
                obj._close_at_exit()
            except Exception:
                pass
    _core._shutdown_runtime(1.0)


def _after_fork_in_child() -> None:
    _core._reset_after_fork()
    _registries.clear()
    _connectors.clear()


try:
    # Runs before non-daemon threads are joined, so a thread blocked in a watch ends.
    threading._register_atexit(_close_everything)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):
    atexit.register(_close_everything)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
