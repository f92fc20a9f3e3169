"""Targets: the ``etcd:///<service>`` form a channel is dialled with, and the gRPC target
of an instance endpoint.

The endpoint grammar is the core's (``_core.endpoint_target``): registration validates
endpoints with it, so an endpoint the balancer dials is one registration would accept,
and the two cannot disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .. import _core
from ..errors import InvalidConfigError
from ..model import ServiceInstance

__all__ = ["InstanceTargets", "endpoint_target", "instance_targets", "parse_target"]


def endpoint_target(endpoint: str) -> str | None:
    """The gRPC target of an instance endpoint, or None if it is not one.

    ``grpc://host:port`` and ``host:port`` (IPv6 as ``[::1]:port``, hostnames resolved
    by gRPC's DNS resolver) become ``host:port``; anything registration would refuse
    (another scheme, a path, user info, a bad port) is None.

    >>> endpoint_target("grpc://127.0.0.1:9001"), endpoint_target("http://h:1")
    ('127.0.0.1:9001', None)
    """
    return _core.endpoint_target(endpoint)


def instance_targets(instance: ServiceInstance) -> tuple[str, ...]:
    """The gRPC targets of an instance's usable endpoints, in its order, each once.

    >>> instance_targets(ServiceInstance(id="a", name="s",
    ...                  endpoints=["grpc://10.0.0.1:80", "http://h:1", "10.0.0.1:80", "[::1]:81"]))
    ('10.0.0.1:80', '[::1]:81')
    """
    return tuple(dict.fromkeys(t for t in map(endpoint_target, instance.endpoints) if t is not None))


def parse_target(target: str) -> str:
    """The service name in an ``etcd:///<service>`` (or ``etcd://<authority>/<service>``)
    target. Raises :class:`InvalidConfigError` (a ``ValueError``) naming the target.

    >>> parse_target("etcd:///user-service")
    'user-service'
    """
    if not isinstance(target, str) or not target.startswith("etcd://"):
        raise InvalidConfigError(f"gRPC target {target!r} is not of the form etcd:///<service>")
    rest = target[len("etcd://") :]
    _authority, slash, service = rest.partition("/")
    if not slash or not service or "/" in service or "?" in service or "#" in service:
        raise InvalidConfigError(f"gRPC target {target!r} is not of the form etcd:///<service>")
    return service


class InstanceTargets:
    """Reads the targets of a service's instances for one user of them (a balanced channel,
    a stream manager), warning once about each instance that has no usable endpoint, for
    as long as it stays so."""

    def __init__(self, service: str, logger: logging.Logger, consequence: str) -> None:
        self._service = service
        self._logger = logger
        #: What the user does about such an instance, for the warning ("skipping it").
        self._consequence = consequence
        self._warned: set[str] = set()

    def read(self, instances: Sequence[ServiceInstance]) -> list[tuple[ServiceInstance, tuple[str, ...]]]:
        """Each instance that has usable endpoints, with their targets (see
        :func:`instance_targets`), in the order given."""
        found = []
        for instance in instances:
            targets = instance_targets(instance)
            if targets:
                found.append((instance, targets))
            elif instance.id not in self._warned:
                self._warned.add(instance.id)
                self._logger.warning(
                    "instance %s of service %s has no usable gRPC endpoint %s; %s",
                    instance.id,
                    self._service,
                    list(instance.endpoints),
                    self._consequence,
                    extra={"service": self._service, "instance_id": instance.id},
                )
        self._warned &= {i.id for i in instances}
        return found
