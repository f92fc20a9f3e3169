"""The registry a user would build on etcd-client-py (0.5.1: the Rust ``etcd-client`` crate
bound with pyo3, asyncio), behind the benchmark adapter interface.

Plain and straightforward on purpose: a lookup is one ``get_prefix`` plus a ``json.loads``
per value; watching consumes the communicator's own ``watch_prefix`` iterator in a task.
Keys and values are genesis-registry's: ``<namespace>/<service>/<id>`` holding a JSON
object with id, name, version, metadata and endpoints.

Registration cannot be written on it: its ``put(key, value)`` has no lease argument (nor
has ``TxnOp.put``), so a key cannot be tied to a lease and an instance would outlive its
process. ``register`` says so; the registration scenario reports it as n/a.

Imports only the standard library and ``etcd_client``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import Any

import etcd_client

_by_id = itemgetter("id")

CANNOT_REGISTER = "put() takes no lease: a key cannot be tied to a lease, so an instance would outlive its process"


class EtcdClientPyRegistry:
    """A service registry on etcd-client-py: lookups and watches (no registration)."""

    name = "etcd-client-py"

    def __init__(self, endpoints: list[str], namespace: str) -> None:
        """Use ``endpoints`` (``"host:port"``); keys live under ``namespace``. Nothing
        connects until :meth:`start`."""
        self._endpoints = [f"http://{e}" for e in endpoints]
        self._namespace = namespace
        self._context: Any = None
        self._communicator: Any = None
        self._watches: dict[int, Callable[[], Awaitable[None]]] = {}

    @property
    def communicator(self) -> Any:
        if self._communicator is None:
            raise RuntimeError("EtcdClientPyRegistry.start() was not awaited")
        return self._communicator

    async def start(self) -> None:
        """Create the client and connect it (enter its ``connect()`` context)."""
        self._context = etcd_client.Client(self._endpoints).connect()
        self._communicator = await self._context.__aenter__()

    async def register(self, instance: dict[str, Any], ttl: int) -> None:
        raise NotImplementedError(f"etcd-client-py: {CANNOT_REGISTER}")

    async def get_service(self, name: str) -> list[dict[str, Any]]:
        """Every instance of ``name``: one ``get_prefix`` and a ``json.loads`` per value, by id."""
        pairs = await self.communicator.get_prefix(f"{self._namespace}/{name}/".encode())
        instances = [json.loads(value) for _key, value in pairs]
        instances.sort(key=_by_id)
        return instances

    async def watch(
        self, name: str, on_event: Callable[[str, dict[str, Any] | None, str], Any]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``on_event(kind, instance_or_None, instance_id)`` for every change to ``name``,
        kind ``"PUT"`` (with the decoded instance) or ``"DELETE"`` (with None), from a task
        consuming the communicator's ``watch_prefix`` iterator; a coroutine ``on_event`` is
        awaited. Returns once the watch is in place (its ``ready_event``), with an async
        function that cancels it."""
        prefix = f"{self._namespace}/{name}/".encode()
        skip = len(prefix)
        ready = etcd_client.CondVar()
        watch = self.communicator.watch_prefix(prefix, ready_event=ready)

        async def follow() -> None:
            async for event in watch:
                instance_id = bytes(event.key)[skip:].decode()
                if event.event == etcd_client.WatchEventType.PUT:
                    result = on_event("PUT", json.loads(bytes(event.value)), instance_id)
                else:
                    result = on_event("DELETE", None, instance_id)
                if inspect.isawaitable(result):
                    await result

        task = asyncio.create_task(follow(), name=f"etcd-client-py-watch-{name}")
        await ready.wait()
        token = id(task)

        async def cancel() -> None:
            if self._watches.pop(token, None) is None:
                return
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self._watches[token] = cancel
        return cancel

    async def close(self) -> None:
        """Cancel the watches and close the client (leave its ``connect()`` context)."""
        await asyncio.gather(*(cancel() for cancel in list(self._watches.values())))
        if self._context is not None:
            await self._context.__aexit__(None, None, None)
            self._context = self._communicator = None

    def keepalive_streams(self) -> int:
        return 0
