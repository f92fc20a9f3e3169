"""Pickers: how a call chooses its endpoint, one small class per policy.

As in grpc-go's balancer, the endpoint set builds an immutable *picker* from its endpoints
whenever they change, and every call asks the current picker for an endpoint without a
lock. Each policy is a :class:`Picker` subclass registered under its name with
:func:`policy`; a new policy is one class here, not a branch elsewhere.

    >>> sorted(PICKERS)
    ['pick_first', 'round_robin']
    >>> picker_for("round_robin").__name__
    'RoundRobinPicker'

A picker holds no I/O: it sees endpoints only through :class:`Candidate` (connectivity,
whether removed, weight), so it is tested with plain objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import grpc

from ..errors import InvalidConfigError

__all__ = ["PICKERS", "POLICIES", "Candidate", "PickFirstPicker", "Picker", "RoundRobinPicker", "picker_for", "policy"]

READY = grpc.ChannelConnectivity.READY
FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN

#: The longest weighted round robin schedule; larger weight sums are scaled down.
MAX_SCHEDULE = 1000


class Candidate(Protocol):
    """What a picker reads of an endpoint."""

    @property
    def state(self) -> grpc.ChannelConnectivity: ...
    @property
    def removed(self) -> bool: ...
    @property
    def weight(self) -> int: ...


E = TypeVar("E", bound=Candidate)
P = TypeVar("P", bound="type[Picker[Any]]")


class Picker(Generic[E]):
    """An immutable picture of the endpoints calls may use, and how a call picks one.

    ``build()`` makes the picture from the endpoints (in rank order) and the previous
    picker; ``pick()`` chooses for one call. The base class is the empty picture."""

    __slots__ = ("connecting", "first", "left_zone", "ready", "schedule")

    #: The policy name the picker is registered under.
    name: ClassVar[str] = ""

    def __init__(self, schedule: list[E], first: E | None, ready: bool, connecting: bool = False) -> None:
        self.schedule = schedule
        self.first = first
        #: Whether the schedule holds READY endpoints (not only connecting ones).
        self.ready = ready
        #: With an empty schedule: whether endpoints are still connecting, so that a call
        #: waits for one to be READY rather than failing.
        self.connecting = connecting
        #: Whether calls go outside the caller's zone (set by the endpoint set).
        self.left_zone = False

    @classmethod
    def build(cls, endpoints: Sequence[E], previous: Picker[E]) -> Picker[E]:
        """The picker for ``endpoints`` (sorted by rank), after ``previous``."""
        raise NotImplementedError

    def pick(self, counter: Iterator[int]) -> E | None:
        """The endpoint for one call (the schedule is not empty); ``counter`` counts calls."""
        return None

    def takes(self, wait_for_ready: bool | None) -> bool:
        """Whether a call (``wait_for_ready`` or not) can be given an endpoint now."""
        return bool(self.schedule) and (self.ready or not wait_for_ready)

    def hopeless(self, wait_for_ready: bool | None) -> bool:
        """Whether a call that cannot be given an endpoint now fails at once."""
        return not wait_for_ready and not self.connecting


#: The policies by name.
PICKERS: dict[str, type[Picker[Any]]] = {}


def policy(name: str) -> Callable[[P], P]:
    """Registers a :class:`Picker` subclass as the policy ``name``: a new policy is one
    class (here, every call to the endpoint ranked first, whatever its state).

    >>> @policy("first_ranked")
    ... class FirstRankedPicker(Picker):
    ...     @classmethod
    ...     def build(cls, endpoints, previous):
    ...         return cls(list(endpoints[:1]), endpoints[0] if endpoints else None, ready=True)
    ...     def pick(self, counter):
    ...         return self.first
    >>> picker_for("first_ranked") is FirstRankedPicker
    True
    >>> del PICKERS["first_ranked"]  # this example's policy goes away again
    """

    def register(cls: P) -> P:
        cls.name = name
        PICKERS[name] = cls
        return cls

    return register


def picker_for(name: str) -> type[Picker[Any]]:
    """The picker class of policy ``name``; :class:`InvalidConfigError` if there is none.

    >>> try:
    ...     picker_for("fastest")
    ... except InvalidConfigError as error:
    ...     print(error)
    unknown load-balancing policy 'fastest'; use one of round_robin, pick_first
    """
    found = PICKERS.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidConfigError(f"unknown load-balancing policy {name!r}; use one of {', '.join(PICKERS)}")
    return found


def _usable(endpoint: Candidate) -> bool:
    return endpoint.state not in (FAILING, SHUTDOWN)


@policy("round_robin")
class RoundRobinPicker(Picker[E]):
    """Spreads calls over READY endpoints (or, while none is, over those not failing); a
    smooth weighted round robin when their weights differ.

    >>> import itertools
    >>> from types import SimpleNamespace as E
    >>> a = E(name="a", state=READY, removed=False, weight=2)
    >>> b = E(name="b", state=READY, removed=False, weight=1)
    >>> c = E(name="c", state=FAILING, removed=False, weight=1)
    >>> picker, calls = RoundRobinPicker.build([a, b, c], Picker([], None, False)), itertools.count()
    >>> [picker.pick(calls).name for _ in range(6)]
    ['a', 'b', 'a', 'a', 'b', 'a']
    """

    __slots__ = ()

    @classmethod
    def build(cls, endpoints: Sequence[E], previous: Picker[E]) -> Picker[E]:
        ready = [ep for ep in endpoints if ep.state == READY]
        usable = ready or [ep for ep in endpoints if _usable(ep)] or list(endpoints)
        return cls(smooth_schedule(usable), usable[0] if usable else None, bool(ready))

    def pick(self, counter: Iterator[int]) -> E | None:
        return self.schedule[next(counter) % len(self.schedule)]


@policy("pick_first")
class PickFirstPicker(Picker[E]):
    """Every call to one endpoint: the first READY one in rank order, kept for as long as
    it is usable (READY, or reconnecting after a drop).

    >>> import itertools
    >>> from types import SimpleNamespace as E
    >>> a = E(name="a", state=grpc.ChannelConnectivity.CONNECTING, removed=False, weight=1)
    >>> b = E(name="b", state=READY, removed=False, weight=1)
    >>> picker = PickFirstPicker.build([a, b], Picker([], None, False))
    >>> picker.pick(itertools.count()).name
    'b'
    >>> a.state = READY  # a ranks first, but calls stay where they went
    >>> PickFirstPicker.build([a, b], picker).pick(itertools.count()).name
    'b'
    """

    __slots__ = ()

    @classmethod
    def build(cls, endpoints: Sequence[E], previous: Picker[E]) -> Picker[E]:
        # Sticky: the chosen endpoint keeps every call while it is usable, reconnecting
        # included; a new one is chosen only among READY endpoints, so that calls made
        # while all are connecting wait and then go where the later ones go.
        kept = previous.first
        if kept is None or kept.removed or not _usable(kept):
            kept = next((ep for ep in endpoints if ep.state == READY), None)
        connecting = kept is None and any(_usable(ep) for ep in endpoints)
        return cls([kept] if kept else [], kept, kept is not None and kept.state == READY, connecting)

    def pick(self, counter: Iterator[int]) -> E | None:
        return self.first


#: The policies this package ships (a tuple, as before pickers had a registry); a channel
#: also accepts any policy registered later with :func:`policy` (see :data:`PICKERS`).
POLICIES = tuple(PICKERS)


def smooth_schedule(endpoints: Sequence[E]) -> list[E]:
    """A weighted round robin order in which each endpoint appears as often as its
    weight says, spread out rather than in runs (nginx's smooth weighted round robin).

    >>> from types import SimpleNamespace as E
    >>> a, b = E(name="a", weight=2), E(name="b", weight=1)
    >>> [e.name for e in smooth_schedule([a, b])]
    ['a', 'b', 'a']
    """
    weights = [ep.weight for ep in endpoints]
    if len(set(weights)) <= 1:
        return list(endpoints)
    divisor = math.gcd(*weights)
    weights = [w // divisor for w in weights]
    total = sum(weights)
    if total > MAX_SCHEDULE:
        weights = [max(1, round(w * MAX_SCHEDULE / total)) for w in weights]
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
