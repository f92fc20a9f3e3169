"""Targets: the ``etcd:///<service>`` form a channel is dialled with, and the gRPC target
of an instance endpoint.

The endpoint grammar is the core's (``_core.endpoint_target``): registration validates
endpoints with it, so an endpoint the balancer dials is one registration would accept,
and the two cannot disagree.
"""

from __future__ import annotations

from .. import _core
from ..errors import InvalidConfigError
from ..model import ServiceInstance

__all__ = ["endpoint_target", "instance_targets", "parse_target"]


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
