"""A service as a dict ``id -> instance``: built from a watch's events (:func:`apply`, a
:class:`Follower` thread) or read from etcd (:func:`etcd_view`), so the two can be compared."""

from __future__ import annotations

import threading
from typing import Any

import genesis_registry as gr

from support.etcd import etcd_keys


def apply(view: dict[str, gr.ServiceInstance], event: gr.ServiceEvent) -> None:
    """Applies one watch event to ``view``."""
    if event.type is gr.EventType.PUT:
        view[event.service.id] = event.service
    else:
        view.pop(event.service.id, None)


def etcd_view(etcd: Any, namespace: str, name: str = "svc") -> dict[str, gr.ServiceInstance]:
    """Service ``name`` as etcd holds it now."""
    prefix = f"{namespace}/{name}/"
    return {
        key[len(prefix) :]: gr.ServiceInstance.from_json(value) for key, (value, _) in etcd_keys(etcd, prefix).items()
    }


class Follower:
    """Applies a watch's events to a dict on a thread, so its view can be compared; keeps the
    events too unless ``keep_events`` is false (a long run would grow without bound)."""

    def __init__(self, watch: gr.Watch, keep_events: bool = True) -> None:
        self.watch = watch
        self.keep_events = keep_events
        self.view: dict[str, gr.ServiceInstance] = {}
        self.events: list[gr.ServiceEvent] = []
        self.count = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for event in self.watch:
            with self._lock:
                self.count += 1
                if self.keep_events:
                    self.events.append(event)
                apply(self.view, event)

    def snapshot(self) -> dict[str, gr.ServiceInstance]:
        with self._lock:
            return dict(self.view)

    def stop(self) -> None:
        self.watch.close()
        self._thread.join(5)
