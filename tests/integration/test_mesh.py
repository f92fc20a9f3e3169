"""Balanced channels at mesh scale, sync and asyncio, against a real etcd and real grpcio
servers: subsets by rendezvous hashing (``subset_size``, ``subset_key``), zone preference
and failover (``zone``), one connectivity thread per process however many endpoints
(and ``subscribe()`` where grpcio has no probe), channel stats and their metrics."""

from __future__ import annotations

import collections
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import genesis_registry as gr
import grpc
import pytest
from genesis_registry import _connectivity
from genesis_registry._connectivity import MONITOR
from genesis_registry._grpcio import open_channel
from support.echo import AsyncEchoServer, AsyncEchoStub, EchoServer, EchoStub, instance_for, server_of
from support.wait import await_until, wait_until

#: Endpoint channels that reconnect within a fraction of a second once a stopped server is
#: back (grpcio's default backoff starts at 1 s and grows by 1.6 per failed attempt).
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
)

#: Settings get_connection() refuses: (keyword, value).
BAD_SETTINGS = [
    ("subset_size", 0),
    ("subset_size", -1),
    ("subset_size", True),
    ("subset_size", "3"),
    ("zone", ""),
    ("zone", 5),
    ("subset_key", 3.5),
]

Server = EchoServer | AsyncEchoServer


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def twelve() -> Iterator[list[EchoServer]]:
    """Twelve running echo servers, b00 to b11."""
    started = [EchoServer(f"b{i:02}").start() for i in range(12)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
async def atwelve() -> AsyncIterator[list[AsyncEchoServer]]:
    """Twelve running asyncio echo servers, b00 to b11."""
    started = [await AsyncEchoServer(f"b{i:02}").start() for i in range(12)]
    yield started
    for server in started:
        await server.stop()


@pytest.fixture
def zoned() -> Iterator[tuple[list[EchoServer], list[EchoServer]]]:
    """Three echo servers for zone-a (a0 to a2) and three for zone-b (b0 to b2), running."""
    zone_a = [EchoServer(f"a{i}").start() for i in range(3)]
    zone_b = [EchoServer(f"b{i}").start() for i in range(3)]
    yield zone_a, zone_b
    for server in zone_a + zone_b:
        server.stop()


@pytest.fixture
async def azoned() -> AsyncIterator[tuple[list[AsyncEchoServer], list[AsyncEchoServer]]]:
    """The asyncio twin of ``zoned``."""
    zone_a = [await AsyncEchoServer(f"a{i}").start() for i in range(3)]
    zone_b = [await AsyncEchoServer(f"b{i}").start() for i in range(3)]
    yield zone_a, zone_b
    for server in zone_a + zone_b:
        await server.stop()


# --------------------------------------------------------------------------- helpers


def spread(stub: EchoStub, calls: int) -> collections.Counter[str]:
    """Who answered ``calls`` unary calls (any failure raises)."""
    return collections.Counter(server_of(stub.Unary(b"x", timeout=5)) for _ in range(calls))


async def aspread(stub: AsyncEchoStub, calls: int) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(calls):
        counts[server_of(await stub.Unary(b"x", timeout=5))] += 1
    return counts


def names_at(servers: Sequence[Server], targets: Sequence[str]) -> set[str]:
    """The names of the servers listening at ``targets`` (``host:port``)."""
    by_address = {server.address: server.name for server in servers}
    return {by_address[target] for target in targets}


def zone_instances(zone_a: Sequence[Server], zone_b: Sequence[Server], name: str = "echo") -> list[gr.ServiceInstance]:
    """Instances of ``name`` for the servers of zone-a and of zone-b, ``zone`` in their metadata."""
    zones = [("zone-a", s) for s in zone_a] + [("zone-b", s) for s in zone_b]
    return [instance_for(server, name, zone=zone) for zone, server in zones]


def lands_on(stub: EchoStub, prefix: str) -> Callable[[], bool]:
    """A predicate: one call succeeds, on a server whose name starts with ``prefix``."""

    def attempt() -> bool:
        try:
            return server_of(stub.Unary(b"x", timeout=5)).startswith(prefix)
        except grpc.RpcError:
            return False

    return attempt


def alands_on(stub: AsyncEchoStub, prefix: str) -> Callable[[], Awaitable[bool]]:
    async def attempt() -> bool:
        try:
            return server_of(await stub.Unary(b"x", timeout=5)).startswith(prefix)
        except grpc.RpcError:
            return False

    return attempt


def knows(channel: gr.BalancedChannel | gr.AsyncBalancedChannel) -> Callable[[int], Callable[[], bool]]:
    """``knows(channel)(n)``: a predicate, the channel knows ``n`` endpoints."""
    return lambda count: lambda: channel.stats().known == count


def thread_counts() -> tuple[int, int]:
    """Python threads, and every thread of the process (grpcio's own included)."""
    return threading.active_count(), len(os.listdir("/proc/self/task"))


def _polling(channel: grpc.Channel) -> bool:
    """Whether a grpcio subscribe() thread polls ``channel`` (grpcio's private state, read only)."""
    state = channel._connectivity_state  # type: ignore[attr-defined]
    with state.lock:
        return bool(state.polling)


def _closed(channel: grpc.Channel) -> bool:
    try:
        channel._channel.check_connectivity_state(False)  # type: ignore[attr-defined]
    except ValueError:
        return True
    return False


def record_endpoint_channels(monkeypatch: pytest.MonkeyPatch) -> list[grpc.Channel]:
    """The grpcio channels blocking balanced channels open from now on, in order."""
    opened: list[grpc.Channel] = []

    def recording(target: str, credentials: grpc.ChannelCredentials | None, options: Any) -> grpc.Channel:
        channel = open_channel(target, credentials, options)
        opened.append(channel)
        return channel

    monkeypatch.setattr("genesis_registry.balancer.sync.open_channel", recording)
    return opened


def metric_points(reader: Any, name: str) -> dict[tuple[str, ...], float]:
    """The data points of metric ``name``: (service, state) attributes, those present -> value."""
    data = reader.get_metrics_data()
    points: dict[tuple[str, ...], float] = {}
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attributes = dict(point.attributes)
                    key = tuple(str(attributes[k]) for k in ("service", "state") if k in attributes)
                    points[key] = point.value
    return points


def in_memory_meter() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    return reader, MeterProvider(metric_readers=[reader]).get_meter("test")


# --------------------------------------------------------------------------- subset size


def test_a_subset_connects_to_and_calls_only_its_endpoints(registry, twelve):
    registry.register_many([instance_for(s) for s in twelve])
    with registry.get_connection("echo", subset_size=4) as channel:
        wait_until(lambda: channel.stats().ready == 4, 10, "4 READY endpoints")
        stats = channel.stats()
        assert isinstance(stats, gr.ChannelStats)
        assert (stats.service, stats.known, stats.subset, stats.connected, stats.ready) == ("echo", 12, 4, 4, 4)
        assert (stats.subset_size, stats.zone, stats.failover, stats.calls_left_zone) == (4, None, False, 0)
        chosen = names_at(twelve, channel.targets)
        assert len(channel.targets) == 4 and len(chosen) == 4
        assert sorted(channel.ready_targets()) == channel.targets
        counts = spread(EchoStub(channel), 40)
    assert counts == dict.fromkeys(chosen, 10), counts
    assert {s.name: s.served["Unary"] for s in twelve} == {s.name: 10 if s.name in chosen else 0 for s in twelve}


async def test_a_subset_connects_to_and_calls_only_its_endpoints_aio(areg, atwelve):
    await areg.register_many([instance_for(s) for s in atwelve])
    async with await areg.get_connection("echo", subset_size=4) as channel:
        await await_until(lambda: channel.stats().ready == 4, 10, "4 READY endpoints")
        stats = channel.stats()
        assert isinstance(stats, gr.ChannelStats)
        assert (stats.service, stats.known, stats.subset, stats.connected, stats.ready) == ("echo", 12, 4, 4, 4)
        assert (stats.subset_size, stats.zone, stats.failover, stats.calls_left_zone) == (4, None, False, 0)
        chosen = names_at(atwelve, channel.targets)
        assert len(channel.targets) == 4 and len(chosen) == 4
        counts = await aspread(AsyncEchoStub(channel), 40)
    assert counts == dict.fromkeys(chosen, 10), counts
    assert {s.name: s.served["Unary"] for s in atwelve} == {s.name: 10 if s.name in chosen else 0 for s in atwelve}


# --------------------------------------------------------------------------- determinism

#: The keys of the determinism tests: one more than enough for two of them to differ.
OTHER_KEYS = [f"client-{i}" for i in range(6)]


def test_the_subset_is_a_function_of_the_subset_key(registry, twelve):
    registry.register_many([instance_for(s) for s in twelve])
    own_key = f"{socket.gethostname()}/{os.getpid()}"  # the documented default
    settings: list[dict[str, Any]] = [
        {"subset_key": "pod-7"},
        {"subset_key": "pod-7"},
        {"subset_key": b"pod-7"},
        {},
        {},
        {"subset_key": own_key},
        *({"subset_key": key} for key in OTHER_KEYS),
    ]
    channels = [registry.get_connection("echo", subset_size=4, **kw) for kw in settings]
    try:
        for channel in channels:
            wait_until(knows(channel)(12), 10, "the 12 instances in the channel")
        chosen = [tuple(channel.targets) for channel in channels]
    finally:
        for channel in channels:
            channel.close()
    assert all(len(targets) == 4 for targets in chosen)
    assert chosen[0] == chosen[1] == chosen[2], "one key, one subset (str or bytes alike)"
    assert chosen[3] == chosen[4] == chosen[5], "the default key is the host name and process id"
    others = chosen[6:]
    assert len(set(others)) > 1, f"{len(OTHER_KEYS)} keys all chose {others[0]}"


async def test_the_subset_is_a_function_of_the_subset_key_aio(areg, atwelve):
    await areg.register_many([instance_for(s) for s in atwelve])
    own_key = f"{socket.gethostname()}/{os.getpid()}"
    settings: list[dict[str, Any]] = [
        {"subset_key": "pod-7"},
        {"subset_key": "pod-7"},
        {"subset_key": b"pod-7"},
        {},
        {},
        {"subset_key": own_key},
        *({"subset_key": key} for key in OTHER_KEYS),
    ]
    channels = [await areg.get_connection("echo", subset_size=4, **kw) for kw in settings]
    try:
        for channel in channels:
            await await_until(knows(channel)(12), 10, "the 12 instances")
        chosen = [tuple(channel.targets) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()
    assert all(len(targets) == 4 for targets in chosen)
    assert chosen[0] == chosen[1] == chosen[2]
    assert chosen[3] == chosen[4] == chosen[5]
    assert len(set(chosen[6:])) > 1, chosen[6:]


async def test_sync_and_aio_channels_with_one_key_choose_alike(registry, areg, atwelve):
    """The key decides, not the twin: a blocking and an asyncio channel with the same key
    connect to the same endpoints."""
    await areg.register_many([instance_for(s) for s in atwelve])
    async with await areg.get_connection("echo", subset_size=4, subset_key="shared") as achannel:
        with registry.get_connection("echo", subset_size=4, subset_key="shared") as channel:
            await await_until(lambda: achannel.stats().known == channel.stats().known == 12, 10, "the 12 instances")
            assert len(channel.targets) == 4 and channel.targets == achannel.targets


# --------------------------------------------------------------------------- churn


def test_a_subset_changes_by_one_endpoint_at_most_as_instances_come_and_go(registry, twelve):
    registry.register_many([instance_for(s) for s in twelve])
    late = EchoServer("late").start()
    try:
        with registry.get_connection("echo", subset_size=4) as channel:
            known = knows(channel)
            wait_until(known(12), 10, "12 known endpoints")
            first = set(channel.targets)
            gone = min(names_at(twelve, sorted(first)))
            gone_address = next(s.address for s in twelve if s.name == gone)

            registry.deregister(gone)  # in the subset: replaced by exactly one
            wait_until(known(11), 10, f"{gone} out of the view")
            second = set(channel.targets)
            assert len(second) == 4 and first - second == {gone_address}, (first, second)
            assert len(second - first) == 1, (first, second)

            outsider = min(s.name for s in twelve if s.address not in first | second)
            registry.deregister(outsider)  # not in the subset: nothing moves
            wait_until(known(10), 10, f"{outsider} out of the view")
            assert set(channel.targets) == second

            registry.register(instance_for(late))  # a newcomer: in for one, or not at all
            wait_until(known(11), 10, "the newcomer in the view")
            third = set(channel.targets)
            assert len(third) == 4 and len(third ^ second) in (0, 2), (second, third)
            assert third - second <= {late.address}, (second, third)

            registry.deregister("late")
            registry.register(instance_for(next(s for s in twelve if s.name == gone)))
            wait_until(lambda: channel.stats().known == 11 and late.address not in channel.targets, 10)
            assert set(channel.targets) == first, "the subset of the same endpoints is the same subset"

            wait_until(lambda: channel.stats().ready == 4, 10, "4 READY endpoints")
            counts = spread(EchoStub(channel), 40)
        assert counts == dict.fromkeys(names_at(twelve, sorted(first)), 10), counts
    finally:
        late.stop()


async def test_a_subset_changes_by_one_endpoint_at_most_as_instances_come_and_go_aio(areg, atwelve):
    await areg.register_many([instance_for(s) for s in atwelve])
    late = await AsyncEchoServer("late").start()
    try:
        async with await areg.get_connection("echo", subset_size=4) as channel:
            known = knows(channel)
            await await_until(known(12), 10, "12 known endpoints")
            first = set(channel.targets)
            gone = min(names_at(atwelve, sorted(first)))
            gone_address = next(s.address for s in atwelve if s.name == gone)

            await areg.deregister(gone)
            await await_until(known(11), 10, f"{gone} out of the view")
            second = set(channel.targets)
            assert len(second) == 4 and first - second == {gone_address}, (first, second)
            assert len(second - first) == 1, (first, second)

            outsider = min(s.name for s in atwelve if s.address not in first | second)
            await areg.deregister(outsider)
            await await_until(known(10), 10, f"{outsider} out of the view")
            assert set(channel.targets) == second

            await areg.register(instance_for(late))
            await await_until(known(11), 10, "the newcomer in the view")
            third = set(channel.targets)
            assert len(third) == 4 and len(third ^ second) in (0, 2), (second, third)
            assert third - second <= {late.address}, (second, third)

            await areg.deregister("late")
            await areg.register(instance_for(next(s for s in atwelve if s.name == gone)))
            await await_until(lambda: channel.stats().known == 11 and late.address not in channel.targets, 10)
            assert set(channel.targets) == first

            await await_until(lambda: channel.stats().ready == 4, 10, "4 READY endpoints")
            counts = await aspread(AsyncEchoStub(channel), 40)
        assert counts == dict.fromkeys(names_at(atwelve, sorted(first)), 10), counts
    finally:
        await late.stop()


# --------------------------------------------------------------------------- zones


def test_calls_stay_in_the_zone_and_fail_over_while_it_is_down(registry, zoned):
    zone_a, zone_b = zoned
    registry.register_many(zone_instances(zone_a, zone_b))
    with registry.get_connection("echo", options=FAST_RECONNECT, zone="zone-a") as channel:
        stub = EchoStub(channel)
        wait_until(lambda: channel.stats().ready == 6, 10, "6 READY endpoints")
        assert spread(stub, 30) == {"a0": 10, "a1": 10, "a2": 10}
        stats = channel.stats()
        assert (stats.zone, stats.known, stats.subset, stats.failover, stats.calls_left_zone) == (
            "zone-a", 6, 6, False, 0,
        )  # fmt: skip
        assert registry.stats()["calls_left_zone"] == 0
        assert all(s.total_served == 0 for s in zone_b)

        for server in zone_a:
            server.stop()
        wait_until(lands_on(stub, "b"), 15, "calls to fail over to zone-b")
        left = channel.stats().calls_left_zone
        assert left >= 1
        counts = spread(stub, 30)  # none fails
        assert set(counts) == {"b0", "b1", "b2"} and sum(counts.values()) == 30, counts
        stats = channel.stats()
        assert stats.failover and stats.calls_left_zone == left + 30
        assert registry.stats()["calls_left_zone"] == stats.calls_left_zone

        for server in zone_a:
            server.restart()
        wait_until(lands_on(stub, "a"), 20, "calls back in zone-a")
        wait_until(lambda: channel.stats().ready == 6, 20, "zone-a READY again")
        left = channel.stats().calls_left_zone
        assert spread(stub, 30) == {"a0": 10, "a1": 10, "a2": 10}
        stats = channel.stats()
        assert not stats.failover and stats.calls_left_zone == left
        assert registry.stats()["calls_left_zone"] == left


async def test_calls_stay_in_the_zone_and_fail_over_while_it_is_down_aio(areg, azoned):
    zone_a, zone_b = azoned
    await areg.register_many(zone_instances(zone_a, zone_b))
    async with await areg.get_connection("echo", options=FAST_RECONNECT, zone="zone-a") as channel:
        stub = AsyncEchoStub(channel)
        await await_until(lambda: channel.stats().ready == 6, 10, "6 READY endpoints")
        assert await aspread(stub, 30) == {"a0": 10, "a1": 10, "a2": 10}
        stats = channel.stats()
        assert (stats.zone, stats.known, stats.subset, stats.failover, stats.calls_left_zone) == (
            "zone-a", 6, 6, False, 0,
        )  # fmt: skip
        assert areg.stats()["calls_left_zone"] == 0
        assert all(s.total_served == 0 for s in zone_b)

        for server in zone_a:
            await server.stop()
        await await_until(alands_on(stub, "b"), 15, "calls to fail over to zone-b")
        left = channel.stats().calls_left_zone
        assert left >= 1
        counts = await aspread(stub, 30)
        assert set(counts) == {"b0", "b1", "b2"} and sum(counts.values()) == 30, counts
        stats = channel.stats()
        assert stats.failover and stats.calls_left_zone == left + 30
        assert areg.stats()["calls_left_zone"] == stats.calls_left_zone

        for server in zone_a:
            await server.restart()
        await await_until(alands_on(stub, "a"), 20, "calls back in zone-a")
        await await_until(lambda: channel.stats().ready == 6, 20, "zone-a READY again")
        left = channel.stats().calls_left_zone
        assert await aspread(stub, 30) == {"a0": 10, "a1": 10, "a2": 10}
        stats = channel.stats()
        assert not stats.failover and stats.calls_left_zone == left
        assert areg.stats()["calls_left_zone"] == left


def test_a_subset_is_taken_in_the_zone_and_failover_endpoints_connect_only_while_it_is_down(registry, zoned):
    zone_a, zone_b = zoned
    registry.register_many(zone_instances(zone_a, zone_b))
    with registry.get_connection("echo", options=FAST_RECONNECT, subset_size=2, zone="zone-a") as channel:
        stub = EchoStub(channel)
        wait_until(lambda: channel.stats().ready == 2, 10, "2 READY endpoints")
        stats = channel.stats()
        assert (stats.known, stats.subset, stats.connected, stats.failover) == (6, 2, 2, False)
        chosen = channel.targets
        assert set(chosen) < {s.address for s in zone_a}, "the subset is taken in the zone"
        assert spread(stub, 20) == dict.fromkeys(names_at(zone_a, chosen), 10)

        for server in zone_a:
            server.stop()
        wait_until(lands_on(stub, "b"), 15, "calls to fail over to zone-b")
        stats = channel.stats()
        assert stats.failover and stats.subset == 4, stats
        failover = sorted(set(channel.targets) - set(chosen))
        assert len(failover) == 2 and set(failover) < {s.address for s in zone_b}, channel.targets
        counts = spread(stub, 20)
        assert set(counts) == names_at(zone_b, failover) and sum(counts.values()) == 20, counts
        (spare,) = [s for s in zone_b if s.address not in failover]
        assert spare.total_served == 0, "only the failover endpoints take calls"

        for server in zone_a:
            server.restart()
        wait_until(lands_on(stub, "a"), 20, "calls back in zone-a")
        wait_until(
            lambda: channel.targets == chosen and channel.stats().connected == 2 and channel.stats().ready == 2,
            20,
            "the failover endpoints closed",
        )
        stats = channel.stats()
        assert (stats.subset, stats.failover) == (2, False)
        assert spread(stub, 20) == dict.fromkeys(names_at(zone_a, chosen), 10)


async def test_a_subset_is_taken_in_the_zone_and_failover_endpoints_connect_only_while_it_is_down_aio(areg, azoned):
    zone_a, zone_b = azoned
    await areg.register_many(zone_instances(zone_a, zone_b))
    async with await areg.get_connection("echo", options=FAST_RECONNECT, subset_size=2, zone="zone-a") as channel:
        stub = AsyncEchoStub(channel)
        await await_until(lambda: channel.stats().ready == 2, 10, "2 READY endpoints")
        stats = channel.stats()
        assert (stats.known, stats.subset, stats.connected, stats.failover) == (6, 2, 2, False)
        chosen = channel.targets
        assert set(chosen) < {s.address for s in zone_a}
        assert await aspread(stub, 20) == dict.fromkeys(names_at(zone_a, chosen), 10)

        for server in zone_a:
            await server.stop()
        await await_until(alands_on(stub, "b"), 15, "calls to fail over to zone-b")
        stats = channel.stats()
        assert stats.failover and stats.subset == 4, stats
        failover = sorted(set(channel.targets) - set(chosen))
        assert len(failover) == 2 and set(failover) < {s.address for s in zone_b}, channel.targets
        counts = await aspread(stub, 20)
        assert set(counts) == names_at(zone_b, failover) and sum(counts.values()) == 20, counts
        (spare,) = [s for s in zone_b if s.address not in failover]
        assert spare.total_served == 0

        for server in zone_a:
            await server.restart()
        await await_until(alands_on(stub, "a"), 20, "calls back in zone-a")
        await await_until(
            lambda: channel.targets == chosen and channel.stats().connected == 2 and channel.stats().ready == 2,
            20,
            "the failover endpoints closed",
        )
        stats = channel.stats()
        assert (stats.subset, stats.failover) == (2, False)
        assert await aspread(stub, 20) == dict.fromkeys(names_at(zone_a, chosen), 10)


# --------------------------------------------------------------------------- threads


def test_one_thread_follows_every_endpoint_however_many(registry):
    """300 endpoint channels cost no more threads than 10 (grpcio's subscribe() costs one
    per channel); the connectivity monitor's one thread ends with the last channel."""
    server = EchoServer("any", host="0.0.0.0").start()  # answers at every 127.x.y.z
    try:

        def instances(service: str, count: int) -> list[gr.ServiceInstance]:
            return [
                gr.ServiceInstance(
                    id=f"{service}-{i:03}",
                    name=service,
                    endpoints=[f"grpc://127.1.{i // 100}.{i % 100 + 1}:{server.port}"],
                )
                for i in range(count)
            ]

        registry.register_many(instances("ten", 10) + instances("many", 300))
        watched = MONITOR.watched()
        with registry.get_connection("ten") as channel:
            wait_until(lambda: channel.stats().ready == 10, 20, "10 READY endpoints")
            few = thread_counts()
            assert MONITOR.watched() == watched + 10
        with registry.get_connection("many") as channel:
            wait_until(lambda: channel.stats().ready == 300, 30, "300 READY endpoints")
            assert len(set(channel.targets)) == 300
            many = thread_counts()
            assert MONITOR.watched() == watched + 300
            monitor = MONITOR.thread
            assert monitor is not None and monitor.is_alive()
            assert spread(EchoStub(channel), 300) == {"any": 300}
        assert many[0] - few[0] <= 4 and many[1] - few[1] <= 4, (few, many)
        wait_until(lambda: MONITOR.thread is None and not monitor.is_alive(), 5, "the monitor's thread to end")
        assert MONITOR.watched() == watched
    finally:
        server.stop()


# --------------------------------------------------------------------------- the guard


@pytest.mark.parametrize("layout", ["no monitor probe", "no probe anywhere"])
def test_without_grpcios_private_probe_endpoints_are_followed_by_subscribe(registry, servers, monkeypatch, layout):
    raised: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    monkeypatch.setattr(_connectivity, "state_probe", lambda channel: None)
    if layout == "no probe anywhere":
        monkeypatch.setattr(gr._grpcio, "state_probe", lambda channel: None)
    opened = record_endpoint_channels(monkeypatch)
    for server in servers:
        registry.register(instance_for(server))
    watched = MONITOR.watched()
    channel = registry.get_connection("echo", options=FAST_RECONNECT)
    try:
        stub = EchoStub(channel)
        wait_until(lambda: channel.stats().ready == 3, 10, "3 READY endpoints")
        assert MONITOR.watched() == watched, "the monitor does not count subscribed channels"
        assert len(opened) == 3 and all(_polling(c) for c in opened), "grpcio's subscribe() follows each"
        assert spread(stub, 30) == {"s0": 10, "s1": 10, "s2": 10}
        servers[0].restart()  # its connection drops: IDLE, asked to connect again
        wait_until(lambda: channel.stats().ready == 3 and lands_on(stub, "s0")(), 15, "s0 back in rotation")
    finally:
        channel.close()
    wait_until(lambda: all(_closed(c) for c in opened), 10, "every endpoint channel closed")
    wait_until(lambda: not any(_polling(c) for c in opened), 5, "grpcio's polling to stop")
    assert [(args.thread, args.exc_value) for args in raised] == []


@pytest.mark.parametrize("layout", ["no monitor probe", "no probe anywhere"])
def test_without_grpcios_private_probe_a_channel_closed_while_its_server_is_down_is_closed(
    registry, monkeypatch, layout
):
    """An endpoint whose server went away (its channel IDLE, then asked to connect again)
    is closed with the balanced channel, and grpcio stops polling it."""
    raised: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    monkeypatch.setattr(_connectivity, "state_probe", lambda channel: None)
    if layout == "no probe anywhere":
        monkeypatch.setattr(gr._grpcio, "state_probe", lambda channel: None)
    opened = record_endpoint_channels(monkeypatch)
    with EchoServer("gone") as server:
        registry.register(instance_for(server))
        channel = registry.get_connection("echo")
        try:
            wait_until(lambda: channel.stats().ready == 1, 10, "the endpoint READY")
            assert server_of(EchoStub(channel).Unary(b"x", timeout=5)) == "gone"
            server.stop()  # the connection drops: IDLE, asked to connect again, refused
            wait_until(lambda: channel.stats().ready == 0, 10, "the endpoint no longer READY")
        finally:
            channel.close()
    (endpoint_channel,) = opened
    wait_until(lambda: _closed(endpoint_channel), 10, "the endpoint channel closed")
    wait_until(lambda: not _polling(endpoint_channel), 5, "grpcio's polling to stop")
    assert [(args.thread, args.exc_value) for args in raised] == []


# --------------------------------------------------------------------------- metrics


#: What registry.channel.endpoints reports for the two channels of the metrics tests: "echo"
#: (6 instances, a subset of 2 in zone-a) and "far" (its one instance in zone-b).
ENDPOINT_POINTS = {
    ("echo", "known"): 6,
    ("echo", "subset"): 2,
    ("echo", "connected"): 2,
    ("echo", "ready"): 2,
    ("far", "known"): 1,
    ("far", "subset"): 1,
    ("far", "connected"): 1,
    ("far", "ready"): 1,
}


def test_metrics_report_channel_endpoints_and_calls_that_left_the_zone(registry, connector, namespace, zoned):
    zone_a, zone_b = zoned
    registry.register_many(zone_instances(zone_a, zone_b))
    registry.register(instance_for(zone_b[0], "far", id="far-b0", zone="zone-b"))  # "far" has nothing in zone-a
    reader, meter = in_memory_meter()
    with gr.Registry(connector, gr.Config(namespace=namespace), meter=meter) as metered:
        near = metered.get_connection("echo", subset_size=2, zone="zone-a")
        far = metered.get_connection("far", zone="zone-a")
        try:
            wait_until(lambda: near.stats().ready == 2 and far.stats().ready == 1, 10, "both channels READY")
            assert set(spread(EchoStub(near), 4)) <= {"a0", "a1", "a2"}
            assert spread(EchoStub(far), 5) == {"b0": 5}
            assert metric_points(reader, "registry.channel.endpoints") == ENDPOINT_POINTS
            assert metric_points(reader, "registry.calls_left_zone.total") == {(): 5}
            assert metered.stats()["calls_left_zone"] == 5
            assert [(s.service, s.failover, s.calls_left_zone) for s in metered.channel_stats()] == [
                ("echo", False, 0),
                ("far", True, 5),
            ]
        finally:
            near.close()
            far.close()
        assert metered.channel_stats() == []
        assert metric_points(reader, "registry.channel.endpoints") == {}, "closed channels are not reported"
        assert metric_points(reader, "registry.calls_left_zone.total") == {(): 5}
    assert registry.stats()["calls_left_zone"] == 0, "counted by the registry that made the channel"


async def test_metrics_report_channel_endpoints_and_calls_that_left_the_zone_aio(areg, connector, namespace, azoned):
    zone_a, zone_b = azoned
    await areg.register_many(zone_instances(zone_a, zone_b))
    await areg.register(instance_for(zone_b[0], "far", id="far-b0", zone="zone-b"))
    reader, meter = in_memory_meter()
    async with gr.AsyncRegistry(connector, gr.Config(namespace=namespace), meter=meter) as metered:
        near = await metered.get_connection("echo", subset_size=2, zone="zone-a")
        far = await metered.get_connection("far", zone="zone-a")
        try:
            await await_until(lambda: near.stats().ready == 2 and far.stats().ready == 1, 10, "both READY")
            assert set(await aspread(AsyncEchoStub(near), 4)) <= {"a0", "a1", "a2"}
            assert await aspread(AsyncEchoStub(far), 5) == {"b0": 5}
            assert metric_points(reader, "registry.channel.endpoints") == ENDPOINT_POINTS
            assert metric_points(reader, "registry.calls_left_zone.total") == {(): 5}
            assert metered.stats()["calls_left_zone"] == 5
            assert [(s.service, s.failover, s.calls_left_zone) for s in metered.channel_stats()] == [
                ("echo", False, 0),
                ("far", True, 5),
            ]
        finally:
            await near.close()
            await far.close()
        assert metered.channel_stats() == []
        assert metric_points(reader, "registry.channel.endpoints") == {}, "closed channels are not reported"
        assert metric_points(reader, "registry.calls_left_zone.total") == {(): 5}
    assert areg.stats()["calls_left_zone"] == 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("keyword", "value"), BAD_SETTINGS)
def test_bad_mesh_settings_are_refused_naming_the_value(registry, servers, keyword, value):
    registry.register(instance_for(servers[0]))
    with pytest.raises(gr.InvalidConfigError) as info:
        registry.get_connection("echo", **{keyword: value})
    assert keyword in str(info.value) and repr(value) in str(info.value), str(info.value)
    assert registry.channel_stats() == []
    assert registry.registered_ids() == ["s0"]
    assert [i.id for i in registry.get_service("echo")] == ["s0"]
    with registry.get_connection("echo") as channel:
        assert server_of(EchoStub(channel).Unary(b"x", timeout=5)) == "s0"


@pytest.mark.parametrize(("keyword", "value"), BAD_SETTINGS)
async def test_bad_mesh_settings_are_refused_naming_the_value_aio(areg, keyword, value):
    async with AsyncEchoServer("s0") as server:
        await areg.register(instance_for(server))
        with pytest.raises(gr.InvalidConfigError) as info:
            await areg.get_connection("echo", **{keyword: value})
        assert keyword in str(info.value) and repr(value) in str(info.value), str(info.value)
        assert areg.channel_stats() == []
        assert areg.registered_ids() == ["s0"]
        assert [i.id for i in await areg.get_service("echo")] == ["s0"]
        async with await areg.get_connection("echo") as channel:
            assert server_of(await AsyncEchoStub(channel).Unary(b"x", timeout=5)) == "s0"
