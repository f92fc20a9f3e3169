"""gRPC channels balanced over a service's live instances.

grpcio has no plug-in point for name resolvers or load-balancing policies, so the
balancing happens here: a :class:`BalancedChannel` (a ``grpc.Channel``) keeps one grpcio
channel per instance endpoint and picks one **per call** from an immutable view, which the
registry's snapshot of the service feeds. Every usable endpoint of every instance is an
address to balance over, as the Go component's resolver hands them all to gRPC. Stubs
built once keep working, and stay balanced, as instances come and go.
:class:`AsyncBalancedChannel` is the ``grpc.aio.Channel`` twin. :func:`dial` accepts the
Go component's ``etcd:///<service>`` target form.

    >>> channel = reg.get_connection("user-service")            # doctest: +SKIP
    >>> stub = pb.UserServiceStub(channel)                        # doctest: +SKIP
    >>> channel = gr.dial("etcd:///user-service", registry=reg)   # doctest: +SKIP

Behaviour, shared by both twins (the logic lives in :class:`_Endpoints`):

- ``round_robin`` (default) spreads calls over READY endpoints; when instances carry a
  ``weight`` metadata value, a smooth weighted round robin follows the weights, each
  endpoint of an instance taking the instance's weight (instances without a usable weight
  count as the mean of the declared ones).
- ``pick_first`` sends every call to one endpoint: the first to be READY (the lowest
  instance id, then endpoint order, among those READY then). Calls made before any endpoint
  is READY wait for it, as gRPC's own pick_first queues them, so they go there too. It stays
  with that endpoint for as long as it is usable (READY, or reconnecting after a drop), and
  moves to the first READY one only when it fails or its instance leaves.
- A new endpoint is connected before it takes traffic; endpoints in TRANSIENT_FAILURE
  are skipped while others are READY. A removed endpoint takes no new calls; calls in
  flight finish normally and its channel closes when the last one ends.
- With no instance at all, calls fail at once with ``UNAVAILABLE`` naming the service,
  unless they ask ``wait_for_ready=True``: then they wait for an instance (or the
  deadline, ``DEADLINE_EXCEEDED``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .errors import InvalidConfigError
from .follow import AsyncFollowable, AsyncServiceFollower, Followable, ServiceFollower
from .model import ServiceInstance

__all__ = [
    "POLICIES",
    "AsyncBalancedChannel",
    "BalancedChannel",
    "dial",
    "endpoint_target",
    "parse_target",
]

#: The balancing policies a channel accepts.
POLICIES = ("round_robin", "pick_first")
#: The longest weighted round robin schedule; larger weight sums are scaled down.
_MAX_SCHEDULE = 1000

_READY = grpc.ChannelConnectivity.READY
_FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN

ChannelOptions = Sequence[tuple[str, Any]]

# grpcio's classes are generic only in its type stubs.
if TYPE_CHECKING:
    _FutureBase = grpc.Future[Any]
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable[Any, Any]
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable[Any, Any]
    _StreamStreamBase = grpc.StreamStreamMultiCallable[Any, Any]
else:
    _FutureBase = grpc.Future
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable


def endpoint_target(endpoint: str) -> str | None:
    """The gRPC target of an instance endpoint, or None if it is not one.

    ``grpc://host:port`` and ``host:port`` (IPv6 as ``[::1]:port``, hostnames resolved
    by gRPC's DNS resolver) become ``host:port``.

    >>> endpoint_target("grpc://127.0.0.1:9001"), endpoint_target("http://h:1")
    ('127.0.0.1:9001', None)
    """
    rest = endpoint[len("grpc://") :] if endpoint.startswith("grpc://") else endpoint
    host, sep, port = rest.rpartition(":")
    if not sep or not host or "://" in rest or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return None
    if any(c.isspace() for c in rest):
        return None
    return rest


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


def _weight(instance: ServiceInstance) -> int | None:
    raw = instance.metadata.get("weight")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def _smooth_schedule(endpoints: Sequence[_Endpoint]) -> list[_Endpoint]:
    """A weighted round robin order in which each endpoint appears as often as its
    weight says, spread out rather than in runs (nginx's smooth weighted round robin)."""
    weights = [ep.weight for ep in endpoints]
    if len(set(weights)) <= 1:
        return list(endpoints)
    divisor = math.gcd(*weights)
    weights = [w // divisor for w in weights]
    total = sum(weights)
    if total > _MAX_SCHEDULE:
        weights = [max(1, round(w * _MAX_SCHEDULE / total)) for w in weights]
        total = sum(weights)
    current = [0] * len(weights)
    schedule = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        schedule.append(endpoints[best])
    return schedule


class _Endpoint:
    """One instance endpoint and the grpcio channel to it."""

    __slots__ = (
        "_callables",
        "_inflight",
        "_lock",
        "channel",
        "instance",
        "rank",
        "removed",
        "state",
        "target",
        "weight",
    )

    def __init__(self, target: str, instance: ServiceInstance, index: int, channel: Any) -> None:
        self.target = target
        self.instance = instance
        #: Where the endpoint stands in the service's address list: instance id, then its
        #: position among the instance's endpoints.
        self.rank = (instance.id, index)
        self.channel = channel
        self.weight = 1
        self.state = grpc.ChannelConnectivity.IDLE
        self.removed = False
        self._callables: dict[tuple[Any, ...], Any] = {}
        self._inflight = 0
        self._lock = threading.Lock()

    def callable(self, wrapper: _MultiCallable | _AioMultiCallable) -> Any:
        """This endpoint's grpcio multicallable for ``wrapper``'s method, made once per
        method (stubs made per request share it)."""
        key = wrapper.key
        found = self._callables.get(key)
        if found is None:
            make = getattr(self.channel, wrapper.kind)
            found = make(wrapper.method, wrapper.request_serializer, wrapper.response_deserializer)
            self._callables[key] = found
        return found

    def begin(self) -> bool:
        """Counts a call starting here; False if the endpoint was just taken out of service."""
        with self._lock:
            if self.removed:
                return False
            self._inflight += 1
            return True

    def end(self, _call: object = None) -> bool:
        """Counts a finished call; True when a removed endpoint just became idle."""
        with self._lock:
            self._inflight -= 1
            return self.removed and self._inflight == 0

    def retire(self) -> bool:
        """Takes the endpoint out of service; True if it is idle (close it now)."""
        with self._lock:
            self.removed = True
            return self._inflight == 0


class _View:
    """An immutable picture of the endpoints calls may use."""

    __slots__ = ("connecting", "first", "ready", "schedule")

    def __init__(
        self, schedule: list[_Endpoint], first: _Endpoint | None, ready: bool, connecting: bool = False
    ) -> None:
        self.schedule = schedule
        self.first = first
        #: Whether the schedule holds READY endpoints (not only connecting ones).
        self.ready = ready
        #: With an empty schedule: whether endpoints are still connecting, so that a call
        #: waits for one to be READY rather than failing.
        self.connecting = connecting

    def takes(self, wait_for_ready: bool | None) -> bool:
        """Whether a call (``wait_for_ready`` or not) can be given an endpoint now."""
        return bool(self.schedule) and (self.ready or not wait_for_ready)

    def hopeless(self, wait_for_ready: bool | None) -> bool:
        """Whether a call that cannot be given an endpoint now fails at once."""
        return not wait_for_ready and not self.connecting


_EMPTY = _View([], None, False)


class _Endpoints:
    """The endpoint set of one balanced channel: reconciles it with the service's
    instances, tracks connectivity, and publishes views. Shared by both channel twins;
    `open_channel` and `close_channel` are theirs."""

    def __init__(
        self,
        service: str,
        policy: str,
        open_channel: Callable[[str], Any],
        watch_state: Callable[[_Endpoint], None],
        close_channel: Callable[[_Endpoint], None],
        logger: logging.Logger,
    ) -> None:
        self.service = service
        self.policy = policy
        self._open_channel = open_channel
        self._watch_state = watch_state
        self._close_channel = close_channel
        self._logger = logger
        self._lock = threading.Lock()
        self._by_target: dict[str, _Endpoint] = {}
        #: Removed endpoints with calls still in flight; closed with their last call.
        self._draining: set[_Endpoint] = set()
        self._skipped: set[str] = set()
        self.view = _EMPTY
        self.changed = threading.Condition(self._lock)
        #: Set by the async twin to wake waiters on its event loop.
        self.on_change: Callable[[], None] | None = None

    def endpoints(self) -> list[_Endpoint]:
        with self._lock:
            return list(self._by_target.values())

    def update(self, instances: Sequence[ServiceInstance]) -> None:
        """Reconciles the endpoints with the service's current instances: every usable
        endpoint of every instance (an endpoint two instances share is balanced once)."""
        wanted: dict[str, tuple[ServiceInstance, int]] = {}
        for instance in instances:
            targets = [t for t in map(endpoint_target, instance.endpoints) if t is not None]
            if not targets:
                if instance.id not in self._skipped:
                    self._skipped.add(instance.id)
                    self._logger.warning(
                        "instance %s of service %s has no usable gRPC endpoint %s; skipping it",
                        instance.id,
                        self.service,
                        list(instance.endpoints),
                        extra={"service": self.service, "instance_id": instance.id},
                    )
                continue
            for index, target in enumerate(targets):
                wanted.setdefault(target, (instance, index))
        self._skipped &= {i.id for i in instances}
        added: list[_Endpoint] = []
        idle_removed: list[_Endpoint] = []
        with self._lock:
            for target in [t for t in self._by_target if t not in wanted]:
                gone = self._by_target.pop(target)
                if gone.retire():
                    idle_removed.append(gone)
                else:
                    self._draining.add(gone)
            for target, (instance, index) in wanted.items():
                current = self._by_target.get(target)
                if current is None:
                    try:
                        channel = self._open_channel(target)
                    except Exception:
                        self._logger.exception(
                            "cannot open a gRPC channel to %s (instance %s of %s); skipping it",
                            target,
                            instance.id,
                            self.service,
                        )
                        continue
                    current = _Endpoint(target, instance, index, channel)
                    self._by_target[target] = current
                    added.append(current)
                current.instance = instance
                current.rank = (instance.id, index)
            self._reweigh()
            self._publish()
        for endpoint in idle_removed:
            self._close_channel(endpoint)
        for endpoint in added:
            self._watch_state(endpoint)

    def set_state(self, endpoint: _Endpoint, state: grpc.ChannelConnectivity) -> None:
        with self._lock:
            if endpoint.removed or endpoint.state == state:
                return
            endpoint.state = state
            self._publish()

    def finished(self, endpoint: _Endpoint) -> None:
        """A call on `endpoint` ended; a removed endpoint closes with its last call."""
        if endpoint.end():
            with self._lock:
                if endpoint not in self._draining:
                    return  # close_all() took it
                self._draining.discard(endpoint)
            self._close_channel(endpoint)

    def acquire(self, counter: Iterator[int], need_ready: bool | None = False) -> _Endpoint | None:
        """The endpoint for the next call, per the policy, with the call counted on it;
        None when the view takes no call now (see `_View.takes`; `need_ready` is the call's
        wait_for_ready)."""
        for _ in range(3):
            view = self.view
            schedule = view.schedule
            if not schedule or (need_ready and not view.ready):  # not view.takes(): inlined, every call runs it
                return None
            endpoint = view.first if self.policy == "pick_first" else schedule[next(counter) % len(schedule)]
            if endpoint is not None and endpoint.begin():
                return endpoint
            # Taken out of service since the view was read: wait for the update to end.
            with self._lock:
                pass
        return None

    def close_all(self) -> list[_Endpoint]:
        """Every endpoint, draining ones included, taken out for closing."""
        with self._lock:
            endpoints = list(self._by_target.values()) + list(self._draining)
            self._by_target.clear()
            self._draining.clear()
            for endpoint in endpoints:
                endpoint.removed = True
            self.view = _EMPTY
            self.changed.notify_all()
        return endpoints

    def _reweigh(self) -> None:
        """Every endpoint takes its instance's weight; instances without one count as the
        mean of the declared weights (each instance counted once, whatever its endpoints)."""
        endpoints = list(self._by_target.values())
        instances = {ep.instance.id: ep.instance for ep in endpoints}
        declared = [w for w in map(_weight, instances.values()) if w is not None]
        default = round(sum(declared) / len(declared)) if declared else 1
        for endpoint in endpoints:
            endpoint.weight = _weight(endpoint.instance) or default

    def _publish(self) -> None:
        """Builds the view calls pick from (lock held)."""
        endpoints = sorted(self._by_target.values(), key=lambda ep: ep.rank)
        ready = [ep for ep in endpoints if ep.state == _READY]
        alive = [ep for ep in endpoints if ep.state not in (_FAILING, _SHUTDOWN)]
        if self.policy == "pick_first":
            # Sticky: the chosen endpoint keeps every call while it is usable, reconnecting
            # included; a new one is chosen only among READY endpoints, so that calls made
            # while all are connecting wait and then go where the later ones go.
            previous = self.view.first
            keep = previous is not None and not previous.removed and previous.state not in (_FAILING, _SHUTDOWN)
            first = previous if keep else (ready[0] if ready else None)
            is_ready = first is not None and first.state == _READY
            self.view = _View([first] if first else [], first, is_ready, connecting=first is None and bool(alive))
        else:
            usable = ready or alive or endpoints
            self.view = _View(_smooth_schedule(usable), usable[0] if usable else None, bool(ready))
        self.changed.notify_all()
        if self.on_change is not None:
            self.on_change()


_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED


def _no_instance(service: str) -> str:
    return f"no instance of service {service!r} is available"


def _none_ready(service: str) -> str:
    return f"no instance of service {service!r} was ready before the deadline"


def _check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise InvalidConfigError(f"unknown load-balancing policy {policy!r}; use one of {', '.join(POLICIES)}")
    return policy


class _Unavailable(grpc.RpcError, grpc.Call, _FutureBase):
    """The outcome of a call that found no instance: a failed ``grpc.Call`` and
    ``grpc.Future`` whose code is UNAVAILABLE (or DEADLINE_EXCEEDED after waiting)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self._code = code
        self._message = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> _Unavailable:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __iter__(self) -> _Unavailable:
        return self

    def __next__(self) -> Any:
        raise self

    def __str__(self) -> str:
        return f"<_Unavailable of RPC that terminated with: status = {self._code}, details = {self._message!r}>"


class _MultiCallable:
    """A per-call balancing multicallable of a :class:`BalancedChannel`."""

    kind = ""

    def __init__(self, channel: BalancedChannel, method: str, request_serializer: Any, response_deserializer: Any):
        self._channel = channel
        self.method = method
        self.request_serializer = request_serializer
        self.response_deserializer = response_deserializer
        self.key = (self.kind, method, request_serializer, response_deserializer)

    def _acquire(self, wait_for_ready: bool | None, timeout: float | None) -> tuple[_Endpoint, float | None]:
        """An endpoint with this call counted on it (release with `finished`)."""
        endpoint = self._channel._endpoints.acquire(self._channel._counter, wait_for_ready)
        if endpoint is not None:
            return endpoint, timeout
        return self._channel._wait_for_instance(wait_for_ready, timeout)


Metadata = tuple[tuple[str, str | bytes], ...] | None


class _UnaryResponse(_MultiCallable):
    """Calls that answer once (unary-unary, stream-unary): blocking, ``with_call``, ``future``."""

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        endpoint, timeout = self._acquire(wait_for_ready, timeout)
        try:
            return endpoint.callable(self)(request, timeout, metadata, credentials, wait_for_ready, compression)
        finally:
            self._channel._endpoints.finished(endpoint)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        endpoint, timeout = self._acquire(wait_for_ready, timeout)
        try:
            call = endpoint.callable(self)
            return call.with_call(request, timeout, metadata, credentials, wait_for_ready, compression)  # type: ignore[no-any-return]
        finally:
            self._channel._endpoints.finished(endpoint)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        try:
            endpoint, timeout = self._acquire(wait_for_ready, timeout)
        except _Unavailable as failed:
            return failed
        future = endpoint.callable(self).future
        return self._channel._track(
            endpoint, future, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamResponse(_MultiCallable):
    """Calls that answer with a stream (unary-stream, stream-stream): the call iterates."""

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        try:
            endpoint, timeout = self._acquire(wait_for_ready, timeout)
        except _Unavailable as failed:
            return failed
        start = endpoint.callable(self)
        return self._channel._track(
            endpoint, start, request, timeout, metadata, credentials, wait_for_ready, compression
        )


# The request is named `request_iterator` in grpcio's stream-request signatures; these are
# positional there, so the shared implementations fit.
class _UnaryUnary(_UnaryResponse, _UnaryUnaryBase):
    kind = "unary_unary"


class _StreamUnary(_UnaryResponse, _StreamUnaryBase):
    kind = "stream_unary"


class _UnaryStream(_StreamResponse, _UnaryStreamBase):
    kind = "unary_stream"


class _StreamStream(_StreamResponse, _StreamStreamBase):
    kind = "stream_stream"


def _connect(channel: grpc.Channel) -> None:
    """Asks an IDLE grpcio channel to connect."""
    inner = getattr(channel, "_channel", None)
    if inner is not None and hasattr(inner, "check_connectivity_state"):
        inner.check_connectivity_state(True)
    else:  # another grpcio: the public, heavier way
        grpc.channel_ready_future(channel)


def _grpc_polling(channel: Any) -> bool:
    """Whether grpcio's connectivity polling thread may still use ``channel``. Reads grpcio's
    private state defensively: False (close at once) if its layout is not the known one."""
    state = getattr(channel, "_connectivity_state", None)
    lock = getattr(state, "lock", None)
    if state is None or lock is None or not isinstance(getattr(state, "polling", None), bool):
        return False
    with lock:
        return bool(state.polling)


def _close_when_unpolled(channel: Any, deadline: float) -> None:
    while _grpc_polling(channel) and time.monotonic() < deadline:
        time.sleep(0.01)
    channel.close()


class _ChannelCloser:
    """Closes subscribed grpcio channels only once grpcio has stopped polling them.

    ``subscribe()`` starts a grpcio thread that polls the channel every 0.2 s and notices
    ``unsubscribe()`` only at its next wake-up; a channel closed before then makes that
    thread raise "Channel closed!" (grpc/grpc#18995). So a channel to close is unsubscribed
    and handed to a small reaper thread, which closes it once grpcio's polling of it has
    stopped; the reaper ends when it has nothing left. ``close()`` ends the reaper and
    closes what is left, waiting (bounded) for the polling to stop."""

    #: How long close() waits for grpcio's polling threads before closing regardless.
    WAIT = 1.0
    #: How often the reaper looks.
    INTERVAL = 0.05

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._pending: list[Any] = []
        self._reaper: threading.Thread | None = None
        self._closed = False

    def close_later(self, channel: Any, callback: Callable[[grpc.ChannelConnectivity], None] | None) -> None:
        """Unsubscribes ``callback`` and closes ``channel`` soon, without blocking."""
        if callback is not None:
            channel.unsubscribe(callback)
        if _grpc_polling(channel):
            with self._cond:
                if not self._closed:
                    self._pending.append(channel)
                    if self._reaper is None:
                        self._reaper = threading.Thread(target=self._reap, name=self._name, daemon=True)
                        self._reaper.start()
                    return
        _close_when_unpolled(channel, time.monotonic() + self.WAIT)

    def _reap(self) -> None:
        while True:
            with self._cond:
                idle = [c for c in self._pending if not _grpc_polling(c)]
                self._pending = [c for c in self._pending if c not in idle]
                done = self._closed or not self._pending
                if done:
                    self._reaper = None
            for channel in idle:
                channel.close()
            if done:
                return  # close() takes what is left
            with self._cond:
                if not self._closed:
                    self._cond.wait(self.INTERVAL)

    def close(self) -> None:
        """Closes every channel handed over, having ended the reaper."""
        with self._cond:
            self._closed = True
            reaper = self._reaper
            self._cond.notify_all()
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join()
        with self._cond:
            pending, self._pending = self._pending, []
        deadline = time.monotonic() + self.WAIT
        for channel in pending:
            _close_when_unpolled(channel, deadline)


def _open_sync_channel(target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions) -> Any:
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=list(options))


class BalancedChannel(grpc.Channel):
    """A ``grpc.Channel`` over every live instance of one service, balanced per call.

    Made by :meth:`Registry.get_connection` or :func:`dial`; close it when done (or use
    ``with``). ``grpc.intercept_channel()`` works over it.

    >>> with reg.get_connection("user-service") as channel:      # doctest: +SKIP
    ...     reply = pb.UserServiceStub(channel).GetUser(request)
    """

    def __init__(
        self,
        registry: Followable,
        service: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        policy: str = "round_robin",
    ) -> None:
        self.service = service
        self._counter = itertools.count()
        self._closed = False
        self._close_lock = threading.Lock()
        self._subscriptions: dict[_Endpoint, Callable[[grpc.ChannelConnectivity], None]] = {}
        self._closer = _ChannelCloser(f"genesis-close-{service}")
        options = tuple(options)
        self._endpoints = _Endpoints(
            service,
            _check_policy(policy),
            lambda target: _open_sync_channel(target, credentials, options),
            self._watch_state,
            self._close_endpoint,
            registry.logger,
        )
        self._follower = ServiceFollower(registry, service, self._endpoints.update)

    def _watch_state(self, endpoint: _Endpoint) -> None:
        def on_state(state: grpc.ChannelConnectivity) -> None:
            self._endpoints.set_state(endpoint, state)
            if state == grpc.ChannelConnectivity.IDLE and not endpoint.removed:
                # grpcio asks to connect only once per subscription; an endpoint that
                # went IDLE (server restart, GOAWAY) would otherwise never come back.
                try:
                    _connect(endpoint.channel)
                except ValueError:  # "Channel closed!": removed meanwhile
                    pass

        self._subscriptions[endpoint] = on_state
        endpoint.channel.subscribe(on_state, try_to_connect=True)

    def _close_endpoint(self, endpoint: _Endpoint) -> None:
        # Not closed at once: see _ChannelCloser (grpc/grpc#18995).
        self._closer.close_later(endpoint.channel, self._subscriptions.pop(endpoint, None))

    def _track(self, endpoint: _Endpoint, start: Callable[..., Any], *args: Any) -> Any:
        """Starts a call (already counted on `endpoint`) and uncounts it when it ends."""
        try:
            call = start(*args)
        except BaseException:
            self._endpoints.finished(endpoint)
            raise
        call.add_done_callback(lambda _call: self._endpoints.finished(endpoint))
        return call

    def _wait_for_instance(self, wait_for_ready: bool | None, timeout: float | None) -> tuple[_Endpoint, float | None]:
        """Waits until the view takes the call (a wait_for_ready call, or endpoints still
        connecting), then acquires an endpoint; raises as grpcio would when it cannot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        endpoints = self._endpoints
        while True:
            with endpoints.changed:
                while not self._closed and not endpoints.view.takes(wait_for_ready):
                    if endpoints.view.hopeless(wait_for_ready):
                        raise _Unavailable(_UNAVAILABLE, _no_instance(self.service))
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise _Unavailable(_DEADLINE_EXCEEDED, _none_ready(self.service))
                    endpoints.changed.wait(remaining)
            if self._closed:
                raise ValueError("Cannot invoke RPC on closed channel!")
            endpoint = endpoints.acquire(self._counter, wait_for_ready)
            if endpoint is not None:
                return endpoint, None if deadline is None else max(0.0, deadline - time.monotonic())

    @property
    def targets(self) -> list[str]:
        """The endpoints this channel currently balances over (``host:port``)."""
        return sorted(ep.target for ep in self._endpoints.endpoints())

    def ready_targets(self) -> list[str]:
        """The endpoints whose channel is READY."""
        return sorted(ep.target for ep in self._endpoints.endpoints() if ep.state == _READY)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        """Not supported: connectivity is per endpoint here (see ``ready_targets()``)."""
        raise NotImplementedError("a balanced channel has no single connectivity state; see ready_targets()")

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        raise NotImplementedError("a balanced channel has no single connectivity state")

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: Any = False) -> _UnaryUnaryBase:  # fmt: skip
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> _UnaryStreamBase:  # fmt: skip
        return _UnaryStream(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> _StreamUnaryBase:  # fmt: skip
        return _StreamUnary(self, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: Any = False) -> _StreamStreamBase:  # fmt: skip
        return _StreamStream(self, method, request_serializer, response_deserializer)

    def close(self) -> None:
        """Stops following the service and closes every endpoint channel (calls still in
        flight are cancelled, as with ``grpc.Channel.close``). Idempotent; concurrent
        callers all return once it is done."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._follower.close()
            for endpoint in self._endpoints.close_all():
                self._close_endpoint(endpoint)
            self._closer.close()
            with self._endpoints.changed:
                self._endpoints.changed.notify_all()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BalancedChannel(service={self.service!r}, policy={self._endpoints.policy!r}, targets={self.targets})"


# --------------------------------------------------------------------------- asyncio


def _open_aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: ChannelOptions,
    interceptors: Sequence[Any] | None,
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=list(options), interceptors=interceptors)


def _aio_error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=message)


class _PendingCall:
    """A grpc.aio call that has no endpoint yet: one waiting for an instance
    (``wait_for_ready=True`` while the service has none), or one that failed before
    reaching any. It behaves as the call it stands for: await it (unary response),
    iterate it or ``read()`` (stream response), ``write()`` and ``done_writing()`` (stream
    request); ``code()``, ``details()``, metadata, ``cancel()``, ``done()``,
    ``cancelled()`` and ``add_done_callback()`` work before and after it starts."""

    def __init__(
        self,
        start: Callable[[], Awaitable[Any]] | None = None,
        error: Exception | None = None,
    ) -> None:
        self._error = error
        self._call: Any = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._task: asyncio.Task[None] | None = None
        if start is not None:
            self._task = asyncio.ensure_future(self._begin(start))

    async def _begin(self, start: Callable[[], Awaitable[Any]]) -> None:
        try:
            self._call = await start()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the waiting failed: the call fails with it
            self._error = error
            self._run_callbacks()
            return
        for callback in self._callbacks:
            self._call.add_done_callback(lambda _call, callback=callback: callback(self))
        self._callbacks.clear()

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    async def _real(self) -> Any:
        if self._task is not None and not self._task.done():
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                # Whoever waited on the call gave up (a timeout, a cancelled task): so
                # does the call, as grpc.aio's own calls do.
                self.cancel()
                raise
        if self._task is not None and self._task.cancelled():
            raise asyncio.CancelledError
        if self._error is not None:
            raise self._error
        return self._call

    def __await__(self) -> Any:
        async def run() -> Any:
            return await (await self._real())

        return run().__await__()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for message in await self._real():
            yield message

    async def read(self) -> Any:
        return await (await self._real()).read()

    async def write(self, request: Any) -> None:
        await (await self._real()).write(request)

    async def done_writing(self) -> None:
        await (await self._real()).done_writing()

    def cancel(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancel())
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._task.add_done_callback(lambda _task: self._run_callbacks())
            return True
        return False

    def cancelled(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancelled())
        return self._task is not None and self._task.cancelled()

    def done(self) -> bool:
        if self._call is not None:
            return bool(self._call.done())
        return self._error is not None or self.cancelled()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining() if self._call is not None else None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._call is not None:
            self._call.add_done_callback(lambda _call: callback(self))
        elif self.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    async def code(self) -> grpc.StatusCode:
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.code()
        if self._error is not None:
            return grpc.StatusCode.UNKNOWN
        if self.cancelled() and self._call is None:
            return grpc.StatusCode.CANCELLED
        code: grpc.StatusCode = await (await self._real()).code()
        return code

    async def details(self) -> str:
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.details() or ""
        if self._error is not None:
            return str(self._error)
        if self.cancelled() and self._call is None:
            return "cancelled while waiting for an instance"
        details: str = await (await self._real()).details()
        return details

    async def initial_metadata(self) -> Any:
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.initial_metadata()
        return await (await self._real()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.trailing_metadata()
        return await (await self._real()).trailing_metadata()

    async def wait_for_connection(self) -> None:
        await (await self._real()).wait_for_connection()


#: Parameter names of grpc.aio's multicallables, after the request.
_CALL_OPTIONS = ("timeout", "metadata", "credentials", "wait_for_ready", "compression")


class _AioMultiCallable:
    """A per-call balancing multicallable of an :class:`AsyncBalancedChannel`; one class
    serves the four call shapes (``kind`` says which)."""

    def __init__(
        self, channel: AsyncBalancedChannel, kind: str, method: str, request_serializer: Any, response_deserializer: Any
    ) -> None:
        self._channel = channel
        self.kind = kind
        self.method = method
        self.request_serializer = request_serializer
        self.response_deserializer = response_deserializer
        self.key = (kind, method, request_serializer, response_deserializer)
        self._request_name = "request" if kind.startswith("unary") else "request_iterator"

    def _normalize(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """grpc.aio names the request `request` or `request_iterator` and accepts the call
        options positionally too: turn every form into (request, keyword options)."""
        names = (self._request_name, *_CALL_OPTIONS)
        if len(args) > len(names):
            raise TypeError(f"{self.kind} call takes at most {len(names)} positional arguments")
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{self.kind} call got multiple values for argument {name!r}")
            kwargs[name] = value
        return kwargs.pop(self._request_name, None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and self._request_name not in kwargs:
            request = args[0]  # the common form: stub.Method(request, timeout=..., ...)
        else:
            request = self._normalize(args, kwargs)
        channel = self._channel
        wait_for_ready = kwargs.get("wait_for_ready")
        endpoint = channel._endpoints.acquire(channel._counter, wait_for_ready)
        if endpoint is not None:
            return channel._track(endpoint, endpoint.callable(self), request, **kwargs)
        if channel._closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")
        if channel._endpoints.view.hopeless(wait_for_ready):
            return _PendingCall(error=_aio_error(_UNAVAILABLE, _no_instance(channel.service)))
        timeout = kwargs.pop("timeout", None)

        async def start() -> Any:
            endpoint, remaining = await channel._wait_for_instance(wait_for_ready, timeout)
            return channel._track(endpoint, endpoint.callable(self), request, timeout=remaining, **kwargs)

        return _PendingCall(start)


class AsyncBalancedChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` over every live instance of one service, balanced per call.

    Made by ``await AsyncRegistry.get_connection()`` or ``await dial(..., registry=areg)``.
    Client interceptors (``interceptors=``) apply to every endpoint channel.

    >>> channel = await areg.get_connection("user-service")     # doctest: +SKIP
    >>> reply = await pb.UserServiceStub(channel).GetUser(request)  # doctest: +SKIP
    """

    def __init__(
        self,
        registry: AsyncFollowable,
        service: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        policy: str = "round_robin",
        interceptors: Sequence[Any] | None = None,
    ) -> None:
        self.service = service
        self._registry = registry
        self._counter = itertools.count()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._tasks: dict[_Endpoint, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Future[Any]] = set()
        self._close_lock = asyncio.Lock()
        options = tuple(options)
        self._endpoints = _Endpoints(
            service,
            _check_policy(policy),
            lambda target: _open_aio_channel(target, credentials, options, interceptors),
            self._watch_state,
            self._close_endpoint,
            registry.logger,
        )
        self._endpoints.on_change = self._on_change
        self._follower = AsyncServiceFollower(registry, service, self._endpoints.update)

    async def _start(self) -> AsyncBalancedChannel:
        await self._follower.start()
        return self

    def _on_change(self) -> None:
        # Runs with the endpoint lock held; hand the wake-up to the loop.
        try:
            self._loop.call_soon_threadsafe(self._changed.set)
        except RuntimeError:  # the loop is closed
            pass

    def _watch_state(self, endpoint: _Endpoint) -> None:
        async def follow() -> None:
            channel: grpc.aio.Channel = endpoint.channel
            state = channel.get_state(try_to_connect=True)
            while not endpoint.removed:
                self._endpoints.set_state(endpoint, state)
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        self._tasks[endpoint] = asyncio.create_task(follow())

    def _close_endpoint(self, endpoint: _Endpoint) -> None:
        task = self._tasks.pop(endpoint, None)
        if task is not None:
            task.cancel()
        if self._loop.is_closed():
            return
        closing = asyncio.ensure_future(endpoint.channel.close(), loop=self._loop)
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _track(self, endpoint: _Endpoint, start: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Starts a call (already counted on `endpoint`) and uncounts it when it ends."""
        try:
            call = start(*args, **kwargs)
        except BaseException:
            self._endpoints.finished(endpoint)
            raise
        call.add_done_callback(lambda _call: self._endpoints.finished(endpoint))
        return call

    async def _wait_for_instance(
        self, wait_for_ready: bool | None, timeout: float | None
    ) -> tuple[_Endpoint, float | None]:
        """Waits until the view takes the call (see :meth:`BalancedChannel._wait_for_instance`),
        then acquires an endpoint."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise _aio_error(grpc.StatusCode.CANCELLED, "the channel was closed")
            endpoint = self._endpoints.acquire(self._counter, wait_for_ready)
            if endpoint is not None:
                return endpoint, None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._endpoints.view.hopeless(wait_for_ready):
                raise _aio_error(_UNAVAILABLE, _no_instance(self.service))
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _aio_error(_DEADLINE_EXCEEDED, _none_ready(self.service))
            self._changed.clear()
            if self._endpoints.view.takes(wait_for_ready):
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                continue

    @property
    def targets(self) -> list[str]:
        return sorted(ep.target for ep in self._endpoints.endpoints())

    def ready_targets(self) -> list[str]:
        return sorted(ep.target for ep in self._endpoints.endpoints() if ep.state == _READY)

    def _multicallable(self, kind: str, method: str, request_serializer: Any, response_deserializer: Any) -> Any:
        return _AioMultiCallable(self, kind, method, request_serializer, response_deserializer)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: Any = False) -> Any:  # fmt: skip
        return self._multicallable("unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> Any:  # fmt: skip
        return self._multicallable("unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> Any:  # fmt: skip
        return self._multicallable("stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: Any = False) -> Any:  # fmt: skip
        return self._multicallable("stream_stream", method, request_serializer, response_deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY if any endpoint is READY, else the best state among them."""
        states = {ep.state for ep in self._endpoints.endpoints()}
        for state in (_READY, grpc.ChannelConnectivity.CONNECTING, grpc.ChannelConnectivity.IDLE, _FAILING):
            if state in states:
                return state
        return _SHUTDOWN if self._closed else grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state and not self._closed:
            self._changed.clear()
            await self._changed.wait()

    async def channel_ready(self) -> None:
        """Waits until some endpoint is READY; raises ``grpc.aio.UsageError`` once closed."""
        while self.get_state() != _READY:
            if self._closed:
                raise grpc.aio.UsageError("the channel was closed")
            self._changed.clear()
            if self.get_state() == _READY:
                return
            await self._changed.wait()

    async def close(self, grace: float | None = None) -> None:
        """Stops following the service and closes every endpoint channel (waiting up to
        ``grace`` seconds for calls in flight). Idempotent; concurrent callers all return
        once it is done."""
        async with self._close_lock:
            if self._closed:
                return
            self._closed = True
            await self._follower.close()
            for task in self._tasks.values():
                task.cancel()
            self._tasks.clear()
            endpoints = self._endpoints.close_all()
            self._changed.set()
            await asyncio.gather(*(ep.channel.close(grace) for ep in endpoints), return_exceptions=True)
            if self._closing:
                await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def __aenter__(self) -> AsyncBalancedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"AsyncBalancedChannel(service={self.service!r}, policy={self._endpoints.policy!r}, targets={self.targets})"
        )


def dial(target: str, *, registry: Any, **kwargs: Any) -> Any:
    """A balanced channel for an ``etcd:///<service>`` target, as the Go component's
    resolver accepts it. With a :class:`Registry` it returns a :class:`BalancedChannel`;
    with an :class:`AsyncRegistry`, an awaitable of an :class:`AsyncBalancedChannel`.
    Keyword arguments are those of ``get_connection()``.

    >>> channel = gr.dial("etcd:///user-service", registry=reg)     # doctest: +SKIP
    >>> channel = await gr.dial("etcd:///user-service", registry=areg)  # doctest: +SKIP
    """
    service = parse_target(target)
    return registry.get_connection(service, **kwargs)
