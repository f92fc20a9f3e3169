"""The asyncio balanced channel: :class:`AsyncBalancedChannel`, a ``grpc.aio.Channel``
whose multicallables pick an endpoint per call from the endpoint set's picker, as
:class:`~genesis_registry.BalancedChannel` does; only the waiting differs.

    >>> await areg.register(instance)
    >>> channel = await areg.get_connection("user-service")
    >>> await pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    >>> await channel.close()
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from .._grpcio import ChannelOptions, aio_error, open_aio_channel
from ..follow import AsyncFollowable, AsyncServiceFollower
from .endpoints import ChannelStats, Endpoint, EndpointSet, deadline_of, no_instance, remaining
from .pickers import FAILING, READY, SHUTDOWN

__all__ = ["AsyncBalancedChannel"]


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
            return channel._endpoints.start_call(endpoint, endpoint.callable(self), request, **kwargs)
        if channel._closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")
        if channel._endpoints.picker.hopeless(wait_for_ready):
            return _PendingCall(error=aio_error(grpc.StatusCode.UNAVAILABLE, no_instance(channel.service)))
        timeout = kwargs.pop("timeout", None)

        async def start() -> Any:
            endpoint, remaining = await channel._wait_for_instance(wait_for_ready, timeout)
            return channel._endpoints.start_call(
                endpoint, endpoint.callable(self), request, timeout=remaining, **kwargs
            )

        return _PendingCall(start)


class AsyncBalancedChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` over every live instance of one service, balanced per call.

    Made by ``await AsyncRegistry.get_connection()`` or ``await dial(..., registry=areg)``.
    Client interceptors (``interceptors=``) apply to every endpoint channel.

    >>> await areg.register(instance)
    >>> channel = await areg.get_connection("user-service")
    >>> await pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    >>> await channel.close()
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
        subset_size: int | None = None,
        subset_key: str | bytes | int | None = None,
        zone: str | None = None,
        on_left_zone: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self._registry = registry
        self._counter = itertools.count()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Future[Any]] = set()
        self._close_lock = asyncio.Lock()
        self._pending_states: list[tuple[Endpoint, grpc.ChannelConnectivity]] = []
        options = tuple(options)
        self._endpoints = EndpointSet(
            service,
            policy,
            lambda target: open_aio_channel(target, credentials, options, interceptors),
            self._watch_state,
            self._close_endpoint,
            registry.logger,
            subset_size=subset_size,
            subset_key=subset_key,
            zone=zone,
            on_left_zone=on_left_zone,
        )
        self._endpoints.on_change = self._on_change
        self._follower = AsyncServiceFollower(registry, service, self._endpoints.update)

    async def start(self) -> AsyncBalancedChannel:
        """Starts following the service (its first snapshot is in when this returns) and
        returns the channel. ``AsyncRegistry.get_connection()`` and ``dial()`` call it;
        call it yourself only on a channel you constructed."""
        await self._follower.start()
        return self

    def _on_change(self) -> None:
        # Runs with the endpoint lock held; hand the wake-up to the loop.
        try:
            self._loop.call_soon_threadsafe(self._changed.set)
        except RuntimeError:  # the loop is closed
            pass

    def _watch_state(self, endpoint: Endpoint) -> None:
        async def follow() -> None:
            channel: grpc.aio.Channel = endpoint.channel
            state = channel.get_state(try_to_connect=True)
            while not endpoint.removed:
                self._state_changed(endpoint, state)
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        self._tasks[endpoint] = asyncio.create_task(follow())

    def _state_changed(self, endpoint: Endpoint, state: grpc.ChannelConnectivity) -> None:
        # Endpoints change together (a cold start, a zone going down): the changes that
        # arrive in one turn of the loop make one picker, not one each.
        if not self._pending_states:
            self._loop.call_soon(self._flush_states)
        self._pending_states.append((endpoint, state))

    def _flush_states(self) -> None:
        pending, self._pending_states = self._pending_states, []
        self._endpoints.set_states(pending)

    def _close_endpoint(self, endpoint: Endpoint) -> None:
        task = self._tasks.pop(endpoint, None)
        if task is not None:
            task.cancel()
        if self._loop.is_closed():
            return
        closing = asyncio.ensure_future(endpoint.channel.close(), loop=self._loop)
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _wait_for_instance(
        self, wait_for_ready: bool | None, timeout: float | None
    ) -> tuple[Endpoint, float | None]:
        """Waits until the picker takes the call (as the blocking twin does), then acquires
        an endpoint."""
        deadline = deadline_of(timeout)
        while True:
            if self._closed:
                raise aio_error(grpc.StatusCode.CANCELLED, "the channel was closed")
            endpoint = self._endpoints.acquire(self._counter, wait_for_ready)
            if endpoint is not None:
                return endpoint, remaining(deadline)
            refusal = self._endpoints.refusal(wait_for_ready, deadline)
            if refusal is not None:
                raise aio_error(*refusal)
            self._changed.clear()
            if self._endpoints.picker.takes(wait_for_ready):
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), remaining(deadline))
            except asyncio.TimeoutError:
                continue

    @property
    def targets(self) -> list[str]:
        return self._endpoints.targets()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def ready_targets(self) -> list[str]:
        return self._endpoints.targets(READY)

    def stats(self) -> ChannelStats:
        """See :meth:`BalancedChannel.stats`.

        >>> await areg.register(instance)
        >>> channel = await areg.get_connection("user-service", subset_size=1)
        >>> (channel.stats().known, channel.stats().subset)
        (1, 1)
        >>> await channel.close()
        """
        return self._endpoints.stats()

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
        for state in (READY, grpc.ChannelConnectivity.CONNECTING, grpc.ChannelConnectivity.IDLE, FAILING):
            if state in states:
                return state
        return SHUTDOWN if self._closed else grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state and not self._closed:
            self._changed.clear()
            await self._changed.wait()

    async def channel_ready(self) -> None:
        """Waits until some endpoint is READY; raises ``grpc.aio.UsageError`` once closed."""
        while self.get_state() != READY:
            if self._closed:
                raise grpc.aio.UsageError("the channel was closed")
            self._changed.clear()
            if self.get_state() == READY:
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
