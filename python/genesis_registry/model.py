"""The data model: :class:`ServiceInstance` (from the Rust core), :class:`ServiceEvent`,
:class:`EventType`.

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

__all__ = ["EventType", "ServiceEvent", "ServiceInstance"]


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


_EVENT_TYPES = {t.value: t for t in EventType}


def event_from_core(kind: str, instance: ServiceInstance) -> ServiceEvent:
    """A :class:`ServiceEvent` from the core's ``(kind, instance)`` pair.

    >>> event_from_core("DELETE", ServiceInstance(id="user-1", name="user-service")).type
    <EventType.DELETE: 'DELETE'>
    """
    return ServiceEvent(_EVENT_TYPES[kind], instance)
