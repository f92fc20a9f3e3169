"""An etcd this package did not start: :class:`ExternalEtcd` (endpoints from the
environment, e.g. CI's) and :class:`ContainerEtcd` (Docker through testcontainers).

They look like an :class:`~genesis_registry.localetcd.server.EtcdServer` to a test, but
process-level actions raise :class:`~genesis_registry.localetcd.errors.NoLocalProcessError`
(the pytest plugin turns it into a skip).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from .binaries import find_etcdctl_binary
from .errors import EtcdctlError, EtcdNotFoundError, NoLocalProcessError
from .handle import Etcdctl
from .health import poll_until_healthy
from .server import DEFAULT_RAFT_ARGS, EtcdServer

__all__ = ["CONTAINER_IMAGE", "ENV_ENDPOINTS", "ContainerEtcd", "EtcdLike", "ExternalEtcd"]

#: The variable naming an external cluster, as comma-separated ``host:port``.
ENV_ENDPOINTS = "GENESIS_ETCD_ENDPOINTS"

#: Image used by the pytest fixture when no etcd binary exists but Docker does.
CONTAINER_IMAGE = "quay.io/coreos/etcd:v3.5.17"

_NO_LOCAL_PROCESS = "needs a local etcd process"


class ExternalEtcd(Etcdctl):
    """An etcd cluster this package did not start (e.g. from CI's environment).

    Same ``endpoints``, ``client_url`` and :meth:`etcdctl` as
    :class:`EtcdServer`; :meth:`stop`, :meth:`kill`, :meth:`restart` and
    :meth:`wipe` raise :class:`NoLocalProcessError` (a RuntimeError), which
    skips the calling test under the pytest plugin. :meth:`start` only waits
    for health.

    Example::

        >>> ext = ExternalEtcd([etcd_endpoint])      # e.g. ["10.0.0.5:2379", "10.0.0.6:2379"]
        >>> ext.etcdctl("endpoint", "health").returncode
        0
    """

    data_dir: pathlib.Path | None = None
    pid: int | None = None

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        etcdctl_binary: str | os.PathLike[str] | None = None,
    ) -> None:
        """Endpoints as ``host:port`` or URLs; see the class docstring.

        Example::

            >>> ext = ExternalEtcd(["https://etcd-0:2379", "etcd-1:2379"], etcdctl_binary="/usr/local/bin/etcdctl")
            >>> ext.endpoints, ext.client_urls
            (['etcd-0:2379', 'etcd-1:2379'], ['https://etcd-0:2379', 'http://etcd-1:2379'])
        """
        urls = []
        for raw in endpoints:
            item = raw.strip().rstrip("/")
            if not item:
                continue
            urls.append(item if "://" in item else "http://" + item)
        if not urls:
            raise ValueError("ExternalEtcd needs at least one endpoint")
        self.client_urls: list[str] = urls
        self.endpoints: list[str] = [u.split("://", 1)[1] for u in urls]
        self.client_url: str = urls[0]
        self._etcdctl_binary = pathlib.Path(etcdctl_binary) if etcdctl_binary is not None else None

    @classmethod
    def from_env(cls, var: str = ENV_ENDPOINTS) -> ExternalEtcd | None:
        """An ExternalEtcd from ``$var`` (comma-separated ``host:port``), or None.

        Example::

            >>> from unittest import mock
            >>> with mock.patch.dict(os.environ, {"GENESIS_ETCD_ENDPOINTS": "127.0.0.1:2379,127.0.0.1:22379"}):
            ...     ExternalEtcd.from_env()
            <ExternalEtcd http://127.0.0.1:2379,http://127.0.0.1:22379>
        """
        value = os.environ.get(var, "").strip()
        if not value:
            return None
        return cls(value.split(","))

    def is_running(self) -> bool:
        """Always True: this package does not manage the cluster.

        Example::

            >>> ExternalEtcd(["10.0.0.5:2379"]).is_running()
            True
        """
        return True

    def start(self, timeout: float = 30.0) -> ExternalEtcd:
        """Wait until the first endpoint reports healthy; raise RuntimeError if not.

        Example::

            >>> ExternalEtcd([etcd_endpoint]).start(timeout=10)
            <ExternalEtcd http://127.0.0.1:...>
        """
        if not poll_until_healthy(self.client_url, time.monotonic() + timeout):
            raise RuntimeError(f"external etcd at {self.client_url} is not healthy")
        return self

    def _etcdctl_target(self) -> tuple[pathlib.Path, str]:
        return self._etcdctl_binary or find_etcdctl_binary(), ",".join(self.client_urls)

    def stop(self, timeout: float = 10.0) -> None:
        """Refused (a skip under the pytest plugin): an external cluster cannot be stopped from here.

        Example::

            >>> ExternalEtcd([etcd_endpoint]).stop()      # under the plugin: the test is skipped
            Traceback (most recent call last):
            ...
            genesis_registry.localetcd.errors.NoLocalProcessError: needs a local etcd process
        """
        raise NoLocalProcessError(_NO_LOCAL_PROCESS)

    def kill(self) -> None:
        """Refused (a skip under the pytest plugin): an external cluster cannot be killed from here.

        Example::

            >>> try:
            ...     ExternalEtcd([etcd_endpoint]).kill()      # under the plugin: the test is skipped
            ... except RuntimeError as exc:                   # what a caller outside pytest catches
            ...     print(type(exc).__name__)
            NoLocalProcessError
        """
        raise NoLocalProcessError(_NO_LOCAL_PROCESS)

    def restart(self, timeout: float = 30.0) -> None:
        """Refused (a skip under the pytest plugin): an external cluster cannot be restarted from here.

        Example::

            >>> import contextlib
            >>> etcd = ExternalEtcd([etcd_endpoint])
            >>> with contextlib.suppress(NoLocalProcessError):   # under the plugin: the test is skipped
            ...     etcd.restart()
            >>> etcd.is_running()
            True
        """
        raise NoLocalProcessError(_NO_LOCAL_PROCESS)

    def wipe(self, timeout: float = 30.0) -> None:
        """Refused (a skip under the pytest plugin): an external cluster is never wiped from here.

        Example::

            >>> etcd = ExternalEtcd([etcd_endpoint])
            >>> etcd.etcdctl("put", "/docs/kept", "1").stdout
            b'OK\\n'
            >>> etcd.wipe()      # under the plugin: the test is skipped
            Traceback (most recent call last):
            ...
            genesis_registry.localetcd.errors.NoLocalProcessError: needs a local etcd process
            >>> etcd.etcdctl("del", "/docs/kept").stdout      # it was kept
            b'1\\n'
        """
        raise NoLocalProcessError(_NO_LOCAL_PROCESS)

    def close(self) -> None:
        """Nothing to release.

        Example::

            >>> ExternalEtcd([etcd_endpoint]).close()     # nothing to release
        """

    def __enter__(self) -> ExternalEtcd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {','.join(self.client_urls)}>"


class ContainerEtcd(ExternalEtcd):
    """etcd in a Docker container via testcontainers (fixture fallback only).

    NOTE: this path has never run on the development machine, which has no
    Docker engine; it is kept small on purpose. ``etcdctl`` uses a local
    etcdctl binary when there is one, else ``etcdctl`` inside the container
    (without stdin support).

    Example::

        etcd = ContainerEtcd.start_container()
        try:
            print(etcd.endpoints)
        finally:
            etcd.close()
    """

    def __init__(self, endpoint: str, container: Any) -> None:
        """Wrap a started container; use :meth:`start_container` instead.

        Example::

            etcd = ContainerEtcd.start_container()
        """
        super().__init__([endpoint])
        self._container = container

    @classmethod
    def start_container(cls, image: str = CONTAINER_IMAGE, timeout: float = 60.0) -> ContainerEtcd:
        """Start ``image`` and wait for health; raises if Docker is unavailable.

        Example::

            etcd = ContainerEtcd.start_container("quay.io/coreos/etcd:v3.5.17", timeout=120)
        """
        from testcontainers.core.container import (  # type: ignore[import-not-found, unused-ignore]
            DockerContainer,  # optional dependency
        )

        inner = "http://127.0.0.1"
        flags = [
            "etcd",
            "--name", "genesis-test",
            "--data-dir", "/etcd-data",
            "--listen-client-urls", "http://0.0.0.0:2379",
            "--advertise-client-urls", f"{inner}:2379",
            "--listen-peer-urls", f"{inner}:2380",
            "--initial-advertise-peer-urls", f"{inner}:2380",
            "--initial-cluster", f"genesis-test={inner}:2380",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
            "--logger", "zap",
            *DEFAULT_RAFT_ARGS,
        ]  # fmt: skip
        container = DockerContainer(image).with_exposed_ports(2379)
        container = container.with_command(" ".join(flags))
        container.start()
        try:
            host = container.get_container_host_ip()
            endpoint = f"{host}:{int(container.get_exposed_port(2379))}"
            server = cls(endpoint, container)
            server.start(timeout)
        except BaseException:
            container.stop()
            raise
        return server

    def _run_etcdctl(
        self, args: tuple[str, ...], input: bytes | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[bytes]:
        # A local etcdctl when there is one, else the one inside the container.
        try:
            return super()._run_etcdctl(args, input, check, timeout)
        except EtcdNotFoundError:
            pass
        if input is not None:
            raise NotImplementedError("stdin input needs a local etcdctl binary")
        cmd = ["etcdctl", "--endpoints=http://127.0.0.1:2379", *args]
        code, (out, err) = self._container.get_wrapped_container().exec_run(
            cmd, environment={"ETCDCTL_API": "3"}, demux=True
        )
        result = subprocess.CompletedProcess(cmd, code, out or b"", err or b"")
        if check and code != 0:
            raise EtcdctlError(code, cmd, output=result.stdout, stderr=result.stderr)
        return result

    def close(self) -> None:
        """Stop and remove the container. Idempotent.

        Example::

            etcd.close()
        """
        container, self._container = self._container, None
        if container is not None:
            container.stop()


#: Anything the ``etcd_server`` fixture may yield.
EtcdLike = EtcdServer | ExternalEtcd
