"""SIGINT and SIGTERM as an exception: how long-running commands (and the demo) stop cleanly.

Example::

    >>> import os
    >>> with stop_on_signals():
    ...     try:
    ...         os.kill(os.getpid(), signal.SIGTERM)     # e.g. from systemd or Kubernetes
    ...     except Interrupted:
    ...         print("stopping")
    stopping
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupted", "stop_on_signals"]


class Interrupted(Exception):
    """Raised in the main thread by :func:`stop_on_signals` on the first SIGINT or SIGTERM."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGINT (Ctrl-C) or SIGTERM into :class:`Interrupted`, raised in the
    main thread wherever it waits; later ones are ignored, so that the clean-up after the
    first one (deregistering, stopping etcd) runs to the end. The previous handlers are
    restored on exit. Main thread only.

    Example::

        >>> import os, time
        >>> with stop_on_signals():
        ...     try:
        ...         os.kill(os.getpid(), signal.SIGINT)      # Ctrl-C
        ...         time.sleep(30)
        ...     except Interrupted:
        ...         print("interrupted")
        ...     os.kill(os.getpid(), signal.SIGTERM)     # ignored: the clean-up runs to its end
        ...     print("cleaned up")
        interrupted
        cleaned up
    """
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
