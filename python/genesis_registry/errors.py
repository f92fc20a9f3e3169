"""The exceptions genesis_registry raises. All derive from :class:`RegistryError`.

Messages say what was wrong and with which value, e.g.::

    >>> import genesis_registry as gr
    >>> try:
    ...     gr.ServiceInstance(id="a/b", name="svc", endpoints=["grpc://h:1"]).validate()
    ... except gr.InvalidServiceInstanceError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    invalid service instance: id must not contain '/' ...

An error that came from etcd with a gRPC status keeps its code in ``code`` (a
:class:`grpc.StatusCode`, e.g. ``PERMISSION_DENIED`` for a missing permission,
``UNAVAILABLE`` for a member without a leader); errors found here, such as a
validation error, have ``code`` None::

    >>> try:
    ...     gr.ServiceInstance(id="", name="svc", endpoints=["grpc://h:1"]).validate()
    ... except gr.RegistryError as e:
    ...     print(e.code)
    None
"""

from __future__ import annotations

import grpc

from . import _core

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

    code: grpc.StatusCode | None = None
    """The gRPC status code etcd answered with, when the error came from etcd with one."""


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


# The core raises these classes: each is handed over here by name, so a class renamed
# or removed above fails this import rather than the first raise.
_core._register_errors(
    registry_error=RegistryError,
    invalid_config=InvalidConfigError,
    invalid_instance=InvalidServiceInstanceError,
    invalid_ttl=InvalidTTLError,
    already_registered=ServiceAlreadyRegisteredError,
    not_found=ServiceNotFoundError,
    closed=RegistryClosedError,
    lease_expired=LeaseExpiredError,
    unavailable=EtcdUnavailableError,
    authentication=AuthenticationError,
    status_codes={code.value[0]: code for code in grpc.StatusCode},
)
