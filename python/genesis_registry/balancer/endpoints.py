"""The endpoint set of one balanced channel: every usable endpoint of every instance of
the service, which of them the channel connects to (its subset, and the caller's zone
first), their connectivity and weights, and the picker calls choose from.

Pure bookkeeping, shared by both channel twins: the set opens, watches and closes
endpoint channels only through the three functions a twin hands it, so it runs (and is
tested) with any object standing for a channel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from ..model import ServiceInstance
from .pickers import FAILING, READY, SHUTDOWN, Picker, picker_for
from .subsets import SubsetChooser
from .targets import InstanceTargets

__all__ = ["EMPTY", "ChannelStats", "Endpoint", "EndpointSet", "instance_weight"]


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
        "in_zone",
        "instance",
        "rank",
        "removed",
        "state",
        "target",
        "watch",
        "weight",
    )

    def __init__(self, target: str, instance: ServiceInstance, index: int, channel: Any) -> None:
        self.target = target
        #: Whether the instance is of the caller's zone (False when the channel has none).
        self.in_zone = False
        #: What follows the channel's connectivity (the twin's: a monitor watch, a task).
        self.watch: Any = None
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


@dataclass(frozen=True)
class ChannelStats:
    """What a balanced channel holds, from ``channel.stats()``.

    >>> reg.register(instance)
    >>> with reg.get_connection("user-service", subset_size=2) as channel:
    ...     channel.stats().known, channel.stats().subset
    (1, 1)
    """

    #: The service the channel balances over.
    service: str
    #: Its load-balancing policy.
    policy: str
    #: Endpoints of the service's instances (every usable one).
    known: int
    #: Endpoints the channel chose to connect to: all of them without ``subset_size``;
    #: with a zone, the failover endpoints too while they are in use.
    subset: int
    #: Endpoints with a grpcio channel open (being connected, connected, or draining the
    #: calls in flight of a removed endpoint).
    connected: int
    #: Endpoints whose channel is READY.
    ready: int
    #: The ``subset_size`` asked for (None: every endpoint).
    subset_size: int | None
    #: The caller's zone (None: no zone preference).
    zone: str | None
    #: Whether calls go outside the zone now, the zone having no READY endpoint.
    failover: bool
    #: Calls sent outside the zone so far.
    calls_left_zone: int


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


def _unavailable(call: Any) -> bool:
    try:
        return bool(call.code() == grpc.StatusCode.UNAVAILABLE)
    except Exception:  # not a call that knows its code
        return False


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
        *,
        subset_size: int | None = None,
        subset_key: str | bytes | int | None = None,
        zone: str | None = None,
        on_left_zone: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self._picker_class = picker_for(policy)
        self._on_left_zone = on_left_zone
        self.policy = policy
        self._chooser = SubsetChooser(subset_size, subset_key, zone)
        self.zone = self._chooser.zone
        #: Every usable endpoint of the service: its instance and place among the
        #: instance's endpoints.
        self._known: dict[str, tuple[ServiceInstance, int]] = {}
        #: Whether the failover endpoints are connected (a zone with a subset only).
        self._failover = False
        self._left_zone = 0
        self._left_zone_lock = threading.Lock()
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
        #: Set by the blocking twin: a call on the endpoint failed UNAVAILABLE, so its
        #: connection may have dropped since its state was last read.
        self.on_unavailable: Callable[[Endpoint], None] | None = None

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
        call.add_done_callback(lambda call: self.finished(endpoint, call))
        return call

    def update(self, instances: Sequence[ServiceInstance]) -> None:
        """Reconciles the endpoints with the service's current instances: every usable
        endpoint of every instance (an endpoint two instances share is balanced once) is
        known; the chosen ones (see :class:`~.subsets.SubsetChooser`) are connected."""
        known: dict[str, tuple[ServiceInstance, int]] = {}
        for instance, targets in self._targets.read(instances):
            for index, target in enumerate(targets):
                known.setdefault(target, (instance, index))
        with self._lock:
            self._known = known
            added, idle_removed = self._reconcile()
            self._reweigh()
            self._publish()
        self._settle(added, idle_removed)

    def _reconcile(self) -> tuple[list[Endpoint], list[Endpoint]]:
        """Opens the chosen endpoints not open yet and retires those no longer chosen
        (lock held); returns (added, removed and idle) for :meth:`_settle`."""
        zone = self.zone
        in_zone = {t: zone is not None and inst.metadata.get("zone") == zone for t, (inst, _) in self._known.items()}
        chosen = self._chooser.choose(in_zone)
        if self._failover:
            primary = set(chosen)
            chosen += [t for t in self._chooser.failover(in_zone) if t not in primary]
        wanted = set(chosen)
        added: list[Endpoint] = []
        idle_removed: list[Endpoint] = []
        for target in [t for t in self._by_target if t not in wanted]:
            gone = self._by_target.pop(target)
            if gone.retire():
                idle_removed.append(gone)
            else:
                self._draining.add(gone)
        for target in chosen:
            instance, index = self._known[target]
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
            current.in_zone = in_zone[target]
        return added, idle_removed

    def _settle(self, added: list[Endpoint], idle_removed: list[Endpoint]) -> None:
        """Closes what :meth:`_reconcile` retired idle and watches what it opened (lock
        not held: the twins' functions do I/O)."""
        for endpoint in idle_removed:
            self._close_channel(endpoint)
        for endpoint in added:
            self._watch_state(endpoint)

    def set_states(self, changes: Iterable[tuple[Endpoint, grpc.ChannelConnectivity]]) -> None:
        """Endpoints changed state: one new picker for the whole batch. With a zone and a
        subset, the failover endpoints are connected when the zone has no READY endpoint
        left, and retired once one is READY again."""
        added: list[Endpoint] = []
        idle_removed: list[Endpoint] = []
        with self._lock:
            changed = False
            for endpoint, state in changes:
                if not endpoint.removed and endpoint.state != state:
                    endpoint.state = state
                    changed = True
            if not changed:
                return
            if self.zone is not None and self._chooser.size is not None:
                failover = self._zone_down()
                if failover != self._failover:
                    self._failover = failover
                    added, idle_removed = self._reconcile()
                    self._reweigh()
            self._publish()
        self._settle(added, idle_removed)

    def _zone_down(self) -> bool:
        """Whether calls should fail over: no endpoint of the zone is READY, and every one
        has failed (none is still connecting for the first time, or idle). Once on,
        failover stays on until one is READY: reconnecting is not recovering."""
        local = [ep for ep in self._by_target.values() if ep.in_zone]
        if any(ep.state == READY for ep in local):
            return False
        return self._failover or all(ep.state in (FAILING, SHUTDOWN) for ep in local)

    def finished(self, endpoint: Endpoint, call: Any = None) -> None:
        """A call on `endpoint` ended (``call``: how, when the caller has it); a removed
        endpoint closes with its last call."""
        if call is not None and self.on_unavailable is not None and _unavailable(call):
            self.on_unavailable(endpoint)
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
                if picker.left_zone:
                    self._left_zone_call()
                return endpoint
            # Taken out of service since the picker was read: wait for the update to end.
            with self._lock:
                pass
        return None

    def _left_zone_call(self) -> None:
        with self._left_zone_lock:
            self._left_zone += 1
        if self._on_left_zone is not None:
            self._on_left_zone()

    def refusal(self, wait_for_ready: bool | None, deadline: float | None) -> tuple[grpc.StatusCode, str] | None:
        """For a call the picker does not take now: the status it fails with at once (no
        endpoint to wait for, or its ``deadline``, a ``time.monotonic()``, passed), or
        None if it may wait for a change."""
        if self.picker.hopeless(wait_for_ready):
            return grpc.StatusCode.UNAVAILABLE, no_instance(self.service)
        if deadline is not None and deadline <= time.monotonic():
            return grpc.StatusCode.DEADLINE_EXCEEDED, none_ready(self.service)
        return None

    def stats(self) -> ChannelStats:
        """What the channel holds now (see :class:`ChannelStats`)."""
        with self._lock:
            endpoints = list(self._by_target.values())
            return ChannelStats(
                service=self.service,
                policy=self.policy,
                known=len(self._known),
                subset=len(endpoints),
                connected=len(endpoints) + len(self._draining),
                ready=sum(ep.state == READY for ep in endpoints),
                subset_size=self._chooser.size,
                zone=self.zone,
                failover=self.picker.left_zone,
                calls_left_zone=self._left_zone,
            )

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
        """Builds the picker calls choose from (lock held). With a zone, calls go to the
        zone's endpoints while one is READY, else to the others' READY ones (failover);
        with none READY anywhere, the zone's endpoints still connecting are waited for."""
        endpoints = sorted(self._by_target.values(), key=lambda ep: ep.rank)
        previous = self.picker
        if self.zone is None:
            self.picker = self._picker_class.build(endpoints, previous)
        else:
            local = [ep for ep in endpoints if ep.in_zone]
            others = [ep for ep in endpoints if not ep.in_zone]
            leave = not any(ep.state == READY for ep in local) and any(ep.state == READY for ep in others)
            if not leave and not any(ep.state not in (FAILING, SHUTDOWN) for ep in local):
                local = endpoints  # nothing of the zone to wait for: whatever may come first
            # A sticky policy does not carry its choice across the zone boundary.
            after = previous if previous.left_zone == leave else EMPTY
            self.picker = self._picker_class.build(others if leave else local, after)
            self.picker.left_zone = leave
        self.changed.notify_all()
        if self.on_change is not None:
            self.on_change()
