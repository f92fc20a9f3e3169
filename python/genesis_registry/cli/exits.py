"""Exit codes of ``genesis-registry``, and the expected failure that carries one.

``0`` success, including Ctrl-C or SIGTERM ending ``etcd``, ``watch``, ``register`` and
``demo --keep-etcd``; ``1`` failure (etcd unreachable, credentials refused, no such key to
deregister, etcd would not start, the demo's checks failed); ``2`` usage error (bad arguments,
invalid endpoint, namespace, instance or TTL, unreadable TLS files); ``130`` interrupted while
waiting in ``list``, ``get``, ``deregister`` or during the demo's tour. Errors are one line on
stderr: ``genesis-registry: error: ...``.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CliError"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: printed as one line, ``genesis-registry: error: <message>``, and
    the command exits with ``code`` (1 by default, 2 for usage errors).

    Example::

        >>> error = CliError("--port must be a whole number", EXIT_USAGE)
        >>> str(error), error.code, CliError("no instance g1 of greeter").code
        ('--port must be a whole number', 2, 1)
    """

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code
