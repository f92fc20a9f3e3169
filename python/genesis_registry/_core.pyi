"""Typed stub of ``genesis_registry._core``, the Rust extension module (pyo3).

This file is the documented boundary between Rust and Python: every class, method,
getter and function the bindings in ``rust/py/*.rs`` define (registered in
``rust/lib.rs``), with the exact argument names, defaults and return types. Keep it in
step with the Rust code; ``make lint`` checks it (``python -m mypy.stubtest genesis_registry._core``).

Conventions of the bindings:

* Durations are ``float`` seconds here; ``timedelta`` is converted in the Python layer.
* Errors are the classes of ``genesis_registry.errors`` (``InvalidConfigError``,
  ``InvalidServiceInstanceError``, ``RegistryClosedError``...), handed to the core by
  ``_register_errors`` and raised from Rust; one etcd answered with a gRPC status carries
  it as ``code``.
* Blocking calls release the GIL and wake every 100 ms for signals (Ctrl-C).
* ``*_async`` methods return an awaitable (an ``asyncio.Future`` of the running loop)
  completed by the Rust runtime.
* Objects created before ``os.fork()`` raise ``RegistryClosedError`` in the child.
"""

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal, TypedDict, final

from grpc import StatusCode

from .errors import RegistryError

__all__ = [
    "EtcdConnectorCore",
    "RegistryCore",
    "ServiceInstance",
    "WatchCore",
    "__version__",
    "_register_errors",
    "_reset_after_fork",
    "_shutdown_runtime",
    "effective_namespace",
    "endpoint_target",
    "lease_seconds",
    "xds_server",
]

__version__: str
"""The version of the extension (the Rust crate's ``CARGO_PKG_VERSION``)."""

_EventKind = Literal["PUT", "DELETE"]
"""The kind of a watch event, as the core names it."""

_Event = tuple[_EventKind, "ServiceInstance"]
"""A watch event as the core hands it over: ``(kind, instance)``."""

_LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
"""The level of a log record from the core, named as in ``logging``."""

_LogRecord = tuple[_LogLevel, int, str, list[tuple[str, str]]]
"""A log record from the core: ``(level, origin, message, fields)``; ``origin`` is a
registry id (``RegistryCore.id``) or 0 for the connector itself."""

class _ServiceInstanceDict(TypedDict):
    """What ``ServiceInstance.to_dict()`` returns."""

    id: str
    name: str
    version: str
    metadata: dict[str, str]
    endpoints: list[str]

@final
class ServiceInstance:
    """One instance of a service: the value stored at ``<namespace>/<name>/<id>`` (immutable)."""

    def __new__(
        cls,
        id: str,
        name: str,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        endpoints: Iterable[str] | None = None,
    ) -> ServiceInstance:
        """Build an instance, checking only types (``TypeError``); ``validate()`` checks values."""

    @property
    def id(self) -> str:
        """Unique within the service; the last segment of the etcd key."""

    @property
    def name(self) -> str:
        """The service this instance belongs to; the middle segment of the etcd key."""

    @property
    def version(self) -> str:
        """Free-form version label (``""`` when not given)."""

    @property
    def metadata(self) -> MappingProxyType[str, str]:
        """Free-form labels as a read-only mapping of str to str, sorted by key."""

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Where the instance can be reached (``host:port`` or ``grpc://host:port``), as a tuple."""

    def to_json(self) -> bytes:
        """The value as stored in etcd: byte-identical to Go's ``json.Marshal``."""

    @classmethod
    def from_json(cls, data: str | bytes | bytearray | memoryview) -> ServiceInstance:
        """Decode a stored value as Go's ``json.Unmarshal`` would; raises ``InvalidServiceInstanceError``."""

    def validate(self) -> None:
        """Check the instance as ``register()`` does; raises ``InvalidServiceInstanceError`` naming the bad value."""

    def to_dict(self) -> _ServiceInstanceDict:
        """A plain dict (``metadata`` a dict, ``endpoints`` a list), e.g. for JSON output."""

    def replace(
        self,
        *,
        id: str | None = None,
        name: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        endpoints: Iterable[str] | None = None,
    ) -> ServiceInstance:
        """A copy with the given fields changed (``None`` keeps a field), like ``dataclasses.replace``."""

    def __repr__(self) -> str:
        """``ServiceInstance(id=..., name=..., version=..., metadata=..., endpoints=...)``."""

    def __eq__(self, value: object, /) -> bool:
        """Equal when every field is equal."""

    def __ne__(self, value: object, /) -> bool:
        """Not equal when any field differs."""

    def __lt__(self, value: ServiceInstance, /) -> bool:
        """Ordered by (id, name, version, metadata, endpoints)."""

    def __le__(self, value: ServiceInstance, /) -> bool:
        """Ordered by (id, name, version, metadata, endpoints)."""

    def __gt__(self, value: ServiceInstance, /) -> bool:
        """Ordered by (id, name, version, metadata, endpoints)."""

    def __ge__(self, value: ServiceInstance, /) -> bool:
        """Ordered by (id, name, version, metadata, endpoints)."""

    def __hash__(self) -> int:
        """A hash of every field, consistent with ``==``."""

    def __reduce__(
        self,
    ) -> tuple[type[ServiceInstance], tuple[str, str, str, dict[str, str], list[str]]]:
        """Pickle support: the class and its constructor arguments."""

    def __copy__(self) -> ServiceInstance:
        """The instance itself (it is immutable)."""

    def __deepcopy__(self, _memo: object) -> ServiceInstance:
        """The instance itself (it is immutable)."""

@final
class EtcdConnectorCore:
    """The connection to one etcd cluster, shared by the registries built on it."""

    def __new__(
        cls,
        endpoints: Sequence[str],
        dial_timeout: float,
        request_timeout: float,
        username: str | None = None,
        password: str | None = None,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls_server_name: str | None = None,
        tls: bool = False,
    ) -> EtcdConnectorCore:
        """Validate the settings (``InvalidConfigError``) without connecting; TLS files are PEM contents."""

    def connect(self) -> None:
        """Block until the cluster answers with a leader or ``dial_timeout`` passes."""

    def connect_async(self) -> Awaitable[None]:
        """``connect()`` as an awaitable."""

    def close(self) -> None:
        """End the connection and everything running on it; idempotent."""

    @property
    def endpoints(self) -> list[str]:
        """The cluster members, as ``host:port``."""

    @property
    def connected(self) -> bool:
        """Whether ``connect()`` succeeded and the connector is not closed."""

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""

    def drain_logs(self, timeout: float) -> list[_LogRecord] | None:
        """Wait up to ``timeout`` s for log records: a list (empty when idle), None once closed and drained."""

    def stats(self) -> dict[str, int]:
        """The watch hub's counters, by name."""

@final
class RegistryCore:
    """A registry (registrations with leases, cached discovery, watches) on a connector."""

    def __new__(
        cls,
        connector: EtcdConnectorCore,
        namespace: str,
        default_ttl: float,
        retry_interval: float,
    ) -> RegistryCore:
        """Build a registry borrowing ``connector``; raises ``InvalidConfigError`` for bad settings."""

    @property
    def id(self) -> int:
        """This registry's id: the ``origin`` of its log records."""

    @property
    def namespace(self) -> str:
        """The key prefix of every service."""

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""

    def key_of(self, name: str, id: str) -> str:
        """The etcd key of instance ``id`` of service ``name``."""

    def register(self, instance: ServiceInstance, ttl: float | None = None) -> None:
        """Register ``instance`` (validated) and keep it alive; ``ttl`` None means ``default_ttl``."""

    def register_async(self, instance: ServiceInstance, ttl: float | None = None) -> Awaitable[None]:
        """``register()`` as an awaitable."""

    def register_many(self, instances: list[ServiceInstance], ttl: float | None = None) -> None:
        """Register many instances with one TTL at once, all or nothing; blocks with the GIL released."""

    def register_many_async(self, instances: list[ServiceInstance], ttl: float | None = None) -> Awaitable[None]:
        """``register_many()`` as an awaitable."""

    def deregister(self, id: str) -> None:
        """Remove an instance this registry registered; raises ``ServiceNotFoundError`` otherwise."""

    def deregister_async(self, id: str) -> Awaitable[None]:
        """``deregister()`` as an awaitable."""

    def list_services(self) -> list[tuple[str, int]]:
        """Every service in the namespace with its instance count, sorted by name; blocks."""

    def list_services_async(self) -> Awaitable[list[tuple[str, int]]]:
        """``list_services()`` as an awaitable."""

    def lease_times(self, name: str) -> list[tuple[str, int, int | None, int | None]]:
        """Per instance of service ``name``: (id, lease, granted s, remaining s; None without a live lease)."""

    def lease_times_async(self, name: str) -> Awaitable[list[tuple[str, int, int | None, int | None]]]:
        """``lease_times()`` as an awaitable."""

    def remove(self, name: str, id: str) -> bool:
        """Delete any instance's key (deregister it if registered here); True if one was deleted."""

    def remove_async(self, name: str, id: str) -> Awaitable[bool]:
        """``remove()`` as an awaitable."""

    def service_stats(self) -> list[tuple[str, int, float, int, int]]:
        """Per watched service: (name, instances, age s, last event lag µs, max event lag µs)."""

    def registered_ids(self) -> list[str]:
        """The ids of the instances this registry keeps registered."""

    def get_service(self, name: str) -> tuple[ServiceInstance, ...]:
        """The service's instances sorted by id; the first call for a service blocks for its first read.
        ``Registry.get_service`` is this method itself (no Python frame in between)."""

    def cached_service(self, name: str) -> tuple[ServiceInstance, ...] | None:
        """The service's instances if it was read before, else None; never blocks."""

    def load_service_async(self, name: str) -> Awaitable[None]:
        """Awaitable done once the service's first snapshot is there (``cached_service`` then answers)."""

    def watch(self, name: str, capacity: int = 1024) -> WatchCore:
        """Subscribe to the service's events (a PUT per instance first); blocks for its first read."""

    def watch_async(self, name: str, capacity: int = 1024) -> Awaitable[WatchCore]:
        """``watch()`` as an awaitable."""

    def native_target(
        self,
        name: str,
        policy: str,
        hash_header: str | None = None,
        outlier_detection: _OutlierFields | None = None,
        zone: str | None = None,
    ) -> tuple[str, str]:
        """``(target, xds_server_address)`` of service ``name`` in native mode: reads the service
        first (blocks), starts the process's xDS server on first use. ``policy`` is one of
        ``round_robin``, ``pick_first``, ``ring_hash`` (which needs ``hash_header``). Raises
        ``InvalidConfigError`` naming a value grpc would refuse."""

    def native_target_async(
        self,
        name: str,
        policy: str,
        hash_header: str | None = None,
        outlier_detection: _OutlierFields | None = None,
        zone: str | None = None,
    ) -> Awaitable[tuple[str, str]]:
        """``native_target()`` as an awaitable."""

    def close(self) -> None:
        """Revoke this registry's leases and end its watches; idempotent."""

    def close_async(self) -> Awaitable[None]:
        """``close()`` as an awaitable."""

    def stats(self) -> dict[str, int]:
        """The registry's counters and gauges, by name."""

@final
class WatchCore:
    """One subscriber's events of one service; made by ``RegistryCore.watch()``, not constructible."""

    def next(self, timeout: float | None = None) -> _Event | None:
        """The next event, waiting up to ``timeout`` s (None: forever); None once closed; raises ``TimeoutError``."""

    def try_next(self) -> _Event | None:
        """The next event if one is queued, else None; never blocks."""

    def wait_async(self) -> Awaitable[None]:
        """Awaitable done when an event may be ready or the watch closed; take it with ``try_next()``."""

    def close(self) -> None:
        """End the watch (a blocked ``next()`` returns None); idempotent."""

    @property
    def closed(self) -> bool:
        """Whether the watch was closed (by itself, its registry or the connector)."""

    @property
    def overflows(self) -> int:
        """Times this watch fell behind and was resynced from the current snapshot."""

_EjectionFields = tuple[int, int, int, int]
_OutlierFields = tuple[float, float, float, int, _EjectionFields | None, _EjectionFields | None]
"""``(interval, base_ejection_time, max_ejection_time, max_ejection_percent, success_rate,
failure_percentage)``: seconds, then a percentage, then ``(stdev_factor or threshold,
enforcement_percentage, minimum_hosts, request_volume)`` per ejection method, or None."""

def xds_server() -> tuple[str, dict[str, int]] | None:
    """The process's xDS server (native mode): its ``host:port`` and counters (``xds_streams``,
    ``xds_requests``, ``xds_responses``, ``xds_acks``, ``xds_nacks``, ...), or None when none runs."""

def effective_namespace(namespace: str) -> str:
    """The namespace a registry configured with ``namespace`` builds keys from: the string as
    given (a trailing ``/`` kept, as Go keeps it), or ``"/genesis/services"`` when empty.
    Raises ``InvalidConfigError`` naming a namespace with control characters or ``.``/``..``
    segments."""

def lease_seconds(ttl: float | None, default_ttl: float) -> int:
    """The whole seconds of the lease etcd is asked for by a registration with ``ttl`` (None or
    0 meaning ``default_ttl``) under a registry whose default is ``default_ttl``: the effective
    TTL rounded up. Raises ``InvalidTTLError`` below one second; needs no connection."""

def endpoint_target(endpoint: str) -> str | None:
    """The gRPC target (``host:port``, IPv6 in brackets) of an instance endpoint such as
    ``grpc://10.0.0.1:9001``, or None when registration would refuse the endpoint."""

def _register_errors(
    *,
    registry_error: type[RegistryError],
    invalid_config: type[RegistryError],
    invalid_instance: type[RegistryError],
    invalid_ttl: type[RegistryError],
    already_registered: type[RegistryError],
    not_found: type[RegistryError],
    closed: type[RegistryError],
    lease_expired: type[RegistryError],
    unavailable: type[RegistryError],
    authentication: type[RegistryError],
    status_codes: dict[int, StatusCode],
) -> None:
    """Called once by ``genesis_registry.errors`` at import: the class the core raises for
    each kind of error (each must derive from ``registry_error``, else ``TypeError``), and
    the ``grpc.StatusCode`` of each status code number, for ``RegistryError.code``."""

def _reset_after_fork() -> None:
    """In a forked child: forget the parent's runtime; objects from before the fork stop working."""

def _shutdown_runtime(timeout: float) -> None:
    """At interpreter exit: stop the runtime's threads, waiting at most ``timeout`` s for tasks."""
