"""Keep-alive and recovery against real etcd processes that this file kills, restarts,
wipes, compacts and cuts off."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import genesis_registry as gr
import pytest
from support.etcd import etcd_keys, instance, make_connector
from support.tcp_proxy import TcpProxy
from support.views import Follower, etcd_view
from support.wait import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pair(own_etcd, namespace) -> Iterator[tuple[gr.Registry, gr.Registry]]:
    """A registering registry and a watching one, each on its own connector."""
    writer_conn = make_connector(own_etcd.endpoints, request_timeout=2)
    watcher_conn = make_connector(own_etcd.endpoints, request_timeout=2)
    config = gr.Config(namespace=namespace, default_ttl=3, retry_interval=0.1)
    writer, watcher = gr.Registry(writer_conn, config), gr.Registry(watcher_conn, config)
    yield writer, watcher
    writer.close()
    watcher.close()
    writer_conn.close()
    watcher_conn.close()


def converged(follower: Follower, registry: gr.Registry, etcd, namespace: str, expected_ids: list[str]):
    def check():
        in_etcd = etcd_view(etcd, namespace)
        return (
            sorted(in_etcd) == expected_ids
            and follower.snapshot() == in_etcd
            and {i.id: i for i in registry.get_service("svc")} == in_etcd
        )

    return check


def test_a_5s_lease_survives_15s_of_keep_alive(registry, etcd_server, namespace):
    registry.register(instance("long-lived"), ttl=5)
    key = f"{namespace}/svc/long-lived"
    ((_, lease),) = etcd_keys(etcd_server, namespace).values()
    deadline = time.monotonic() + 15
    checks = 0
    while time.monotonic() < deadline:
        keys = etcd_keys(etcd_server, namespace)
        assert key in keys and keys[key][1] == lease, f"key lost after {checks} checks"
        checks += 1
        time.sleep(0.5)  # observing over a span of time is the point of this test
    assert checks >= 20
    assert registry.stats()["lease_failures"] == 0


def test_a_lease_revoked_from_outside_is_replaced_and_the_instance_returns(pair, own_etcd, namespace):
    writer, watcher = pair
    writer.register(instance("a"))
    writer.register(instance("b"))
    follower = Follower(watcher.watch("svc"))
    wait_until(lambda: sorted(follower.snapshot()) == ["a", "b"], message="initial view")
    (_, lease), _ = etcd_keys(own_etcd, namespace).values()
    own_etcd.etcdctl("lease", "revoke", format(lease, "x"))
    keys = wait_until(lambda: len(etcd_keys(own_etcd, namespace)) == 2 and etcd_keys(own_etcd, namespace), 10)
    assert {lease_id for _, lease_id in keys.values()} != {lease}
    wait_until(converged(follower, watcher, own_etcd, namespace, ["a", "b"]), message="views converge")
    kinds = [(e.type.value, e.service.id) for e in follower.events]
    assert ("DELETE", "a") in kinds and kinds.count(("PUT", "a")) >= 2
    stats = writer.stats()
    assert stats["lease_failures"] >= 1 and stats["lease_recoveries"] >= 1
    follower.stop()


def test_an_instance_deleted_by_someone_else_is_written_back(pair, own_etcd, namespace):
    writer, _ = pair
    writer.register(instance("a"))
    writer.register(instance("b"))
    own_etcd.etcdctl("del", f"{namespace}/svc/a")
    wait_until(lambda: f"{namespace}/svc/a" in etcd_keys(own_etcd, namespace), 10, "a written back")
    assert writer.stats()["re_registrations"] >= 1
    assert len({lease for _, lease in etcd_keys(own_etcd, namespace).values()}) == 1


def test_etcd_killed_and_restarted_on_the_same_data(pair, own_etcd, namespace):
    writer, watcher = pair
    for i in "abc":
        writer.register(instance(i))
    follower = Follower(watcher.watch("svc"))
    wait_until(lambda: sorted(follower.snapshot()) == ["a", "b", "c"], message="initial view")
    own_etcd.kill()
    own_etcd.restart()
    # Changes after the restart must reach the watcher too.
    wait_until(lambda: _try(lambda: writer.register(instance("d"))), 15, "register after restart")
    writer.deregister("a")
    wait_until(converged(follower, watcher, own_etcd, namespace, ["b", "c", "d"]), 15, "views converge")
    follower.stop()


def test_etcd_restarted_on_a_wiped_data_dir(pair, own_etcd, namespace):
    writer, watcher = pair
    for i in "abc":
        writer.register(instance(i))
    follower = Follower(watcher.watch("svc"))
    wait_until(lambda: sorted(follower.snapshot()) == ["a", "b", "c"], message="initial view")
    own_etcd.wipe()
    assert etcd_keys(own_etcd, namespace) == {}
    wait_until(converged(follower, watcher, own_etcd, namespace, ["a", "b", "c"]), 20, "everything back")
    assert writer.stats()["lease_recoveries"] >= 1
    writer.register(instance("d"))
    wait_until(converged(follower, watcher, own_etcd, namespace, ["a", "b", "c", "d"]), 10, "new instance seen")
    follower.stop()


def test_compaction_while_a_watcher_is_cut_off_ends_in_an_exact_view(own_etcd, namespace):
    proxy = TcpProxy(own_etcd.endpoints[0])
    writer_conn = make_connector(own_etcd.endpoints)
    watcher_conn = make_connector([proxy.endpoint], request_timeout=2)
    config = gr.Config(namespace=namespace, default_ttl=10)
    writer, watcher = gr.Registry(writer_conn, config), gr.Registry(watcher_conn, config)
    try:
        for i in range(5):
            writer.register(instance(f"i-{i}"))
        follower = Follower(watcher.watch("svc"))
        wait_until(lambda: len(follower.snapshot()) == 5, message="initial view")
        proxy.cut()
        for i in range(5, 15):
            writer.register(instance(f"i-{i}"))
        for i in range(0, 15, 2):
            writer.deregister(f"i-{i}")
        status = own_etcd.etcdctl("endpoint", "status", "-w", "json").stdout
        import json

        revision = json.loads(status)[0]["Status"]["header"]["revision"]
        own_etcd.etcdctl("compact", str(revision))
        proxy.restore()
        expected = sorted(f"i-{i}" for i in range(1, 15, 2))
        wait_until(converged(follower, watcher, own_etcd, namespace, expected), 20, "exact view after compaction")
        assert watcher.stats()["compaction_resyncs"] >= 1
        follower.stop()
    finally:
        writer.close()
        watcher.close()
        writer_conn.close()
        watcher_conn.close()
        proxy.close()


def test_close_is_bounded_when_etcd_is_down(own_etcd, namespace):
    conn = make_connector(own_etcd.endpoints, request_timeout=1)
    reg = gr.Registry(conn, gr.Config(namespace=namespace, default_ttl=30))
    reg.register(instance("a"))
    own_etcd.kill()
    done = threading.Event()
    threading.Thread(target=lambda: (reg.close(), done.set()), daemon=True).start()
    assert done.wait(10), "close() did not return while etcd was down"
    with pytest.raises(gr.RegistryClosedError):
        reg.register(instance("b"))
    conn.close()


def test_registration_during_an_outage_fails_clearly_then_works(own_etcd, namespace):
    conn = make_connector(own_etcd.endpoints, request_timeout=1)
    reg = gr.Registry(conn, gr.Config(namespace=namespace))
    try:
        reg.register(instance("before"))
        own_etcd.kill()
        with pytest.raises(gr.EtcdUnavailableError):
            reg.register(instance("during"))
        assert reg.registered_ids() == ["before"]
        own_etcd.restart()
        wait_until(lambda: _try(lambda: reg.register(instance("after"))), 15, "register after restart")
        assert sorted(etcd_view(own_etcd, namespace)) == ["after", "before"]
    finally:
        reg.close()
        conn.close()


def _try(action) -> bool:
    try:
        action()
        return True
    except gr.EtcdUnavailableError:
        return False


def test_an_outage_longer_than_the_ttl_ends_with_every_instance_registered(pair, own_etcd, namespace):
    writer, watcher = pair
    for i in "abc":
        writer.register(instance(i))  # ttl 3 s
    follower = Follower(watcher.watch("svc"))
    wait_until(lambda: sorted(follower.snapshot()) == ["a", "b", "c"], message="initial view")
    own_etcd.kill()
    time.sleep(4.5)  # the outage must outlast the TTL: elapsed time is the condition under test
    own_etcd.restart()
    wait_until(converged(follower, watcher, own_etcd, namespace, ["a", "b", "c"]), 20, "everything back")
    assert writer.stats()["lease_failures"] >= 1
    keys = etcd_keys(own_etcd, namespace)
    assert len({lease for _, lease in keys.values()}) == 1, "all three share the new lease"
    follower.stop()


def test_lease_recovery_over_a_restart_does_not_flap_instances(pair, own_etcd, namespace):
    writer, watcher = pair  # ttl 3 s
    for i in "abc":
        writer.register(instance(i))
    follower = Follower(watcher.watch("svc"))
    wait_until(lambda: sorted(follower.snapshot()) == ["a", "b", "c"], message="initial view")
    initial = len(follower.events)
    own_etcd.kill()
    wait_until(lambda: writer.stats()["lease_failures"] >= 1, 10, "the client to declare the lease lost")
    own_etcd.restart()  # etcd extends leases over a restart: the instances never expired
    wait_until(lambda: writer.stats()["lease_recoveries"] >= 1, 15, "recovery")
    wait_until(converged(follower, watcher, own_etcd, namespace, ["a", "b", "c"]), 15, "views converge")
    changes = [(e.type.value, e.service.id) for e in follower.events[initial:]]
    assert not [c for c in changes if c[0] == "DELETE"], changes
    follower.stop()
