"""Service followers: the resolver side of the gRPC layer (snapshots in, changes out).

A follower turns a registry's watch of one service into calls of ``on_change(instances)``
with the service's whole current snapshot, now and after every change, as grpc-go's
resolvers push addresses to a balancer. The balanced channels and the stream managers are
built on followers and know nothing else of the registry: what they need from one is the
small protocol below (:class:`Followable`, :class:`AsyncFollowable`), which
:class:`~genesis_registry.Registry` and :class:`~genesis_registry.AsyncRegistry` meet.
So the registry depends on the balancer, the balancer on this module, never back.

    >>> import queue
    >>> snapshots = queue.Queue()
    >>> reg.register(instance)
    >>> follower = ServiceFollower(reg, "user-service", snapshots.put)
    >>> [i.id for i in snapshots.get_nowait()]  # the first snapshot is handed on at once
    ['user-1']
    >>> follower.close()
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from .errors import RegistryClosedError
from .model import ServiceInstance

__all__ = ["AsyncFollowable", "AsyncServiceFollower", "Followable", "ServiceFollower"]

#: What a follower hands on: a service's instances, sorted by id.
OnChange = Callable[[tuple[ServiceInstance, ...]], None]


class _Events(Protocol):
    """A blocking watch of a service (what :class:`~genesis_registry.Watch` offers)."""

    def get(self) -> object | None: ...
    def get_nowait(self) -> object | None: ...
    def close(self) -> None: ...


class _AsyncEvents(Protocol):
    """An asyncio watch of a service (what :class:`~genesis_registry.AsyncWatch` offers)."""

    async def __aenter__(self) -> Any: ...
    def __aiter__(self) -> AsyncIterator[Any]: ...
    def get_nowait(self) -> object | None: ...
    def close(self) -> None: ...


class Followable(Protocol):
    """What following a service needs of a registry: its snapshot, a watch of its changes,
    and the logger a failing callback is reported to. :class:`~genesis_registry.Registry`
    is one."""

    @property
    def logger(self) -> logging.Logger: ...
    def watch(self, name: str) -> _Events: ...
    def get_service(self, name: str) -> tuple[ServiceInstance, ...]: ...


class AsyncFollowable(Protocol):
    """:class:`Followable` for asyncio; :class:`~genesis_registry.AsyncRegistry` is one."""

    @property
    def logger(self) -> logging.Logger: ...
    def watch(self, name: str) -> _AsyncEvents: ...
    async def get_service(self, name: str) -> tuple[ServiceInstance, ...]: ...


def _deliver(registry: Followable | AsyncFollowable, name: str, on_change: OnChange, instances: Any) -> None:
    try:
        on_change(instances)
    except Exception:  # one bad update must not end the following
        registry.logger.exception("handling a change of service %s failed", name)


class ServiceFollower:
    """Calls ``on_change(instances)`` with a service's instances now and after every
    change, from a daemon thread, until closed (or the registry closes). The balanced
    channels and the StreamManager are built on it.

    >>> import queue
    >>> snapshots = queue.Queue()
    >>> reg.register(instance)
    >>> follower = ServiceFollower(reg, "user-service", snapshots.put)
    >>> reg.deregister("user-1")
    >>> while snapshots.get(timeout=10):  # whole snapshots, maybe repeated, until one is empty
    ...     pass
    >>> follower.close()
    """

    def __init__(self, registry: Followable, name: str, on_change: OnChange) -> None:
        self._registry = registry
        self._name = name
        self._on_change = on_change
        self._watch = registry.watch(name)
        self._closed = False
        _deliver(registry, name, on_change, registry.get_service(name))
        self._thread = threading.Thread(target=self._run, name=f"genesis-follow-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Events only say "something changed"; the snapshot says what is there now.
        while self._watch.get() is not None:
            while self._watch.get_nowait() is not None:
                pass
            if self._closed:
                return
            try:
                instances = self._registry.get_service(self._name)
            except RegistryClosedError:
                return
            _deliver(self._registry, self._name, self._on_change, instances)

    def close(self) -> None:
        """Stops following; returns once no callback runs any more. Idempotent."""
        self._closed = True
        self._watch.close()
        if self._thread is not threading.current_thread():
            self._thread.join()


class AsyncServiceFollower:
    """:class:`ServiceFollower` for asyncio: ``on_change`` runs in a task on the loop.

    >>> snapshots = asyncio.Queue()
    >>> await areg.register(instance)
    >>> follower = await AsyncServiceFollower(areg, "user-service", snapshots.put_nowait).start()
    >>> [i.id for i in snapshots.get_nowait()]  # start() hands on the first snapshot
    ['user-1']
    >>> await areg.deregister("user-1")
    >>> while await asyncio.wait_for(snapshots.get(), 10):  # until a snapshot is empty
    ...     pass
    >>> await follower.close()
    """

    def __init__(self, registry: AsyncFollowable, name: str, on_change: OnChange) -> None:
        self._registry = registry
        self._name = name
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._watch = registry.watch(name)

    async def start(self) -> AsyncServiceFollower:
        """Delivers the current snapshot, then follows the changes in a task."""
        await self._watch.__aenter__()
        _deliver(self._registry, self._name, self._on_change, await self._registry.get_service(self._name))
        self._task = asyncio.create_task(self._run(), name=f"genesis-follow-{self._name}")
        return self

    async def _run(self) -> None:
        async for _event in self._watch:
            while self._watch.get_nowait() is not None:
                pass
            try:
                instances = await self._registry.get_service(self._name)
            except RegistryClosedError:
                return
            _deliver(self._registry, self._name, self._on_change, instances)

    async def close(self) -> None:
        """Stops following. Idempotent."""
        self._watch.close()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
