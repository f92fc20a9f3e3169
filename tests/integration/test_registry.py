"""Registration, discovery, deregistration and close against a real etcd."""

from __future__ import annotations

import inspect
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import genesis_registry as gr
import pytest
from support.etcd import etcd_keys, etcd_leases, instance, make_connector
from support.wait import wait_until


def lease_ttl(etcd, lease_id: int) -> int:
    out = etcd.etcdctl("lease", "timetolive", format(lease_id, "x"), "-w", "json").stdout
    return int(json.loads(out)["granted-ttl"])


def test_register_writes_go_json_at_namespace_name_id(registry, etcd_server, namespace):
    inst = gr.ServiceInstance(
        id="user-service-001",
        name="user-service",
        version="1.0.0",
        metadata={"zone": "a", "region": "us-west-1", "weight": "100"},
        endpoints=["grpc://127.0.0.1:9001"],
    )
    registry.register(inst, ttl=30)
    keys = etcd_keys(etcd_server, namespace)
    key = f"{namespace}/user-service/user-service-001"
    assert list(keys) == [key]
    value, lease = keys[key]
    assert value == inst.to_json()
    assert value.startswith(b'{"id":"user-service-001","name":"user-service","version":"1.0.0","metadata":{"region"')
    assert lease != 0
    assert registry.key_of("user-service", "user-service-001") == key


def test_get_service_returns_registered_instances_sorted_by_id(registry):
    for i in ["c", "a", "b"]:
        registry.register(instance(i, port=9000 + ord(i)))
    found = registry.get_service("svc")
    assert [i.id for i in found] == ["a", "b", "c"]
    assert isinstance(found, tuple)
    assert found[0].endpoints == (f"grpc://127.0.0.1:{9000 + ord('a')}",)


def test_repeated_get_service_returns_the_same_tuple_until_something_changes(registry):
    registry.register(instance("a"))
    first = registry.get_service("svc")
    assert registry.get_service("svc") is first
    registry.register(instance("b"))
    changed = wait_until(lambda: (s := registry.get_service("svc")) is not first and s, message="new snapshot")
    assert [i.id for i in changed] == ["a", "b"]
    # Unchanged instances keep their Python object across snapshots.
    assert changed[0] is first[0]


def test_get_service_of_unknown_service_is_empty(registry):
    assert registry.get_service("nobody-here") == ()


def test_get_service_reaches_the_core_without_a_python_frame(registry, etcd_endpoints, namespace):
    # The hot path of discovery: the public name is the core's own method (timed beside
    # dict.get in benches/lookup_overhead.py), and behaves as the documented method does.
    assert inspect.isbuiltin(registry.get_service)
    registry.register(instance("a"))
    assert registry.get_service("svc") == gr.Registry.get_service(registry, "svc")
    with pytest.raises(gr.InvalidServiceInstanceError, match="a/b"):
        registry.get_service("a/b")
    with make_connector(etcd_endpoints) as conn:
        other = gr.Registry(conn, gr.Config(namespace=namespace))
        assert [i.id for i in other.get_service("svc")] == ["a"]
        other.close()
        with pytest.raises(gr.RegistryClosedError):
            other.get_service("svc")

        class Counting(gr.Registry):  # a subclass's override is not bypassed
            calls = 0

            def get_service(self, name: str) -> tuple[gr.ServiceInstance, ...]:
                Counting.calls += 1
                return super().get_service(name)

        with Counting(conn, gr.Config(namespace=namespace)) as counting:
            assert [i.id for i in counting.get_service("svc")] == ["a"]
        assert Counting.calls == 1


def test_get_service_sees_instances_of_other_clients(registry, second_registry):
    assert registry.get_service("svc") == ()
    second_registry.register(instance("remote-1"))
    found = wait_until(lambda: registry.get_service("svc"), message="remote instance")
    assert [i.id for i in found] == ["remote-1"]
    second_registry.deregister("remote-1")
    wait_until(lambda: registry.get_service("svc") == (), message="remote instance gone")


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (dict(id="", name="svc", endpoints=["grpc://h:1"]), "id"),
        (dict(id="a/b", name="svc", endpoints=["grpc://h:1"]), "a/b"),
        (dict(id="a", name="", endpoints=["grpc://h:1"]), "name"),
        (dict(id="a", name="s/x", endpoints=["grpc://h:1"]), "s/x"),
        (dict(id="a", name="svc", endpoints=[]), "endpoint"),
        (dict(id="a", name="svc", endpoints=["http://h:1"]), "http://h:1"),
        (dict(id="a", name="svc", endpoints=["https://h:1"]), "https://h:1"),
        (dict(id="a", name="svc", endpoints=["h"]), "h"),
    ],
)
def test_invalid_instances_are_refused_before_reaching_etcd(registry, etcd_server, namespace, bad, fragment):
    registry.register(instance("kept"))
    with pytest.raises(gr.InvalidServiceInstanceError) as info:
        registry.register(gr.ServiceInstance(**bad))
    assert fragment in str(info.value)
    assert list(etcd_keys(etcd_server, namespace)) == [f"{namespace}/svc/kept"]
    assert registry.registered_ids() == ["kept"]


def test_register_refuses_what_is_not_an_instance(registry):
    with pytest.raises(gr.InvalidServiceInstanceError, match="dict"):
        registry.register({"id": "a"})  # type: ignore[arg-type]


def test_duplicate_id_is_refused_and_the_first_registration_kept(registry, etcd_server, namespace):
    registry.register(instance("dup", port=1111))
    with pytest.raises(gr.ServiceAlreadyRegisteredError, match="dup"):
        registry.register(instance("dup", port=2222))
    ((value, _),) = etcd_keys(etcd_server, namespace).values()
    assert b"1111" in value
    assert registry.registered_ids() == ["dup"]


@pytest.mark.parametrize("ttl", [0.5, -1, 0.999, float("nan")])
def test_ttl_below_one_second_is_refused(registry, ttl):
    with pytest.raises(gr.InvalidTTLError):
        registry.register(instance("a"), ttl=ttl)
    assert registry.registered_ids() == []


def test_ttl_types(registry):
    import datetime

    with pytest.raises(gr.InvalidTTLError, match="'30'"):
        registry.register(instance("a"), ttl="30")  # type: ignore[arg-type]
    registry.register(instance("a"), ttl=datetime.timedelta(seconds=3))
    assert registry.registered_ids() == ["a"]


def test_default_ttl_for_none_and_zero(registry, etcd_server, namespace):
    registry.register(instance("none"))
    registry.register(instance("zero"), ttl=0)
    keys = etcd_keys(etcd_server, namespace)
    leases = {lease for _, lease in keys.values()}
    assert len(leases) == 1, "both use the default TTL, so one shared lease"
    assert lease_ttl(etcd_server, leases.pop()) == 5


def test_sub_second_ttl_is_rounded_up_not_truncated(registry, etcd_server, namespace):
    registry.register(instance("a"), ttl=1.5)
    ((_, lease),) = etcd_keys(etcd_server, namespace).values()
    assert lease_ttl(etcd_server, lease) == 2


def test_instances_with_the_same_ttl_share_one_lease(registry, etcd_server, namespace):
    for i in range(50):
        registry.register(instance(f"i-{i:02}"), ttl=10)
    registry.register(instance("other-ttl"), ttl=20)
    keys = etcd_keys(etcd_server, namespace)
    assert len(keys) == 51
    by_lease: dict[int, int] = {}
    for _, lease in keys.values():
        by_lease[lease] = by_lease.get(lease, 0) + 1
    assert sorted(by_lease.values()) == [1, 50]
    assert registry.stats()["leases"] == 2


def test_deregister_deletes_the_key_and_revokes_an_empty_lease(registry, etcd_server, namespace):
    registry.register(instance("a"))
    registry.register(instance("b"))
    (_, lease), _ = etcd_keys(etcd_server, namespace).values()
    registry.deregister("a")
    assert list(etcd_keys(etcd_server, namespace)) == [f"{namespace}/svc/b"]
    assert lease in etcd_leases(etcd_server)
    registry.deregister("b")
    assert etcd_keys(etcd_server, namespace) == {}
    assert lease not in etcd_leases(etcd_server)
    assert registry.registered_ids() == []
    wait_until(lambda: registry.get_service("svc") == (), message="cache follows")


def test_deregister_of_unknown_id_raises(registry):
    registry.register(instance("known"))
    with pytest.raises(gr.ServiceNotFoundError, match="unknown"):
        registry.deregister("unknown")
    assert registry.registered_ids() == ["known"]


def test_deregister_succeeds_when_the_lease_already_expired(registry, etcd_server, namespace):
    registry.register(instance("a"))
    ((_, lease),) = etcd_keys(etcd_server, namespace).values()
    etcd_server.etcdctl("lease", "revoke", format(lease, "x"))
    assert etcd_keys(etcd_server, namespace) == {}
    registry.deregister("a")
    assert registry.registered_ids() == []
    assert etcd_keys(etcd_server, namespace) == {}


def test_register_again_after_deregister(registry, etcd_server, namespace):
    registry.register(instance("a", port=1))
    registry.deregister("a")
    registry.register(instance("a", port=2))
    ((value, _),) = etcd_keys(etcd_server, namespace).values()
    assert b"127.0.0.1:2" in value


def test_close_revokes_leases_and_later_calls_raise(connector, etcd_server, namespace):
    reg = gr.Registry(connector, gr.Config(namespace=namespace, default_ttl=30))
    reg.register(instance("a"))
    reg.register(instance("b"), ttl=60)
    leases = {lease for _, lease in etcd_keys(etcd_server, namespace).values()}
    reg.close()
    assert etcd_keys(etcd_server, namespace) == {}, "keys vanish at once, not after the TTL"
    assert not leases & set(etcd_leases(etcd_server))
    assert reg.closed
    for call in (
        lambda: reg.register(instance("c")),
        lambda: reg.deregister("a"),
        lambda: reg.get_service("svc"),
        lambda: reg.watch("svc"),
    ):
        with pytest.raises(gr.RegistryClosedError):
            call()
    reg.close()  # idempotent


def test_close_from_many_threads_at_once(connector, etcd_server, namespace):
    reg = gr.Registry(connector, gr.Config(namespace=namespace))
    for i in range(20):
        reg.register(instance(f"i-{i}"))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: reg.close(), range(8)))
    assert results == [None] * 8
    assert etcd_keys(etcd_server, namespace) == {}


def test_registries_share_a_connector_without_seeing_each_others_namespaces(connector, namespace):
    with (
        gr.Registry(connector, gr.Config(namespace=namespace + "/a")) as a,
        gr.Registry(connector, gr.Config(namespace=namespace + "/b")) as b,
    ):
        a.register(instance("in-a"))
        b.register(instance("in-b"))
        assert [i.id for i in a.get_service("svc")] == ["in-a"]
        assert [i.id for i in b.get_service("svc")] == ["in-b"]


def test_closing_one_registry_leaves_the_other_working(connector, namespace):
    a = gr.Registry(connector, gr.Config(namespace=namespace))
    b = gr.Registry(connector, gr.Config(namespace=namespace))
    a.get_service("svc")
    b.register(instance("x"))
    wait_until(lambda: a.get_service("svc"), message="a sees x")
    a.close()
    b.register(instance("y"))
    wait_until(lambda: [i.id for i in b.get_service("svc")] == ["x", "y"], message="b still discovers")
    b.close()


@pytest.mark.parametrize("bad", ["", "a/b", "x\x00y"])
def test_bad_service_names_are_refused(registry, bad):
    with pytest.raises(gr.InvalidServiceInstanceError):
        registry.get_service(bad)


def test_get_service_serves_the_last_snapshot_while_etcd_is_down(own_etcd, namespace):
    conn = make_connector(own_etcd.endpoints, request_timeout=1)
    reg = gr.Registry(conn, gr.Config(namespace=namespace))
    reg.register(instance("a"))
    before = reg.get_service("svc")
    own_etcd.kill()
    try:
        assert reg.get_service("svc") == before
    finally:
        reg.close()
        conn.close()


def test_registry_needs_a_connected_connector(etcd_endpoints):
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd_endpoints))
    with pytest.raises(gr.EtcdUnavailableError, match="connect"):
        gr.Registry(conn)
    conn.close()


def test_stats_count_registrations(registry):
    registry.register(instance("a"))
    registry.register(instance("b"))
    registry.deregister("a")
    stats = registry.stats()
    assert (stats["registrations"], stats["deregistrations"], stats["registered"]) == (2, 1, 1)


def test_library_is_quiet_by_default(registry, capfd):
    registry.register(instance("a"))
    registry.get_service("svc")
    registry.deregister("a")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_logs_reach_the_registry_logger_with_structured_fields(connector, namespace):
    records: list[logging.LogRecord] = []
    seen = threading.Event()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            seen.set()

    logger = logging.getLogger(f"test.{namespace}")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    with gr.Registry(connector, gr.Config(namespace=namespace), logger=logger) as reg:
        reg.register(instance("logged"))
        assert seen.wait(10)
    registered = [r for r in records if r.getMessage().startswith("registered")]
    assert registered, [r.getMessage() for r in records]
    assert registered[0].instance_id == "logged"  # type: ignore[attr-defined]
    assert int(registered[0].lease_id) > 0  # type: ignore[attr-defined]


def test_opentelemetry_meter_reports_the_seed_counters(connector, namespace):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with gr.Registry(connector, gr.Config(namespace=namespace), meter=meter) as reg:
        reg.register(instance("a"))
        reg.register(instance("b"))
        reg.get_service("svc")
        data = reader.get_metrics_data()
    values = {
        metric.name: sum(p.value for p in metric.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert values["registry.registrations.total"] == 2
    assert values["registry.lease_failures.total"] == 0
    assert "registry.watch_events.total" in values
    assert values["registry.instances.registered"] == 2
    per_service = {
        dict(p.attributes)["service"]: p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "registry.service.instances"
        for p in metric.data.data_points
    }
    assert per_service == {"svc": 2}
    assert "registry.cache.age" in values and "registry.watch.event_lag" in values


def test_a_registry_dropped_without_close_stops_renewing(connector, etcd_server, namespace):
    import gc

    reg = gr.Registry(connector, gr.Config(namespace=namespace, default_ttl=2))
    reg.register(instance("forgotten"))
    assert etcd_keys(etcd_server, namespace)
    del reg
    gc.collect()
    # Not revoked (nobody called close), but no longer kept alive: gone after the 2 s TTL.
    wait_until(lambda: etcd_keys(etcd_server, namespace) == {}, 10, "the lease to expire")


def test_register_many_writes_all_on_one_lease(registry, etcd_server, namespace):
    batch = [instance(f"b-{i:03}", version=str(i)) for i in range(250)]
    registry.register_many(batch, ttl=10)
    keys = etcd_keys(etcd_server, namespace)
    assert len(keys) == 250
    assert len({lease for _, lease in keys.values()}) == 1
    assert keys[f"{namespace}/svc/b-007"][0] == batch[7].to_json()
    assert registry.registered_ids() == [i.id for i in batch]
    assert registry.stats()["registrations"] == 250
    registry.deregister("b-100")
    assert f"{namespace}/svc/b-100" not in etcd_keys(etcd_server, namespace)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (gr.ServiceInstance(id="x/y", name="svc", endpoints=["h:1"]), "x/y"),
        (instance("b-001"), "twice"),
    ],
)
def test_register_many_is_all_or_nothing(registry, etcd_server, namespace, bad, fragment):
    batch = [instance(f"b-{i:03}") for i in range(5)] + [bad]
    with pytest.raises(gr.InvalidServiceInstanceError, match=fragment):
        registry.register_many(batch)
    assert etcd_keys(etcd_server, namespace) == {}
    assert registry.registered_ids() == []


def test_register_many_refuses_ids_already_registered(registry, etcd_server, namespace):
    registry.register(instance("taken", port=1))
    with pytest.raises(gr.ServiceAlreadyRegisteredError, match="taken"):
        registry.register_many([instance("free"), instance("taken", port=2)])
    assert list(etcd_keys(etcd_server, namespace)) == [f"{namespace}/svc/taken"]
    assert registry.registered_ids() == ["taken"]


def test_register_many_wants_a_list(registry):
    with pytest.raises(gr.InvalidServiceInstanceError, match="list"):
        registry.register_many(instance("one"))  # type: ignore[arg-type]
    registry.register_many([])
    assert registry.registered_ids() == []


def test_list_services_counts_instances_per_service(registry, second_registry, etcd_server, namespace):
    assert registry.list_services() == {}
    registry.register_many([instance(f"a-{i}", name="alpha") for i in range(3)])
    second_registry.register(instance("b-1", name="beta"))
    etcd_server.etcdctl("put", f"{namespace}/beta/nested/deeper", "not an instance key")
    assert registry.list_services() == {"alpha": 3, "beta": 1}


def test_lease_times_read_every_key_s_lease_from_etcd(registry, second_registry, etcd_server, namespace):
    registry.register(instance("mine"), ttl=30)
    second_registry.register_many([instance("theirs-1"), instance("theirs-2")], ttl=12)
    etcd_server.etcdctl("put", f"{namespace}/svc/no-lease", instance("no-lease").to_json())
    held = etcd_keys(etcd_server, namespace)
    times = registry.lease_times("svc")
    assert list(times) == ["mine", "no-lease", "theirs-1", "theirs-2"]
    for id, granted in [("mine", 30), ("theirs-1", 12), ("theirs-2", 12)]:
        assert times[id].lease == held[f"{namespace}/svc/{id}"][1] != 0
        assert times[id].granted_ttl == granted
        assert 0 < times[id].ttl_left <= granted
    assert times["theirs-1"].lease == times["theirs-2"].lease  # one lease, shared
    assert times["no-lease"] == gr.LeaseTime(lease=0, granted_ttl=None, ttl_left=None)
    assert registry.lease_times("nothing-here") == {}
    with pytest.raises(gr.InvalidServiceInstanceError, match="a/b"):
        registry.lease_times("a/b")


async def test_async_lease_times(areg, etcd_server, namespace):
    await areg.register(instance("a"), ttl=15)
    times = await areg.lease_times("svc")
    assert times["a"].granted_ttl == 15 and 0 < times["a"].ttl_left <= 15


def test_remove_deletes_any_instance(registry, second_registry, etcd_server, namespace):
    second_registry.register(instance("theirs"))
    registry.register(instance("mine"))
    etcd_server.etcdctl("put", f"{namespace}/svc/stale", instance("stale").to_json())
    assert registry.remove("svc", "stale") is True
    assert registry.remove("svc", "stale") is False
    assert registry.remove("svc", "mine") is True
    assert registry.registered_ids() == []
    assert registry.remove("svc", "theirs") is True  # its owner writes it back within its TTL
    wait_until(lambda: f"{namespace}/svc/theirs" in etcd_keys(etcd_server, namespace), 10, "the owner to restore it")
    with pytest.raises(gr.InvalidServiceInstanceError):
        registry.remove("svc", "a/b")


def test_deregister_with_service_removes_any_instance_of_it(registry, second_registry, etcd_server, namespace):
    second_registry.register(instance("theirs"))
    registry.register(instance("mine"))
    etcd_server.etcdctl("put", f"{namespace}/svc/stale", instance("stale").to_json())
    registry.deregister("stale", service="svc")
    assert f"{namespace}/svc/stale" not in etcd_keys(etcd_server, namespace)
    with pytest.raises(gr.ServiceNotFoundError, match=f"'stale' of service 'svc' at {namespace}/svc/stale"):
        registry.deregister("stale", service="svc")
    registry.deregister("mine", service="svc")  # one of ours: deregistered, so not written back
    assert registry.registered_ids() == []
    assert f"{namespace}/svc/mine" not in etcd_keys(etcd_server, namespace)
    with pytest.raises(gr.ServiceNotFoundError):
        registry.deregister("theirs")  # without service=: only ids this registry registered
    registry.deregister("theirs", service="svc")
    wait_until(lambda: f"{namespace}/svc/theirs" in etcd_keys(etcd_server, namespace), 10, "the owner to restore it")


async def test_async_deregister_with_service_removes_any_instance_of_it(areg, etcd_server, namespace):
    etcd_server.etcdctl("put", f"{namespace}/svc/stale", instance("stale").to_json())
    await areg.deregister("stale", service="svc")
    assert etcd_keys(etcd_server, namespace) == {}
    with pytest.raises(gr.ServiceNotFoundError, match="'stale' of service 'svc'"):
        await areg.deregister("stale", service="svc")
    assert await areg.remove("svc", "stale") is False


def test_service_stats_report_size_age_and_event_lag(registry, second_registry):
    second_registry.register(instance("x"))
    with registry.watch("svc") as watch:
        assert watch.get(5).service.id == "x"
        second_registry.register(instance("y"))
        assert watch.get(5).service.id == "y"
    stats = registry.service_stats()["svc"]
    assert stats["instances"] == 2
    assert 0 <= stats["age_s"] < 60
    assert 0 < stats["event_lag_us"] <= stats["event_lag_max_us"]
