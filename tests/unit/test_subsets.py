"""Subsetting and zone preference without servers: the chooser (determinism, spread, churn)
and the endpoint set's zone tiers and failover, channels being plain objects."""

from __future__ import annotations

import collections
import itertools
import logging
from typing import Any

import genesis_registry as gr
import grpc
import pytest
from genesis_registry.balancer.endpoints import Endpoint, EndpointSet
from genesis_registry.balancer.subsets import SubsetChooser

READY = grpc.ChannelConnectivity.READY
FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
CONNECTING = grpc.ChannelConnectivity.CONNECTING

BACKENDS = [f"10.{i // 250}.{i % 250}.1:8080" for i in range(300)]


def subset(key: str, size: int, backends: list[str]) -> set[str]:
    return set(SubsetChooser(size, key).choose(dict.fromkeys(backends, False)))


def test_a_client_always_chooses_the_same_subset_and_clients_differ() -> None:
    first = subset("client-1", 10, BACKENDS)
    assert len(first) == 10
    assert subset("client-1", 10, list(reversed(BACKENDS))) == first  # order of discovery does not matter
    assert subset(b"client-1", 10, BACKENDS) == first
    others = [subset(f"client-{k}", 10, BACKENDS) for k in range(2, 12)]
    assert all(other != first for other in others)


def test_without_a_size_every_endpoint_is_chosen() -> None:
    assert subset("c", 1000, BACKENDS[:5]) == set(BACKENDS[:5])
    assert set(SubsetChooser(None).choose(dict.fromkeys(BACKENDS, False))) == set(BACKENDS)


def connections_per_backend(clients: int, size: int, backends: list[str]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter(dict.fromkeys(backends, 0))
    for k in range(clients):
        counts.update(subset(f"client-{k}", size, backends))
    return counts


def test_clients_spread_over_every_backend() -> None:
    """100 clients × 30 of 300 backends: 10 connections per backend on average; as
    independent choices, the counts spread as a binomial (standard deviation 3)."""
    counts = connections_per_backend(100, 30, BACKENDS)
    assert sum(counts.values()) == 3000
    assert min(counts.values()) >= 1  # no backend is left out
    assert max(counts.values()) <= 2.5 * 10
    deviation = (sum((c - 10) ** 2 for c in counts.values()) / len(counts)) ** 0.5
    assert deviation < 4


def test_a_leaving_backend_is_replaced_only_by_the_clients_that_held_it() -> None:
    clients = [f"client-{k}" for k in range(100)]
    before = {c: subset(c, 30, BACKENDS) for c in clients}
    gone = BACKENDS[17]
    after = {c: subset(c, 30, [b for b in BACKENDS if b != gone]) for c in clients}
    held = [c for c in clients if gone in before[c]]
    assert held  # some client held it
    for client in clients:
        if client in held:
            assert len(before[client] - after[client]) == 1 == len(after[client] - before[client])
        else:
            assert after[client] == before[client]


def test_a_joining_backend_changes_few_clients_by_one_each() -> None:
    clients = [f"client-{k}" for k in range(100)]
    before = {c: subset(c, 30, BACKENDS) for c in clients}
    joined = "10.9.9.9:8080"
    after = {c: subset(c, 30, [*BACKENDS, joined]) for c in clients}
    changed = [c for c in clients if after[c] != before[c]]
    for client in changed:
        assert after[client] - before[client] == {joined}
        assert len(before[client] - after[client]) == 1
    # Each client takes it with probability 30/301: about 10 of 100.
    assert 0 < len(changed) <= 25


def test_the_subset_is_taken_in_the_zone_first() -> None:
    in_zone = {t: i % 3 == 0 for i, t in enumerate(BACKENDS[:30])}  # 10 of 30 in the zone
    chooser = SubsetChooser(4, "c", "zone-a")
    assert all(in_zone[t] for t in chooser.choose(in_zone))
    small = SubsetChooser(12, "c", "zone-a").choose(in_zone)
    assert sum(in_zone[t] for t in small) == 10 and len(small) == 12  # filled from other zones
    failover = chooser.failover(in_zone)
    assert len(failover) == 4 and not any(in_zone[t] for t in failover)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"size": 0}, "0"),
        ({"size": -1}, "-1"),
        ({"size": True}, "True"),
        ({"size": "3"}, "'3'"),
        ({"size": 2, "zone": ""}, "''"),
        ({"size": 2, "zone": 5}, "5"),
        ({"size": 2, "key": 3.5}, "3.5"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(gr.InvalidConfigError, match=named):
        SubsetChooser(**kwargs)


class Channels:
    """Stands for the channel twin: records what the set opens and closes."""

    def __init__(self, **options: Any) -> None:
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.left: list[int] = []
        self.set = EndpointSet(
            "svc",
            options.pop("policy", "round_robin"),
            self.open,
            lambda endpoint: None,
            self.close,
            logging.getLogger("test.subsets"),
            on_left_zone=lambda: self.left.append(1),
            **options,
        )

    def open(self, target: str) -> str:
        self.opened.append(target)
        return f"channel to {target}"

    def close(self, endpoint: Endpoint) -> None:
        self.closed.append(endpoint.target)

    def states(self, state: grpc.ChannelConnectivity, zone: bool | None = None) -> None:
        self.set.set_states(
            [(ep, state) for ep in self.set.endpoints() if zone is None or ep.in_zone == zone],
        )

    def calls(self, n: int) -> collections.Counter[str]:
        counter = itertools.count()
        seen: collections.Counter[str] = collections.Counter()
        for _ in range(n):
            endpoint = self.set.acquire(counter)
            assert endpoint is not None
            seen[endpoint.instance.metadata["zone"]] += 1
            self.set.finished(endpoint)
        return seen


def zoned(count: int, zone: str, first: int = 0) -> list[gr.ServiceInstance]:
    return [
        gr.ServiceInstance(id=f"{zone}-{i}", name="svc", endpoints=[f"grpc://10.0.0.{i}:80"], metadata={"zone": zone})
        for i in range(first, first + count)
    ]


def test_calls_stay_in_the_zone_fail_over_and_come_back() -> None:
    channels = Channels(zone="a")
    channels.set.update(zoned(2, "a") + zoned(2, "b", first=10))
    channels.states(READY)
    assert channels.calls(10) == {"a": 10}
    channels.states(FAILING, zone=True)
    assert channels.calls(10) == {"b": 10}
    assert channels.set.stats().failover and channels.set.stats().calls_left_zone == 10 == len(channels.left)
    channels.states(READY, zone=True)
    assert channels.calls(10) == {"a": 10}
    assert not channels.set.stats().failover and channels.set.stats().calls_left_zone == 10


def test_calls_leave_the_zone_whenever_it_has_no_ready_endpoint() -> None:
    channels = Channels(zone="a")
    channels.set.update(zoned(2, "a") + zoned(2, "b", first=10))
    channels.states(CONNECTING, zone=True)
    channels.states(READY, zone=False)
    assert channels.calls(4) == {"b": 4}
    channels.states(READY, zone=True)
    assert channels.calls(4) == {"a": 4}


def test_with_a_subset_the_failover_endpoints_connect_only_while_the_zone_is_down() -> None:
    channels = Channels(zone="a", subset_size=2, subset_key="c")
    channels.set.update(zoned(4, "a") + zoned(4, "b", first=10))
    stats = channels.set.stats()
    assert (stats.known, stats.subset) == (8, 2)
    assert all(ep.in_zone for ep in channels.set.endpoints())
    channels.states(CONNECTING)
    assert channels.set.stats().subset == 2  # still connecting: not down
    channels.states(FAILING)
    assert channels.set.stats().subset == 4  # the other zone's best two joined
    channels.states(READY, zone=False)
    assert channels.calls(6) == {"b": 6}
    channels.states(CONNECTING, zone=True)  # reconnecting is not recovering
    assert channels.set.stats().subset == 4
    channels.states(READY, zone=True)
    assert channels.calls(6) == {"a": 6}
    assert channels.set.stats().subset == 2
    assert sorted(channels.closed) == sorted(channels.opened[2:])  # the failover endpoints, drained
