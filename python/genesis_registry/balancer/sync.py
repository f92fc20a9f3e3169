"""The blocking balanced channel: :class:`BalancedChannel`, a ``grpc.Channel`` whose
multicallables pick an endpoint per call from the endpoint set's picker.

    >>> reg.register(instance)
    >>> with reg.get_connection("user-service") as channel:
    ...     pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import grpc

from .._connectivity import MONITOR
from .._grpcio import (
    ChannelOptions,
    FailedCall,
    StreamStreamBase,
    StreamUnaryBase,
    UnaryStreamBase,
    UnaryUnaryBase,
    open_channel,
)
from ..follow import Followable, ServiceFollower
from .endpoints import ChannelStats, Endpoint, EndpointSet, deadline_of, remaining
from .pickers import READY

__all__ = ["BalancedChannel"]


Metadata = tuple[tuple[str, str | bytes], ...] | None


class _MultiCallable:
    """A per-call balancing multicallable of a :class:`BalancedChannel`."""

    kind = ""

    def __init__(self, channel: BalancedChannel, method: str, request_serializer: Any, response_deserializer: Any):
        self._channel = channel
        self.method = method
        self.request_serializer = request_serializer
        self.response_deserializer = response_deserializer
        self.key = (self.kind, method, request_serializer, response_deserializer)

    def _acquire(self, wait_for_ready: bool | None, timeout: float | None) -> tuple[Endpoint, float | None]:
        """An endpoint with this call counted on it (release with `finished`)."""
        endpoint = self._channel._endpoints.acquire(self._channel._counter, wait_for_ready)
        if endpoint is not None:
            return endpoint, timeout
        return self._channel._wait_for_instance(wait_for_ready, timeout)

    def _start_call(
        self,
        how: str | None,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        """Starts a call that goes on after this returns (a future: ``how`` names the
        grpcio method, or a response stream: None); with no endpoint to take it, the
        failed call."""
        try:
            endpoint, timeout = self._acquire(wait_for_ready, timeout)
        except FailedCall as failed:
            return failed
        start = endpoint.callable(self)
        if how is not None:
            start = getattr(start, how)
        return self._channel._endpoints.start_call(
            endpoint, start, request, timeout, metadata, credentials, wait_for_ready, compression
        )


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
        failure = None
        try:
            return endpoint.callable(self)(request, timeout, metadata, credentials, wait_for_ready, compression)
        except grpc.RpcError as error:
            failure = error
            raise
        finally:
            self._channel._endpoints.finished(endpoint, failure)

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
        failure = None
        try:
            call = endpoint.callable(self)
            return call.with_call(request, timeout, metadata, credentials, wait_for_ready, compression)  # type: ignore[no-any-return]
        except grpc.RpcError as error:
            failure = error
            raise
        finally:
            self._channel._endpoints.finished(endpoint, failure)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._start_call("future", request, timeout, metadata, credentials, wait_for_ready, compression)


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
        return self._start_call(None, request, timeout, metadata, credentials, wait_for_ready, compression)


# The request is named `request_iterator` in grpcio's stream-request signatures; these are
# positional there, so the shared implementations fit.
class _UnaryUnary(_UnaryResponse, UnaryUnaryBase):
    kind = "unary_unary"


class _StreamUnary(_UnaryResponse, StreamUnaryBase):
    kind = "stream_unary"


class _UnaryStream(_StreamResponse, UnaryStreamBase):
    kind = "unary_stream"


class _StreamStream(_StreamResponse, StreamStreamBase):
    kind = "stream_stream"


class BalancedChannel(grpc.Channel):
    """A ``grpc.Channel`` over every live instance of one service, balanced per call.

    Made by :meth:`Registry.get_connection` or :func:`dial`; close it when done (or use
    ``with``). ``grpc.intercept_channel()`` works over it.

    >>> reg.register(instance)
    >>> with reg.get_connection("user-service") as channel:
    ...     pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    """

    def __init__(
        self,
        registry: Followable,
        service: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        policy: str = "round_robin",
        subset_size: int | None = None,
        subset_key: str | bytes | int | None = None,
        zone: str | None = None,
        on_left_zone: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self._counter = itertools.count()
        self._closed = False
        self._close_lock = threading.Lock()
        options = tuple(options)
        self._endpoints = EndpointSet(
            service,
            policy,
            lambda target: open_channel(target, credentials, options),
            self._watch_state,
            self._close_endpoint,
            registry.logger,
            subset_size=subset_size,
            subset_key=subset_key,
            zone=zone,
            on_left_zone=on_left_zone,
        )
        self._endpoints.on_unavailable = self._recheck
        self._follower = ServiceFollower(registry, service, self._endpoints.update)

    def _watch_state(self, endpoint: Endpoint) -> None:
        # One thread per process follows every endpoint channel (see _connectivity).
        endpoint.watch = MONITOR.watch(endpoint.channel, self._endpoints.set_states, endpoint)

    def _recheck(self, endpoint: Endpoint) -> None:
        if endpoint.watch is not None:
            endpoint.watch.nudge()

    def _close_endpoint(self, endpoint: Endpoint, *, later: bool = True) -> None:
        # Left to the monitor's thread by default: the endpoint set closes a drained
        # endpoint from its last call's done-callback, which may run on the grpcio thread
        # that has to wind that call up for the close to return.
        if endpoint.watch is None:  # failed before it was watched
            endpoint.channel.close()
        elif later:
            endpoint.watch.close_later()
        else:
            endpoint.watch.close()

    def _wait_for_instance(self, wait_for_ready: bool | None, timeout: float | None) -> tuple[Endpoint, float | None]:
        """Waits until the picker takes the call (a wait_for_ready call, or endpoints still
        connecting), then acquires an endpoint; raises as grpcio would when it cannot."""
        deadline = deadline_of(timeout)
        endpoints = self._endpoints
        while True:
            with endpoints.changed:
                while not self._closed and not endpoints.picker.takes(wait_for_ready):
                    refusal = endpoints.refusal(wait_for_ready, deadline)
                    if refusal is not None:
                        raise FailedCall(*refusal)
                    endpoints.changed.wait(remaining(deadline))
            if self._closed:
                raise ValueError("Cannot invoke RPC on closed channel!")
            endpoint = endpoints.acquire(self._counter, wait_for_ready)
            if endpoint is not None:
                return endpoint, remaining(deadline)

    @property
    def targets(self) -> list[str]:
        """The endpoints this channel currently balances over (``host:port``)."""
        return self._endpoints.targets()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def ready_targets(self) -> list[str]:
        """The endpoints whose channel is READY."""
        return self._endpoints.targets(READY)

    def stats(self) -> ChannelStats:
        """How many endpoints the channel knows, has chosen (its subset), has open and
        READY, and how many calls left the zone (see :class:`ChannelStats`).

        >>> reg.register(instance)
        >>> with reg.get_connection("user-service", subset_size=32) as channel:
        ...     stats = channel.stats()
        >>> stats.known, stats.subset, stats.subset_size
        (1, 1, 32)
        """
        return self._endpoints.stats()

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        """Not supported: connectivity is per endpoint here (see ``ready_targets()``)."""
        raise NotImplementedError("a balanced channel has no single connectivity state; see ready_targets()")

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        raise NotImplementedError("a balanced channel has no single connectivity state")

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: Any = False) -> UnaryUnaryBase:  # fmt: skip
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> UnaryStreamBase:  # fmt: skip
        return _UnaryStream(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> StreamUnaryBase:  # fmt: skip
        return _StreamUnary(self, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: Any = False) -> StreamStreamBase:  # fmt: skip
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
                self._close_endpoint(endpoint, later=False)
            with self._endpoints.changed:
                self._endpoints.changed.notify_all()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BalancedChannel(service={self.service!r}, policy={self._endpoints.policy!r}, targets={self.targets})"
