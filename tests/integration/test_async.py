"""The asyncio twins against a real etcd."""

from __future__ import annotations

import asyncio

import genesis_registry as gr
import pytest
from support.etcd import etcd_keys, instance, make_connector
from support.views import apply, etcd_view
from support.wait import wait_until


async def test_register_get_deregister(areg, etcd_server, namespace):
    await areg.register(instance("b"))
    await areg.register(instance("a"), ttl=3)
    found = await areg.get_service("svc")
    assert [i.id for i in found] == ["a", "b"]
    assert await areg.get_service("svc") is found
    await areg.deregister("a")
    assert list(etcd_keys(etcd_server, namespace)) == [f"{namespace}/svc/b"]
    with pytest.raises(gr.ServiceNotFoundError):
        await areg.deregister("a")
    with pytest.raises(gr.ServiceAlreadyRegisteredError):
        await areg.register(instance("b"))
    with pytest.raises(gr.InvalidTTLError):
        await areg.register(instance("c"), ttl=0.2)


async def test_async_watch_initial_then_live_then_closed_by_the_registry(areg, second_registry):
    second_registry.register(instance("b"))
    second_registry.register(instance("a"))
    seen: list[tuple[str, str]] = []
    four_seen = asyncio.Event()

    async def consume() -> None:
        async for event in areg.watch("svc"):
            seen.append((event.type.value, event.service.id))
            if len(seen) == 2:
                await asyncio.to_thread(second_registry.register, instance("c"))
            if len(seen) == 3:
                await asyncio.to_thread(second_registry.deregister, "a")
            if len(seen) == 4:
                four_seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(four_seen.wait(), 10)
    await areg.close()
    await asyncio.wait_for(task, 10)
    assert seen == [("PUT", "a"), ("PUT", "b"), ("PUT", "c"), ("DELETE", "a")]


async def test_async_watch_get_timeout_and_close(areg):
    async with areg.watch("svc") as watch:
        with pytest.raises(TimeoutError):
            await watch.get(0.1)
        await areg.register(instance("x"))
        event = await watch.get(5)
        assert event.service.id == "x"
    assert watch.closed
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()


async def test_cancelling_a_waiting_watch_task_is_clean(areg):
    watch = await areg.watch("svc").__aenter__()  # subscribed: __anext__ goes straight to waiting

    async def wait_forever():
        async for _ in watch:
            pass

    task = asyncio.create_task(wait_forever())
    await asyncio.sleep(0)  # let the task start and suspend in its read
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The watch still works after a cancelled read.
    await areg.register(instance("y"))
    assert (await watch.get(5)).service.id == "y"
    watch.close()


async def test_many_concurrent_registrations_share_one_lease(areg, etcd_server, namespace):
    await asyncio.gather(*(areg.register(instance(f"i-{i:03}")) for i in range(200)))
    keys = etcd_keys(etcd_server, namespace)
    assert len(keys) == 200
    assert len({lease for _, lease in keys.values()}) == 1
    assert areg.stats()["leases"] == 1


async def test_async_view_matches_etcd_after_churn(areg, second_registry, etcd_server, namespace):
    view: dict[str, gr.ServiceInstance] = {}
    async with areg.watch("svc") as watch:
        for i in range(30):
            second_registry.register(instance(f"i-{i:02}"))
        for i in range(0, 30, 4):
            second_registry.deregister(f"i-{i:02}")
        expected = etcd_view(etcd_server, namespace)
        while view != expected:
            apply(view, await watch.get(5))
    assert {i.id: i for i in await areg.get_service("svc")} == expected


async def test_operations_after_close_raise(areg):
    await areg.close()
    with pytest.raises(gr.RegistryClosedError):
        await areg.register(instance("z"))
    with pytest.raises(gr.RegistryClosedError):
        await areg.get_service("svc")
    await areg.close()


def test_sync_and_async_registries_interoperate(etcd_endpoints, namespace):
    conn = make_connector(etcd_endpoints)
    sync_reg = gr.Registry(conn, gr.Config(namespace=namespace))

    async def main() -> list[str]:
        async with gr.AsyncRegistry(conn, gr.Config(namespace=namespace)) as areg:
            await areg.register(instance("from-async"))
            sync_reg.register(instance("from-sync"))
            async for event in areg.watch("svc"):
                if event.service.id == "from-sync":
                    break
            return [i.id for i in await areg.get_service("svc")]

    assert asyncio.run(main()) == ["from-async", "from-sync"]
    sync_reg.close()
    conn.close()


async def test_cancelled_calls_finish_and_leave_registry_and_etcd_agreeing(own_etcd, namespace):
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=own_etcd.endpoints, request_timeout=5))
    await conn.aconnect()
    reg = gr.AsyncRegistry(conn, gr.Config(namespace=namespace, default_ttl=3, retry_interval=0.1))
    try:
        await reg.register(instance("a"))
        await reg.register(instance("b"))
        own_etcd.kill()
        tasks = [asyncio.create_task(reg.deregister("b")), asyncio.create_task(reg.register(instance("c")))]
        await asyncio.sleep(0)  # both calls are now in flight in the core
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        own_etcd.restart()

        def agree() -> bool:
            in_etcd = sorted(etcd_view(own_etcd, namespace))
            return in_etcd == reg.registered_ids() and "b" not in in_etcd and "a" in in_etcd

        await asyncio.to_thread(wait_until, agree, 15, "registry and etcd to agree")
    finally:
        await reg.close()
        conn.close()


async def test_concurrent_register_and_deregister_of_one_id_leave_no_untracked_key(areg, etcd_server, namespace):
    await areg.register(instance("anchor"))  # keeps the shared lease alive, as an orphan would be
    outcomes = []
    for n in range(100):
        results = await asyncio.gather(
            areg.register(instance(f"x{n}")), areg.deregister(f"x{n}"), return_exceptions=True
        )
        outcomes.append(tuple(type(r).__name__ for r in results))
    assert set(outcomes) <= {("NoneType", "NoneType"), ("NoneType", "ServiceNotFoundError")}
    assert sorted(etcd_view(etcd_server, namespace)) == areg.registered_ids()


async def test_async_get_with_tiny_timeouts_never_loses_an_event(areg, second_registry, etcd_server, namespace):
    import threading
    import time

    watch = areg.watch("svc", buffer=100_000)
    await watch.__aenter__()
    stop = threading.Event()

    def toggle() -> None:
        i = 0
        while not stop.is_set():
            name = f"t{i % 10}"
            if name in second_registry.registered_ids():
                second_registry.deregister(name)
            else:
                second_registry.register(instance(name, version=str(i)))
            i += 1

    writer = threading.Thread(target=toggle)
    writer.start()
    view: dict[str, gr.ServiceInstance] = {}
    anomalies = []
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            try:
                event = await watch.get(timeout=0.0002)
            except TimeoutError:
                continue
            if (event.type is gr.EventType.PUT) == (event.service.id in view):
                anomalies.append((event.type.value, event.service.id))
            apply(view, event)
    finally:
        stop.set()
        await asyncio.to_thread(writer.join)
    expected = etcd_view(etcd_server, namespace)
    while view != expected:
        apply(view, await watch.get(5))
    assert anomalies == []
    watch.close()


async def test_watches_dropped_without_close_are_closed(areg, second_registry):
    import gc

    second_registry.register(instance("a"))
    for _ in range(50):
        async for _event in areg.watch("svc"):
            break  # leaves the loop without closing the watch
    assert areg.stats()["open_watches"] <= 1  # at most the last one, not yet collected
    gc.collect()
    assert areg.stats()["open_watches"] == 0


async def test_register_many_async(areg, etcd_server, namespace):
    await areg.register_many([instance(f"m-{i}") for i in range(120)], ttl=5)
    keys = etcd_keys(etcd_server, namespace)
    assert len(keys) == 120 and len({lease for _, lease in keys.values()}) == 1
    assert len(await areg.get_service("svc")) == 120
