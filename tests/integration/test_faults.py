"""Faults of a real 3-member etcd cluster: members killed (the leader, the one a watcher is
on, two of three), the whole cluster restarted on its data or wiped, compaction and
defragmentation under churn with a paused watcher, and a registered client process killed.
Each test reports what it injected and checked through the ``scenario`` fixture."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import genesis_registry as gr
import pytest
from genesis_registry.localetcd import EtcdCluster
from support.cli_process import Child
from support.etcd import etcd_keys, etcd_leases, instance, make_connector
from support.faults import (
    Churn,
    Clients,
    deregister,
    leases_settle,
    register,
    watching_members,
)
from support.tcp_proxy import TcpProxy
from support.views import Follower, apply, etcd_view
from support.wait import wait_until


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    """A 3-member cluster of this test's own, free to damage."""
    with EtcdCluster(3) as own:
        yield own


@pytest.fixture
def clients(cluster: EtcdCluster, namespace: str) -> Iterator[Clients]:
    """A writer and two watchers on the cluster, each on its own connector to every member."""
    made = Clients(cluster.endpoints, namespace)
    yield made
    made.close()


def revision(cluster: EtcdCluster) -> int:
    return int(json.loads(cluster.etcdctl("get", "/revision-probe", "-w", "json").stdout)["header"]["revision"])


# -- 1. members killed -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_leader_killed_changes_go_on_and_every_view_ends_exact(cluster, clients, scenario):
    for i in "abcde":
        clients.writer.register(instance(i))
    clients.expect(scenario, cluster, list("abcde"))
    leader = cluster.wait_for_leader()
    scenario.inject(f"SIGKILL the leader (member {leader})")
    killed_at = time.monotonic()
    cluster.kill(leader)
    try:
        clients.writer.register(instance("f"))
        first = "succeeded"
    except gr.EtcdUnavailableError as exc:
        first = f"raised {exc}"
    scenario.note("first register right after the kill", first)
    register(clients.writer, instance("f"))
    deregister(clients.writer, "a")
    scenario.note("register+deregister done after the kill (s)", round(time.monotonic() - killed_at, 2))
    scenario.note("new leader", cluster.wait_for_leader(30))
    clients.expect(scenario, cluster, list("bcdef"))
    scenario.inject(f"restart member {leader} on its data")
    cluster.restart(leader)
    register(clients.writer, instance("g"))
    clients.expect(scenario, cluster, list("bcdefg"))
    scenario.check("registered ids", expected=list("bcdefg"), seen=sorted(clients.writer.registered_ids()))
    leases_settle(scenario, cluster, clients.namespace)


@pytest.mark.timeout(120)
def test_the_member_a_watcher_is_on_killed_the_watch_fails_over(cluster, clients, scenario):
    for i in "abc":
        clients.writer.register(instance(i))
    clients.expect(scenario, cluster, list("abc"))
    watched_on = watching_members(cluster)
    assert watched_on, "no member serves a watch stream"
    victim = watched_on[0]
    scenario.inject(f"SIGKILL member {victim}, which serves a watch stream (members with streams: {watched_on})")
    cluster.kill(victim)
    register(clients.writer, instance("d"))
    deregister(clients.writer, "b")
    # The watch must move to a live member while the victim stays down.
    clients.expect(scenario, cluster, ["a", "c", "d"])
    streams = wait_until(lambda: len(watching_members(cluster)) and watching_members(cluster), 30, "streams moved")
    scenario.note("members serving watch streams after the kill", streams)
    restarts = sum(reg.stats()["watch_restarts"] for reg in clients.watchers)
    scenario.note("watch stream restarts", restarts)
    cluster.restart(victim)
    register(clients.writer, instance("e"))
    clients.expect(scenario, cluster, ["a", "c", "d", "e"])


@pytest.mark.timeout(150)
def test_two_of_three_killed_then_back_nothing_lost(cluster, namespace, scenario):
    clients = Clients(cluster.endpoints, namespace, request_timeout=2, ttl=10)
    try:
        for i in "abc":
            clients.writer.register(instance(i))
        clients.expect(scenario, cluster, list("abc"))
        victims = sorted({*watching_members(cluster), cluster.wait_for_leader()})
        victims = (victims + [i for i in range(3) if i not in victims])[:2]
        scenario.inject(f"SIGKILL members {victims}: no quorum")
        for i in victims:
            cluster.kill(i)
        with pytest.raises(gr.EtcdUnavailableError):
            clients.writer.register(instance("during"))
        scenario.check(
            "registered ids while there is no quorum",
            expected=list("abc"),
            seen=sorted(clients.writer.registered_ids()),
        )
        scenario.check(
            "get_service without a quorum (last known)",
            expected=[list("abc")] * 2,
            seen=[sorted(i.id for i in reg.get_service("svc")) for reg in clients.watchers],
        )
        scenario.inject(f"restart members {victims} on their data")
        for i in victims:
            cluster.restart(i)
        cluster.wait_for_leader(30)
        register(clients.writer, instance("after"))
        deregister(clients.writer, "a")
        clients.expect(scenario, cluster, ["after", "b", "c"])
        scenario.check("registered ids", expected=["after", "b", "c"], seen=sorted(clients.writer.registered_ids()))
        leases_settle(scenario, cluster, namespace)
    finally:
        clients.close()


# -- 3. the whole cluster restarted --------------------------------------------------------


def lease_count_settles(cluster: EtcdCluster, expected: int, ttl: float) -> int:
    """Waits until etcd holds ``expected`` leases (a lease replaced during an outage and not
    revoked expires within its TTL) and returns the count."""
    return len(wait_until(lambda: len(etcd_leases(cluster)) == expected and etcd_leases(cluster), ttl + 20, "leases"))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("wiped", [False, True], ids=["same-data", "wiped"])
def test_the_whole_cluster_restarted_every_instance_comes_back_once(cluster, clients, namespace, scenario, wiped):
    ids = [f"w-{i}" for i in range(5)]
    for i in ids:
        clients.writer.register(instance(i))
    clients.watchers[0].register(instance("v-0"))  # a second registry, with a lease of its own
    expected = sorted([*ids, "v-0"])
    clients.expect(scenario, cluster, expected)
    if wiped:
        scenario.inject("stop every member, delete their data, start a new empty cluster on the same ports")
        cluster.wipe()
        scenario.check("keys right after the wipe", expected={}, seen=etcd_keys(cluster, namespace))
    else:
        scenario.inject("stop every member (SIGTERM), start them again on their data")
        cluster.stop()
        cluster.start()
    clients.expect(scenario, cluster, expected, timeout=60)
    keys = etcd_keys(cluster, namespace)
    scenario.check("keys in etcd", expected=sorted(f"{namespace}/svc/{i}" for i in expected), seen=sorted(keys))
    writer_leases = {lease for key, (_, lease) in keys.items() if "/w-" in key}
    scenario.check("the writer's instances share one lease", expected=1, seen=len(writer_leases))
    scenario.check(
        "leases in etcd once settled (one per registry)", expected=2, seen=lease_count_settles(cluster, 2, 5)
    )
    stats = [reg.stats() for reg in clients.registries]
    scenario.note("lease_recoveries (writer)", stats[0]["lease_recoveries"])
    scenario.note("data_resets seen by watchers", [s["data_resets"] for s in stats[1:]])
    if wiped:
        assert stats[0]["lease_recoveries"] >= 1
    # Changes after the restart reach every watcher too.
    deregister(clients.writer, "w-0")
    register(clients.writer, instance("w-5"))
    clients.expect(scenario, cluster, sorted([*ids[1:], "w-5", "v-0"]))


# -- 4. compaction and defragmentation under churn -----------------------------------------


@pytest.mark.timeout(150)
def test_compaction_and_defrag_under_churn_a_paused_and_a_cut_off_watcher_end_exact(cluster, namespace, scenario):
    config = gr.Config(namespace=namespace, default_ttl=10, retry_interval=0.1)
    proxy = TcpProxy(cluster.endpoints[0])
    writer_conn = make_connector(cluster.endpoints)
    watcher_conn = make_connector(cluster.endpoints)
    cut_conn = make_connector([proxy.endpoint], request_timeout=2)
    writer, watcher, cut_off = (gr.Registry(c, config) for c in (writer_conn, watcher_conn, cut_conn))
    paused = watcher.watch("svc", buffer=16)
    following = Follower(cut_off.watch("svc"))
    churn = Churn(writer, [f"c-{i}" for i in range(40)], seed=4)
    try:
        start = revision(cluster)
        wait_until(lambda: revision(cluster) >= start + 100, 60, "100 revisions of churn")
        scenario.inject("a consumer stops reading its watch (buffer 16)")
        scenario.inject("cut the connection of a third client's watcher")
        proxy.cut()
        mark = revision(cluster)
        wait_until(lambda: revision(cluster) >= mark + 100, 60, "100 more revisions while cut off")
        compact_at = revision(cluster)
        scenario.inject(f"etcdctl compact {compact_at} --physical, then defrag every member, under churn")
        cluster.etcdctl("compact", str(compact_at), "--physical")
        for member in cluster.members:
            member.etcdctl("defrag", "--command-timeout=30s")
        proxy.restore()
        wait_until(lambda: revision(cluster) >= compact_at + 100, 60, "100 more revisions after compaction")
        live = churn.stop()
        scenario.note("churn operations", churn.ops)
        in_etcd = etcd_view(cluster, namespace)
        scenario.check("etcd holds the writer's live set", expected=live, seen=sorted(in_etcd))
        view: dict[str, gr.ServiceInstance] = {}

        def paused_catches_up() -> bool:
            while (event := paused.get_nowait()) is not None:
                apply(view, event)
            return view == in_etcd

        wait_until(paused_catches_up, 30, "the paused watcher's view")
        wait_until(lambda: following.snapshot() == in_etcd, 30, "the cut-off watcher's view")
        scenario.check("paused watcher's view", expected=sorted(in_etcd), seen=sorted(view))
        scenario.check("paused watcher's values equal etcd's", expected=True, seen=view == in_etcd)
        scenario.check("cut-off watcher's view", expected=sorted(in_etcd), seen=sorted(following.snapshot()))
        scenario.check("cut-off watcher's values equal etcd's", expected=True, seen=following.snapshot() == in_etcd)
        scenario.note("paused watch overflows", paused.overflows)
        scenario.note("cut-off watcher compaction resyncs", cut_off.stats()["compaction_resyncs"])
        assert paused.overflows >= 1
        assert cut_off.stats()["compaction_resyncs"] >= 1
    finally:
        churn.cancel()
        following.stop()
        paused.close()
        for reg in (writer, watcher, cut_off):
            reg.close()
        for conn in (writer_conn, watcher_conn, cut_conn):
            conn.close()
        proxy.close()


# -- 5. a registered client process killed -------------------------------------------------


def lease_ttl(cluster: EtcdCluster, lease: int) -> tuple[int, int]:
    """(remaining TTL, granted TTL) of ``lease``; remaining is -1 once it expired."""
    out = json.loads(cluster.etcdctl("lease", "timetolive", format(lease, "x"), "-w", "json").stdout)
    return int(out["ttl"]), int(out.get("granted-ttl", 0))


@pytest.mark.timeout(90)
def test_a_registered_process_killed_its_instance_goes_with_its_lease(etcd_cluster, namespace, scenario):
    ttl = 3
    key = f"{namespace}/svc/crashed"
    child = Child(
        "register", "--json", "--endpoints", ",".join(etcd_cluster.endpoints), "--namespace", namespace,
        "--name", "svc", "--id", "crashed", "--endpoint", "127.0.0.1:9000", "--ttl", str(ttl),
    )  # fmt: skip
    try:
        registered = json.loads(child.readline(30))
        assert registered["status"] == "registered" and registered["ttl"] == ttl, registered
        ((_, lease),) = etcd_keys(etcd_cluster, key).values()
        scenario.inject(f"SIGKILL the registering process (lease ttl {ttl} s)")
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(10)
        killed_at = time.monotonic()
        present = key in etcd_keys(etcd_cluster, key)
        remaining, granted = lease_ttl(etcd_cluster, lease)
        scenario.check("instance present right after the kill", expected=True, seen=present)
        scenario.check("its lease alive right after the kill", expected=(True, ttl), seen=(remaining > 0, granted))
        scenario.note("lease TTL remaining at the kill (s)", remaining)
        # Lease semantics, checked at every poll: the key goes only with its lease. Whenever
        # the key is found gone, the lease (asked afterwards) must have expired.
        polls = 0
        while True:
            assert time.monotonic() - killed_at < ttl + 20, "the instance outlived its lease by 20 s"
            polls += 1
            if key not in etcd_keys(etcd_cluster, key):
                gone_at = time.monotonic() - killed_at
                break
        after = lease_ttl(etcd_cluster, lease)
        scenario.check("lease when the key was found gone", expected=-1, seen=after[0])
        scenario.note("vanished after the kill (s)", round(gone_at, 2))
        scenario.note("polls of etcd", polls)
    finally:
        child.close()
