"""StreamManager: exactly one gRPC stream per live instance of a service.

For each instance the manager opens a channel to its first usable endpoint and a stream
built by your factory. An instance that appears gets a channel and a stream (``on_add``);
one that goes away has its stream cancelled and its channel closed (``on_remove``); one
whose endpoint in use leaves its endpoint list gets a new channel and stream. A stream that
cannot reach its endpoint (UNAVAILABLE: refused, dropped, unreachable) moves to the
instance's next endpoint, if it has several: at once while some endpoint has not failed in
a row, with backoff once every one has. A stream that ends cleanly, or that the server
ends with another error, is opened again on the same endpoint. Each failure calls
``on_error``; re-opening uses exponential backoff and jitter and goes on for as long as the
instance is registered. ``streams()`` is a snapshot; ``stop()`` ends everything.

    >>> import queue
    >>> opened = queue.Queue()
    >>> def open_stream(channel, instance):
    ...     opened.put(instance.id)
    ...     return pb.TestServiceStub(channel).StreamCall(requests())
    >>> reg.register(instance)
    >>> manager = gr.StreamManager(reg, gr.StreamManagerConfig(service_name="user-service", factory=open_stream))
    >>> manager.start()
    >>> opened.get(timeout=10)
    'user-1'
    >>> manager.stop()

The factory must return a gRPC call object (what a stub's streaming method returns).
The manager learns that a stream ended through its ``add_done_callback`` (gRPC reports
the end of a stream once its responses have been read) and that its connection was lost
from the channel's connectivity (then it cancels the stream and opens it again).
:class:`AsyncStreamManager` is the asyncio twin (the factory gets a ``grpc.aio.Channel``).
Callbacks run on the manager's own thread (or task); one that raises is logged and the
manager goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from ._connectivity import MONITOR, ChannelWatch
from ._grpcio import FailedCall, aio_error, open_aio_channel, open_channel
from .balancer.targets import InstanceTargets
from .errors import InvalidConfigError
from .follow import AsyncFollowable, AsyncServiceFollower, Followable, ServiceFollower
from .model import ServiceInstance

__all__ = ["AsyncStreamManager", "StreamManager", "StreamManagerConfig"]


@dataclass(frozen=True)
class StreamManagerConfig:
    """What a :class:`StreamManager` manages and how.

    ``factory(channel, instance)`` opens the stream for one instance. ``on_add(instance)``,
    ``on_remove(instance)`` and ``on_error(instance, error)`` are optional callbacks.
    A stream is re-opened ``retry_initial`` seconds after it ends, doubling on each
    failure in a row up to ``retry_max`` (with ±20 % jitter).

    >>> config = StreamManagerConfig("user-service", lambda channel, instance: None)
    >>> config.retry_initial, config.retry_max
    (0.5, 30.0)
    >>> StreamManagerConfig("user-service", lambda channel, instance: None, retry_initial=60)
    Traceback (most recent call last):
    ...
    genesis_registry.errors.InvalidConfigError: need 0 < retry_initial <= retry_max (got 60, 30.0)
    """

    service_name: str
    factory: Callable[[Any, ServiceInstance], Any]
    credentials: grpc.ChannelCredentials | None = None
    options: Sequence[tuple[str, Any]] = ()
    on_add: Callable[[ServiceInstance], None] | None = None
    on_remove: Callable[[ServiceInstance], None] | None = None
    on_error: Callable[[ServiceInstance, BaseException], None] | None = None
    retry_initial: float = 0.5
    retry_max: float = 30.0
    interceptors: Sequence[Any] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.service_name, str) or not self.service_name:
            raise InvalidConfigError(f"service_name must be a non-empty str (got {self.service_name!r})")
        if not callable(self.factory):
            raise InvalidConfigError(f"factory must be callable (got {self.factory!r})")
        if not 0 < self.retry_initial <= self.retry_max:
            raise InvalidConfigError(
                f"need 0 < retry_initial <= retry_max (got {self.retry_initial!r}, {self.retry_max!r})"
            )


@dataclass
class StreamSlot:
    """One instance's channel and stream."""

    instance: ServiceInstance
    #: The instance's usable endpoints, in its order; the stream runs on one at a time.
    targets: tuple[str, ...]
    #: Which of ``targets`` the channel goes to.
    index: int = 0
    channel: Any = None
    stream: Any = None
    #: Identifies the current stream, so a late "done" of a replaced one is ignored.
    generation: int = 0
    failures: int = 0
    #: Endpoints that failed in a row since a stream last ended cleanly or lived long: once
    #: every one of them has, re-opening waits for the backoff.
    round_failures: int = 0
    opened_at: float = 0.0
    reopen_at: float | None = None
    #: Whether the channel has been READY since the current stream opened.
    connected: bool = False

    @property
    def target(self) -> str:
        return self.targets[self.index]


class StreamTable:
    """The manager's state and decisions, shared by the sync and asyncio twins: which
    instances need a stream, when a stream is due to (re)open, the backoff."""

    def __init__(
        self, config: StreamManagerConfig, logger: logging.Logger, retire_channel: Callable[[Any], None]
    ) -> None:
        self.config = config
        self.logger = logger
        #: Closes a channel the table no longer uses (the twin's way).
        self.retire_channel = retire_channel
        self.slots: dict[str, StreamSlot] = {}
        self.snapshot: dict[str, Any] = {}
        self._targets = InstanceTargets(config.service_name, logger, "no stream for it")
        #: Stream generations, unique across slots: a stream's late "done" must not match
        #: the stream of a new slot for the same instance (removed, then added again).
        self._generations = itertools.count(1)

    def reconcile(
        self, instances: Sequence[ServiceInstance]
    ) -> tuple[list[StreamSlot], list[StreamSlot], list[tuple[StreamSlot, StreamSlot]]]:
        """(new, removed, moved): slots to open, slots to close, and (slot, old) pairs
        whose endpoint in use left the instance (close the old channel and stream, open the
        slot anew on its first endpoint)."""
        wanted = {instance.id: (instance, targets) for instance, targets in self._targets.read(instances)}
        removed = [self.slots.pop(i) for i in [i for i in self.slots if i not in wanted]]
        new: list[StreamSlot] = []
        moved: list[tuple[StreamSlot, StreamSlot]] = []
        for instance_id, (instance, targets) in wanted.items():
            slot = self.slots.get(instance_id)
            if slot is None:
                slot = StreamSlot(instance, targets)
                self.slots[instance_id] = slot
                new.append(slot)
            elif slot.target not in targets:
                old = StreamSlot(slot.instance, slot.targets, slot.index, slot.channel, slot.stream)
                slot.instance, slot.targets, slot.index, slot.channel, slot.stream = instance, targets, 0, None, None
                slot.generation = next(self._generations)
                slot.failures = slot.round_failures = 0
                moved.append((slot, old))
            else:  # the stream goes on where it is
                slot.instance, slot.index, slot.targets = instance, targets.index(slot.target), targets
        return new, removed, moved

    def apply_instances(
        self,
        instances: Sequence[ServiceInstance],
        open_slot: Callable[[StreamSlot], None],
        close_slot: Callable[[StreamSlot], None],
    ) -> None:
        """Brings the streams in line with the service's instances."""
        new, removed, moved = self.reconcile(instances)
        for slot in removed:
            close_slot(slot)
            self.call("on_remove", self.config.on_remove, slot.instance)
        for slot, old in moved:
            close_slot(old)
            open_slot(slot)
        self.publish()
        for slot in new:
            self.call("on_add", self.config.on_add, slot.instance)
            open_slot(slot)

    def apply_ended(self, instance_id: str, generation: int, error: BaseException | None) -> None:
        """A stream ended (cleanly if `error` is None): schedule it to open again."""
        slot = self.ended(instance_id, generation, error)
        if slot is not None and error is not None:
            self.call("on_error", self.config.on_error, slot.instance, error)

    def connectivity(self, instance_id: str, channel: Any, state: grpc.ChannelConnectivity) -> None:
        """A channel's state changed. gRPC only reports the end of a stream nobody reads
        when someone reads it, so the channel says it instead: a READY channel that drops,
        or one that fails to connect (TRANSIENT_FAILURE) under a stream, ends that stream
        as failed: cancel it and open it again (on the next endpoint, if there is one)."""
        slot = self.slots.get(instance_id)
        if slot is None or slot.channel is not channel:
            return
        if state == grpc.ChannelConnectivity.READY:
            slot.connected = True
            return
        if slot.stream is None:
            return
        if slot.connected:
            why = f"lost the connection to {slot.target} ({state.name})"
        elif state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            why = f"could not connect to {slot.target}"
        else:
            return  # still connecting
        slot.connected = False
        stream, generation = slot.stream, slot.generation
        stream.cancel()
        self.apply_ended(instance_id, generation, FailedCall(grpc.StatusCode.UNAVAILABLE, why))

    def open_stream(
        self,
        slot: StreamSlot,
        make_channel: Callable[[str], Any],
        on_done: Callable[[str, int, Any], None],
    ) -> None:
        """Opens the slot's channel if needed and a stream on it with the factory."""
        slot.reopen_at = None
        if slot.channel is None:
            slot.channel = make_channel(slot.target)
            slot.connected = False
        try:
            stream = self.config.factory(slot.channel, slot.instance)
        except Exception as error:
            self.open_failed(slot)
            self.call("on_error", self.config.on_error, slot.instance, error)
            return
        generation = self.opened(slot, stream)
        instance_id = slot.instance.id
        stream.add_done_callback(lambda call: on_done(instance_id, generation, call))

    @staticmethod
    def detach(slot: StreamSlot) -> tuple[Any, Any]:
        """Takes the slot's (stream, channel) out of it, cancelling the stream."""
        stream, channel = slot.stream, slot.channel
        slot.stream, slot.channel = None, None
        if stream is not None:
            stream.cancel()
        return stream, channel

    def opened(self, slot: StreamSlot, stream: Any) -> int:
        slot.stream = stream
        slot.generation = next(self._generations)
        slot.opened_at = time.monotonic()
        slot.reopen_at = None
        self.publish()
        return slot.generation

    def ended(self, instance_id: str, generation: int, error: BaseException | None) -> StreamSlot | None:
        """A stream ended: the slot to re-open later (its `reopen_at` set), or None.

        A stream that could not reach its endpoint (UNAVAILABLE) gets a new channel, to the
        instance's next endpoint if it has several: at once while some endpoint has not
        failed in a row yet, with backoff once every one has. (A new channel, because a
        grpcio channel that failed to connect may report no further change while it
        retries, and a stream opened on it would fail unseen.) A stream the server ended
        with another error is opened again on the same channel, with backoff; one that
        ended cleanly, likewise, without growing the backoff."""
        slot = self.slots.get(instance_id)
        if slot is None or slot.generation != generation or slot.reopen_at is not None:
            return None
        if error is None or time.monotonic() - slot.opened_at >= self.config.retry_max:
            slot.round_failures = 0
            if error is not None:
                slot.failures = 0  # it lived long enough: start the backoff over
        slot.stream = None
        delay = min(self.config.retry_max, self.config.retry_initial * 2**slot.failures)
        if error is not None and _unreachable(error):
            self._retire_channel_of(slot)
            slot.index = (slot.index + 1) % len(slot.targets)
            slot.round_failures += 1
            if slot.round_failures < len(slot.targets):
                delay = 0.0  # an endpoint that has not failed yet
            else:
                slot.round_failures = 0
        if delay:
            slot.failures += 1 if error is not None else 0
            delay *= random.uniform(0.8, 1.2)
        slot.reopen_at = time.monotonic() + delay
        self.publish()
        return slot

    def _retire_channel_of(self, slot: StreamSlot) -> None:
        channel, slot.channel = slot.channel, None
        slot.connected = False
        if channel is not None:
            self.retire_channel(channel)

    def open_failed(self, slot: StreamSlot) -> None:
        delay = min(self.config.retry_max, self.config.retry_initial * 2**slot.failures)
        slot.failures += 1
        slot.reopen_at = time.monotonic() + delay * random.uniform(0.8, 1.2)

    def due(self) -> tuple[list[StreamSlot], float | None]:
        """Slots whose re-open time has come, and seconds until the next one."""
        now = time.monotonic()
        due = [s for s in self.slots.values() if s.reopen_at is not None and s.reopen_at <= now]
        later = [s.reopen_at for s in self.slots.values() if s.reopen_at is not None and s.reopen_at > now]
        return due, (min(later) - now if later else None)

    def open_due(self, open_slot: Callable[[StreamSlot], None]) -> float | None:
        """Opens every slot whose re-open time has come (opening may make more due); then
        the seconds until the next one, None when none waits."""
        while True:
            due, wait = self.due()
            if not due:
                return wait
            for slot in due:
                open_slot(slot)

    def apply(
        self,
        kind: str,
        payload: Any,
        open_slot: Callable[[StreamSlot], None],
        close_slot: Callable[[StreamSlot], None],
    ) -> None:
        """Applies one event of a manager's queue: the service's instances, a channel's
        connectivity, or a stream that ended (instance id, generation, its failure or None)."""
        if kind == "instances":
            self.apply_instances(payload, open_slot, close_slot)
        elif kind == "state":
            self.connectivity(*payload)
        else:
            self.apply_ended(*payload)

    def publish(self) -> None:
        self.snapshot = {i: s.stream for i, s in self.slots.items() if s.stream is not None}

    def call(self, name: str, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.logger.exception("StreamManager %s callback raised; carrying on", name)


def _unreachable(error: BaseException) -> bool:
    """Whether a stream failed because its endpoint could not be reached (UNAVAILABLE)."""
    code = getattr(error, "code", None)
    try:
        return callable(code) and code() == grpc.StatusCode.UNAVAILABLE
    except Exception:  # a call object in a state that cannot say
        return False


def _failure(stream: Any) -> BaseException | None:
    """Why a finished sync gRPC call failed, or None if it ended cleanly."""
    try:
        if stream.cancelled():
            return None
        error = stream.exception()
    except Exception as e:  # not a grpc.Future: count it as failed
        return e
    if error is None or (isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.OK):
        return None
    return error  # type: ignore[no-any-return]


class StreamManager:
    """One stream per live instance of a service (threads; see the module docs).

    >>> added = queue.Queue()
    >>> reg.register(instance)
    >>> with StreamManager(reg, StreamManagerConfig(
    ...         "user-service", lambda channel, instance: pb.TestServiceStub(channel).StreamCall(requests()),
    ...         on_add=lambda instance: added.put(instance.id))):
    ...     added.get(timeout=10)
    'user-1'
    """

    def __init__(self, registry: Followable, config: StreamManagerConfig) -> None:
        self._registry = registry
        self._table = StreamTable(config, registry.logger, self._retire_channel)
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._follower: ServiceFollower | None = None
        self._lock = threading.Lock()
        self._stopped = False
        #: The connectivity watch of each channel (one thread per process follows them all).
        self._watches: dict[Any, ChannelWatch] = {}

    @property
    def config(self) -> StreamManagerConfig:
        return self._table.config

    def start(self) -> None:
        """Starts following the service and opening streams. Idempotent."""
        with self._lock:
            if self._thread is not None or self._stopped:
                return
            # The follower first: if it cannot start (etcd down), nothing was started
            # and start() may simply be called again.
            self._follower = ServiceFollower(
                self._registry, self.config.service_name, lambda instances: self._events.put(("instances", instances))
            )
            self._thread = threading.Thread(
                target=self._run, name=f"genesis-streams-{self.config.service_name}", daemon=True
            )
            self._thread.start()

    def streams(self) -> dict[str, Any]:
        """The current streams by instance id (a snapshot; streams being re-opened are absent)."""
        return dict(self._table.snapshot)

    def stop(self) -> None:
        """Cancels every stream, closes every channel and ends the manager's threads.
        Idempotent; returns when everything has stopped."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            follower, thread = self._follower, self._thread
        if follower is not None:
            follower.close()
        self._events.put(("stop", None))
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> StreamManager:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        table = self._table
        try:
            while True:
                try:
                    kind, payload = self._events.get(timeout=table.open_due(self._open))
                except queue.Empty:
                    continue
                if kind == "stop":
                    return
                if kind == "ended":  # why it failed, read here: the table does no I/O
                    instance_id, generation, stream = payload
                    payload = (instance_id, generation, _failure(stream))
                table.apply(kind, payload, self._open, self._close)
        finally:
            for slot in list(table.slots.values()):
                self._close(slot)
            table.slots.clear()
            table.publish()

    def _open(self, slot: StreamSlot) -> None:
        config = self._table.config

        instance_id = slot.instance.id

        def make_channel(target: str) -> grpc.Channel:
            channel = open_channel(target, config.credentials, config.options)

            def on_states(changes: Sequence[tuple[Any, grpc.ChannelConnectivity]]) -> None:
                for _token, state in changes:
                    self._events.put(("state", (instance_id, channel, state)))

            self._watches[channel] = MONITOR.watch(channel, on_states, instance_id)
            return channel

        self._table.open_stream(slot, make_channel, lambda *ended: self._events.put(("ended", ended)))

    def _close(self, slot: StreamSlot) -> None:
        _stream, channel = self._table.detach(slot)
        if channel is not None:
            self._retire_channel(channel)

    def _retire_channel(self, channel: grpc.Channel) -> None:
        watch = self._watches.pop(channel, None)
        if watch is not None:
            watch.close()
        else:
            channel.close()


class AsyncStreamManager:
    """:class:`StreamManager` for asyncio: one task, ``await start()``, ``await stop()``.

    >>> opened = asyncio.Queue()
    >>> def open_stream(channel, instance):  # channel: a grpc.aio.Channel
    ...     opened.put_nowait(instance.id)
    ...     return pb.TestServiceStub(channel).StreamCall(requests())
    >>> await areg.register(instance)
    >>> async with AsyncStreamManager(areg, StreamManagerConfig("user-service", open_stream)):
    ...     await asyncio.wait_for(opened.get(), 10)
    'user-1'
    """

    def __init__(self, registry: AsyncFollowable, config: StreamManagerConfig) -> None:
        self._registry = registry
        self._table = StreamTable(config, registry.logger, self._retire_channel)
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._follower: AsyncServiceFollower | None = None
        self._stopped = False
        self._closing: set[asyncio.Future[Any]] = set()
        self._watchers: dict[grpc.aio.Channel, asyncio.Task[None]] = {}

    @property
    def config(self) -> StreamManagerConfig:
        return self._table.config

    async def start(self) -> None:
        """Starts following the service and opening streams. Idempotent."""
        if self._task is not None or self._stopped:
            return
        follower = AsyncServiceFollower(
            self._registry,
            self.config.service_name,
            lambda instances: self._events.put_nowait(("instances", instances)),
        )
        await follower.start()  # if etcd is down this raises and nothing was started
        self._follower = follower
        self._task = asyncio.create_task(self._run(), name=f"genesis-streams-{self.config.service_name}")

    def streams(self) -> dict[str, Any]:
        """The current streams by instance id (a snapshot)."""
        return dict(self._table.snapshot)

    async def stop(self) -> None:
        """Cancels every stream, closes every channel and ends the task. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._follower is not None:
            await self._follower.close()
        self._events.put_nowait(("stop", None))
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def __aenter__(self) -> AsyncStreamManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        table = self._table
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(self._events.get(), table.open_due(self._open))
                except asyncio.TimeoutError:
                    continue
                if kind == "stop":
                    return
                if kind == "ended":  # why it failed, read here: the table does no I/O
                    instance_id, generation, stream = payload
                    payload = (instance_id, generation, await _aio_failure(stream))
                table.apply(kind, payload, self._open, self._close)
        finally:
            for slot in list(table.slots.values()):
                self._close(slot)
            table.slots.clear()
            table.publish()

    def _open(self, slot: StreamSlot) -> None:
        config = self._table.config
        interceptors = list(config.interceptors) or None

        instance_id = slot.instance.id

        def make_channel(target: str) -> grpc.aio.Channel:
            channel = open_aio_channel(target, config.credentials, config.options, interceptors)
            self._watchers[channel] = asyncio.create_task(self._follow_state(instance_id, channel))
            return channel

        self._table.open_stream(slot, make_channel, lambda *ended: self._events.put_nowait(("ended", ended)))

    async def _follow_state(self, instance_id: str, channel: grpc.aio.Channel) -> None:
        state = channel.get_state(try_to_connect=True)
        while True:
            self._events.put_nowait(("state", (instance_id, channel, state)))
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    def _close(self, slot: StreamSlot) -> None:
        stream, channel = self._table.detach(slot)
        if stream is not None:
            # The cancelled call settles in a task of grpc's; stop() waits for it.
            self._settle_later(asyncio.ensure_future(_settled(stream)))
        if channel is not None:
            self._retire_channel(channel)

    def _retire_channel(self, channel: grpc.aio.Channel) -> None:
        watcher = self._watchers.pop(channel, None)
        if watcher is not None:
            watcher.cancel()
            self._settle_later(watcher)
        self._settle_later(asyncio.ensure_future(channel.close()))

    def _settle_later(self, future: asyncio.Future[Any]) -> None:
        """Keeps ``future`` until it is done; stop() waits for what is left."""
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)


async def _settled(stream: Any) -> None:
    """Waits until a (cancelled) aio call has its final status."""
    try:
        await stream.code()
    except BaseException:
        pass


async def _aio_failure(stream: Any) -> BaseException | None:
    """Why a finished aio gRPC call failed, or None if it ended cleanly."""
    try:
        if stream.cancelled():
            return None
        code = await stream.code()
    except Exception as e:
        return e
    if code == grpc.StatusCode.OK:
        return None
    return aio_error(code, await stream.details())
