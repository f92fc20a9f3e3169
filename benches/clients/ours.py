"""genesis-registry behind the benchmark adapter interface (see etcd3_registry.py)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import genesis_registry as gr


def _instance(data: dict[str, Any]) -> gr.ServiceInstance:
    return gr.ServiceInstance(**data)


class OursRegistry:
    """Sync: one connector, one registry."""

    name = "genesis-registry"

    def __init__(self, endpoints: list[str], namespace: str) -> None:
        self._conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=endpoints, request_timeout=30))
        self._conn.connect()
        self.registry = gr.Registry(self._conn, gr.Config(namespace=namespace))
        self._watches: list[threading.Thread] = []

    def register(self, instance: dict[str, Any], ttl: int) -> None:
        self.registry.register(_instance(instance), ttl=ttl)

    def register_many(self, instances: list[dict[str, Any]], ttl: int) -> None:
        self.registry.register_many([_instance(i) for i in instances], ttl=ttl)

    def deregister(self, instance_id: str) -> None:
        self.registry.deregister(instance_id)

    def get_service(self, name: str) -> tuple[gr.ServiceInstance, ...]:
        return self.registry.get_service(name)

    def watch(self, name: str, on_event: Callable[[str, Any, str], None]) -> Callable[[], None]:
        watch = self.registry.watch(name, buffer=1_000_000)

        def follow() -> None:
            for event in watch:
                on_event(event.type.value, event.service, event.service.id)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        return watch.close

    def keepalive_streams(self) -> int:
        return int(self.registry.stats()["leases"])

    def close(self) -> None:
        self.registry.close()
        self._conn.close()


class AsyncOursRegistry:
    """asyncio: one connector, one AsyncRegistry."""

    name = "genesis-registry (asyncio)"

    def __init__(self, endpoints: list[str], namespace: str) -> None:
        self._endpoints = endpoints
        self._namespace = namespace

    async def start(self) -> None:
        self._conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=self._endpoints, request_timeout=30))
        await self._conn.aconnect()
        self.registry = gr.AsyncRegistry(self._conn, gr.Config(namespace=self._namespace))

    async def register(self, instance: dict[str, Any], ttl: int) -> None:
        await self.registry.register(_instance(instance), ttl=ttl)

    async def register_many(self, instances: list[dict[str, Any]], ttl: int) -> None:
        await self.registry.register_many([_instance(i) for i in instances], ttl=ttl)

    async def deregister(self, instance_id: str) -> None:
        await self.registry.deregister(instance_id)

    async def get_service(self, name: str) -> tuple[gr.ServiceInstance, ...]:
        return await self.registry.get_service(name)

    async def watch(self, name: str, on_event: Callable[[str, Any, str], None]) -> Callable[[], Awaitable[None]]:
        import asyncio

        watch = self.registry.watch(name, buffer=1_000_000)
        await watch.__aenter__()

        async def follow() -> None:
            async for event in watch:
                on_event(event.type.value, event.service, event.service.id)

        task = asyncio.ensure_future(follow())

        async def cancel() -> None:
            watch.close()
            await asyncio.gather(task, return_exceptions=True)

        return cancel

    def keepalive_streams(self) -> int:
        return int(self.registry.stats()["leases"])

    async def close(self) -> None:
        await self.registry.close()
        self._conn.close()
