"""What the console shows, kept current: every service of a namespace followed through an
:class:`~genesis_registry.AsyncRegistry` (its watch-fed cache), a log of the changes, and the
pages' subscriptions to them.

Services are found by listing the namespace (:meth:`AsyncRegistry.list_services`) at start
and every :data:`DISCOVER_EVERY` seconds; each one found is watched, so that a change to it
reaches the pages as it happens. What the pages receive (:class:`Subscription`) are
messages ``(kind, doc)``, the docs plain JSON types:

* ``snapshot``: everything, first on every subscription and after one fell behind;
* ``change``: one PUT or DELETE, with the service's new instance count;
* ``services``: the services and their counts, when one appears or goes;
* ``stats``: the registry's counters and per-service figures, every :data:`STATS_EVERY` s.

Example::

    >>> async def show():
    ...     view = MeshView(areg, about={"namespace": areg.namespace})
    ...     await view.start()
    ...     await areg.register(instance)
    ...     with view.subscribe() as pages:
    ...         kind, doc = await pages.next()
    ...         while kind != "change":
    ...             kind, doc = await pages.next()
    ...     await view.close()
    ...     return doc["type"], doc["service"], doc["id"], doc["count"]
    >>> await show()
    ('PUT', 'user-service', 'user-1', 1)
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import math
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from ..balancer.endpoints import instance_weight
from ..errors import RegistryError
from ..model import EventType, LeaseTime, ServiceEvent, ServiceInstance
from ..registry import AsyncRegistry

__all__ = ["DISCOVER_EVERY", "STATS_EVERY", "MeshView", "Subscription", "instance_doc"]

#: Seconds between two listings of the namespace (how soon a new service is found).
DISCOVER_EVERY = 2.0
#: Seconds between two pushes of the figures.
STATS_EVERY = 1.0
#: Changes kept for a page that opens later.
LOG_SIZE = 500
#: Messages a page may fall behind by before it is sent a snapshot instead.
QUEUE_SIZE = 1000
#: Seconds a service's leases, once read, are shown without reading them again...
LEASES_FRESH_FOR = 3.0
#: ...or longer for big services: at most this many lease lookups a second, per service shown.
LEASE_LOOKUPS_PER_SECOND = 250

Message = tuple[str, dict[str, Any]]
#: A service's leases as read: when (``time.monotonic()``), by instance id, and the error if the read failed.
_LeaseRead = tuple[float, dict[str, LeaseTime], str | None]


def instance_doc(instance: ServiceInstance) -> dict[str, Any]:
    """An instance as the page shows it: the stored fields, plus ``zone`` and ``weight`` as
    the balancer reads them from the metadata (None when absent or, for weight, invalid).

    >>> doc = instance_doc(gr.ServiceInstance(id="a", name="s", metadata={"zone": "z1", "weight": "3"}))
    >>> doc["zone"], doc["weight"], doc["metadata"]
    ('z1', 3, {'weight': '3', 'zone': 'z1'})
    """
    return {
        "id": instance.id,
        "name": instance.name,
        "version": instance.version,
        "endpoints": list(instance.endpoints),
        "metadata": dict(instance.metadata),
        "zone": instance.metadata.get("zone"),
        "weight": instance_weight(instance),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


_RESYNC: Message = ("snapshot", {})  # in a feed's queue: a fresh snapshot is due, read when it is read


class Subscription:
    """One page's feed: a bounded queue of messages. A page that falls :data:`QUEUE_SIZE`
    messages behind loses them and is sent a fresh snapshot next instead, so it still ends
    exact."""

    def __init__(self, view: MeshView) -> None:
        self._view = view
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(QUEUE_SIZE)
        self._behind = False
        self._queue.put_nowait(_RESYNC)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def offer(self, message: Message) -> None:
        if self._behind:
            return  # the snapshot due will hold it
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._drain()
            self._queue.put_nowait(_RESYNC)
            self._behind = True

    def end(self) -> None:
        """No more messages: :meth:`next` returns None once what is queued is read."""
        if self._queue.full():  # what it has not read is moot now
            self._drain()
        self._queue.put_nowait(None)

    async def next(self, timeout: float | None = None) -> Message | None:
        """The next message; None when the view closed. ``TimeoutError`` after ``timeout`` s."""
        message = await asyncio.wait_for(self._queue.get(), timeout)
        if message is _RESYNC:
            self._behind = False
            return ("snapshot", self._view.snapshot())
        return message

    def close(self) -> None:
        self._view.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Followed:
    """One followed service: its watch task and the instances the log last showed."""

    def __init__(self) -> None:
        self.instances: dict[str, ServiceInstance] = {}
        self.task: asyncio.Task[None] | None = None


class MeshView:
    """Follows every service of ``registry``'s namespace and feeds the console's pages.

    ``about`` is shown as is in every snapshot (the namespace, the etcd endpoints: never a
    password); ``page_opened`` is set when the first page subscribes. Start with
    :meth:`start`, end with :meth:`close` (the registry is borrowed).
    """

    def __init__(
        self, registry: AsyncRegistry, about: dict[str, Any], page_opened: threading.Event | None = None
    ) -> None:
        self.registry = registry
        self._about = about
        self._services: dict[str, _Followed] = {}
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_SIZE)
        self._last_seq = 0  # of the last change logged
        self._subscriptions: set[Subscription] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._leases: dict[str, _LeaseRead] = {}
        self._lease_reads: dict[str, asyncio.Task[_LeaseRead]] = {}
        self._etcd_error: str | None = None
        self._closed = False
        #: Set once a page subscribed; other threads may wait on it (the demo does).
        self.page_opened = page_opened or threading.Event()

    async def start(self) -> None:
        """List the namespace and follow what it holds (without logging it: it is the state
        the console starts from), then keep looking for services and pushing figures."""
        await self._discover(initial=True)
        self._tasks = [
            asyncio.create_task(self._every(DISCOVER_EVERY, self._discover), name="console-discover"),
            asyncio.create_task(self._every(STATS_EVERY, self._push_stats), name="console-stats"),
        ]

    async def close(self) -> None:
        """Stop following, end every subscription. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [*self._tasks, *self._lease_reads.values()]
        tasks += [f.task for f in self._services.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for subscription in list(self._subscriptions):
            subscription.end()

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def subscribe(self) -> Subscription:
        """A feed of messages for one page, starting with a snapshot."""
        subscription = Subscription(self)
        if self._closed:
            subscription.end()
        else:
            self._subscriptions.add(subscription)
            self.page_opened.set()
        return subscription

    @property
    def services(self) -> dict[str, int]:
        """Followed services and their instance counts, by name."""
        return {name: len(f.instances) for name, f in sorted(self._services.items())}

    def follows(self, name: str) -> bool:
        return name in self._services

    def instances(self, name: str) -> list[ServiceInstance]:
        """A followed service's instances as the feed has told them, sorted by id."""
        return sorted(self._services[name].instances.values(), key=lambda i: i.id)

    def snapshot(self) -> dict[str, Any]:
        """Everything a page needs to draw itself."""
        return {
            "about": self._about,
            "services": self.services,
            "events": list(self._log),
            "stats": self.figures(),
        }

    def figures(self) -> dict[str, Any]:
        """The registry's counters, per-service figures, and the last error listing etcd."""
        return {
            "time": _now(),
            "registry": self.registry.stats(),
            "services": self.registry.service_stats(),
            "etcd_error": self._etcd_error,
        }

    async def _lease_times(self, name: str, count: int) -> _LeaseRead:
        """The service's leases and when they were read (``time.monotonic()``), read again
        once that is older than the service's horizon: :data:`LEASES_FRESH_FOR` seconds, more
        for big services (a lookup per lease), so that pages watching a mesh do not load etcd
        with lease lookups. Pages asking at once share one read."""
        read_at, leases, error = self._leases.get(name, (-math.inf, {}, None))
        horizon = max(LEASES_FRESH_FOR, count / LEASE_LOOKUPS_PER_SECOND)
        if time.monotonic() - read_at < horizon:
            return read_at, leases, error
        reading = self._lease_reads.get(name)
        if reading is None:
            reading = asyncio.create_task(self._read_leases(name), name=f"console-leases-{name}")
            self._lease_reads[name] = reading
            reading.add_done_callback(lambda _: self._lease_reads.pop(name, None))
        return await asyncio.shield(reading)

    async def _read_leases(self, name: str) -> _LeaseRead:
        try:
            leases, error = await self.registry.lease_times(name), None
        except RegistryError as exc:
            leases, error = {}, str(exc)
        entry = (time.monotonic(), leases, error)
        if name in self._services:  # not kept for a service that went meanwhile
            self._leases[name] = entry
        return entry

    async def service(self, name: str) -> dict[str, Any]:
        """A followed service's instances as the feed has told them (up to change ``seq``),
        each with its lease: etcd's answer at most a few seconds old (more for big services),
        aged since; None for an instance that joined since."""
        seq = self._last_seq
        instances = self.instances(name)
        read_at, leases, lease_error = await self._lease_times(name, len(instances))
        aged = int(time.monotonic() - read_at)
        docs = []
        for instance in instances:
            doc = instance_doc(instance)
            lease = leases.get(instance.id)
            doc["lease"] = None
            if lease is not None:
                left = None if lease.ttl_left is None else max(0, lease.ttl_left - aged)
                doc["lease"] = {"id": f"{lease.lease:x}", "granted_ttl": lease.granted_ttl, "ttl_left": left}
            docs.append(doc)
        stats = self.registry.service_stats().get(name)
        return {"name": name, "seq": seq, "instances": docs, "stats": stats, "lease_error": lease_error}

    def _broadcast(self, message: Message) -> None:
        for subscription in list(self._subscriptions):
            subscription.offer(message)

    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await work()

    async def _push_stats(self) -> None:
        if self._subscriptions:
            self._broadcast(("stats", self.figures()))

    async def _discover(self, initial: bool = False) -> None:
        try:
            listed = await self.registry.list_services()
        except RegistryError as exc:
            if initial:
                raise
            self._etcd_error = str(exc)
            return
        self._etcd_error = None
        changed = False
        for name in listed:
            if name not in self._services:
                await self._follow(name, log_existing=not initial)
                changed = True
        for name in [n for n, f in self._services.items() if n not in listed and not f.instances]:
            self._unfollow(name)
            changed = True
        if changed and not initial:
            self._broadcast(("services", {"services": self.services}))

    async def _follow(self, name: str, log_existing: bool) -> None:
        followed = _Followed()
        self._services[name] = followed
        if not log_existing:
            # The state the console starts from: the watch's first PUTs repeat it, unlogged.
            followed.instances = {i.id: i for i in await self.registry.get_service(name)}
        followed.task = asyncio.create_task(self._watch(name, followed), name=f"console-watch-{name}")
        followed.task.add_done_callback(lambda task: self._watch_ended(name, followed, task))

    def _unfollow(self, name: str) -> None:
        followed = self._services.pop(name)
        self._leases.pop(name, None)
        if followed.task is not None:
            followed.task.cancel()

    def _watch_ended(self, name: str, followed: _Followed, task: asyncio.Task[None]) -> None:
        """A watch that failed is dropped, so that the next listing follows its service again."""
        if task.cancelled() or self._closed or self._services.get(name) is not followed:
            return
        error = task.exception()
        self.registry.logger.warning("console: the watch of service %s ended (%s); following it again", name, error)
        del self._services[name]

    async def _watch(self, name: str, followed: _Followed) -> None:
        async with self.registry.watch(name) as events:
            async for event in events:
                self._apply(name, followed, event)

    def _apply(self, name: str, followed: _Followed, event: ServiceEvent) -> None:
        instance = event.service
        known = followed.instances.get(instance.id)
        if event.type is EventType.PUT:
            if known == instance:
                return
            followed.instances[instance.id] = instance
            what = "registered" if known is None else "updated"
        else:
            if known is None:
                return
            del followed.instances[instance.id]
            what = "deregistered"
        self._last_seq += 1
        doc = {
            "seq": self._last_seq,
            "time": _now(),
            "type": event.type.value,
            "change": what,
            "service": name,
            "id": instance.id,
            "instance": instance_doc(instance) if event.type is EventType.PUT else None,
            "count": len(followed.instances),
        }
        self._log.append(doc)
        self._broadcast(("change", doc))
