"""Watches against a real etcd: initial state, live changes, foreign values, slow
consumers, closing."""

from __future__ import annotations

import threading

import genesis_registry as gr
import pytest
from support.etcd import instance
from support.views import apply, etcd_view
from support.wait import wait_until


def drain(watch: gr.Watch, view: dict[str, gr.ServiceInstance], until, timeout: float = 10.0) -> None:
    """Applies events to ``view`` until ``until(view)`` holds."""
    wait_until(lambda: _step(watch, view) or until(view), timeout, "watch view")


def _step(watch: gr.Watch, view: dict[str, gr.ServiceInstance]) -> bool:
    while (event := watch.get_nowait()) is not None:
        apply(view, event)
    return False


def test_first_a_put_per_instance_sorted_then_live_changes(registry, second_registry):
    for i in ["b", "c", "a"]:
        second_registry.register(instance(i))
    with registry.watch("svc") as watch:
        initial = [watch.get(5) for _ in range(3)]
        assert [(e.type, e.service.id) for e in initial] == [(gr.EventType.PUT, i) for i in "abc"]
        second_registry.register(instance("d", version="2"))
        put = watch.get(5)
        assert (put.type, put.service.id, put.service.version) == (gr.EventType.PUT, "d", "2")
        second_registry.deregister("a")
        delete = watch.get(5)
        assert delete.type is gr.EventType.DELETE
        assert (delete.service.id, delete.service.name) == ("a", "svc")
        assert (delete.service.version, delete.service.endpoints) == ("", ())


def test_iteration_ends_when_the_watch_is_closed(registry):
    registry.register(instance("a"))
    watch = registry.watch("svc")
    seen = []
    for event in watch:
        seen.append(event.service.id)
        watch.close()
    assert seen == ["a"]
    assert watch.closed
    assert watch.get(0.1) is None


def test_get_times_out_when_nothing_happens(registry):
    with registry.watch("svc") as watch:
        with pytest.raises(TimeoutError):
            watch.get(0.2)


def test_identity_comes_from_the_key_for_put_and_delete(registry, etcd_server, namespace):
    with registry.watch("svc") as watch:
        value = b'{"id":"raw-1","name":"svc","version":"9","metadata":null,"endpoints":["grpc://10.0.0.1:1"]}'
        etcd_server.etcdctl("put", f"{namespace}/svc/raw-1", input=value)
        put = watch.get(5)
        assert (put.type, put.service.id, put.service.version) == (gr.EventType.PUT, "raw-1", "9")
        etcd_server.etcdctl("del", f"{namespace}/svc/raw-1")
        delete = watch.get(5)
        assert (delete.type, delete.service.id) == (gr.EventType.DELETE, "raw-1")


def put_raw(etcd, key: str, value: bytes) -> None:
    etcd.etcdctl("put", key, input=value)


def test_foreign_values_are_read_tolerantly_or_skipped(registry, etcd_server, namespace):
    p = f"{namespace}/svc/"
    before = registry.stats()["malformed_values"]
    with registry.watch("svc") as watch:
        put_raw(etcd_server, p + "extra", b'{"id":"extra","name":"svc","zone":{"a":[1,2]},"Endpoints":["h:1"]}')
        put_raw(etcd_server, p + "sparse", b'{"id":"sparse"}')
        put_raw(etcd_server, p + "garbage", b"not json at all")
        put_raw(etcd_server, p + "null", b"null")
        put_raw(etcd_server, p + "liar", b'{"id":"someone-else","name":"svc"}')
        put_raw(etcd_server, p + "nested/deeper", b'{"id":"deeper","name":"svc"}')
        put_raw(etcd_server, p + "last", b'{"id":"last","name":"svc"}')
        events = []
        while not events or events[-1].service.id != "last":
            events.append(watch.get(5))
    assert [(e.type, e.service.id) for e in events] == [
        (gr.EventType.PUT, "extra"),
        (gr.EventType.PUT, "sparse"),
        (gr.EventType.PUT, "last"),
    ]
    assert events[0].service.endpoints == ("h:1",)
    assert (events[1].service.name, events[1].service.metadata) == ("", {})
    assert [i.id for i in registry.get_service("svc")] == ["extra", "last", "sparse"]
    assert registry.stats()["malformed_values"] - before == 3


def test_a_garbage_overwrite_removes_what_the_key_described(registry, second_registry, etcd_server, namespace):
    second_registry.register(instance("victim"))
    with registry.watch("svc") as watch:
        assert watch.get(5).service.id == "victim"
        put_raw(etcd_server, f"{namespace}/svc/victim", b"{broken")
        delete = watch.get(5)
        assert (delete.type, delete.service.id) == (gr.EventType.DELETE, "victim")
    assert registry.get_service("svc") == ()


def test_the_initial_read_skips_malformed_values_too(registry, etcd_server, namespace):
    put_raw(etcd_server, f"{namespace}/svc/bad", b"[1,2,3]")
    put_raw(etcd_server, f"{namespace}/svc/good", b'{"id":"good","name":"svc","endpoints":["h:1"]}')
    assert [i.id for i in registry.get_service("svc")] == ["good"]


def test_a_watcher_that_never_reads_does_not_block_another(registry, second_registry):
    stalled = registry.watch("svc", buffer=16)
    with registry.watch("svc") as live:
        for i in range(200):
            second_registry.register(instance(f"i-{i:03}"))
        for i in range(0, 200, 2):
            second_registry.deregister(f"i-{i:03}")
        view: dict[str, gr.ServiceInstance] = {}
        drain(live, view, lambda v: len(v) == 100)
        assert sorted(view) == [f"i-{i:03}" for i in range(1, 200, 2)]
    # The stalled one overflowed; reading it now yields the difference, ending exact.
    stalled_view: dict[str, gr.ServiceInstance] = {}
    drain(stalled, stalled_view, lambda v: len(v) == 100)
    assert sorted(stalled_view) == sorted(view)
    assert stalled.overflows >= 1
    assert stalled.get_nowait() is None
    stalled.close()


def test_slow_reader_sees_every_change_in_order_when_it_keeps_up(registry, second_registry):
    with registry.watch("svc") as watch:
        for i in range(30):
            second_registry.register(instance(f"i-{i:02}"))
        ids = [watch.get(5).service.id for _ in range(30)]
    assert ids == [f"i-{i:02}" for i in range(30)]


def test_close_from_another_thread_unblocks_an_iterating_thread(connector, namespace):
    reg = gr.Registry(connector, gr.Config(namespace=namespace))
    watch = reg.watch("svc")
    started = threading.Event()
    finished = threading.Event()

    def consume() -> None:
        started.set()
        for _ in watch:
            pass
        finished.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert started.wait(5)
    reg.close()
    assert finished.wait(10), "iteration did not end when the registry closed"
    thread.join(5)
    assert not thread.is_alive()


def test_watch_closes_with_its_registry_but_others_go_on(connector, second_registry, namespace):
    a = gr.Registry(connector, gr.Config(namespace=namespace))
    b = gr.Registry(connector, gr.Config(namespace=namespace))
    wa, wb = a.watch("svc"), b.watch("svc")
    a.close()
    assert wa.get(1) is None
    second_registry.register(instance("x"))
    assert wb.get(5).service.id == "x"
    b.close()


def test_watch_view_matches_etcd_after_churn(registry, second_registry, etcd_server, namespace):
    with registry.watch("svc") as watch:
        for i in range(40):
            second_registry.register(instance(f"i-{i:02}", version=str(i)))
        for i in range(0, 40, 3):
            second_registry.deregister(f"i-{i:02}")
        expected = etcd_view(etcd_server, namespace)
        view: dict[str, gr.ServiceInstance] = {}
        drain(watch, view, lambda v: v == expected)
    assert {i.id: i for i in registry.get_service("svc")} == expected


def test_looking_up_many_services_under_write_load_is_not_a_data_reset(registry, second_registry):
    registry.get_service("svc")
    stop = threading.Event()

    def churn(k: int) -> None:
        i = 0
        while not stop.is_set():
            second_registry.register(instance(f"w{k}-{i % 5}"))
            second_registry.deregister(f"w{k}-{i % 5}")
            i += 1

    writers = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    for w in writers:
        w.start()
    try:
        for i in range(100):
            assert registry.get_service(f"other-{i}") == ()
    finally:
        stop.set()
        for w in writers:
            w.join(10)
    stats = registry.stats()
    assert stats["data_resets"] == 0
    assert stats["watch_events"] > 0


def test_sync_watches_dropped_without_close_are_closed(registry):
    import gc

    registry.register(instance("a"))
    for _ in range(50):
        for _event in registry.watch("svc"):
            break
    gc.collect()
    assert registry.stats()["open_watches"] == 0
