"""The exceptions genesis_registry raises. All derive from :class:`RegistryError`.

Messages say what was wrong and with which value, e.g.::

    >>> import genesis_registry as gr
    >>> try:
    ...     gr.ServiceInstance(id="a/b", name="svc", endpoints=["grpc://h:1"]).validate()
    ... except gr.InvalidServiceInstanceError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    invalid service instance: id must not contain '/' ...
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "EtcdUnavailableError",
    "InvalidConfigError",
    "InvalidServiceInstanceError",
    "InvalidTTLError",
    "LeaseExpiredError",
    "RegistryClosedError",
    "RegistryError",
    "ServiceAlreadyRegisteredError",
    "ServiceNotFoundError",
]


class RegistryError(Exception):
    """Base class of every error raised by genesis_registry."""


class InvalidConfigError(RegistryError, ValueError):
    """A configuration value (endpoints, timeouts, namespace, TLS files) is unusable."""


class InvalidServiceInstanceError(RegistryError, ValueError):
    """A service instance is not valid for registration, or a stored value does not decode."""


class InvalidTTLError(RegistryError, ValueError):
    """A TTL below one second, negative, or not a duration."""


class ServiceAlreadyRegisteredError(RegistryError):
    """The instance id is already registered in this registry."""


class ServiceNotFoundError(RegistryError, LookupError):
    """The instance id is not registered in this registry."""


class RegistryClosedError(RegistryError):
    """The registry, watch or connector was closed (or belongs to the parent of a fork)."""


class LeaseExpiredError(RegistryError):
    """A lease the operation needed no longer exists."""


class EtcdUnavailableError(RegistryError):
    """etcd did not answer (or had no leader) within the deadline."""


class AuthenticationError(RegistryError):
    """etcd refused the credentials, or the user lacks a permission."""
