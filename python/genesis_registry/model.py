"""The data model: :class:`ServiceInstance` (from the Rust core), :class:`ServiceEvent`,
:class:`EventType`, :class:`LeaseTime`.

    >>> import genesis_registry as gr
    >>> inst = gr.ServiceInstance(id="user-1", name="user-service", version="1.0.0",
    ...                           metadata={"zone": "a"}, endpoints=["grpc://127.0.0.1:9001"])
    >>> inst.metadata["zone"], inst.endpoints
    ('a', ('grpc://127.0.0.1:9001',))
    >>> gr.ServiceEvent(gr.EventType.PUT, inst).type
    <EventType.PUT: 'PUT'>
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._core import ServiceInstance

__all__ = ["EventType", "LeaseTime", "ServiceEvent", "ServiceInstance"]


class EventType(str, enum.Enum):
    """What happened to an instance. Compares equal to its string value.

    >>> EventType.PUT == "PUT", str(EventType.DELETE)
    (True, 'DELETE')
    """

    PUT = "PUT"
    DELETE = "DELETE"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """A change to a service. A DELETE carries an instance with only ``id`` and ``name``.

    >>> event = ServiceEvent(EventType.DELETE, ServiceInstance(id="user-1", name="user-service"))
    >>> event.type, event.service.id, event.service.endpoints
    (<EventType.DELETE: 'DELETE'>, 'user-1', ())
    """

    type: EventType
    service: ServiceInstance


@dataclass(frozen=True, slots=True)
class LeaseTime:
    """The lease behind an instance's key, as etcd tells it now (``Registry.lease_times``).

    ``lease`` is 0 for a key written without a lease (it never expires); ``granted_ttl``
    and ``ttl_left`` (whole seconds) are None when the key has no live lease.

    >>> LeaseTime(lease=0x6b3a, granted_ttl=30, ttl_left=24).ttl_left
    24
    """

    lease: int
    granted_ttl: int | None
    ttl_left: int | None


_EVENT_TYPES = {t.value: t for t in EventType}


def event_from_core(kind: str, instance: ServiceInstance) -> ServiceEvent:
    """A :class:`ServiceEvent` from the core's ``(kind, instance)`` pair.

    >>> event_from_core("DELETE", ServiceInstance(id="user-1", name="user-service")).type
    <EventType.DELETE: 'DELETE'>
    """
    return ServiceEvent(_EVENT_TYPES[kind], instance)
