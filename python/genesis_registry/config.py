"""Configuration: :class:`EtcdConfig` for the connection, :class:`Config` for a registry.

Durations are seconds (``float``) or :class:`datetime.timedelta`, everywhere.

    >>> import genesis_registry as gr
    >>> gr.EtcdConfig(endpoints=["127.0.0.1:2379"], dial_timeout=2).dial_timeout
    2.0
    >>> gr.Config(default_ttl=datetime.timedelta(seconds=10)).default_ttl
    10.0
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _core
from .errors import InvalidConfigError, InvalidTTLError

__all__ = ["MAX_SECONDS", "Config", "EtcdConfig", "Seconds", "TLSConfig", "to_seconds"]

#: A duration: seconds as a number, or a timedelta.
Seconds = float | int | datetime.timedelta


#: The longest duration accepted anywhere (about 31 years): beyond it, nothing is meant.
MAX_SECONDS = 1e9


def to_seconds(name: str, value: Seconds, *, error: type[Exception] = InvalidConfigError) -> float:
    """``value`` in seconds as a float; raises ``error`` naming ``name`` for anything else.

    >>> to_seconds("ttl", datetime.timedelta(milliseconds=1500))
    1.5
    """
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise error(f"{name} must be seconds (a number) or a timedelta, not {type(value).__name__} ({value!r})")
    if math.isnan(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise error(f"{name} must be a duration between 0 and {MAX_SECONDS:g} seconds (got {value!r})")
    return seconds


def _positive_seconds(name: str, value: Seconds, minimum: float = 0.0) -> float:
    seconds = to_seconds(name, value)
    if seconds <= 0 or seconds < minimum:
        least = f"at least {minimum:g} second(s)" if minimum else "positive"
        raise InvalidConfigError(f"{name} must be {least} (got {value!r})")
    return seconds


def _read_pem(what: str, path: str | os.PathLike[str] | None, marker: bytes) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidConfigError(f"cannot read TLS {what} file {os.fspath(path)!r}: {e.strerror or e}") from e
    if b"-----BEGIN " not in data or marker not in data:
        raise InvalidConfigError(f"TLS {what} file {os.fspath(path)!r} is not a PEM file holding a {what}")
    return data


@dataclass(frozen=True)
class TLSConfig:
    """TLS to etcd: a CA to verify the server; a certificate and key to authenticate the client.

    >>> TLSConfig(ca_file="ca.pem", server_name="etcd.internal").server_name
    'etcd.internal'
    """

    ca_file: str | os.PathLike[str] | None = None
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    #: The name to verify the server's certificate against, when it is not the endpoint's host.
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidConfigError("TLSConfig needs cert_file and key_file together (client certificate auth)")

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The PEM contents of (CA, certificate, key); checks that each is PEM."""
        return (
            _read_pem("CA", self.ca_file, b"CERTIFICATE-----"),
            _read_pem("certificate", self.cert_file, b"CERTIFICATE-----"),
            _read_pem("key", self.key_file, b"PRIVATE KEY-----"),
        )


@dataclass(frozen=True, init=False)
class EtcdConfig:
    """How to reach etcd.

    ``endpoints`` are ``host:port`` (``http://`` or ``https://`` prefixes accepted), one per
    cluster member; a single comma-separated string works too.

    >>> EtcdConfig(endpoints="10.0.0.1:2379,10.0.0.2:2379").endpoints
    ('10.0.0.1:2379', '10.0.0.2:2379')
    """

    endpoints: tuple[str, ...]
    #: How long ``connect()`` may take to prove the cluster answers, in seconds.
    dial_timeout: float
    #: Deadline of each call to etcd, retries on other members included, in seconds.
    request_timeout: float
    username: str | None
    password: str | None = field(repr=False)
    tls: TLSConfig | None

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("127.0.0.1:2379",),
        dial_timeout: Seconds = 5.0,
        request_timeout: Seconds = 5.0,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in (part.strip() for part in endpoints.split(",")) if e]
        if not isinstance(endpoints, (list, tuple)):
            raise InvalidConfigError(f"endpoints must be a list of host:port strings, not {endpoints!r}")
        for endpoint in endpoints:
            if not isinstance(endpoint, str):
                raise InvalidConfigError(f"etcd endpoints must be str, not {type(endpoint).__name__} ({endpoint!r})")
        if not endpoints:
            raise InvalidConfigError("etcd endpoints must not be empty")
        if (username is None) != (password is None):
            raise InvalidConfigError("username and password must be given together")
        if tls is not None and not isinstance(tls, TLSConfig):
            raise InvalidConfigError(f"tls must be a TLSConfig, not {type(tls).__name__}")
        set_ = object.__setattr__
        set_(self, "endpoints", tuple(endpoints))
        set_(self, "dial_timeout", _positive_seconds("dial_timeout", dial_timeout))
        set_(self, "request_timeout", _positive_seconds("request_timeout", request_timeout))
        set_(self, "username", username)
        set_(self, "password", password)
        set_(self, "tls", tls)


@dataclass(frozen=True, init=False)
class Config:
    """A registry's settings.

    >>> Config(namespace="/prod/services", default_ttl=15).default_ttl
    15.0
    >>> Config(namespace="").namespace
    '/genesis/services'
    """

    #: Key prefix of every service: instances live at ``<namespace>/<name>/<id>``, built from
    #: this string exactly as the Go component builds them (a trailing ``/`` is kept, giving
    #: ``<namespace>//<name>/<id>``); an empty namespace means ``/genesis/services``.
    namespace: str
    #: TTL of a registration when ``register()`` is given none, in seconds (at least 1).
    default_ttl: float
    #: First delay before re-registering after a lost lease, in seconds; grows with backoff.
    retry_interval: float

    def __init__(
        self,
        namespace: str = "/genesis/services",
        default_ttl: Seconds = 30.0,
        retry_interval: Seconds = 1.0,
    ) -> None:
        if not isinstance(namespace, str):
            raise InvalidConfigError(f"namespace must be a str, not {type(namespace).__name__} ({namespace!r})")
        try:
            namespace.encode()
        except UnicodeEncodeError:
            raise InvalidConfigError(
                f"namespace must be valid Unicode text (got {namespace!r}, which holds a lone surrogate)"
            ) from None
        namespace = _core.effective_namespace(namespace)
        set_ = object.__setattr__
        set_(self, "namespace", namespace)
        set_(self, "default_ttl", _positive_seconds("default_ttl", default_ttl, minimum=1.0))
        set_(self, "retry_interval", _positive_seconds("retry_interval", retry_interval))

    def lease_seconds(self, ttl: Seconds | None = None) -> int:
        """The whole seconds of the lease etcd is asked for when a registry with this config
        registers with ``ttl`` (``default_ttl`` when None or 0), as the core computes it; no
        connection needed. Raises :class:`InvalidTTLError` naming a TTL below one second.

        >>> Config(default_ttl=10).lease_seconds(), Config().lease_seconds(2.5)
        (10, 3)
        """
        seconds = None if ttl is None else to_seconds("ttl", ttl, error=InvalidTTLError)
        return _core.lease_seconds(seconds, self.default_ttl)
