"""gRPC channels balanced over a service's live instances.

grpcio has no plug-in point for name resolvers or load-balancing policies, so the
balancing happens here: a :class:`BalancedChannel` (a ``grpc.Channel``) keeps one grpcio
channel per instance endpoint and picks one **per call** from an immutable picker, which the
registry's snapshot of the service feeds. Every usable endpoint of every instance is an
address to balance over, as the Go component's resolver hands them all to gRPC. Stubs
built once keep working, and stay balanced, as instances come and go.
:class:`AsyncBalancedChannel` is the ``grpc.aio.Channel`` twin. :func:`dial` accepts the
Go component's ``etcd:///<service>`` target form.

    >>> reg.register(instance)
    >>> with reg.get_connection("user-service") as channel:
    ...     pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    >>> with gr.dial("etcd:///user-service", registry=reg) as channel:
    ...     pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'

Behaviour, shared by both twins (the logic lives in :class:`~.endpoints.EndpointSet` and
the pickers):

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

The package, one job per module: ``targets`` (the ``etcd:///`` form and the endpoint
grammar, asked of the core), ``pickers`` (one class per policy, by name), ``endpoints``
(the endpoint set: no I/O), ``sync`` and ``aio`` (the two channels, differing only in
how they wait). What grpcio lacks, and the reads of its private state, are in
``genesis_registry._grpcio``, shared with the stream manager.
"""

from __future__ import annotations

from typing import Any

from .aio import AsyncBalancedChannel
from .endpoints import ChannelStats
from .pickers import POLICIES
from .sync import BalancedChannel
from .targets import endpoint_target, parse_target

__all__ = [
    "POLICIES",
    "AsyncBalancedChannel",
    "BalancedChannel",
    "ChannelStats",
    "dial",
    "endpoint_target",
    "parse_target",
]


def dial(target: str, *, registry: Any, **kwargs: Any) -> Any:
    """A balanced channel for an ``etcd:///<service>`` target, as the Go component's
    resolver accepts it. With a :class:`Registry` it returns a :class:`BalancedChannel`;
    with an :class:`AsyncRegistry`, an awaitable of an :class:`AsyncBalancedChannel`.
    Keyword arguments are those of ``get_connection()``: with ``mode="native"``, grpcio's
    own channel (``grpc.Channel`` or ``grpc.aio.Channel``) balanced by its C core.

    >>> reg.register(instance)
    >>> with gr.dial("etcd:///user-service", registry=reg) as channel:
    ...     pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    >>> channel = await gr.dial("etcd:///user-service", registry=areg)  # areg: an AsyncRegistry
    >>> await pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    >>> await channel.close()
    >>> with gr.dial("etcd:///user-service", registry=reg, mode="native") as channel:
    ...     pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    """
    service = parse_target(target)
    return registry.get_connection(service, **kwargs)
