"""What every etcd handle here shares, written once: :class:`Etcdctl` gives ``etcdctl()``
to local servers, clusters and external etcds; :class:`LocalHandle` adds the life of the
ones this package starts (closed once, a temporary dir it may own, wipe and close over its
own stop and start).
"""

from __future__ import annotations

import pathlib
import subprocess
import tempfile
import threading

from .process import run_etcdctl

__all__ = ["Etcdctl", "LocalHandle"]


class Etcdctl:
    """The ``etcdctl`` method; a subclass names the binary and the endpoints.

    Example::

        >>> from genesis_registry.localetcd import find_etcdctl_binary
        >>> class Mine(Etcdctl):
        ...     def _etcdctl_target(self) -> tuple[pathlib.Path, str]:
        ...         return find_etcdctl_binary(), server.client_url      # e.g. "http://127.0.0.1:2379"
        >>> Mine().etcdctl("endpoint", "health").returncode
        0
    """

    def etcdctl(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``etcdctl --endpoints=<this etcd's client URLs> *args`` with ``ETCDCTL_API=3``.

        stdout and stderr are captured as bytes. Variables named
        ``ETCDCTL_*`` in the environment are not passed on.

        Raises:
            EtcdctlError: non-zero exit and ``check`` (message includes stderr).
            subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
            EtcdNotFoundError: no etcdctl binary.

        Example::

            >>> import json
            >>> server.etcdctl("put", "/a", "1").stdout
            b'OK\\n'
            >>> server.etcdctl("put", "/b", input=b"2").stdout         # value from stdin
            b'OK\\n'
            >>> res = server.etcdctl("get", "--prefix", "/", "-w", "json")
            >>> json.loads(res.stdout)["count"]
            2
        """
        return self._run_etcdctl(args, input, check, timeout)

    def _run_etcdctl(
        self, args: tuple[str, ...], input: bytes | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[bytes]:
        binary, endpoints = self._etcdctl_target()
        return run_etcdctl(binary, endpoints, args, input, check, timeout)

    def _etcdctl_target(self) -> tuple[pathlib.Path, str]:
        """The etcdctl binary and the ``--endpoints`` value (comma-separated URLs)."""
        raise NotImplementedError


class LocalHandle(Etcdctl):
    """The life of an etcd this package runs: :meth:`close` once for good, then refuse to
    start; :meth:`wipe` as stop, clear the data, start. A subclass sets ``_lock``,
    ``_closed`` and ``_tmp`` and provides ``start``, ``stop`` and ``_clear_all_data``.

    Example::

        >>> from genesis_registry.localetcd import EtcdServer
        >>> with EtcdServer() as etcd:      # __exit__ closes it
        ...     etcd.closed
        False
        >>> etcd.closed
        True
    """

    _lock: threading.RLock
    _closed: bool
    #: A temporary directory this handle made for its data, removed by :meth:`close`.
    _tmp: tempfile.TemporaryDirectory[str] | None

    def start(self, timeout: float = 30.0) -> LocalHandle:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran; it cannot start again.

        Example::

            >>> server.close()
            >>> server.closed
            True
        """
        return self._closed

    def close(self) -> None:
        """Stop etcd and remove the temporary dir if this owns one.

        Idempotent; it cannot be started again afterwards.

        Example::

            >>> server.close()
            >>> server.close()       # fine
            >>> server.start()
            Traceback (most recent call last):
            ...
            RuntimeError: EtcdServer is closed
        """
        with self._lock:
            if self._closed:
                return
            try:
                self.stop()
            finally:
                self._closed = True
                self._release()
                if self._tmp is not None:
                    self._tmp.cleanup()
                    self._tmp = None

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wipe(self, timeout: float) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} is closed")
            self.stop()
            self._clear_all_data()
            self.start(timeout)

    def _clear_all_data(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """What else :meth:`close` lets go of, after the stop (nothing by default)."""
