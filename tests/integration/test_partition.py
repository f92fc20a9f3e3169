"""Network partitions of a real 3-member cluster: each member runs in its own network
namespace (tests/netlab.py), the clients in this one. The member a watcher is on is cut off
(from everyone, or from its peers only); the watch must move to a member with a leader and
deliver what changed meanwhile, instead of hanging on the cut-off member."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from genesis_registry.localetcd import EtcdCluster, EtcdMember
from genesis_registry.localetcd.health import is_healthy as _is_healthy
from support.etcd import instance
from support.faults import Clients, deregister, leases_settle, register, watch_streams, watching_members
from support.netlab import Netlab, unavailable_reason
from support.wait import wait_until


@pytest.fixture
def lab() -> Iterator[Netlab]:
    # Probed when a partition test runs, not when pytest collects the file: the probe
    # creates (and deletes) a network namespace.
    if reason := unavailable_reason():
        pytest.skip(reason)
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


def partition_scenario(
    cluster: EtcdCluster, lab: Netlab, namespace: str, scenario, *, victim_is: str, clients_too: bool
) -> None:
    """Cuts off one member (``victim_is`` "watched": the member a watch stream is on; "leader":
    the leader), changes the service meanwhile, and checks that every watcher ends with etcd's
    content during the partition and after healing, and that no lease is left over."""
    clients = Clients(cluster.endpoints, namespace, watchers=2)
    try:
        for i in "abc":
            clients.writer.register(instance(i))
        clients.expect(scenario, cluster, list("abc"))
        streams = watching_members(cluster)
        leader = cluster.wait_for_leader()
        assert streams, "no member serves a watch stream"
        victim = streams[0] if victim_is == "watched" else leader
        others = [i for i in range(3) if i != victim]
        reader = cluster.members[others[0]]  # etcd's content, read where a quorum is
        whom = "its peers and every client" if clients_too else "its peers (clients still reach it)"
        role = "the leader" if victim == leader else "a follower"
        serves = "serves" if victim in streams else "serves no"
        scenario.inject(
            f"cut member {victim} ({role}; {serves} watch stream; members with streams: {streams}) off from {whom}"
        )
        cut_at = time.monotonic()
        lab.cut(victim, clients=clients_too, peers=True)
        register(clients.writer, instance("d"), timeout=90)
        deregister(clients.writer, "a", timeout=90)
        scenario.note("register+deregister done after the cut (s)", round(time.monotonic() - cut_at, 1))
        clients.expect(
            scenario, reader, ["b", "c", "d"], 90, "views during the partition (etcd read where a quorum is)"
        )
        scenario.note("every watcher exact after the cut (s)", round(time.monotonic() - cut_at, 1))
        moved = [i for i in others if watch_streams(cluster.members[i].client_url) > 0]
        scenario.note("members with watch streams during the partition", moved)
        scenario.inject(f"heal member {victim}")
        lab.heal(victim)
        back = cluster.members[victim]
        wait_until(
            lambda: _is_healthy(back.client_url, 2) and _caught_up(back, namespace, reader),
            60,
            "the member to have a leader again and catch up",
        )
        register(clients.writer, instance("e"), timeout=60)
        clients.expect(scenario, cluster, ["b", "c", "d", "e"], 60, "views after healing")
        leases_settle(scenario, cluster, namespace)
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
def test_the_member_a_watcher_is_on_cut_off_from_everyone(cluster, lab, namespace, scenario):
    partition_scenario(cluster, lab, namespace, scenario, victim_is="watched", clients_too=True)


@pytest.mark.timeout(240)
def test_the_leader_cut_off_from_everyone(cluster, lab, namespace, scenario):
    partition_scenario(cluster, lab, namespace, scenario, victim_is="leader", clients_too=True)


@pytest.mark.timeout(240)
def test_the_member_a_watcher_is_on_cut_off_from_its_peers_only(cluster, lab, namespace, scenario):
    partition_scenario(cluster, lab, namespace, scenario, victim_is="watched", clients_too=False)
