"""Native mode (issue 13), sync and asyncio, against a real etcd and real grpcio servers:
``get_connection(mode="native")`` returns grpcio's own channel on an ``xds:`` target, which the
process's ADS server (in the core, fed by the registry's watch cache) resolves for grpc's own
balancers. Spread, churn under load, a service with no instance yet, pick_first, ring_hash
affinity, outlier detection, zone failover, a user's own xDS bootstrap beside ours, 1,000
endpoints with no thread per endpoint, what close, interpreter exit and fork leave behind, and
bad settings.

What needs a process of its own (grpc reads its bootstrap once per process; exit; fork) runs
:mod:`support.native_child`."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import genesis_registry as gr
import grpc
import grpc._channel
import grpc.aio
import grpc.aio._channel
import pytest
from genesis_registry import native
from support.echo import AsyncEchoStub, EchoProcess, EchoServer, EchoStub, instance_for, server_of
from support.paths import child_pythonpath
from support.wait import await_until, wait_until

#: grpcio's own channel classes: native mode returns these exactly, not subclasses.
SYNC_CHANNEL = grpc._channel.Channel
AIO_CHANNEL = grpc.aio._channel.Channel

#: Subchannels that reconnect within a fraction of a second once a stopped server is back
#: (grpcio's default backoff starts at 1 s and grows by 1.6 per failed attempt).
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
)

#: The header ring_hash hashes on, and the keys the affinity tests send in it.
HASH_HEADER = "x-user-id"
KEYS = [f"user-{i}" for i in range(600)]

#: Load generators: how many callers, and what each sends (a few ms per call, so that calls
#: are in flight whenever an instance goes).
WORKERS = 4
LOAD_REQUEST = b"sleep:5"


def outlier_config() -> gr.OutlierDetection:
    """Outlier detection that ejects within a second or two: failure percentage only, every
    backend judged (3 of 3) once it took 10 calls in a 0.5 s interval, ejected for 30 s (longer
    than the tests), up to half of them (1 of 3)."""
    return gr.OutlierDetection(
        interval=0.5,
        base_ejection_time=30.0,
        max_ejection_percent=50,
        success_rate=None,
        failure_percentage=gr.FailurePercentageEjection(
            threshold=50, enforcement_percentage=100, minimum_hosts=3, request_volume=10
        ),
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def zoned() -> Iterator[tuple[list[EchoServer], list[EchoServer]]]:
    """Three echo servers for zone-a (a0 to a2) and three for zone-b (b0 to b2), running."""
    zone_a = [EchoServer(f"a{i}").start() for i in range(3)]
    zone_b = [EchoServer(f"b{i}").start() for i in range(3)]
    yield zone_a, zone_b
    for server in zone_a + zone_b:
        server.stop()


@pytest.fixture
def extra() -> Iterator[EchoServer]:
    """A fourth echo server, t9 (its id sorts after s0 to s2)."""
    with EchoServer("t9") as server:
        yield server


@pytest.fixture
def anywhere() -> Iterator[EchoServer]:
    """An echo server on 0.0.0.0: it answers at every 127.x.y.z."""
    with EchoServer("any", host="0.0.0.0") as server:
        yield server


# --------------------------------------------------------------------------- helpers


def spread(stub: EchoStub, calls: int) -> collections.Counter[str]:
    """Who answered ``calls`` unary calls made one after the other (any failure raises)."""
    return collections.Counter(server_of(stub.Unary(b"x", timeout=5)) for _ in range(calls))


async def aspread(stub: AsyncEchoStub, calls: int) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(calls):
        counts[server_of(await stub.Unary(b"x", timeout=5))] += 1
    return counts


def covers(stub: EchoStub, names: set[str], calls: int = 9) -> Callable[[], bool]:
    """A predicate: ``calls`` calls in a row all succeed, and reach exactly ``names``."""
    return lambda: set(spread(stub, calls)) == names


def acovers(stub: AsyncEchoStub, names: set[str], calls: int = 9) -> Callable[[], Awaitable[bool]]:
    async def attempt() -> bool:
        return set(await aspread(stub, calls)) == names

    return attempt


def lands_on(stub: EchoStub, prefix: str) -> Callable[[], bool]:
    """A predicate: one call succeeds, on a server whose name starts with ``prefix`` (a failed
    call is not an error: it is what a failover looks like from outside)."""

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


def zone_instances(zone_a: Sequence[EchoServer], zone_b: Sequence[EchoServer]) -> list[gr.ServiceInstance]:
    """Instances of "echo" for the servers of zone-a and of zone-b, ``zone`` in their metadata."""
    zones = [("zone-a", s) for s in zone_a] + [("zone-b", s) for s in zone_b]
    return [instance_for(server, "echo", zone=zone) for zone, server in zones]


def addressed(service: str, count: int, port: int, net: int) -> list[gr.ServiceInstance]:
    """``count`` instances of ``service``, each at its own loopback address 127.``net``.x.y:``port``."""
    return [
        gr.ServiceInstance(
            id=f"{service}-{i:04}",
            name=service,
            endpoints=[f"grpc://127.{net}.{i // 250}.{i % 250 + 1}:{port}"],
        )
        for i in range(count)
    ]


def exactly(obj: object, cls: type) -> bool:
    """Whether ``obj`` is a ``cls`` and not an instance of a subclass."""
    return type(obj) is cls


def thread_counts() -> tuple[int, int]:
    """Python threads, and every thread of the process (grpc's and the core's included), but
    for the echo servers' pool threads (``echo-<name>_<n>``, up to ``max_workers`` each, started
    as calls come in): the clients' threads."""
    pool = sum(1 for thread in threading.enumerate() if thread.name.startswith("echo-"))
    return threading.active_count() - pool, len(os.listdir("/proc/self/task")) - pool


def port_open(address: str) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return True
    except OSError:
        return False


def failure_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, float]:
    """How ``call()`` failed: its code, its details and the seconds it took (the test fails if
    it succeeded). The exception is not kept (pytest.raises keeps it): its traceback holds the
    test's frame, and so every call and channel of the test, alive in a cycle until the garbage
    collector runs; an xds channel kept so keeps its xDS client running after the test (see
    test_a_native_channel_made_after_the_ads_server_restarted_works_at_once)."""
    started = time.monotonic()
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or "", time.monotonic() - started
    raise AssertionError("the call succeeded")


async def afailure_of(call: Callable[[], Awaitable[object]]) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    try:
        await call()
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or "", time.monotonic() - started
    raise AssertionError("the call succeeded")


def fails_at_once(stub: EchoStub) -> Callable[[], bool]:
    """A predicate: a call fails with UNAVAILABLE within 5 s (a service with no instance)."""

    def attempt() -> bool:
        try:
            stub.Unary(b"x", timeout=5)
        except grpc.RpcError as e:
            return e.code() is grpc.StatusCode.UNAVAILABLE
        return False

    return attempt


def afails_at_once(stub: AsyncEchoStub) -> Callable[[], Awaitable[bool]]:
    async def attempt() -> bool:
        try:
            await stub.Unary(b"x", timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code() is grpc.StatusCode.UNAVAILABLE
        return False

    return attempt


def closed(channel: grpc.Channel) -> bool:
    """Whether a sync grpcio channel was closed (a new call is refused)."""
    try:
        EchoStub(channel).Unary(b"x", timeout=1)
    except ValueError:  # "Cannot invoke RPC on closed channel!"
        return True
    except grpc.RpcError:
        return False
    return False


def aclosed(channel: grpc.aio.Channel) -> bool:
    return channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


def instance_ids(registry: gr.Registry) -> list[str]:
    return sorted(i.id for i in registry.get_service("echo"))


async def ainstance_ids(registry: gr.AsyncRegistry) -> list[str]:
    return sorted(i.id for i in await registry.get_service("echo"))


class Quiet:
    """A predicate: ``server`` took no call while ``total()`` grew by ``window`` (counting again
    from zero whenever it takes one). Poll it to know a channel stopped sending it calls."""

    def __init__(self, server: EchoServer, total: Callable[[], int], window: int) -> None:
        self.server, self.total, self.window = server, total, window
        self.mine, self.start = server.served["Unary"], total()

    def __call__(self) -> bool:
        mine, total = self.server.served["Unary"], self.total()
        if mine != self.mine:
            self.mine, self.start = mine, total
            return False
        return total - self.start >= self.window


class Load:
    """``WORKERS`` threads calling one stub until stopped: who answered, and when and how calls
    failed (``(time.monotonic(), code name, details)``)."""

    def __init__(self, stub: EchoStub) -> None:
        self.stub = stub
        self.failures: list[tuple[float, str, str]] = []
        self._served: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}") for i in range(WORKERS)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name = server_of(self.stub.Unary(LOAD_REQUEST, timeout=5))
            except grpc.RpcError as e:
                with self._lock:
                    self.failures.append((time.monotonic(), e.code().name, e.details() or ""))
            else:
                with self._lock:
                    self._served[name] += 1

    def served(self, name: str) -> int:
        with self._lock:
            return self._served[name]

    def total(self) -> int:
        with self._lock:
            return sum(self._served.values())

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread is stuck in a call"


class ALoad:
    """:class:`Load` as ``WORKERS`` asyncio tasks."""

    def __init__(self, stub: AsyncEchoStub) -> None:
        self.stub = stub
        self.failures: list[tuple[float, str, str]] = []
        self._served: collections.Counter[str] = collections.Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name = server_of(await self.stub.Unary(LOAD_REQUEST, timeout=5))
            except grpc.aio.AioRpcError as e:
                self.failures.append((time.monotonic(), e.code().name, e.details() or ""))
            else:
                self._served[name] += 1

    def served(self, name: str) -> int:
        return self._served[name]

    def total(self) -> int:
        return sum(self._served.values())

    async def __aenter__(self) -> ALoad:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(WORKERS)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 10)


def assert_churn_failures(failures: list[tuple[float, str, str]], killed_at: float, expired_at: float) -> None:
    """What a churn under load may cost: nothing outside the killed server's window (from the
    kill to its lease's expiry, plus 0.5 s for the push), only UNAVAILABLE in it, and only the
    calls grpc had in flight or sent before it saw the connection drop: a handful, not every
    call routed to the dead server until its lease expired (hundreds per second)."""
    outside = [f for f in failures if not killed_at <= f[0] <= expired_at + 0.5]
    assert outside == [], outside
    assert all(code == "UNAVAILABLE" for _, code, _ in failures), failures
    assert len(failures) <= 5 * WORKERS, f"{len(failures)} calls failed: {failures[:5]}"


def owners(stub: EchoStub, keys: Sequence[str], repeats: int) -> dict[str, set[str]]:
    """For each key, the servers that answered ``repeats`` calls carrying it in ``HASH_HEADER``."""
    return {
        key: {server_of(stub.Unary(b"x", timeout=5, metadata=((HASH_HEADER, key),))) for _ in range(repeats)}
        for key in keys
    }


async def aowners(stub: AsyncEchoStub, keys: Sequence[str], repeats: int) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for key in keys:
        found[key] = set()
        for _ in range(repeats):
            found[key].add(server_of(await stub.Unary(b"x", timeout=5, metadata=((HASH_HEADER, key),))))
    return found


def check_affinity(first: dict[str, set[str]], second: dict[str, set[str]], gone: str) -> None:
    """Each key stayed on one backend in each round; ``gone``'s keys moved; the others mostly stayed.

    The bounds: grpc's ring (min_ring_size 1024) gives each of 3 equal backends 342 points, and
    each of the 2 left 512; the 170 new points of each survivor take a key from the other one
    when one lands between the key and its old point: with the points placed at random, about
    (170/1366) x (1/3) of all keys, i.e. 12.4 % of a survivor's keys, move to the other
    survivor (the probe measured ~40 % of all keys moved: 1/3 + 2/3 x 12.4 % = 42 %). With 600
    keys, ~400 on survivors: sd ~1.7 points from the keys, ~1 from where the ring's points
    fall, so 80 % staying is more than 4 sd below the expected 87.6 %, and 50 % of all keys
    moving more than 4 sd above the expected 42 %. A hash that ignored the ring (modulo the
    backend count) would move ~2/3 of all keys and fail both bounds."""
    split = [key for key, found in first.items() if len(found) != 1]
    assert split == [], f"{len(split)} keys answered by several backends: {[(k, first[k]) for k in split[:5]]}"
    home = {key: next(iter(found)) for key, found in first.items()}
    shares = collections.Counter(home.values())
    assert len(shares) == 3 and min(shares.values()) >= len(KEYS) // 10, shares
    split = [key for key, found in second.items() if len(found) != 1]
    assert split == [], f"after {gone} left, {len(split)} keys answered by several backends"
    now = {key: next(iter(found)) for key, found in second.items()}
    assert gone not in now.values(), f"keys still on {gone} after it left"
    survivors = [key for key in KEYS if home[key] != gone]
    stayed = sum(now[key] == home[key] for key in survivors)
    moved = sum(now[key] != home[key] for key in KEYS)
    assert stayed >= 0.8 * len(survivors), f"only {stayed}/{len(survivors)} keys of the survivors stayed"
    assert moved <= 0.5 * len(KEYS), f"{moved}/{len(KEYS)} keys moved when 1 of 3 backends left"


# --------------------------------------------------------------------------- child processes


def child_command(command: str, etcd_endpoints: Sequence[str], namespace: str, service: str, *extra: str) -> list[str]:
    """``python -m support.native_child COMMAND ...`` (see that module)."""
    return [
        sys.executable,
        "-m",
        "support.native_child",
        command,
        "--endpoints",
        ",".join(etcd_endpoints),
        "--namespace",
        namespace,
        "--service",
        service,
        *extra,
    ]


def child_env() -> dict[str, str]:
    """Our environment without any xDS bootstrap (the child sets its own), ``support`` importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")}
    env.update(PYTHONPATH=child_pythonpath(), PYTHONUNBUFFERED="1")
    return env


def run_child(command: list[str], timeout: float = 90) -> tuple[dict[str, Any], str]:
    """Runs a child to its end; its report (the last stdout line, JSON) and its stderr. Fails
    the test, with the child's stderr, if it does not exit 0."""
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command[3]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@contextmanager
def running_child(command: list[str], timeout: float = 60) -> Iterator[dict[str, Any]]:
    """Starts a child that reports one line and then runs until its stdin is closed; yields the
    report; closes its stdin and reaps it on exit (failing the test if it does not exit 0)."""
    with tempfile.TemporaryFile() as stderr:  # a file: a pipe nobody reads could fill up
        proc = subprocess.Popen(command, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None and proc.stdin is not None

        def errors() -> str:
            return os.pread(stderr.fileno(), 1 << 20, 0).decode("utf-8", "replace")

        try:
            line = b""
            deadline = time.monotonic() + timeout
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout.fileno(), selectors.EVENT_READ)
                while not line.endswith(b"\n"):
                    remaining = deadline - time.monotonic()
                    assert remaining > 0, f"{command[3]} did not report within {timeout}s:\n{errors()}"
                    if not selector.select(remaining):
                        continue
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        code = proc.wait(10)
                        raise AssertionError(f"{command[3]} exited {code} before reporting:\n{errors()}")
                    line += chunk
            yield json.loads(line)
            proc.stdin.close()
            code = proc.wait(30)
            assert code == 0, f"{command[3]} exited {code}:\n{errors()}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
            if not proc.stdin.closed:
                proc.stdin.close()


# --------------------------------------------------------------------------- spread


def test_round_robin_spreads_calls_over_three_servers_on_grpcios_own_channel(registry, servers):
    registry.register_many([instance_for(s) for s in servers])
    target = registry.native_target("echo")
    assert target.startswith("xds:") and target.endswith("/echo"), target
    with registry.get_connection("echo", mode="native") as channel:
        assert exactly(channel, SYNC_CHANNEL), type(channel)
        stub = EchoStub(channel)
        wait_until(covers(stub, {"s0", "s1", "s2"}), 10, "calls on every server")
        for server in servers:
            server.reset_served()
        counts = spread(stub, 300)
        assert [r.split(b"|")[1] for r in stub.ServerStream(b"3", timeout=5)] == [b"0", b"1", b"2"]
    assert set(counts) == {"s0", "s1", "s2"} and all(90 <= n <= 110 for n in counts.values()), counts
    assert {s.name: s.served["Unary"] for s in servers} == counts
    stats = registry.stats()
    assert stats["xds_acks"] > 0 and stats["xds_nacks"] == 0, stats


async def test_round_robin_spreads_calls_over_three_servers_on_grpcios_own_channel_aio(areg, servers):
    await areg.register_many([instance_for(s) for s in servers])
    target = await areg.native_target("echo")
    assert target.startswith("xds:") and target.endswith("/echo"), target
    async with await areg.get_connection("echo", mode="native") as channel:
        assert exactly(channel, AIO_CHANNEL), type(channel)
        stub = AsyncEchoStub(channel)
        await await_until(acovers(stub, {"s0", "s1", "s2"}), 10, "calls on every server")
        for server in servers:
            server.reset_served()
        counts = await aspread(stub, 300)
        assert [r.split(b"|")[1] async for r in stub.ServerStream(b"3", timeout=5)] == [b"0", b"1", b"2"]
    assert set(counts) == {"s0", "s1", "s2"} and all(90 <= n <= 110 for n in counts.values()), counts
    assert {s.name: s.served["Unary"] for s in servers} == counts
    stats = areg.stats()
    assert stats["xds_acks"] > 0 and stats["xds_nacks"] == 0, stats


def test_dial_makes_a_native_channel(registry, servers):
    registry.register(instance_for(servers[0]))
    with gr.dial("etcd:///echo", registry=registry, mode="native") as channel:
        assert exactly(channel, SYNC_CHANNEL), type(channel)
        assert server_of(EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)) == "s0"


async def test_dial_makes_a_native_channel_aio(areg, servers):
    await areg.register(instance_for(servers[0]))
    async with await gr.dial("etcd:///echo", registry=areg, mode="native") as channel:
        assert exactly(channel, AIO_CHANNEL), type(channel)
        assert server_of(await AsyncEchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)) == "s0"


# --------------------------------------------------------------------------- churn


def test_a_stub_built_once_follows_churn_under_load(registry, servers, etcd_endpoints, namespace):
    """Calls flow from one stub while a server registers, one leaves gracefully (deregistered,
    then stopped once calls no longer reach it) and one is killed (its lease expires 2 s later).
    Registering and leaving gracefully cost no call. The killed server may cost UNAVAILABLE
    failures in its window, as in balanced mode (test_balancer's churn test): grpc's
    round_robin skips a connection only once it saw it drop, so the calls in flight on it at the
    kill fail; no retries, no wait_for_ready."""
    registry.register_many([instance_for(servers[0]), instance_for(servers[1])])
    with EchoProcess("crash", etcd_endpoints, namespace, "echo", ttl=2) as crashing:
        with registry.get_connection("echo", mode="native") as channel, Load(EchoStub(channel)) as load:
            every = {"s0", "s1", "crash"}
            wait_until(lambda: all(load.served(n) > 20 for n in every), 15, "calls on every server")
            registry.register(instance_for(servers[2]))
            wait_until(lambda: load.served("s2") > 0, 3, "the new server to get calls within 3 s")
            registry.deregister("s0")
            wait_until(Quiet(servers[0], load.total, 200), 10, "s0 to get no call among 200")
            servers[0].stop(grace=5)
            killed_at = time.monotonic()
            crashing.kill()
            wait_until(lambda: "crash" not in instance_ids(registry), 10, "the crashed server's lease to expire")
            expired_at = time.monotonic()
            before = load.total()
            wait_until(lambda: load.total() > before + 200, 10, "calls after the churn")
            assert instance_ids(registry) == ["s1", "s2"]
            assert load.served("s1") > 0 and load.served("s2") > 0
    assert_churn_failures(load.failures, killed_at, expired_at)


async def test_a_stub_built_once_follows_churn_under_load_aio(areg, servers, etcd_endpoints, namespace):
    """The asyncio twin: the same churn, the same allowance for the killed server's window."""
    await areg.register_many([instance_for(servers[0]), instance_for(servers[1])])
    crashing = await asyncio.to_thread(EchoProcess, "crash", etcd_endpoints, namespace, "echo", ttl=2)
    try:
        async with await areg.get_connection("echo", mode="native") as channel:
            async with ALoad(AsyncEchoStub(channel)) as load:
                every = {"s0", "s1", "crash"}
                await await_until(lambda: all(load.served(n) > 20 for n in every), 15, "calls on every server")
                await areg.register(instance_for(servers[2]))
                await await_until(lambda: load.served("s2") > 0, 3, "the new server to get calls within 3 s")
                await areg.deregister("s0")
                await await_until(Quiet(servers[0], load.total, 200), 10, "s0 to get no call among 200")
                await asyncio.to_thread(servers[0].stop, 5)
                killed_at = time.monotonic()
                await asyncio.to_thread(crashing.kill)

                async def expired() -> bool:
                    return "crash" not in await ainstance_ids(areg)

                await await_until(expired, 10, "the crashed server's lease to expire")
                expired_at = time.monotonic()
                before = load.total()
                await await_until(lambda: load.total() > before + 200, 10, "calls after the churn")
                assert await ainstance_ids(areg) == ["s1", "s2"]
                assert load.served("s1") > 0 and load.served("s2") > 0
    finally:
        await asyncio.to_thread(crashing.close)
    assert_churn_failures(load.failures, killed_at, expired_at)


# --------------------------------------------------------------------------- no instance yet


def test_a_service_with_no_instance_fails_at_once_then_waits_and_works(registry, servers):
    with registry.get_connection("echo", mode="native") as channel:
        stub = EchoStub(channel)  # built before any instance exists
        code, details, elapsed = failure_of(lambda: stub.Unary(b"x", timeout=30))
        assert code is grpc.StatusCode.UNAVAILABLE, (code, details)
        assert elapsed < 5, f"UNAVAILABLE after {elapsed:.1f} s, not at once (grpc's 15 s does-not-exist timer?)"
        assert "echo" in details, details
        waiting = stub.Unary.future(b"w", timeout=30, wait_for_ready=True)
        with pytest.raises(grpc.FutureTimeoutError):
            waiting.result(timeout=0.5)  # still waiting: no instance yet
        registry.register(instance_for(servers[1]))
        assert server_of(waiting.result(timeout=20)) == "s1"
        assert server_of(stub.Unary(b"y", timeout=5)) == "s1"
        assert servers[1].served["Unary"] == 2


async def test_a_service_with_no_instance_fails_at_once_then_waits_and_works_aio(areg, servers):
    async with await areg.get_connection("echo", mode="native") as channel:
        stub = AsyncEchoStub(channel)
        code, details, elapsed = await afailure_of(lambda: stub.Unary(b"x", timeout=30))
        assert code is grpc.StatusCode.UNAVAILABLE, (code, details)
        assert elapsed < 5, f"UNAVAILABLE after {elapsed:.1f} s, not at once (grpc's 15 s does-not-exist timer?)"
        assert "echo" in details, details
        waiting = asyncio.ensure_future(stub.Unary(b"w", timeout=30, wait_for_ready=True))
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done, "a wait_for_ready call ended with no instance registered"
        await areg.register(instance_for(servers[1]))
        assert server_of(await asyncio.wait_for(waiting, 20)) == "s1"
        assert server_of(await stub.Unary(b"y", timeout=5)) == "s1"
        assert servers[1].served["Unary"] == 2


# --------------------------------------------------------------------------- pick_first


def test_pick_first_takes_the_lowest_instance_id_and_stays(registry, servers, extra):
    """Registered highest id first, s0 is still chosen: endpoints go to grpc in instance-id
    order. A round_robin channel on the same registry shows when each change reached grpc."""
    s0, s1, s2 = servers
    for server in (s2, s1, s0):
        registry.register(instance_for(server))
    with (
        registry.get_connection("echo", mode="native", policy="pick_first") as channel,
        registry.get_connection("echo", mode="native") as observer,
    ):
        stub, seen = EchoStub(channel), EchoStub(observer)
        assert spread(stub, 50) == {"s0": 50}
        wait_until(covers(seen, {"s0", "s1", "s2"}), 10, "the observer on every server")

        registry.register(instance_for(extra))
        wait_until(covers(seen, {"s0", "s1", "s2", "t9"}, 12), 10, "t9 in the view")
        assert spread(stub, 50) == {"s0": 50}
        registry.deregister("s2")
        wait_until(covers(seen, {"s0", "s1", "t9"}, 12), 10, "s2 out of the view")
        assert spread(stub, 50) == {"s0": 50}
        registry.register(instance_for(s2))
        registry.deregister("t9")
        wait_until(covers(seen, {"s0", "s1", "s2"}, 12), 10, "s2 back, t9 gone")
        assert spread(stub, 50) == {"s0": 50}

        registry.deregister("s0")  # the chosen one leaves: the next lowest id takes over, and stays
        wait_until(lambda: spread(stub, 1) == {"s1": 1}, 10, "pick_first to move to s1")
        assert spread(stub, 50) == {"s1": 50}


async def test_pick_first_takes_the_lowest_instance_id_and_stays_aio(areg, servers, extra):
    s0, s1, s2 = servers
    for server in (s2, s1, s0):
        await areg.register(instance_for(server))
    async with (
        await areg.get_connection("echo", mode="native", policy="pick_first") as channel,
        await areg.get_connection("echo", mode="native") as observer,
    ):
        stub, seen = AsyncEchoStub(channel), AsyncEchoStub(observer)
        assert await aspread(stub, 50) == {"s0": 50}
        await await_until(acovers(seen, {"s0", "s1", "s2"}), 10, "the observer on every server")

        await areg.register(instance_for(extra))
        await await_until(acovers(seen, {"s0", "s1", "s2", "t9"}, 12), 10, "t9 in the view")
        assert await aspread(stub, 50) == {"s0": 50}
        await areg.deregister("s2")
        await await_until(acovers(seen, {"s0", "s1", "t9"}, 12), 10, "s2 out of the view")
        assert await aspread(stub, 50) == {"s0": 50}
        await areg.register(instance_for(s2))
        await areg.deregister("t9")
        await await_until(acovers(seen, {"s0", "s1", "s2"}, 12), 10, "s2 back, t9 gone")
        assert await aspread(stub, 50) == {"s0": 50}

        await areg.deregister("s0")

        async def moved() -> bool:
            return await aspread(stub, 1) == {"s1": 1}

        await await_until(moved, 10, "pick_first to move to s1")
        assert await aspread(stub, 50) == {"s1": 50}


# --------------------------------------------------------------------------- ring_hash


def test_ring_hash_keeps_each_key_on_one_backend_and_moves_few_when_one_leaves(registry, servers):
    registry.register_many([instance_for(s) for s in servers])
    with registry.get_connection("echo", mode="native", policy="ring_hash", hash_header=HASH_HEADER) as channel:
        stub = EchoStub(channel)
        first = owners(stub, KEYS, 3)
        probe = next(key for key in KEYS if first[key] == {"s2"})
        registry.deregister("s2")  # s2 keeps serving: only the new ring moves its keys
        wait_until(lambda: owners(stub, [probe], 1)[probe] != {"s2"}, 10, "s2's keys to move")
        second = owners(stub, KEYS, 2)
    check_affinity(first, second, "s2")


async def test_ring_hash_keeps_each_key_on_one_backend_and_moves_few_when_one_leaves_aio(areg, servers):
    await areg.register_many([instance_for(s) for s in servers])
    async with await areg.get_connection("echo", mode="native", policy="ring_hash", hash_header=HASH_HEADER) as channel:
        stub = AsyncEchoStub(channel)
        first = await aowners(stub, KEYS, 3)
        probe = next(key for key in KEYS if first[key] == {"s2"})
        await areg.deregister("s2")

        async def moved() -> bool:
            return (await aowners(stub, [probe], 1))[probe] != {"s2"}

        await await_until(moved, 10, "s2's keys to move")
        second = await aowners(stub, KEYS, 2)
    check_affinity(first, second, "s2")


# --------------------------------------------------------------------------- outlier detection


def test_outlier_detection_ejects_a_backend_that_fails_every_call(registry, servers):
    s2: EchoServer = servers[2]
    s2.fail_calls(grpc.StatusCode.INTERNAL)
    registry.register_many([instance_for(s) for s in servers])
    with registry.get_connection("echo", mode="native", outlier_detection=outlier_config()) as channel:
        stub = EchoStub(channel)

        def failing_calls_on_s2() -> bool:
            for _ in range(10):
                try:
                    stub.Unary(b"x", timeout=5)
                except grpc.RpcError as e:
                    assert e.code() is grpc.StatusCode.INTERNAL and "s2" in (e.details() or ""), e
            return s2.served["Unary"] >= 10

        def a_window_without_s2() -> bool:
            before = s2.served["Unary"]
            try:
                counts = spread(stub, 30)
            except grpc.RpcError:
                return False
            return s2.served["Unary"] == before and set(counts) == {"s0", "s1"}

        wait_until(failing_calls_on_s2, 10, "s2 in rotation, failing its calls")
        wait_until(a_window_without_s2, 20, "30 calls in a row, none on s2")
        ejected = s2.served["Unary"]
        counts = spread(stub, 100)
    assert set(counts) == {"s0", "s1"} and s2.served["Unary"] == ejected, counts


async def test_outlier_detection_ejects_a_backend_that_fails_every_call_aio(areg, servers):
    s2: EchoServer = servers[2]
    s2.fail_calls(grpc.StatusCode.INTERNAL)
    await areg.register_many([instance_for(s) for s in servers])
    async with await areg.get_connection("echo", mode="native", outlier_detection=outlier_config()) as channel:
        stub = AsyncEchoStub(channel)

        async def failing_calls_on_s2() -> bool:
            for _ in range(10):
                try:
                    await stub.Unary(b"x", timeout=5)
                except grpc.aio.AioRpcError as e:
                    assert e.code() is grpc.StatusCode.INTERNAL and "s2" in (e.details() or ""), e
            return s2.served["Unary"] >= 10

        async def a_window_without_s2() -> bool:
            before = s2.served["Unary"]
            try:
                counts = await aspread(stub, 30)
            except grpc.aio.AioRpcError:
                return False
            return s2.served["Unary"] == before and set(counts) == {"s0", "s1"}

        await await_until(failing_calls_on_s2, 10, "s2 in rotation, failing its calls")
        await await_until(a_window_without_s2, 20, "30 calls in a row, none on s2")
        ejected = s2.served["Unary"]
        counts = await aspread(stub, 100)
    assert set(counts) == {"s0", "s1"} and s2.served["Unary"] == ejected, counts


# --------------------------------------------------------------------------- zones


def test_calls_stay_in_the_zone_fail_over_and_come_back(registry, zoned):
    zone_a, zone_b = zoned
    registry.register_many(zone_instances(zone_a, zone_b))
    with registry.get_connection("echo", mode="native", zone="zone-a", options=FAST_RECONNECT) as channel:
        stub = EchoStub(channel)
        wait_until(covers(stub, {"a0", "a1", "a2"}), 10, "calls on every zone-a server")
        assert set(spread(stub, 30)) == {"a0", "a1", "a2"}
        assert all(s.total_served == 0 for s in zone_b), "zone-b took calls while zone-a was up"

        for server in zone_a:
            server.stop()
        wait_until(lands_on(stub, "b"), 15, "calls to fail over to zone-b")
        wait_until(covers(stub, {"b0", "b1", "b2"}), 10, "calls on every zone-b server")
        counts = spread(stub, 30)  # none fails
        assert set(counts) == {"b0", "b1", "b2"}, counts

        for server in zone_a:
            server.restart()
        wait_until(lands_on(stub, "a"), 20, "calls back in zone-a")
        wait_until(covers(stub, {"a0", "a1", "a2"}), 20, "calls on every zone-a server again")
        served_b = sum(s.total_served for s in zone_b)
        assert set(spread(stub, 30)) == {"a0", "a1", "a2"}
        assert sum(s.total_served for s in zone_b) == served_b, "zone-b still takes calls"


async def test_calls_stay_in_the_zone_fail_over_and_come_back_aio(areg, zoned):
    zone_a, zone_b = zoned
    await areg.register_many(zone_instances(zone_a, zone_b))
    async with await areg.get_connection("echo", mode="native", zone="zone-a", options=FAST_RECONNECT) as channel:
        stub = AsyncEchoStub(channel)
        await await_until(acovers(stub, {"a0", "a1", "a2"}), 10, "calls on every zone-a server")
        assert set(await aspread(stub, 30)) == {"a0", "a1", "a2"}
        assert all(s.total_served == 0 for s in zone_b), "zone-b took calls while zone-a was up"

        for server in zone_a:
            await asyncio.to_thread(server.stop)
        await await_until(alands_on(stub, "b"), 15, "calls to fail over to zone-b")
        await await_until(acovers(stub, {"b0", "b1", "b2"}), 10, "calls on every zone-b server")
        counts = await aspread(stub, 30)
        assert set(counts) == {"b0", "b1", "b2"}, counts

        for server in zone_a:
            await asyncio.to_thread(server.restart)
        await await_until(alands_on(stub, "a"), 20, "calls back in zone-a")
        await await_until(acovers(stub, {"a0", "a1", "a2"}), 20, "calls on every zone-a server again")
        served_b = sum(s.total_served for s in zone_b)
        assert set(await aspread(stub, 30)) == {"a0", "a1", "a2"}
        assert sum(s.total_served for s in zone_b) == served_b, "zone-b still takes calls"


# --------------------------------------------------------------------------- a thousand endpoints


#: Threads the process may gain between a native channel of 10 endpoints and one of 1,000 (a
#: thread per endpoint would be ~1,000): grpc's event engine may add a few workers while a
#: thousand connections open (measured: +1 or +2). The echo server's pool threads are not counted.
THREAD_ALLOWANCE = 16

#: Distinct client connections the echo server must see calls from, of the 1,000. Not 1,000:
#: the server names a connection by the client's address (127.0.0.1) and port, and Linux reuses
#: a local port towards different destinations (even ports first, ~14,000 of them), so about
#: n^2 / 2m = 35 of 1,000 connections share a name with another (measured: 965 +- a few).
DISTINCT_PEERS = 900


def connected_addresses(port: int) -> set[str]:
    """The addresses at which this host accepted the established TCP connections to ``port``
    (``/proc/net/tcp`` and ``tcp6``; a server on 0.0.0.0 is grpc's dual-stack ``[::]``): one
    per endpoint a client is connected to."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                address, _, local_port = local.partition(":")
                if state != "01" or int(local_port, 16) != port:  # 01: ESTABLISHED
                    continue
                # The kernel prints each 32-bit word of the address in host (little-endian) order.
                raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
                ip = ipaddress.ip_address(raw)
                mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
                found.add(str(mapped or ip))
    return found


def test_a_thousand_instances_cost_no_thread_per_endpoint(registry, anywhere):
    """A native channel to 1,000 endpoints (127.1.x.y, one server on 0.0.0.0) connects to all of
    them and spreads calls over them, with a few threads more than a channel to 10."""
    registry.register_many(addressed("ten", 10, anywhere.port, 1) + addressed("many", 1000, anywhere.port, 2))
    with registry.get_connection("ten", mode="native") as ten:
        stub = EchoStub(ten)
        wait_until(lambda: spread(stub, 20) and len(connected_addresses(anywhere.port)) == 10, 20, "10 connections")
        spread(stub, 100)
        few = thread_counts()
        with registry.get_connection("many", mode="native") as many_channel:
            stub = EchoStub(many_channel)
            wait_until(
                lambda: spread(stub, 250) and len(connected_addresses(anywhere.port)) == 1010, 30, "1,010 connections"
            )
            assert sum(spread(stub, 1000).values()) == 1000
            many = thread_counts()
            assert len(anywhere.peers) >= DISTINCT_PEERS, len(anywhere.peers)
    assert many[0] - few[0] <= 2, f"Python threads {few[0]} -> {many[0]}"
    assert many[1] - few[1] <= THREAD_ALLOWANCE, f"threads {few[1]} -> {many[1]}"


async def test_a_thousand_instances_cost_no_thread_per_endpoint_aio(areg, anywhere):
    await areg.register_many(addressed("ten", 10, anywhere.port, 1) + addressed("many", 1000, anywhere.port, 2))
    async with await areg.get_connection("ten", mode="native") as ten:
        stub = AsyncEchoStub(ten)

        async def connected(calls: int, count: int) -> bool:
            await aspread(stub, calls)
            return len(connected_addresses(anywhere.port)) == count

        await await_until(lambda: connected(20, 10), 20, "10 connections")
        await aspread(stub, 100)
        few = thread_counts()
        async with await areg.get_connection("many", mode="native") as many_channel:
            stub = AsyncEchoStub(many_channel)
            await await_until(lambda: connected(250, 1010), 30, "1,010 connections")
            assert sum((await aspread(stub, 1000)).values()) == 1000
            many = thread_counts()
            assert len(anywhere.peers) >= DISTINCT_PEERS, len(anywhere.peers)
    assert many[0] - few[0] <= 2, f"Python threads {few[0]} -> {many[0]}"
    assert many[1] - few[1] <= THREAD_ALLOWANCE, f"threads {few[1]} -> {many[1]}"


# --------------------------------------------------------------------------- close


def test_close_closes_native_channels_and_the_last_registry_stops_the_ads_server(
    registry, connector, namespace, servers
):
    registry.register(instance_for(servers[0]))
    assert native.server_address() is None, "an ADS server runs with no registry using native mode"
    first = gr.Registry(connector, gr.Config(namespace=namespace))
    second = gr.Registry(connector, gr.Config(namespace=namespace))
    own: grpc.Channel | None = None
    try:
        made = [
            first.get_connection("echo", mode="native"),
            first.get_connection("echo", mode="native", policy="pick_first"),
        ]
        own = grpc.insecure_channel(first.native_target("echo"))  # built by the user: theirs to close
        kept = second.get_connection("echo", mode="native")
        for channel in [*made, own, kept]:
            assert server_of(EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)) == "s0"
        address = native.server_address()
        assert address is not None and port_open(address), address

        first.close()
        assert all(closed(channel) for channel in made), "a native channel outlived its registry"
        wait_until(fails_at_once(EchoStub(own)), 10, "the closed registry's target to answer as 'no instance'")
        assert server_of(EchoStub(kept).Unary(b"x", timeout=5)) == "s0", "the other registry's channel broke"
        assert native.server_address() == address and port_open(address)

        second.close()
        assert closed(kept)
        assert native.server_address() == address, "the user's own channel is still connected"
        own.close()  # the last xDS client goes: the server stops
        wait_until(lambda: native.server_address() is None, 5, "server_address() to say the server stopped")
        wait_until(lambda: not port_open(address), 5, f"the ADS port {address} to close")
    finally:
        if own is not None:
            own.close()
        first.close()
        second.close()


async def test_close_closes_native_channels_and_the_last_registry_stops_the_ads_server_aio(
    areg, connector, namespace, servers
):
    await areg.register(instance_for(servers[0]))
    assert native.server_address() is None, "an ADS server runs with no registry using native mode"
    first = gr.AsyncRegistry(connector, gr.Config(namespace=namespace))
    second = gr.AsyncRegistry(connector, gr.Config(namespace=namespace))
    own: grpc.aio.Channel | None = None
    try:
        made = [
            await first.get_connection("echo", mode="native"),
            await first.get_connection("echo", mode="native", policy="pick_first"),
        ]
        own = grpc.aio.insecure_channel(await first.native_target("echo"))
        kept = await second.get_connection("echo", mode="native")
        for channel in [*made, own, kept]:
            reply = await AsyncEchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)
            assert server_of(reply) == "s0"
        address = native.server_address()
        assert address is not None and port_open(address), address

        await first.close()
        assert all(aclosed(channel) for channel in made), "a native channel outlived its registry"
        await await_until(
            afails_at_once(AsyncEchoStub(own)), 10, "the closed registry's target to answer as 'no instance'"
        )
        assert server_of(await AsyncEchoStub(kept).Unary(b"x", timeout=5)) == "s0"
        assert native.server_address() == address and port_open(address)

        await second.close()
        assert aclosed(kept)
        assert native.server_address() == address, "the user's own channel is still connected"
        await own.close()  # the last xDS client goes: the server stops
        await await_until(lambda: native.server_address() is None, 5, "server_address() to say the server stopped")
        await await_until(lambda: not port_open(address), 5, f"the ADS port {address} to close")
    finally:
        if own is not None:
            await own.close()
        await first.close()
        await second.close()


def test_a_channel_outliving_the_registries_keeps_the_server_until_it_closes(registry, connector, namespace, servers):
    """grpc's xDS clients share one connection per server address. An xds channel of the
    user's that outlives every registry using native mode keeps the ADS server running (its
    target answers as a service with no instance), so a registry that comes later gets a
    working channel at once instead of one that waits out grpc's reconnect backoff on the
    shared connection (10 s to over 60 s when the server stopped under it). Once that channel
    closes, the server stops and its port is closed."""
    registry.register(instance_for(servers[0]))
    first = gr.Registry(connector, gr.Config(namespace=namespace))
    own = grpc.insecure_channel(first.native_target("echo"))
    try:
        assert server_of(EchoStub(own).Unary(b"x", timeout=10, wait_for_ready=True)) == "s0"
        address = native.server_address()
        first.close()
        assert native.server_address() == address, "a client is still connected"
        wait_until(fails_at_once(EchoStub(own)), 10, "the closed registry's target to answer as 'no instance'")
        with gr.Registry(connector, gr.Config(namespace=namespace)) as second:
            with second.get_connection("echo", mode="native") as channel:
                started = time.monotonic()
                reply = server_of(EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True))
                elapsed = time.monotonic() - started
        assert reply == "s0" and elapsed < 5, f"the first call of the new channel: {reply!r} after {elapsed:.1f} s"
        assert native.server_address() == address, "the user's channel is still open"
    finally:
        own.close()
        first.close()
    wait_until(lambda: native.server_address() is None, 10, "the ADS server to stop once its last client went")
    assert address is not None and not port_open(address)


# --------------------------------------------------------------------------- processes


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_interpreter_exit_leaves_nothing_running(registry, servers, etcd_endpoints, namespace, flavour):
    """A child makes a native channel, calls it and returns without closing anything: it exits
    at once, with 0 and no traceback, and its ADS port is closed."""
    registry.register(instance_for(servers[0]))
    extra = ["--aio"] if flavour == "aio" else []
    report, stderr = run_child(child_command("exit", etcd_endpoints, namespace, "echo", *extra))
    exited_in = time.time() - report["at"]
    assert report["served_by"] == "s0"
    assert exited_in < 10, f"the interpreter took {exited_in:.1f} s to exit"
    for sign in ("Traceback", "Exception ignored", "Fatal Python error"):
        assert sign not in stderr, stderr
    assert report["server"] and not port_open(report["server"])


@pytest.mark.parametrize("parent", ["native-open", "native-closed"])
def test_native_mode_in_a_child_forked_after_its_parent_used_it_is_refused_with_a_clear_error(
    registry, servers, etcd_endpoints, namespace, parent
):
    """The parent made a native channel (still open, or its registry closed before the fork).
    grpc's xDS client in the child would still ask the parent's server, so the child's native
    channel is refused at once with a RegistryError saying why, rather than calls that hang to
    their deadline; balanced mode works there, and the parent's own channel still works."""
    registry.register(instance_for(servers[0]))
    report, _ = run_child(child_command("fork", etcd_endpoints, namespace, "echo", "--parent", parent))
    child = report["child"]
    assert report["child_status"] == 0, child
    assert report["before"] == "s0" and report["parent_server"], report
    error = child.get("native_error", "")
    assert error.startswith("RegistryError: ") and "forked" in error, child
    assert child["refused_in"] < 1, child
    assert child["balanced"] == "s0", child
    if parent == "native-open":
        assert report["after"] == "s0", report
        assert report["parent_server_after"] == report["parent_server"], report
    else:
        assert report["parent_server_after"] is None, report


def test_a_child_forked_from_a_parent_that_never_used_native_mode_gets_its_own_ads_server(
    registry, servers, etcd_endpoints, namespace
):
    registry.register(instance_for(servers[0]))
    report, _ = run_child(child_command("fork", etcd_endpoints, namespace, "echo", "--parent", "balanced"))
    child = report["child"]
    assert report["child_status"] == 0, child
    assert report["parent_server"] is None and report["parent_server_after"] is None, report
    assert child.get("native") == "s0" and child["server"], child
    assert child["balanced"] == "s0", child
    assert report["before"] == report["after"] == "s0", report


@pytest.mark.parametrize("how", ["config", "file"])
def test_a_user_bootstrap_keeps_working_beside_ours(registry, servers, etcd_endpoints, namespace, how):
    """The user's program (a child) already has an xDS bootstrap of its own (GRPC_XDS_BOOTSTRAP_CONFIG,
    or a file named by GRPC_XDS_BOOTSTRAP) whose top-level server is "their" control plane: a
    second child, whose registry's ADS server serves "their-service". The program makes a
    native channel to "echo" (our authority, our server) and then dials their target through
    its own bootstrap. Both reach their own backends; the bootstrap grpc reads keeps the user's
    node and server and adds our authority; the user's file is untouched."""
    their_s0, their_s1, ours = servers
    registry.register_many(
        [instance_for(their_s0, "their-service"), instance_for(their_s1, "their-service"), instance_for(ours)]
    )
    plane_command = child_command("control-plane", etcd_endpoints, namespace, "their-service")
    with running_child(plane_command) as plane:
        assert plane["served_by"] in {"s0", "s1"}, plane
        path = plane["target"].split("://", 1)[1].split("/", 1)[1]  # scope/their-service
        their_target = f"xds:///{path}"  # through the user's top-level server, not an authority
        app_command = child_command(
            "user-app",
            etcd_endpoints,
            namespace,
            "echo",
            "--their-target",
            their_target,
            "--their-server",
            plane["server"],
            "--how",
            how,
        )
        app, _ = run_child(app_command)
    assert app["ours"] == {"s2": 21}, app
    assert app["theirs"].keys() == {"s0", "s1"} and sum(app["theirs"].values()) == 21, app
    assert app["server"] and app["server"] != plane["server"], (app, plane)
    effective = app["effective"]
    assert effective is not None, "no bootstrap left for grpc"
    assert effective.get("node", {}).get("id") == "user-node", effective
    assert [s["server_uri"] for s in effective.get("xds_servers", [])] == [plane["server"]], effective
    ours_entry = effective.get("authorities", {}).get("genesis-registry", {})
    assert [s["server_uri"] for s in ours_entry.get("xds_servers", [])] == [app["server"]], effective
    if how == "file":
        assert app["user_file_after"] == app["user_file_before"], "the user's bootstrap file was changed"


# --------------------------------------------------------------------------- bad input


#: Settings get_connection() refuses: (keyword arguments, made when called; words the error must name).
BAD_SETTINGS = [
    pytest.param(lambda: {"mode": "bogus"}, ("mode", "'bogus'"), id="unknown-mode"),
    pytest.param(lambda: {"mode": "native", "policy": "least_request"}, ("least_request",), id="unknown-policy"),
    pytest.param(lambda: {"mode": "native", "policy": "ring_hash"}, ("ring_hash", "hash_header"), id="no-hash_header"),
    pytest.param(lambda: {"mode": "native", "hash_header": HASH_HEADER}, ("hash_header",), id="hash_header-alone"),
    pytest.param(lambda: {"mode": "native", "subset_size": 2}, ("subset_size",), id="subset_size"),
    pytest.param(
        lambda: {"mode": "native", "outlier_detection": gr.OutlierDetection(interval=-1.5)},
        ("interval", "-1.5"),
        id="negative-interval",
    ),
    pytest.param(
        lambda: {"mode": "native", "outlier_detection": gr.OutlierDetection(max_ejection_percent=101)},
        ("max_ejection_percent", "101"),
        id="max_ejection_percent-101",
    ),
    pytest.param(
        lambda: {
            "mode": "native",
            "outlier_detection": gr.OutlierDetection(failure_percentage=gr.FailurePercentageEjection(threshold=150)),
        },
        ("threshold", "150"),
        id="threshold-150",
    ),
    pytest.param(
        lambda: {
            "mode": "native",
            "outlier_detection": gr.OutlierDetection(
                failure_percentage=gr.FailurePercentageEjection(enforcement_percentage=101)
            ),
        },
        ("enforcement_percentage", "101"),
        id="failure-enforcement-101",
    ),
    pytest.param(
        lambda: {
            "mode": "native",
            "outlier_detection": gr.OutlierDetection(success_rate=gr.SuccessRateEjection(enforcement_percentage=200)),
        },
        ("enforcement_percentage", "200"),
        id="success-enforcement-200",
    ),
]


@pytest.mark.parametrize(("settings", "named"), BAD_SETTINGS)
def test_bad_native_settings_are_refused_naming_the_value(registry, servers, settings, named):
    registry.register(instance_for(servers[0]))
    with pytest.raises(gr.InvalidConfigError) as info:
        registry.get_connection("echo", **settings())
    assert all(word in str(info.value) for word in named), (named, str(info.value))
    assert registry.registered_ids() == ["s0"]
    assert instance_ids(registry) == ["s0"]
    with registry.get_connection("echo", mode="native") as channel:
        assert server_of(EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)) == "s0"


@pytest.mark.parametrize(("settings", "named"), BAD_SETTINGS)
async def test_bad_native_settings_are_refused_naming_the_value_aio(areg, servers, settings, named):
    await areg.register(instance_for(servers[0]))
    with pytest.raises(gr.InvalidConfigError) as info:
        await areg.get_connection("echo", **settings())
    assert all(word in str(info.value) for word in named), (named, str(info.value))
    assert areg.registered_ids() == ["s0"]
    assert await ainstance_ids(areg) == ["s0"]
    async with await areg.get_connection("echo", mode="native") as channel:
        assert server_of(await AsyncEchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)) == "s0"


def test_dial_refuses_an_unknown_mode(registry):
    with pytest.raises(gr.InvalidConfigError) as info:
        gr.dial("etcd:///echo", registry=registry, mode="bogus")
    assert "'bogus'" in str(info.value), str(info.value)
