"""Churn on a real 3-member cluster: 200 instances registering and deregistering at random
for CHURN_SECONDS, with the leader killed half-way. At the end etcd holds exactly the live
set, every watcher agrees, no lease is left over, and the process's threads, open files and
memory have not grown beyond a generous bound."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator

import genesis_registry as gr
import psutil
import pytest
from genesis_registry.localetcd import EtcdCluster
from support.etcd import etcd_keys, etcd_leases, make_connector
from support.faults import Churn, Clients
from support.wait import wait_until

#: How long the churn runs. 120 s in CI; a shorter local run may set GENESIS_CHURN_SECONDS.
CHURN_SECONDS = float(os.environ.get("GENESIS_CHURN_SECONDS", "120"))
INSTANCES = 200
REGISTRIES = 4
#: Bounds on growth between a warmed-up sample and the end: generous, since thread pools,
#: allocator arenas and gRPC buffers settle at their own pace; a leak per operation (tens of
#: thousands of them) would still exceed them by far.
MAX_NEW_THREADS = 8
MAX_NEW_FDS = 32
MAX_RSS_GROWTH = 64 * 1024 * 1024


def resources(collect: bool = True) -> dict[str, int]:
    if collect:
        gc.collect()
    proc = psutil.Process()
    return {"threads": proc.num_threads(), "fds": proc.num_fds(), "rss": proc.memory_info().rss}


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as own:
        yield own


@pytest.mark.timeout(CHURN_SECONDS + 240)
def test_churn_with_a_leader_kill_ends_exact_without_leaks(cluster, namespace, scenario):
    clients = Clients(cluster.endpoints, namespace, watchers=2, ttl=5)
    config = gr.Config(namespace=namespace, default_ttl=5, retry_interval=0.1)
    connectors = [make_connector(cluster.endpoints, dial_timeout=20) for _ in range(REGISTRIES // 2)]
    registries = [gr.Registry(connectors[n % len(connectors)], config) for n in range(REGISTRIES)]
    per = INSTANCES // REGISTRIES
    churns: list[Churn] = []
    try:
        churns = [
            Churn(reg, [f"r{n}-{i}" for i in range(per)], seed=n, ttls=(3, 5, 10), pause=0.01)
            for n, reg in enumerate(registries)
        ]
        scenario.inject(
            f"{INSTANCES} instances in {REGISTRIES} registries on {len(connectors)} connectors, "
            f"registering and deregistering at random for {CHURN_SECONDS:.0f} s"
        )
        began = time.monotonic()
        # Warm up before the baseline: the runtime, connections and caches exist by then.
        warm = min(10.0, CHURN_SECONDS / 4)
        wait_until(lambda: time.monotonic() - began >= warm, warm + 5, "warm-up")
        before = resources()
        half = CHURN_SECONDS / 2
        wait_until(lambda: time.monotonic() - began >= half, half + 5, "half-time")
        middle = resources()
        leader = cluster.wait_for_leader()
        scenario.inject(
            f"SIGKILL the leader (member {leader}) at {time.monotonic() - began:.0f} s, restart it 5 s later"
        )
        cluster.kill(leader)
        killed = time.monotonic()
        cluster.wait_for_leader(60)
        wait_until(lambda: time.monotonic() - killed >= 5, 10, "the member to stay down 5 s")
        cluster.restart(leader)
        peak = before.copy()

        def done() -> bool:
            now = resources(collect=False)
            for name, value in now.items():
                peak[name] = max(peak[name], value)
            return time.monotonic() - began >= CHURN_SECONDS

        wait_until(done, CHURN_SECONDS + 30, "the end of the churn")
        live = sorted(id_ for churn in churns for id_ in churn.stop())
        scenario.note("operations", sum(c.ops for c in churns))
        scenario.note("refused while electing", sum(c.unavailable for c in churns))
        scenario.note("live instances at the end", len(live))

        def exact() -> bool:
            in_etcd = clients.etcd_view(cluster)
            return sorted(in_etcd) == live and all(f.snapshot() == in_etcd for f in clients.followers)

        wait_until(exact, 60, "etcd and every watcher to hold the live set")
        in_etcd = clients.etcd_view(cluster)
        scenario.check("etcd holds exactly the live set", expected=live, seen=sorted(in_etcd))
        for n, (follower, reg) in enumerate(zip(clients.followers, clients.watchers, strict=True)):
            scenario.check(f"watcher {n} equals etcd (values too)", expected=True, seen=follower.snapshot() == in_etcd)
            seen = {i.id: i for i in reg.get_service("svc")}
            scenario.check(f"get_service {n} equals etcd (values too)", expected=True, seen=seen == in_etcd)
        keys = etcd_keys(cluster, namespace)
        held = {lease for _, lease in keys.values()}
        scenario.check(
            "leases the registries hold = leases of the keys",
            expected=len(held),
            seen=sum(reg.stats()["leases"] for reg in registries),
        )
        # Leases given up during the outage and not revoked expire within their TTL (<= 10 s).
        wait_until(lambda: set(etcd_leases(cluster)) == held, 40, "no lease left over in etcd")
        scenario.check("leases in etcd", expected=sorted(held), seen=sorted(etcd_leases(cluster)))
        after = resources()
        scenario.note("threads before/peak/after", (before["threads"], peak["threads"], after["threads"]))
        scenario.note("open fds before/peak/after", (before["fds"], peak["fds"], after["fds"]))
        mib = 1024 * 1024
        scenario.note(
            "RSS MiB warmed-up/half-time/peak/after",
            tuple(round(x["rss"] / mib, 1) for x in (before, middle, peak, after)),
        )
        scenario.check(
            "threads within bound", expected=True, seen=after["threads"] <= before["threads"] + MAX_NEW_THREADS
        )
        scenario.check("fds within bound", expected=True, seen=after["fds"] <= before["fds"] + MAX_NEW_FDS)
        scenario.check("RSS within bound", expected=True, seen=after["rss"] <= before["rss"] + MAX_RSS_GROWTH)
    finally:
        for churn in churns:
            churn.cancel()
        for reg in registries:
            reg.close()
        for conn in connectors:
            conn.close()
        clients.close()
