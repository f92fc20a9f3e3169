"""The registry: :class:`Registry` (blocking) and :class:`AsyncRegistry` (asyncio), and
their watches, :class:`Watch` and :class:`AsyncWatch`.

Both registries share their logic in :class:`_RegistryBase`; the Rust core does the work
(with the GIL released) and the twins differ only in how they wait for it. The service
followers live in :mod:`genesis_registry.follow`; they are named here too, for code that
imported them from this module.

    >>> import genesis_registry as gr
    >>> conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=[etcd_endpoint])); conn.connect()
    >>> reg = gr.Registry(conn, gr.Config(namespace="/example/services", default_ttl=30))
    >>> reg.register(gr.ServiceInstance(id="user-1", name="user-service",
    ...                                 endpoints=["grpc://127.0.0.1:9001"]))
    >>> [i.id for i in reg.get_service("user-service")]
    ['user-1']
    >>> reg.close(); conn.close()
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import grpc
import grpc.aio

from . import _core, _xds_bootstrap, lifecycle, native
from .balancer import AsyncBalancedChannel, BalancedChannel, ChannelStats
from .balancer.subsets import check_zone
from .config import Config, Seconds, to_seconds
from .connector import EtcdConnector
from .errors import InvalidConfigError, InvalidServiceInstanceError, InvalidTTLError, ServiceNotFoundError
from .follow import AsyncServiceFollower, ServiceFollower
from .model import LeaseTime, ServiceEvent, ServiceInstance, event_from_core
from .native import OutlierDetection
from .observability import RegistryMetrics

__all__ = ["AsyncRegistry", "AsyncServiceFollower", "AsyncWatch", "Registry", "ServiceFollower", "Watch"]

#: Events a watch queues before a slow reader is resynced from the snapshot instead.
DEFAULT_WATCH_BUFFER = 1024


class _RegistryBase:
    """What :class:`Registry` and :class:`AsyncRegistry` share: construction, argument
    checks, stats, metrics and logging."""

    def __init__(
        self,
        connector: EtcdConnector,
        config: Config | None = None,
        *,
        logger: logging.Logger | None = None,
        meter: Any | None = None,
    ) -> None:
        if not isinstance(connector, EtcdConnector):
            raise InvalidConfigError(f"connector must be an EtcdConnector, not {type(connector).__name__}")
        config = config if config is not None else Config()
        if not isinstance(config, Config):
            raise InvalidConfigError(f"config must be a Config, not {type(config).__name__}")
        self._connector = connector
        self._config = config
        self._core = _core.RegistryCore(connector.core, config.namespace, config.default_ttl, config.retry_interval)
        self._logger = logger if logger is not None else logging.getLogger("genesis_registry")
        connector.route_logs(self._core.id, self._logger)
        self._channels: weakref.WeakSet[BalancedChannel | AsyncBalancedChannel] = weakref.WeakSet()
        #: Native channels made by get_connection(), closed with the registry.
        self._native_channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self._calls_left_zone = 0
        self._calls_left_zone_lock = threading.Lock()
        self._metrics = (
            RegistryMetrics(
                meter, self.stats, self.service_stats, {"namespace": self._core.namespace}, self.channel_stats
            )
            if meter is not None
            else None
        )
        self._bind_fast_paths()
        lifecycle.track(self)

    def _bind_fast_paths(self) -> None:
        """Puts the core's own methods where a twin's hot path allows (none by default)."""

    @property
    def config(self) -> Config:
        return self._config

    @property
    def connector(self) -> EtcdConnector:
        """The connector this registry borrows (and never closes)."""
        return self._connector

    @property
    def logger(self) -> logging.Logger:
        """The logger this registry, and the channels, followers and stream managers built
        on it, report to."""
        return self._logger

    @property
    def namespace(self) -> str:
        """The namespace keys are built from (``<namespace>/<name>/<id>``), as configured;
        ``/genesis/services`` when configured empty."""
        return self._core.namespace

    @property
    def closed(self) -> bool:
        return self._core.closed

    def key_of(self, name: str, instance_id: str) -> str:
        """The etcd key of an instance: ``<namespace>/<name>/<id>``."""
        return self._core.key_of(name, instance_id)

    def registered_ids(self) -> list[str]:
        """Ids of the instances this registry keeps registered, sorted."""
        return self._core.registered_ids()

    def service_stats(self) -> dict[str, dict[str, float]]:
        """Per service this registry watches: ``instances``, ``age_s`` (time since etcd last
        confirmed the cached view current), ``event_lag_us`` and ``event_lag_max_us`` (how long
        the latest event, and the slowest one, waited between arriving and being read by a
        watch).

        >>> reg.register(instance)
        >>> len(reg.get_service("user-service"))  # the first lookup starts watching it
        1
        >>> reg.service_stats()["user-service"]["instances"]
        1
        """
        return {
            name: {"instances": n, "age_s": age, "event_lag_us": lag, "event_lag_max_us": lag_max}
            for name, n, age, lag, lag_max in self._core.service_stats()
        }

    def stats(self) -> dict[str, int]:
        """Counters and gauges as a plain dict (registrations, lease_failures, watch_events...).

        >>> reg.register(instance)
        >>> reg.stats()["registrations"]
        1
        """
        return {**self._core.stats(), "calls_left_zone": self._calls_left_zone, **native.xds_stats()}

    def channel_stats(self) -> list[ChannelStats]:
        """:class:`ChannelStats` of every balanced channel made here and still open, by service.

        >>> reg.register(instance)
        >>> with reg.get_connection("user-service", zone="zone-a"):
        ...     [(s.service, s.known, s.zone) for s in reg.channel_stats()]
        [('user-service', 1, 'zone-a')]
        """
        channels = [channel for channel in list(self._channels) if not channel.closed]
        return sorted((channel.stats() for channel in channels), key=lambda stats: stats.service)

    @staticmethod
    def _native_settings(
        policy: str, hash_header: str | None, outlier_detection: OutlierDetection | None, zone: str | None
    ) -> tuple[str, str | None, _core._OutlierFields | None, str | None]:
        """The arguments of ``RegistryCore.native_target`` after ``name``."""
        _xds_bootstrap.check_not_inherited()
        if not isinstance(policy, str):
            raise InvalidConfigError(f"policy must be a string (got {policy!r})")
        if hash_header is not None and not isinstance(hash_header, str):
            raise InvalidConfigError(f"hash_header must be a string (got {hash_header!r})")
        return policy, hash_header, native.outlier_fields(outlier_detection), check_zone(zone)

    def _count_left_zone(self) -> None:
        with self._calls_left_zone_lock:
            self._calls_left_zone += 1

    @staticmethod
    def _instance(instance: ServiceInstance) -> ServiceInstance:
        if not isinstance(instance, ServiceInstance):
            raise InvalidServiceInstanceError(
                f"register() takes a ServiceInstance, not {type(instance).__name__} ({instance!r})"
            )
        return instance

    @classmethod
    def _instances(cls, instances: Iterable[ServiceInstance]) -> list[ServiceInstance]:
        if isinstance(instances, ServiceInstance):
            raise InvalidServiceInstanceError("register_many() takes a list of ServiceInstance; use register() for one")
        return [cls._instance(i) for i in instances]

    @staticmethod
    def _lease_times(rows: list[tuple[str, int, int | None, int | None]]) -> dict[str, LeaseTime]:
        return {id: LeaseTime(lease, granted, left) for id, lease, granted, left in rows}

    @staticmethod
    def _ttl(ttl: Seconds | None) -> float | None:
        return None if ttl is None else to_seconds("ttl", ttl, error=InvalidTTLError)

    def lease_seconds(self, ttl: Seconds | None = None) -> int:
        """The whole seconds of the lease a registration with ``ttl`` (``config.default_ttl``
        when None) gets, as the core computes it: what ``register(..., ttl=ttl)`` asks etcd
        for. Raises :class:`InvalidTTLError` for a TTL registration would refuse.

        >>> reg.lease_seconds(2.5), reg.lease_seconds(10)  # etcd leases are whole seconds
        (3, 10)
        >>> reg.lease_seconds(0.5)
        Traceback (most recent call last):
        ...
        genesis_registry.errors.InvalidTTLError: TTL must be at least 1 second (got 0.500s)
        """
        return self._config.lease_seconds(ttl)

    def _removed(self, service: str, instance_id: str, deleted: bool) -> None:
        """What ``deregister(instance_id, service=service)`` makes of the core's answer."""
        if not deleted:
            raise ServiceNotFoundError(
                f"no instance {instance_id!r} of service {service!r} at {self.key_of(service, instance_id)}"
            )

    @staticmethod
    def _buffer(buffer: int) -> int:
        if not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 1:
            raise InvalidConfigError(f"buffer must be a positive int (got {buffer!r})")
        return buffer

    def _close_at_exit(self) -> None:
        self._core.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.registered_ids())} registered"
        return f"{type(self).__name__}(namespace={self.namespace!r}, {state})"


class Registry(_RegistryBase):
    """Register, deregister, discover and watch services (blocking calls; the GIL is
    released while they wait).

    Instances with the same TTL share one lease and one keep-alive. A lost lease is
    replaced and every instance on it registered again, for as long as the registry
    lives. Discovery answers from a cache that etcd watches keep current.

    ``get_service`` is the core's own method, set on each registry (no Python frame in a
    lookup): to replace it in a test, patch the registry (``mock.patch.object(reg,
    "get_service")``), not the class.

    >>> reg.register(gr.ServiceInstance(id="user-2", name="user-service",
    ...                                 endpoints=["grpc://10.0.0.2:9000"]), ttl=10)
    >>> with gr.Registry(conn, reg.config) as elsewhere:  # another process, say
    ...     [i.id for i in elsewhere.get_service("user-service")]
    ['user-2']
    """

    def _bind_fast_paths(self) -> None:
        # get_service is the hot path of discovery: the instance attribute (which wins over
        # the method below) is the core's own method, so a call runs no Python frame at all.
        # The method stays as the documented signature and for Registry.get_service(reg, name),
        # and a subclass that overrides it keeps its override.
        if type(self).get_service is Registry.get_service:
            vars(self)["get_service"] = self._core.get_service

    def register(self, instance: ServiceInstance, ttl: Seconds | None = None) -> None:
        """Register ``instance`` and keep it alive until :meth:`deregister` or :meth:`close`.

        ``ttl`` (seconds or timedelta, at least 1 s) defaults to ``config.default_ttl``.

        >>> reg.register(gr.ServiceInstance(id="user-1", name="user-service",
        ...              endpoints=["grpc://127.0.0.1:9001"]), ttl=30)
        """
        self._core.register(self._instance(instance), self._ttl(ttl))

    def list_services(self) -> dict[str, int]:
        """Every service in the namespace with its number of instances, sorted by name.

        >>> reg.register_many(gr.ServiceInstance(id=f"{name}-{i}", name=name, endpoints=[f"grpc://10.0.0.{i}:9000"])
        ...                   for name, count in [("user-service", 3), ("order-service", 2)] for i in range(count))
        >>> reg.list_services()
        {'order-service': 2, 'user-service': 3}
        """
        return dict(self._core.list_services())

    def lease_times(self, name: str) -> dict[str, LeaseTime]:
        """Per instance of service ``name`` (whoever registered it), the lease behind its key
        and the seconds etcd gives it left, by id. Read from etcd on every call (a lookup
        per distinct lease), for operators' views; discovery never needs it.

        >>> reg.register(instance, ttl=30)
        >>> times = reg.lease_times("user-service")
        >>> times["user-1"].granted_ttl, 25 <= times["user-1"].ttl_left <= 30
        (30, True)
        """
        return self._lease_times(self._core.lease_times(name))

    def register_many(self, instances: Iterable[ServiceInstance], ttl: Seconds | None = None) -> None:
        """Register many instances with one TTL at once (a transaction per 100 of them),
        all or nothing: every instance is checked first, and if writing fails none stays
        registered. Much faster than a ``register()`` per instance.

        >>> reg.register_many([gr.ServiceInstance(id=f"w-{i}", name="worker",
        ...                    endpoints=[f"grpc://10.0.0.{i}:9000"]) for i in range(100)])
        >>> len(reg.get_service("worker"))
        100
        """
        self._core.register_many(self._instances(instances), self._ttl(ttl))

    def deregister(self, instance_id: str, *, service: str | None = None) -> None:
        """Remove an instance.

        Without ``service``: an instance this registry registered. Raises
        :class:`ServiceNotFoundError` for ids it does not know; succeeds if the key already
        expired.

        With ``service``: that instance of that service, registered here or elsewhere (an
        operator's tool, what the CLI's ``deregister NAME ID`` does: a live owner elsewhere
        writes its key back within its TTL). An instance this registry registered is
        deregistered. Raises :class:`ServiceNotFoundError` if etcd held no such key.

        >>> reg.register(instance)
        >>> reg.deregister("user-1")
        >>> with gr.Registry(conn, reg.config) as elsewhere:
        ...     elsewhere.register(gr.ServiceInstance(id="stale-1", name="user-service",
        ...                                           endpoints=["grpc://10.0.0.9:9000"]))
        ...     reg.deregister("stale-1", service="user-service")
        >>> reg.get_service("user-service")
        ()
        >>> reg.deregister("stale-1", service="user-service")
        Traceback (most recent call last):
        ...
        genesis_registry.errors.ServiceNotFoundError: ...
        """
        if service is None:
            self._core.deregister(instance_id)
        else:
            self._removed(service, instance_id, self._core.remove(service, instance_id))

    def remove(self, name: str, instance_id: str) -> bool:
        """``deregister(instance_id, service=name)``, answering False instead of raising when
        etcd held no such key (True when a key was deleted). Kept for code written before
        ``deregister`` took ``service``.

        >>> with gr.Registry(conn, reg.config) as elsewhere:
        ...     elsewhere.register(gr.ServiceInstance(id="stale-1", name="user-service",
        ...                                           endpoints=["grpc://10.0.0.9:9000"]))
        ...     reg.remove("user-service", "stale-1")
        True
        >>> reg.remove("user-service", "stale-1")
        False
        """
        return self._core.remove(name, instance_id)

    def get_service(self, name: str) -> tuple[ServiceInstance, ...]:
        """The instances of service ``name``, sorted by id.

        The first call for a service reads it from etcd and starts watching it; later
        calls answer from memory in constant time. While etcd is unreachable the last
        known instances are returned.

        >>> reg.register(instance)
        >>> [i.id for i in reg.get_service("user-service")]
        ['user-1']
        """
        return self._core.get_service(name)

    def watch(self, name: str, *, buffer: int = DEFAULT_WATCH_BUFFER) -> Watch:
        """Events of service ``name``: first a PUT per instance (sorted by id), then
        every change. Iterate it; close it (or the registry) to stop.

        >>> reg.register(instance)
        >>> with reg.watch("user-service") as events:
        ...     for event in events:
        ...         print(event.type, event.service.id)
        ...         break
        PUT user-1
        """
        return Watch(self._core.watch(name, self._buffer(buffer)), name)

    def native_target(
        self,
        name: str,
        *,
        policy: str = "round_robin",
        hash_header: str | None = None,
        outlier_detection: OutlierDetection | None = None,
        zone: str | None = None,
    ) -> str:
        """The ``xds:`` target through which grpcio's own resolver and balancer follow service
        ``name`` (native mode), for code that builds its own channels; grpc's bootstrap is
        set up so that it resolves. Settings as for ``get_connection(mode="native")``.

        >>> reg.register(instance)
        >>> target = reg.native_target("user-service")
        >>> target.startswith("xds://genesis-registry/")
        True
        >>> with grpc.insecure_channel(target) as channel:
        ...     pb.UserServiceStub(channel).GetUser(request)
        b'user-1|123'
        """
        settings = self._native_settings(policy, hash_header, outlier_detection, zone)
        target, server = self._core.native_target(name, *settings)
        _xds_bootstrap.install(server)
        return target

    @overload
    def get_connection(
        self,
        name: str,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        policy: str = "round_robin",
        *,
        mode: Literal["balanced"] = "balanced",
        subset_size: int | None = None,
        subset_key: str | bytes | int | None = None,
        zone: str | None = None,
    ) -> BalancedChannel: ...

    @overload
    def get_connection(
        self,
        name: str,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        policy: str = "round_robin",
        *,
        mode: Literal["native"],
        hash_header: str | None = None,
        outlier_detection: OutlierDetection | None = None,
        zone: str | None = None,
    ) -> grpc.Channel: ...

    def get_connection(
        self,
        name: str,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        policy: str = "round_robin",
        *,
        mode: str = "balanced",
        subset_size: int | None = None,
        subset_key: str | bytes | int | None = None,
        zone: str | None = None,
        hash_header: str | None = None,
        outlier_detection: OutlierDetection | None = None,
    ) -> BalancedChannel | grpc.Channel:
        """A ``grpc.Channel`` balanced per call over the live instances of service ``name``
        (insecure when ``credentials`` is None). Stubs built on it once stay balanced as
        instances come and go. Close it when done (closing the registry closes it too in
        native mode).

        At mesh scale: ``subset_size=N`` connects to at most N endpoints, chosen by
        rendezvous hashing on ``subset_key`` (default: host name and process id), so that
        clients spread evenly over the instances and keep their choice as instances come
        and go; ``zone="..."`` sends calls to the instances whose ``zone`` metadata matches
        while one is READY, to the others otherwise (and takes the subset within the zone
        first). See ``genesis_registry.balancer.subsets``.

        ``mode="native"`` returns grpcio's own channel on an ``xds:`` target instead: grpc's
        C core resolves and balances from the core's snapshots with no Python per call
        (:mod:`genesis_registry.native`). Policies ``round_robin``, ``pick_first`` and
        ``ring_hash`` (affinity on the request header ``hash_header``), optional
        ``outlier_detection``, and ``zone`` as EDS priorities.

        >>> reg.register(instance)
        >>> channel = reg.get_connection("user-service")
        >>> pb.UserServiceStub(channel).GetUser(pb.GetUserRequest(id="123"))
        b'user-1|123'
        >>> channel.close()
        >>> channel = reg.get_connection("user-service", mode="native")
        >>> pb.UserServiceStub(channel).GetUser(pb.GetUserRequest(id="123"))
        b'user-1|123'
        >>> channel.close()
        """
        if native.check_mode(mode) == "native":
            native.refuse_settings_of("balanced", subset_size=subset_size, subset_key=subset_key)
            target = self.native_target(
                name, policy=policy, hash_header=hash_header, outlier_detection=outlier_detection, zone=zone
            )
            opened = native.open_channel(target, credentials, options)
            self._native_channels.add(opened)
            return opened
        native.refuse_settings_of("native", hash_header=hash_header, outlier_detection=outlier_detection)
        channel = BalancedChannel(
            self,
            name,
            credentials=credentials,
            options=options,
            policy=policy,
            subset_size=subset_size,
            subset_key=subset_key,
            zone=zone,
            on_left_zone=self._count_left_zone,
        )
        self._channels.add(channel)
        return channel

    def close(self) -> None:
        """Revoke every lease (instances disappear at once) and end every watch.
        Idempotent; later calls on the registry raise :class:`RegistryClosedError`.
        Native channels made by :meth:`get_connection` are closed."""
        for channel in list(self._native_channels):
            channel.close()
        self._native_channels.clear()
        self._core.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRegistry(_RegistryBase):
    """:class:`Registry` for asyncio: the same methods, as coroutines.

    >>> async with gr.AsyncRegistry(conn, reg.config) as areg:
    ...     await areg.register(instance)
    ...     async with areg.watch("user-service") as events:
    ...         async for event in events:
    ...             print(event.type, event.service.id)
    ...             break
    PUT user-1
    """

    async def register(self, instance: ServiceInstance, ttl: Seconds | None = None) -> None:
        """See :meth:`Registry.register`."""
        await self._core.register_async(self._instance(instance), self._ttl(ttl))

    async def list_services(self) -> dict[str, int]:
        """See :meth:`Registry.list_services`."""
        return dict(await self._core.list_services_async())

    async def lease_times(self, name: str) -> dict[str, LeaseTime]:
        """See :meth:`Registry.lease_times`."""
        return self._lease_times(await self._core.lease_times_async(name))

    async def register_many(self, instances: Iterable[ServiceInstance], ttl: Seconds | None = None) -> None:
        """See :meth:`Registry.register_many`."""
        await self._core.register_many_async(self._instances(instances), self._ttl(ttl))

    async def deregister(self, instance_id: str, *, service: str | None = None) -> None:
        """See :meth:`Registry.deregister`."""
        if service is None:
            await self._core.deregister_async(instance_id)
        else:
            self._removed(service, instance_id, await self._core.remove_async(service, instance_id))

    async def remove(self, name: str, instance_id: str) -> bool:
        """See :meth:`Registry.remove`."""
        return await self._core.remove_async(name, instance_id)

    async def get_service(self, name: str) -> tuple[ServiceInstance, ...]:
        """See :meth:`Registry.get_service`."""
        instances = self._core.cached_service(name)
        while instances is None:
            await self._core.load_service_async(name)
            instances = self._core.cached_service(name)
        return instances

    def watch(self, name: str, *, buffer: int = DEFAULT_WATCH_BUFFER) -> AsyncWatch:
        """Events of service ``name`` as an async iterator (see :meth:`Registry.watch`).

        >>> await areg.register(instance)
        >>> async with areg.watch("user-service") as events:
        ...     async for event in events:
        ...         print(event.type, event.service.id)
        ...         break
        PUT user-1
        """
        return AsyncWatch(self._core, name, self._buffer(buffer))

    async def native_target(
        self,
        name: str,
        *,
        policy: str = "round_robin",
        hash_header: str | None = None,
        outlier_detection: OutlierDetection | None = None,
        zone: str | None = None,
    ) -> str:
        """See :meth:`Registry.native_target`.

        >>> await areg.register(instance)
        >>> (await areg.native_target("user-service")).startswith("xds://genesis-registry/")
        True
        """
        settings = self._native_settings(policy, hash_header, outlier_detection, zone)
        target, server = await self._core.native_target_async(name, *settings)
        _xds_bootstrap.install(server)
        return target

    @overload
    async def get_connection(
        self,
        name: str,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        policy: str = "round_robin",
        interceptors: Sequence[Any] | None = None,
        *,
        mode: Literal["balanced"] = "balanced",
        subset_size: int | None = None,
        subset_key: str | bytes | int | None = None,
        zone: str | None = None,
    ) -> AsyncBalancedChannel: ...

    @overload
    async def get_connection(
        self,
        name: str,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        policy: str = "round_robin",
        interceptors: Sequence[Any] | None = None,
        *,
        mode: Literal["native"],
        hash_header: str | None = None,
        outlier_detection: OutlierDetection | None = None,
        zone: str | None = None,
    ) -> grpc.aio.Channel: ...

    async def get_connection(
        self,
        name: str,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        policy: str = "round_robin",
        interceptors: Sequence[Any] | None = None,
        *,
        mode: str = "balanced",
        subset_size: int | None = None,
        subset_key: str | bytes | int | None = None,
        zone: str | None = None,
        hash_header: str | None = None,
        outlier_detection: OutlierDetection | None = None,
    ) -> AsyncBalancedChannel | grpc.aio.Channel:
        """A ``grpc.aio.Channel`` balanced per call over the live instances of service
        ``name``; ``interceptors`` are aio client interceptors (see :meth:`Registry.get_connection`,
        also for ``subset_size``, ``subset_key``, ``zone`` and ``mode="native"``).

        >>> await areg.register(instance)
        >>> channel = await areg.get_connection("user-service")
        >>> await pb.UserServiceStub(channel).GetUser(request)
        b'user-1|123'
        >>> await channel.close()
        >>> channel = await areg.get_connection("user-service", mode="native")
        >>> await pb.UserServiceStub(channel).GetUser(request)
        b'user-1|123'
        >>> await channel.close()
        """
        if native.check_mode(mode) == "native":
            native.refuse_settings_of("balanced", subset_size=subset_size, subset_key=subset_key)
            target = await self.native_target(
                name, policy=policy, hash_header=hash_header, outlier_detection=outlier_detection, zone=zone
            )
            opened = native.open_aio_channel(target, credentials, options, interceptors)
            self._native_channels.add(opened)
            return opened
        native.refuse_settings_of("native", hash_header=hash_header, outlier_detection=outlier_detection)
        channel = AsyncBalancedChannel(
            self,
            name,
            credentials=credentials,
            options=options,
            policy=policy,
            interceptors=interceptors,
            subset_size=subset_size,
            subset_key=subset_key,
            zone=zone,
            on_left_zone=self._count_left_zone,
        )
        self._channels.add(channel)
        return await channel.start()

    async def close(self) -> None:
        """See :meth:`Registry.close`."""
        channels = list(self._native_channels)
        self._native_channels.clear()
        for channel in channels:
            await channel.close()
        await self._core.close_async()

    async def __aenter__(self) -> AsyncRegistry:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class Watch:
    """A blocking iterator of :class:`ServiceEvent`. Ends when closed (here, by the
    registry, or from another thread).

    >>> reg.register(instance)
    >>> watch = reg.watch("user-service")
    >>> next(watch)
    ServiceEvent(type=<EventType.PUT: 'PUT'>, service=...)
    >>> watch.close()
    >>> list(watch)
    []
    """

    def __init__(self, core: _core.WatchCore, name: str) -> None:
        self._core = core
        self.service_name = name

    def __iter__(self) -> Iterator[ServiceEvent]:
        return self

    def __next__(self) -> ServiceEvent:
        event = self._core.next(None)
        if event is None:
            raise StopIteration
        return event_from_core(*event)

    def get(self, timeout: Seconds | None = None) -> ServiceEvent | None:
        """The next event, waiting up to ``timeout`` (forever if None); None once closed.
        Raises :class:`TimeoutError` when the time runs out."""
        seconds = None if timeout is None else to_seconds("timeout", timeout)
        event = self._core.next(seconds)
        return None if event is None else event_from_core(*event)

    def get_nowait(self) -> ServiceEvent | None:
        """The next queued event, or None if there is none right now."""
        event = self._core.try_next()
        return None if event is None else event_from_core(*event)

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def overflows(self) -> int:
        """Times this watch fell behind and was resynced from the current snapshot."""
        return self._core.overflows

    def close(self) -> None:
        """Stop the watch; a thread blocked on it wakes up. Idempotent."""
        self._core.close()

    def __del__(self) -> None:
        # A watch left behind (a loop exited with break) must stop receiving events.
        self._core.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncWatch:
    """An async iterator of :class:`ServiceEvent`; subscribes on first use.

    >>> events = areg.watch("user-service")
    >>> await areg.register(instance)
    >>> async for event in events:  # subscribes now: the instance is already there
    ...     print(event.type, event.service.id)
    ...     break
    PUT user-1
    >>> events.close()
    """

    def __init__(self, registry: _core.RegistryCore, name: str, buffer: int) -> None:
        self._registry = registry
        self._buffer = buffer
        self._core: _core.WatchCore | None = None
        self._closed = False
        self.service_name = name

    async def _subscribed(self) -> _core.WatchCore:
        if self._core is None:
            self._core = await self._registry.watch_async(self.service_name, self._buffer)
            if self._closed:
                self._core.close()
        return self._core

    def __aiter__(self) -> AsyncIterator[ServiceEvent]:
        return self

    async def _next(self) -> ServiceEvent | None:
        core = await self._subscribed()
        while True:
            # Taken synchronously: the awaited part only waits, so a timeout or a
            # cancellation never loses an event.
            event = core.try_next()
            if event is not None:
                return event_from_core(*event)
            if core.closed or self._closed:
                return None
            await core.wait_async()

    async def __anext__(self) -> ServiceEvent:
        event = None if self._closed else await self._next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def get(self, timeout: Seconds | None = None) -> ServiceEvent | None:
        """The next event, waiting up to ``timeout``; None once closed. Raises
        :class:`TimeoutError` when the time runs out."""
        seconds = None if timeout is None else to_seconds("timeout", timeout)
        try:
            return await asyncio.wait_for(self._next(), seconds)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"no event within {seconds:.3f}s") from None

    def get_nowait(self) -> ServiceEvent | None:
        """The next queued event, or None if there is none right now (or not subscribed yet)."""
        event = None if self._core is None else self._core.try_next()
        return None if event is None else event_from_core(*event)

    @property
    def closed(self) -> bool:
        return self._closed or (self._core is not None and self._core.closed)

    @property
    def overflows(self) -> int:
        return 0 if self._core is None else self._core.overflows

    def close(self) -> None:
        """Stop the watch; a pending ``__anext__`` ends the iteration. Idempotent."""
        self._closed = True
        if self._core is not None:
            self._core.close()

    def __del__(self) -> None:
        # `async for ... break` leaves the watch unclosed; the awaitable that delivered it
        # may outlive it inside asyncio, so close it here rather than on the core's drop.
        self.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncWatch:
        await self._subscribed()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
