"""What goes wrong when starting or driving a local etcd, as exception types.

``PortTakenError`` and ``NoLocalProcessError`` are raised inside the package and by
:class:`~genesis_registry.localetcd.external.ExternalEtcd`; the pytest plugin turns the
latter into a skip.
"""

from __future__ import annotations

import subprocess

__all__ = ["EtcdNotFoundError", "EtcdctlError", "NoLocalProcessError", "PortTakenError"]


class EtcdNotFoundError(RuntimeError):
    """No etcd (or etcdctl) binary could be found.

    The message says where it looked and how to get one, or what is wrong with the binary
    it was told to use:

        >>> import os
        >>> from unittest import mock
        >>> from genesis_registry.localetcd import find_etcd_binary
        >>> with mock.patch.dict(os.environ, {"GENESIS_ETCD_BIN": "/nowhere/etcd"}):
        ...     find_etcd_binary()
        Traceback (most recent call last):
        ...
        genesis_registry.localetcd.errors.EtcdNotFoundError: $GENESIS_ETCD_BIN='/nowhere/etcd' is not an executable ...
    """


class EtcdctlError(subprocess.CalledProcessError):
    """``etcdctl`` exited non-zero; ``str()`` includes its stderr.

    Example::

        >>> try:
        ...     server.etcdctl("get", "--bogus-flag")
        ... except EtcdctlError as exc:
        ...     print(exc.returncode, exc.stderr)
        1 b'Error: unknown flag: --bogus-flag...'
    """

    def __str__(self) -> str:
        text = super().__str__()
        err = self.stderr
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        if err:
            text += "\netcdctl stderr:\n" + str(err).rstrip()
        return text


class PortTakenError(RuntimeError):
    """etcd exited because a port was taken between picking and binding.

    A first start catches it and tries fresh ports; callers see a RuntimeError whose
    message contains ``address already in use``.

    Example::

        >>> issubclass(PortTakenError, RuntimeError)     # what callers of start() catch
        True
    """


class NoLocalProcessError(RuntimeError):
    """A process-level action (stop, kill, restart, wipe) asked of an etcd this package
    did not start. Under the pytest plugin it skips the test that asked.

    Example::

        >>> from genesis_registry.localetcd import ExternalEtcd
        >>> ExternalEtcd(["10.0.0.5:2379"]).kill()
        Traceback (most recent call last):
        ...
        genesis_registry.localetcd.errors.NoLocalProcessError: needs a local etcd process
    """
