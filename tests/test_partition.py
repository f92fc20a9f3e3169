"""Network partitions of a real 3-member cluster: each member runs in its own network
namespace (tests/netlab.py), the clients in this one. The member a watcher is on is cut off
(from everyone, or from its peers only); the watch must move to a member with a leader and
deliver what changed meanwhile, instead of hanging on the cut-off member."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import instance, wait_until
from fault_tools import Clients, watch_streams, watching_members
from genesis_registry.testing import EtcdCluster, EtcdMember
from netlab import Netlab, unavailable_reason
from test_faults import deregister, register

pytestmark = pytest.mark.skipif(bool(reason := unavailable_reason()), reason=reason or "")


@pytest.fixture
def lab() -> Iterator[Netlab]:
    with Netlab(3) as made:
        yield made


@pytest.fixture
def cluster(lab: Netlab) -> Iterator[EtcdCluster]:
    """A cluster whose members live in the lab's namespaces; closed before the lab goes."""
    with EtcdCluster(
        3,
        hosts=[lab.client_host(i) for i in range(3)],
        peer_hosts=[lab.peer_host(i) for i in range(3)],
        command_prefixes=[lab.command_prefix(i) for i in range(3)],
    ) as made:
        yield made


def partition_scenario(cluster: EtcdCluster, lab: Netlab, namespace: str, scenario, *, clients_too: bool) -> None:
    """Cuts off the member a watcher is on, changes the service meanwhile, and checks that
    every watcher ends with etcd's content during the partition and after healing."""
    clients = Clients(cluster.endpoints, namespace, watchers=2)
    try:
        for i in "abc":
            clients.writer.register(instance(i))
        streams = watching_members(cluster)
        assert streams, "no member serves a watch stream"
        victim = streams[0]
        others = [i for i in range(3) if i != victim]
        reader = cluster.members[others[0]]  # etcd's content, read where a quorum is
        assert clients.converged(reader, list("abc"))()
        whom = "its peers and every client" if clients_too else "its peers (clients still reach it)"
        scenario.inject(
            f"cut member {victim}, which serves a watch stream (members with streams: {streams}), off from {whom}"
        )
        cut_at = time.monotonic()
        lab.cut(victim, clients=clients_too, peers=True)
        register(clients.writer, instance("d"), timeout=90)
        deregister(clients.writer, "a", timeout=90)
        scenario.note("register+deregister done after the cut (s)", round(time.monotonic() - cut_at, 1))
        expected = ["b", "c", "d"]
        wait_until(clients.converged(reader, expected), 90, "the watchers to see the changes made during the partition")
        scenario.note("every watcher exact after the cut (s)", round(time.monotonic() - cut_at, 1))
        scenario.check(
            "views during the partition (etcd read on a member with a quorum)",
            expected={
                "etcd": expected,
                "watch 0": expected,
                "get_service 0": expected,
                "watch 1": expected,
                "get_service 1": expected,
            },
            seen=clients.views(reader),
        )
        moved = [i for i in others if watch_streams(cluster.members[i].client_url) > 0]
        scenario.note("members with watch streams during the partition", moved)
        scenario.inject(f"heal member {victim}")
        lab.heal(victim)
        wait_until(
            lambda: cluster.leader() is not None and _caught_up(cluster.members[victim], namespace, reader),
            60,
            "the member to catch up",
        )
        register(clients.writer, instance("e"), timeout=60)
        wait_until(clients.converged(cluster, ["b", "c", "d", "e"]), 60, "views after healing")
        scenario.check(
            "views after healing",
            expected={
                k: ["b", "c", "d", "e"] for k in ("etcd", "watch 0", "get_service 0", "watch 1", "get_service 1")
            },
            seen=clients.views(cluster),
        )
    finally:
        clients.close()


def _caught_up(member: EtcdMember, namespace: str, reader: EtcdMember) -> bool:
    """Whether ``member`` alone (a serializable read) holds the keys ``reader`` holds."""
    try:
        mine = member.etcdctl("get", "--prefix", namespace, "--consistency=s", "--keys-only", timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return mine == reader.etcdctl("get", "--prefix", namespace, "--consistency=s", "--keys-only").stdout


@pytest.mark.timeout(240)
def test_a_member_cut_off_from_everyone_the_watch_fails_over(cluster, lab, namespace, scenario):
    partition_scenario(cluster, lab, namespace, scenario, clients_too=True)


@pytest.mark.timeout(240)
def test_a_member_cut_off_from_its_peers_the_watch_fails_over(cluster, lab, namespace, scenario):
    partition_scenario(cluster, lab, namespace, scenario, clients_too=False)
