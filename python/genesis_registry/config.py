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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from .errors import InvalidConfigError

__all__ = ["Seconds", "TLSConfig", "EtcdConfig", "Config", "to_seconds"]

#: A duration: seconds as a number, or a timedelta.
Seconds = Union[float, int, datetime.timedelta]


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
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise error(f"{name} must be a finite, non-negative duration (got {value!r})")
    return seconds


def _read_file(what: str, path: str | os.PathLike[str] | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidConfigError(f"cannot read TLS {what} file {os.fspath(path)!r}: {e.strerror or e}") from e


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
        """The PEM contents of (CA, certificate, key)."""
        return (
            _read_file("CA", self.ca_file),
            _read_file("certificate", self.cert_file),
            _read_file("key", self.key_file),
        )


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach etcd.

    ``endpoints`` are ``host:port`` (``http://`` or ``https://`` prefixes accepted), one per
    cluster member; a single comma-separated string works too.

    >>> EtcdConfig(endpoints="10.0.0.1:2379,10.0.0.2:2379").endpoints
    ('10.0.0.1:2379', '10.0.0.2:2379')
    """

    endpoints: Sequence[str] = ("127.0.0.1:2379",)
    #: How long ``connect()`` may take to prove the cluster answers.
    dial_timeout: Seconds = 5.0
    #: Deadline of each call to etcd, retries on other members included.
    request_timeout: Seconds = 5.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TLSConfig | None = None

    def __post_init__(self) -> None:
        endpoints = self.endpoints
        if isinstance(endpoints, str):
            endpoints = [e for e in (part.strip() for part in endpoints.split(",")) if e]
        endpoints = tuple(endpoints)
        for endpoint in endpoints:
            if not isinstance(endpoint, str):
                raise InvalidConfigError(f"etcd endpoints must be str, not {type(endpoint).__name__} ({endpoint!r})")
        if not endpoints:
            raise InvalidConfigError("etcd endpoints must not be empty")
        object.__setattr__(self, "endpoints", endpoints)
        object.__setattr__(self, "dial_timeout", to_seconds("dial_timeout", self.dial_timeout))
        object.__setattr__(self, "request_timeout", to_seconds("request_timeout", self.request_timeout))
        if self.dial_timeout <= 0 or self.request_timeout <= 0:
            raise InvalidConfigError("dial_timeout and request_timeout must be positive")
        if (self.username is None) != (self.password is None):
            raise InvalidConfigError("username and password must be given together")
        if self.tls is not None and not isinstance(self.tls, TLSConfig):
            raise InvalidConfigError(f"tls must be a TLSConfig, not {type(self.tls).__name__}")


@dataclass(frozen=True)
class Config:
    """A registry's settings.

    >>> Config(namespace="/prod/services", default_ttl=15).default_ttl
    15.0
    """

    #: Key prefix of every service: instances live at ``<namespace>/<name>/<id>``.
    namespace: str = "/genesis/services"
    #: TTL of a registration when ``register()`` is given none (at least 1 second).
    default_ttl: Seconds = 30.0
    #: First delay before re-registering after a lost lease; grows with backoff.
    retry_interval: Seconds = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str):
            raise InvalidConfigError(f"namespace must be a str, not {type(self.namespace).__name__}")
        object.__setattr__(self, "default_ttl", to_seconds("default_ttl", self.default_ttl))
        object.__setattr__(self, "retry_interval", to_seconds("retry_interval", self.retry_interval))
