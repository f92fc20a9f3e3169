"""The registry a user would build on etcd3aio (0.3.0, asyncio on grpc.aio), behind the
benchmark adapter interface.

Plain and straightforward on purpose: a lookup is one range read (``kv.get`` over the
prefix) plus a ``json.loads`` per value; every registered instance gets a lease of its own
kept alive by etcd3aio's own ``lease.keep_alive_context`` (a task that sends a keep-alive
every ``ttl / 3`` seconds); watching consumes ``watch.watch``, etcd3aio's async iterator
that reconnects and resumes from the last revision it saw, in a task. Keys and values are
genesis-registry's: ``<namespace>/<service>/<id>`` holding a JSON object with id, name,
version, metadata and endpoints.

etcd3aio takes IPv4 literal ``host:port`` endpoints only (its target is ``ipv4:...``).
Imports only the standard library and ``etcd3aio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import Any

import etcd3aio

_by_id = itemgetter("id")
_PUT = 0  # mvccpb.Event.EventType: PUT = 0, DELETE = 1


class _Registration:
    """One registered instance: its key, its lease and etcd3aio's keep-alive context for it."""

    def __init__(self, key: bytes, lease_id: int, keepalive: etcd3aio.LeaseKeepalive) -> None:
        self.key = key
        self.lease_id = lease_id
        self.keepalive = keepalive

    async def halt(self) -> None:
        await self.keepalive.__aexit__(None, None, None)


class Etcd3aioRegistry:
    """A service registry on etcd3aio: a lease and a keep-alive context per instance."""

    name = "etcd3aio"

    def __init__(self, endpoints: list[str], namespace: str) -> None:
        """Use ``endpoints`` (``"a.b.c.d:port"``); keys live under ``namespace``. Nothing
        connects until :meth:`start`."""
        self._endpoints = endpoints
        self._namespace = namespace
        self._client: etcd3aio.Etcd3Client | None = None
        self._registrations: dict[str, _Registration] = {}
        self._watches: dict[int, Callable[[], Awaitable[None]]] = {}

    @property
    def client(self) -> etcd3aio.Etcd3Client:
        if self._client is None:
            raise RuntimeError("Etcd3aioRegistry.start() was not awaited")
        return self._client

    async def start(self) -> None:
        """Create the client and connect it."""
        self._client = etcd3aio.Etcd3Client(self._endpoints)
        await self._client.connect()

    async def register(self, instance: dict[str, Any], ttl: int) -> None:
        """Grant a ``ttl``-second lease, put the instance under it and enter etcd3aio's
        keep-alive context for the lease until deregister or close."""
        client = self.client
        assert client.lease is not None and client.kv is not None
        key = f"{self._namespace}/{instance['name']}/{instance['id']}".encode()
        lease = await client.lease.grant(ttl)
        await client.kv.put(key, json.dumps(instance, separators=(",", ":")).encode(), lease=lease.ID)
        keepalive = client.lease.keep_alive_context(lease.ID, ttl)
        await keepalive.__aenter__()
        previous = self._registrations.get(instance["id"])
        self._registrations[instance["id"]] = _Registration(key, lease.ID, keepalive)
        if previous is not None:  # registered again: the key now lives on the new lease
            await self._drop(previous, delete=previous.key != key)

    async def deregister(self, instance_id: str) -> None:
        """Delete the instance's key, leave its keep-alive context and revoke its lease."""
        registration = self._registrations.pop(instance_id, None)
        if registration is not None:
            await self._drop(registration, delete=True)

    async def _drop(self, registration: _Registration, delete: bool) -> None:
        client = self.client
        assert client.lease is not None and client.kv is not None
        await registration.halt()
        if delete:
            await client.kv.delete(registration.key)
        with contextlib.suppress(etcd3aio.EtcdError):  # expired already
            await client.lease.revoke(registration.lease_id)

    async def get_service(self, name: str) -> list[dict[str, Any]]:
        """Every instance of ``name``: one range read over the prefix and a ``json.loads`` per
        value, by id."""
        assert self.client.kv is not None
        prefix = f"{self._namespace}/{name}/".encode()
        response = await self.client.kv.get(prefix, etcd3aio.prefix_range_end(prefix))
        instances = [json.loads(kv.value) for kv in response.kvs]
        instances.sort(key=_by_id)
        return instances

    async def watch(
        self, name: str, on_event: Callable[[str, dict[str, Any] | None, str], Any]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``on_event(kind, instance_or_None, instance_id)`` for every change to ``name``,
        kind ``"PUT"`` (with the decoded instance) or ``"DELETE"`` (with None), from a task
        consuming etcd3aio's watch iterator; a coroutine ``on_event`` is awaited. Returns once
        etcd has created the watch, with an async function that cancels it."""
        assert self.client.watch is not None
        prefix = f"{self._namespace}/{name}/".encode()
        skip = len(prefix)
        responses = self.client.watch.watch(prefix, etcd3aio.prefix_range_end(prefix))

        async def deliver(response: Any) -> None:
            for event in response.events:
                instance_id = event.kv.key[skip:].decode()
                if event.type == _PUT:
                    result = on_event("PUT", json.loads(event.kv.value), instance_id)
                else:
                    result = on_event("DELETE", None, instance_id)
                if inspect.isawaitable(result):
                    await result

        await deliver(await anext(responses))  # the "created" response: the watch is in place

        async def follow() -> None:
            async for response in responses:
                await deliver(response)

        task = asyncio.create_task(follow(), name=f"etcd3aio-watch-{name}")
        token = id(task)

        async def cancel() -> None:
            if self._watches.pop(token, None) is None:
                return
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await responses.aclose()  # cancels the gRPC stream

        self._watches[token] = cancel
        return cancel

    async def close(self) -> None:
        """Leave every keep-alive context, revoke every lease (their keys go at once), cancel
        the watches and close the client."""
        registrations = list(self._registrations.values())
        self._registrations.clear()
        await asyncio.gather(*(self._drop(r, delete=False) for r in registrations))
        await asyncio.gather(*(cancel() for cancel in list(self._watches.values())))
        if self._client is not None:
            await self._client.close()
            self._client = None

    def keepalive_streams(self) -> int:
        """How many keep-alive contexts run now (each a task sending keep-alives)."""
        return sum(r.keepalive.alive for r in self._registrations.values())
