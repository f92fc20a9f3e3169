"""The registry a user would build on aetcd (1.0.0, asyncio), behind the benchmark adapter
interface.

Plain and straightforward on purpose: a lookup is one range read (``get_prefix``) plus a
``json.loads`` per value; every registered instance gets a lease of its own and an asyncio
task that awaits ``lease.refresh()`` every ``ttl / 3`` seconds; watching consumes aetcd's own
``watch_prefix`` iterator in a task. Keys and values are genesis-registry's:
``<namespace>/<service>/<id>`` holding a JSON object with id, name, version, metadata and
endpoints.

Imports only the standard library and ``aetcd``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import Any

import aetcd

_by_id = itemgetter("id")


class _Registration:
    """One registered instance: its key, its lease and the task keeping the lease alive."""

    def __init__(self, key: bytes, lease: aetcd.Lease, interval: float) -> None:
        self.key = key
        self.lease = lease
        self.task = asyncio.create_task(self._keep_alive(interval), name=f"aetcd-keepalive-{key.decode()}")

    async def _keep_alive(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.lease.refresh()
            except aetcd.ClientError:  # a missed refresh is retried on the next tick
                continue

    async def halt(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class AetcdRegistry:
    """A service registry on aetcd: a lease and a keep-alive task per instance."""

    name = "aetcd"

    def __init__(self, endpoints: list[str], namespace: str) -> None:
        """Use the first of ``endpoints`` (``"host:port"``); keys live under ``namespace``.
        Nothing connects until :meth:`start`."""
        host, _, port = endpoints[0].rpartition(":")
        self._host, self._port = host, int(port)
        self._namespace = namespace
        self._client: aetcd.Client | None = None
        self._registrations: dict[str, _Registration] = {}
        self._watches: dict[int, Callable[[], Awaitable[None]]] = {}

    @property
    def client(self) -> aetcd.Client:
        if self._client is None:
            raise RuntimeError("AetcdRegistry.start() was not awaited")
        return self._client

    async def start(self) -> None:
        """Create the client and connect it."""
        self._client = aetcd.Client(host=self._host, port=self._port)
        await self._client.connect()

    async def register(self, instance: dict[str, Any], ttl: int) -> None:
        """Grant a ``ttl``-second lease, put the instance under it and start a task refreshing
        the lease every ``ttl / 3`` seconds until deregister or close."""
        key = f"{self._namespace}/{instance['name']}/{instance['id']}".encode()
        lease = await self.client.lease(ttl)
        await self.client.put(key, json.dumps(instance, separators=(",", ":")).encode(), lease=lease)
        previous = self._registrations.get(instance["id"])
        self._registrations[instance["id"]] = _Registration(key, lease, ttl / 3)
        if previous is not None:  # registered again: the key now lives on the new lease
            await self._drop(previous, delete=previous.key != key)

    async def deregister(self, instance_id: str) -> None:
        """Delete the instance's key, stop its keep-alive task and revoke its lease."""
        registration = self._registrations.pop(instance_id, None)
        if registration is not None:
            await self._drop(registration, delete=True)

    async def _drop(self, registration: _Registration, delete: bool) -> None:
        await registration.halt()
        if delete:
            await self.client.delete(registration.key)
        with contextlib.suppress(aetcd.ClientError):  # expired already
            await registration.lease.revoke()

    async def get_service(self, name: str) -> list[dict[str, Any]]:
        """Every instance of ``name``: one ``get_prefix`` and a ``json.loads`` per value, by id."""
        result = await self.client.get_prefix(f"{self._namespace}/{name}/".encode())
        instances = [json.loads(kv.value) for kv in result]
        instances.sort(key=_by_id)
        return instances

    async def watch(
        self, name: str, on_event: Callable[[str, dict[str, Any] | None, str], Any]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``on_event(kind, instance_or_None, instance_id)`` for every change to ``name``,
        kind ``"PUT"`` (with the decoded instance) or ``"DELETE"`` (with None), from a task
        consuming aetcd's ``watch_prefix`` iterator; a coroutine ``on_event`` is awaited.
        Returns an async function that cancels the watch."""
        prefix = f"{self._namespace}/{name}/".encode()
        skip = len(prefix)
        watch = await self.client.watch_prefix(prefix)

        async def follow() -> None:
            async for event in watch:
                instance_id = event.kv.key[skip:].decode()
                if event.kind == aetcd.EventKind.PUT:
                    result = on_event("PUT", json.loads(event.kv.value), instance_id)
                else:
                    result = on_event("DELETE", None, instance_id)
                if inspect.isawaitable(result):
                    await result

        task = asyncio.create_task(follow(), name=f"aetcd-watch-{name}")
        token = id(task)

        async def cancel() -> None:
            if self._watches.pop(token, None) is None:
                return
            if not task.done():
                with contextlib.suppress(aetcd.ClientError):
                    await watch.cancel()  # ends the iterator
            await asyncio.gather(task, return_exceptions=True)

        self._watches[token] = cancel
        return cancel

    async def close(self) -> None:
        """Stop every keep-alive task, revoke every lease (their keys go at once), cancel the
        watches and close the client."""
        registrations = list(self._registrations.values())
        self._registrations.clear()
        for registration in registrations:
            registration.task.cancel()
        await asyncio.gather(*(self._drop(r, delete=False) for r in registrations))
        await asyncio.gather(*(cancel() for cancel in list(self._watches.values())))
        if self._client is not None:
            await self._client.close()
            self._client = None

    def keepalive_streams(self) -> int:
        """How many keep-alive tasks run now."""
        return sum(not r.task.done() for r in self._registrations.values())
