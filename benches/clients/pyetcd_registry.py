"""The registry a user would build on etcd-sdk-python (0.0.7, imported as ``pyetcd``),
behind the benchmark adapter interface.

Plain and straightforward on purpose: a lookup is one range read (``get_prefix``) plus a
``json.loads`` per value; every registered instance gets a lease of its own and a daemon
thread that calls ``lease.refresh()`` every ``ttl / 3`` seconds; watching uses the client's
own ``add_watch_prefix_callback``. Keys and values are genesis-registry's:
``<namespace>/<service>/<id>`` holding a JSON object with id, name, version, metadata and
endpoints.

etcd-sdk-python is python-etcd3's API regenerated for current protobuf; it does not declare
protobuf as a dependency, so protobuf is installed beside it. Imports only the standard
library and ``pyetcd``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import pyetcd
import pyetcd.events

_by_id = itemgetter("id")


class _Registration:
    """One registered instance: its key, its lease and the thread keeping the lease alive."""

    def __init__(self, key: str, lease: pyetcd.Lease, interval: float) -> None:
        self.key = key
        self.lease = lease
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._keep_alive, args=(interval,), name=f"pyetcd-keepalive-{key}", daemon=True
        )
        self.thread.start()

    def _keep_alive(self, interval: float) -> None:
        while not self.stop.wait(interval):
            try:
                self.lease.refresh()
            except Exception:  # a missed refresh is retried on the next tick
                continue

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join()


class PyetcdRegistry:
    """A service registry on etcd-sdk-python: a lease and a keep-alive thread per instance."""

    name = "etcd-sdk-python"

    def __init__(self, endpoints: list[str], namespace: str) -> None:
        """Connect to the first of ``endpoints`` (``"host:port"``); keys live under ``namespace``."""
        host, _, port = endpoints[0].rpartition(":")
        self._client = pyetcd.client(host=host, port=int(port))
        self._namespace = namespace
        self._lock = threading.Lock()
        self._registrations: dict[str, _Registration] = {}
        self._watch_ids: set[int] = set()

    def register(self, instance: dict[str, Any], ttl: int) -> None:
        """Grant a ``ttl``-second lease, put the instance under it and start a daemon thread
        refreshing the lease every ``ttl / 3`` seconds until deregister or close."""
        key = f"{self._namespace}/{instance['name']}/{instance['id']}"
        lease = self._client.lease(ttl)
        self._client.put(key, json.dumps(instance, separators=(",", ":")), lease=lease)
        registration = _Registration(key, lease, ttl / 3)
        with self._lock:
            previous = self._registrations.get(instance["id"])
            self._registrations[instance["id"]] = registration
        if previous is not None:  # registered again: the key now lives on the new lease
            self._drop(previous, delete=previous.key != key)

    def deregister(self, instance_id: str) -> None:
        """Delete the instance's key, stop its keep-alive thread and revoke its lease."""
        with self._lock:
            registration = self._registrations.pop(instance_id, None)
        if registration is not None:
            self._drop(registration, delete=True)

    def _drop(self, registration: _Registration, delete: bool) -> None:
        registration.halt()
        if delete:
            self._client.delete(registration.key)
        try:
            registration.lease.revoke()
        except Exception:  # expired already: NOT_FOUND comes back as a raw grpc.RpcError
            pass

    def get_service(self, name: str) -> list[dict[str, Any]]:
        """Every instance of ``name``: one ``get_prefix`` and a ``json.loads`` per value, by id."""
        instances = [json.loads(value) for value, _ in self._client.get_prefix(f"{self._namespace}/{name}/")]
        instances.sort(key=_by_id)
        return instances

    def watch(self, name: str, on_event: Callable[[str, dict[str, Any] | None, str], None]) -> Callable[[], None]:
        """Call ``on_event(kind, instance_or_None, instance_id)`` for every change to ``name``,
        kind ``"PUT"`` (with the decoded instance) or ``"DELETE"`` (with None), from
        etcd-sdk-python's watch thread. Returns a function that cancels the watch."""
        prefix = f"{self._namespace}/{name}/"
        skip = len(prefix.encode())

        def callback(response: Any) -> None:
            if isinstance(response, Exception):  # the watch stream broke; etcd-sdk-python drops the watch
                return
            for event in response.events:
                instance_id = event.key[skip:].decode()
                if isinstance(event, pyetcd.events.PutEvent):
                    on_event("PUT", json.loads(event.value), instance_id)
                else:
                    on_event("DELETE", None, instance_id)

        watch_id = self._client.add_watch_prefix_callback(prefix, callback)
        with self._lock:
            self._watch_ids.add(watch_id)

        def cancel() -> None:
            with self._lock:
                if watch_id not in self._watch_ids:
                    return
                self._watch_ids.discard(watch_id)
            self._client.cancel_watch(watch_id)

        return cancel

    def close(self) -> None:
        """Stop every keep-alive thread, revoke every lease (their keys go at once), cancel
        the watches and close the client."""
        with self._lock:
            registrations = list(self._registrations.values())
            self._registrations.clear()
            watch_ids = list(self._watch_ids)
            self._watch_ids.clear()
        for registration in registrations:
            registration.stop.set()
        for registration in registrations:
            self._drop(registration, delete=False)
        for watch_id in watch_ids:
            self._client.cancel_watch(watch_id)
        self._client.close()

    def keepalive_streams(self) -> int:
        """How many keep-alive threads run now."""
        with self._lock:
            return sum(r.thread.is_alive() for r in self._registrations.values())
