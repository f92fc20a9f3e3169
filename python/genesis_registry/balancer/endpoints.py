"""The endpoint set of one balanced channel: every usable endpoint of every instance of
the service, their connectivity and weights, and the picker calls choose from.

Pure bookkeeping, shared by both channel twins: the set opens, watches and closes
endpoint channels only through the three functions a twin hands it, so it runs (and is
tested) with any object standing for a channel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import grpc

from ..model import ServiceInstance
from .pickers import Picker, picker_for
from .targets import InstanceTargets

__all__ = ["EMPTY", "Endpoint", "EndpointSet", "instance_weight"]


class _Method(Protocol):
    """A method a multicallable stands for (``kind`` is the grpcio factory's name)."""

    kind: str
    method: str
    request_serializer: Any
    response_deserializer: Any
    key: tuple[Any, ...]


class Endpoint:
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

    def callable(self, method: _Method) -> Any:
        """This endpoint's grpcio multicallable for ``method``, made once per method
        (stubs made per request share it)."""
        found = self._callables.get(method.key)
        if found is None:
            make = getattr(self.channel, method.kind)
            found = make(method.method, method.request_serializer, method.response_deserializer)
            self._callables[method.key] = found
        return found

    def begin(self) -> bool:
        """Counts a call starting here; False if the endpoint was just taken out of service."""
        with self._lock:
            if self.removed:
                return False
            self._inflight += 1
            return True

    def end(self) -> bool:
        """Counts a finished call; True when a removed endpoint just became idle."""
        with self._lock:
            self._inflight -= 1
            return self.removed and self._inflight == 0

    def retire(self) -> bool:
        """Takes the endpoint out of service; True if it is idle (close it now)."""
        with self._lock:
            self.removed = True
            return self._inflight == 0

    def __repr__(self) -> str:
        return f"Endpoint({self.target!r}, {self.instance.id!r}, {self.state.name}, weight={self.weight})"


#: The picker of no endpoint at all.
EMPTY: Picker[Endpoint] = Picker([], None, False)


def instance_weight(instance: ServiceInstance) -> int | None:
    """An instance's ``weight`` metadata, if it is a positive integer.

    >>> instance_weight(ServiceInstance(id="a", name="s", metadata={"weight": "3"}))
    3
    >>> instance_weight(ServiceInstance(id="a", name="s", metadata={"weight": "-1"})) is None
    True
    """
    raw = instance.metadata.get("weight")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def no_instance(service: str) -> str:
    """Why a call failed at once: the service has no instance to take it."""
    return f"no instance of service {service!r} is available"


def none_ready(service: str) -> str:
    """Why a waiting call failed: its deadline came first."""
    return f"no instance of service {service!r} was ready before the deadline"


def deadline_of(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` at which a call with ``timeout`` runs out of time."""
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class EndpointSet:
    """The endpoint set of one balanced channel: reconciles it with the service's
    instances, tracks connectivity, and publishes pickers. Shared by both channel twins;
    ``open_channel``, ``watch_state`` and ``close_channel`` are theirs."""

    def __init__(
        self,
        service: str,
        policy: str,
        open_channel: Callable[[str], Any],
        watch_state: Callable[[Endpoint], None],
        close_channel: Callable[[Endpoint], None],
        logger: logging.Logger,
    ) -> None:
        self.service = service
        self._picker_class = picker_for(policy)
        self.policy = policy
        self._open_channel = open_channel
        self._watch_state = watch_state
        self._close_channel = close_channel
        self._logger = logger
        self._lock = threading.Lock()
        self._by_target: dict[str, Endpoint] = {}
        #: Removed endpoints with calls still in flight; closed with their last call.
        self._draining: set[Endpoint] = set()
        self._targets = InstanceTargets(service, logger, "skipping it")
        self.picker: Picker[Endpoint] = EMPTY
        self.changed = threading.Condition(self._lock)
        #: Set by the async twin to wake waiters on its event loop.
        self.on_change: Callable[[], None] | None = None

    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            return list(self._by_target.values())

    def targets(self, state: grpc.ChannelConnectivity | None = None) -> list[str]:
        """The targets of the endpoints (those in ``state`` only, if given), sorted."""
        return sorted(ep.target for ep in self.endpoints() if state is None or ep.state == state)

    def start_call(self, endpoint: Endpoint, start: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Starts a call (already counted on ``endpoint``) and uncounts it when it ends."""
        try:
            call = start(*args, **kwargs)
        except BaseException:
            self.finished(endpoint)
            raise
        call.add_done_callback(lambda _call: self.finished(endpoint))
        return call

    def update(self, instances: Sequence[ServiceInstance]) -> None:
        """Reconciles the endpoints with the service's current instances: every usable
        endpoint of every instance (an endpoint two instances share is balanced once)."""
        wanted: dict[str, tuple[ServiceInstance, int]] = {}
        for instance, targets in self._targets.read(instances):
            for index, target in enumerate(targets):
                wanted.setdefault(target, (instance, index))
        added: list[Endpoint] = []
        idle_removed: list[Endpoint] = []
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
                    current = Endpoint(target, instance, index, channel)
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

    def set_state(self, endpoint: Endpoint, state: grpc.ChannelConnectivity) -> None:
        with self._lock:
            if endpoint.removed or endpoint.state == state:
                return
            endpoint.state = state
            self._publish()

    def finished(self, endpoint: Endpoint) -> None:
        """A call on `endpoint` ended; a removed endpoint closes with its last call."""
        if endpoint.end():
            with self._lock:
                if endpoint not in self._draining:
                    return  # close_all() took it
                self._draining.discard(endpoint)
            self._close_channel(endpoint)

    def acquire(self, counter: Iterator[int], need_ready: bool | None = False) -> Endpoint | None:
        """The endpoint for the next call, per the policy, with the call counted on it;
        None when the picker takes no call now (see `Picker.takes`; `need_ready` is the
        call's wait_for_ready)."""
        for _ in range(3):
            picker = self.picker
            if not picker.schedule or (need_ready and not picker.ready):  # picker.takes(), inlined: every call runs it
                return None
            endpoint = picker.pick(counter)
            if endpoint is not None and endpoint.begin():
                return endpoint
            # Taken out of service since the picker was read: wait for the update to end.
            with self._lock:
                pass
        return None

    def refusal(self, wait_for_ready: bool | None, deadline: float | None) -> tuple[grpc.StatusCode, str] | None:
        """For a call the picker does not take now: the status it fails with at once (no
        endpoint to wait for, or its ``deadline``, a ``time.monotonic()``, passed), or
        None if it may wait for a change."""
        if self.picker.hopeless(wait_for_ready):
            return grpc.StatusCode.UNAVAILABLE, no_instance(self.service)
        if deadline is not None and deadline <= time.monotonic():
            return grpc.StatusCode.DEADLINE_EXCEEDED, none_ready(self.service)
        return None

    def close_all(self) -> list[Endpoint]:
        """Every endpoint, draining ones included, taken out for closing."""
        with self._lock:
            endpoints = list(self._by_target.values()) + list(self._draining)
            self._by_target.clear()
            self._draining.clear()
            for endpoint in endpoints:
                endpoint.removed = True
            self.picker = EMPTY
            self.changed.notify_all()
        return endpoints

    def _reweigh(self) -> None:
        """Every endpoint takes its instance's weight; instances without one count as the
        mean of the declared weights (each instance counted once, whatever its endpoints)."""
        endpoints = list(self._by_target.values())
        instances = {ep.instance.id: ep.instance for ep in endpoints}
        declared = [w for w in map(instance_weight, instances.values()) if w is not None]
        default = round(sum(declared) / len(declared)) if declared else 1
        for endpoint in endpoints:
            endpoint.weight = instance_weight(endpoint.instance) or default

    def _publish(self) -> None:
        """Builds the picker calls choose from (lock held)."""
        endpoints = sorted(self._by_target.values(), key=lambda ep: ep.rank)
        self.picker = self._picker_class.build(endpoints, self.picker)
        self.changed.notify_all()
        if self.on_change is not None:
            self.on_change()
