"""Balanced gRPC channels (sync) against a real etcd and real grpcio servers."""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from typing import Any

import genesis_registry as gr
import grpc
import pytest
from genesis_registry._connectivity import MONITOR
from support.echo import EchoProcess, EchoServer, EchoStub, instance_for, server_of
from support.wait import wait_until


def spread(stub: EchoStub, calls: int) -> collections.Counter[str]:
    return collections.Counter(server_of(stub.Unary(b"x", timeout=5)) for _ in range(calls))


def all_ready(channel: gr.BalancedChannel, count: int) -> None:
    wait_until(lambda: len(channel.ready_targets()) == count, 10, f"{count} READY endpoints")


def test_round_robin_spreads_calls_evenly(registry, servers):
    for server in servers:
        registry.register(instance_for(server))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 3)
        counts = spread(EchoStub(channel), 300)
    assert set(counts) == {"s0", "s1", "s2"}
    assert all(90 <= n <= 110 for n in counts.values()), counts


def test_pick_first_sticks_to_one_instance_until_it_goes(registry, servers):
    for server in servers:
        registry.register(instance_for(server))
    with registry.get_connection("echo", policy="pick_first") as channel:
        all_ready(channel, 3)
        stub = EchoStub(channel)
        counts = spread(stub, 50)
        assert len(counts) == 1 and sum(counts.values()) == 50, counts
        (chosen,) = counts
        registry.deregister(chosen)
        wait_until(lambda: chosen not in spread(stub, 1), 10, f"{chosen} to leave the view")
        counts = spread(stub, 50)
        assert len(counts) == 1 and chosen not in counts, counts


def test_weights_skew_round_robin(registry, servers):
    for server, weight in zip(servers, (1, 2, 3), strict=True):
        registry.register(instance_for(server, weight=weight))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 3)
        counts = spread(EchoStub(channel), 600)
    assert counts == {"s0": 100, "s1": 200, "s2": 300}, counts


def test_instances_without_weight_count_as_the_mean_weight(registry, servers):
    registry.register(instance_for(servers[0], weight=1))
    registry.register(instance_for(servers[1], weight=3))
    registry.register(instance_for(servers[2]))  # counts as 2
    with registry.get_connection("echo") as channel:
        all_ready(channel, 3)
        counts = spread(EchoStub(channel), 600)
    assert counts == {"s0": 100, "s1": 300, "s2": 200}, counts


def test_every_call_shape_goes_through_the_balancer(registry, servers):
    for server in servers:
        registry.register(instance_for(server))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 3)
        stub = EchoStub(channel)
        assert server_of(stub.Unary(b"a")) in {"s0", "s1", "s2"}
        reply, call = stub.Unary.with_call(b"b")
        assert call.code() is grpc.StatusCode.OK and reply.endswith(b"|b")
        assert stub.Unary.future(b"c").result(timeout=5).endswith(b"|c")
        assert [r.split(b"|")[1] for r in stub.ServerStream(b"3")] == [b"0", b"1", b"2"]
        assert stub.ClientStream(iter([b"1", b"2", b"3"])).endswith(b"|3")
        assert stub.ClientStream.future(iter([b"1"])).result(timeout=5).endswith(b"|1")
        assert [r.split(b"|")[1] for r in stub.BidiStream(iter([b"p", b"q"]))] == [b"p", b"q"]
    assert sum(s.served["Unary"] for s in servers) == 3


def test_no_instance_fails_fast_with_unavailable_naming_the_service(registry):
    with registry.get_connection("nobody") as channel:
        stub = EchoStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(b"x", timeout=30)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "'nobody'" in info.value.details()
        assert stub.Unary.future(b"x").exception().code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            list(stub.ServerStream(b"1"))


def test_wait_for_ready_waits_for_the_first_instance(registry, servers):
    with registry.get_connection("echo") as channel:
        stub = EchoStub(channel)  # built before any instance exists
        result: list[bytes] = []
        caller = threading.Thread(target=lambda: result.append(stub.Unary(b"x", timeout=20, wait_for_ready=True)))
        caller.start()
        wait_until(lambda: caller.is_alive(), 5, "the call to be waiting")
        registry.register(instance_for(servers[1]))
        caller.join(20)
        assert [server_of(r) for r in result] == ["s1"]


def test_wait_for_ready_gives_up_at_the_deadline(registry):
    with registry.get_connection("nobody") as channel:
        with pytest.raises(grpc.RpcError) as info:
            EchoStub(channel).Unary(b"x", timeout=0.3, wait_for_ready=True)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_stubs_built_early_stay_balanced_as_instances_change(registry, servers):
    with registry.get_connection("echo") as channel:
        stub = EchoStub(channel)
        registry.register(instance_for(servers[0]))
        all_ready(channel, 1)
        assert spread(stub, 10) == {"s0": 10}
        registry.register(instance_for(servers[1]))
        all_ready(channel, 2)
        assert spread(stub, 20) == {"s0": 10, "s1": 10}
        registry.deregister("s0")
        wait_until(lambda: channel.targets == [servers[1].address], 10, "s0 gone from the channel")
        assert spread(stub, 10) == {"s1": 10}


def test_failing_endpoints_are_skipped_while_others_are_ready(registry, servers):
    dead = gr.ServiceInstance(id="dead", name="echo", endpoints=["grpc://127.0.0.1:1"])
    registry.register(dead)
    registry.register(instance_for(servers[0]))
    registry.register(instance_for(servers[1]))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 2)
        counts = spread(EchoStub(channel), 100)
    assert counts == {"s0": 50, "s1": 50}


def test_unusable_endpoints_are_skipped_and_logged(registry, servers, caplog, etcd_server, namespace):
    # register() refuses such endpoints; another writer (here etcdctl) may not.
    weird = gr.ServiceInstance(id="weird", name="echo", endpoints=["unix:/tmp/x.sock"])
    etcd_server.etcdctl("put", f"{namespace}/echo/weird", input=weird.to_json())
    registry.register(instance_for(servers[0]))
    with caplog.at_level(logging.WARNING, logger="genesis_registry"):
        with registry.get_connection("echo") as channel:
            assert channel.targets == [servers[0].address]
            assert server_of(EchoStub(channel).Unary(b"x", timeout=5)) == "s0"
    assert any("weird" in r.getMessage() and "usable" in r.getMessage() for r in caplog.records)


def test_hostname_endpoints_are_resolved_by_grpc(registry, servers):
    port = servers[0].port
    registry.register(gr.ServiceInstance(id="by-name", name="echo", endpoints=[f"grpc://localhost:{port}"]))
    with registry.get_connection("echo") as channel:
        assert channel.targets == [f"localhost:{port}"]
        assert server_of(EchoStub(channel).Unary(b"x", timeout=5, wait_for_ready=True)) == "s0"


def test_ipv6_endpoints(registry):
    import socket
    from concurrent import futures

    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    holder = EchoServer("v6")  # only for its handler; it serves on IPv4
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((holder._handler(),))
    port = server.add_insecure_port("[::1]:0")
    server.start()
    try:
        registry.register(gr.ServiceInstance(id="v6", name="echo", endpoints=[f"grpc://[::1]:{port}"]))
        with registry.get_connection("echo") as channel:
            assert channel.targets == [f"[::1]:{port}"]
            assert server_of(EchoStub(channel).Unary(b"x", timeout=5, wait_for_ready=True)) == "v6"
    finally:
        server.stop(None)
        holder.stop()


def test_intercept_channel_works_over_a_balanced_channel(registry, servers):
    seen: list[str] = []

    class Recorder(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            seen.append(details.method)
            return continuation(details, request)

    registry.register(instance_for(servers[0]))
    with registry.get_connection("echo") as channel:
        stub = EchoStub(grpc.intercept_channel(channel, Recorder()))
        assert server_of(stub.Unary(b"x", timeout=5)) == "s0"
    assert seen == ["/echo.Echo/Unary"]


def test_dial_accepts_etcd_targets(registry, servers):
    registry.register(instance_for(servers[2]))
    for target in ("etcd:///echo", "etcd://anything/echo"):
        with gr.dial(target, registry=registry) as channel:
            assert server_of(EchoStub(channel).Unary(b"x", timeout=5)) == "s2"


@pytest.mark.parametrize("target", ["echo", "dns:///echo", "etcd://", "etcd:///", "etcd:///a/b", "etcd:echo"])
def test_malformed_targets_are_named(registry, target):
    with pytest.raises(gr.InvalidConfigError) as info:
        gr.dial(target, registry=registry)
    assert isinstance(info.value, ValueError)
    assert repr(target) in str(info.value)


def test_unknown_policy_is_refused(registry):
    with pytest.raises(gr.InvalidConfigError, match="'fastest'"):
        registry.get_connection("echo", policy="fastest")


def test_close_ends_everything(registry, servers):
    registry.register(instance_for(servers[0]))
    before = {t.name for t in threading.enumerate()}
    channel = registry.get_connection("echo")
    stub = EchoStub(channel)
    assert server_of(stub.Unary(b"x", timeout=5)) == "s0"
    channel.close()
    channel.close()
    with pytest.raises(ValueError):
        stub.Unary(b"x", timeout=5)
    assert not [t for t in threading.enumerate() if t.name.startswith("genesis-follow") and t.name not in before]


def test_in_flight_streams_on_a_deregistered_server_complete(registry, servers):
    for server in servers:
        registry.register(instance_for(server))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 3)
        stub = EchoStub(channel)
        streams = [stub.ServerStream(b"10:50", timeout=30) for _ in range(6)]  # two per server, ~0.5 s each
        first = [next(s) for s in streams]
        registry.deregister("s1")
        wait_until(lambda: servers[1].address not in channel.targets, 10, "s1 out of the view")
        rest = [list(s) for s in streams]
    on_s1 = [i for i, reply in enumerate(first) if server_of(reply) == "s1"]
    assert on_s1, "no stream landed on s1"
    for i in on_s1:
        assert len(rest[i]) == 9, f"stream {i} on the deregistered server was cut: {rest[i]}"


def read_within(streams: list[Any], seconds: float) -> list[list[bytes]] | None:
    """Every stream read to its end, on a thread of its own; None if that takes longer."""
    rest: list[list[bytes]] = []
    done = threading.Event()

    def read_all() -> None:
        rest.extend(list(stream) for stream in streams)
        done.set()

    threading.Thread(target=read_all, daemon=True).start()
    return rest if done.wait(seconds) else None


def test_a_drained_endpoint_closes_from_its_last_calls_callback_without_hanging(registry, servers):
    """A removed endpoint's channel is closed when its last call ends, from that call's
    done-callback, which grpcio may run on the very thread that must wind the call up for
    a close to return: closing there hung a stream's reader for good. Many rounds of
    streams on an endpoint that leaves mid-stream; every stream must end in time."""
    registry.register(instance_for(servers[0]))
    with registry.get_connection("echo") as channel:
        stub = EchoStub(channel)
        for _ in range(30):
            registry.register(instance_for(servers[1]))
            all_ready(channel, 2)
            streams = [stub.ServerStream(b"3:2", timeout=10) for _ in range(4)]  # two on each server
            first = [next(s) for s in streams]
            registry.deregister("s1")
            wait_until(lambda: servers[1].address not in channel.targets, 10, "s1 out of the view")
            rest = read_within(streams, 10)
            assert rest is not None, "a stream on the drained endpoint never ended"
            assert [len(r) for r in rest] == [2] * 4
            assert {server_of(reply) for reply in first} == {"s0", "s1"}


def test_churn_under_load(registry, servers, etcd_endpoints, namespace):
    """Calls flow while a server is added, one is deregistered and one is killed (its
    lease expires): only calls to the killed server, in its TTL window, may fail."""
    registry.register(instance_for(servers[0]))
    registry.register(instance_for(servers[1]))
    with EchoProcess("crash", etcd_endpoints, namespace, "echo", ttl=2) as crashing:
        with registry.get_connection("echo") as channel:
            all_ready(channel, 3)
            stub = EchoStub(channel)
            failures: list[tuple[float, str]] = []
            served: collections.Counter[str] = collections.Counter()
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    try:
                        served[server_of(stub.Unary(b"x", timeout=5))] += 1
                    except grpc.RpcError as e:
                        failures.append((time.monotonic(), f"{e.code()}: {e.details()}"))

            workers = [threading.Thread(target=load) for _ in range(4)]
            for w in workers:
                w.start()
            try:
                wait_until(lambda: served["crash"] > 20, 10, "traffic on every server")
                registry.register(instance_for(servers[2]))
                wait_until(lambda: servers[2].total_served > 0, 1.0, "the new server to get traffic within 1 s")
                registry.deregister("s0")
                wait_until(lambda: servers[0].address not in channel.targets, 10, "s0 out of the view")
                killed_at = time.monotonic()
                crashing.kill()
                wait_until(lambda: crashing.address not in channel.targets, 10, "the crashed server's lease to expire")
                expired_at = time.monotonic()
                before = sum(served.values())
                wait_until(lambda: sum(served.values()) > before + 100, 10, "calls after the churn")
            finally:
                stop.set()
                for w in workers:
                    w.join(10)
    outside_window = [f for f in failures if not killed_at <= f[0] <= expired_at + 0.5]
    assert outside_window == [], outside_window
    assert all("UNAVAILABLE" in f[1] for f in failures), failures
    assert served["s1"] > 0 and servers[2].total_served > 0


def test_close_cancels_calls_still_draining_on_a_removed_endpoint(registry, servers):
    for server in servers:
        registry.register(instance_for(server))
    channel = registry.get_connection("echo")
    all_ready(channel, 3)
    stub = EchoStub(channel)
    streams = [stub.ServerStream(b"1000:20", timeout=60) for _ in range(3)]
    on_s1 = [s for s in streams if server_of(next(s)) == "s1"]
    assert on_s1, "no stream landed on s1"
    registry.deregister("s1")
    wait_until(lambda: servers[1].address not in channel.targets, 10, "s1 out of the view")
    assert all(s.running() for s in on_s1), "draining streams keep running until close"
    channel.close()
    for stream in on_s1:
        wait_until(stream.done, 10, "the draining stream to be cancelled by close()")
        assert stream.code() is grpc.StatusCode.CANCELLED


def test_an_endpoint_that_went_idle_comes_back_into_rotation(registry, servers):
    registry.register(instance_for(servers[0]))
    registry.register(instance_for(servers[1]))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 2)
        stub = EchoStub(channel)
        assert spread(stub, 20) == {"s0": 10, "s1": 10}
        servers[1].restart()  # its connection drops: the endpoint goes IDLE, then must reconnect
        wait_until(lambda: len(channel.ready_targets()) == 2 and spread(stub, 2) == {"s0": 1, "s1": 1}, 15)
        assert spread(stub, 20) == {"s0": 10, "s1": 10}


def test_calls_never_fail_while_other_instances_churn(registry, servers):
    """Picking an endpoint and counting the call on it are one step: an endpoint removed
    meanwhile is never used (its channel may be closing)."""
    registry.register(instance_for(servers[0]))  # always there
    errors: list[BaseException] = []
    calls = collections.Counter[str]()
    stop = threading.Event()
    with registry.get_connection("echo") as channel:
        stub = EchoStub(channel)
        all_ready(channel, 1)

        def load() -> None:
            while not stop.is_set():
                try:
                    calls[server_of(stub.Unary(b"x", timeout=5))] += 1
                    calls[server_of(stub.Unary.future(b"x", timeout=5).result())] += 1
                except BaseException as e:
                    errors.append(e)

        workers = [threading.Thread(target=load) for _ in range(4)]
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # switch threads often, so the race shows if it is there
        for w in workers:
            w.start()
        try:
            for _ in range(15):
                registry.register(instance_for(servers[1]))
                registry.register(instance_for(servers[2]))
                wait_until(lambda: len(channel.targets) == 3, 10)
                registry.deregister("s1")
                registry.deregister("s2")
                wait_until(lambda: len(channel.targets) == 1, 10)
        finally:
            stop.set()
            for w in workers:
                w.join(10)
            sys.setswitchinterval(switch)
    assert errors == [], errors[:3]
    assert calls["s0"] > 0


def test_stubs_made_per_request_share_one_grpc_multicallable(registry, servers):
    registry.register(instance_for(servers[0]))
    with registry.get_connection("echo") as channel:
        for _ in range(200):
            assert server_of(EchoStub(channel).Unary(b"x", timeout=5)) == "s0"
        (endpoint,) = channel._endpoints.endpoints()
        assert len(endpoint._callables) == 1  # one per method called, however many stubs


def test_wait_for_ready_waits_for_a_ready_endpoint_not_a_dead_one(registry, servers, etcd_server, namespace):
    dead = gr.ServiceInstance(id="dead", name="echo", endpoints=["grpc://127.0.0.1:1"])
    registry.register(dead)
    with registry.get_connection("echo") as channel:
        stub = EchoStub(channel)
        result: list[bytes] = []
        caller = threading.Thread(target=lambda: result.append(stub.Unary(b"x", timeout=20, wait_for_ready=True)))
        caller.start()
        registry.register(instance_for(servers[0]))
        caller.join(20)
    assert [server_of(r) for r in result] == ["s0"]


def test_a_follower_survives_a_failing_callback(registry, servers):
    seen: list[int] = []

    def on_change(instances: tuple[gr.ServiceInstance, ...]) -> None:
        seen.append(len(instances))
        if len(seen) == 2:
            raise RuntimeError("one bad update")

    follower = gr.ServiceFollower(registry, "echo", on_change)
    try:
        registry.register(instance_for(servers[0]))
        wait_until(lambda: len(seen) >= 2, 10)
        registry.register(instance_for(servers[1]))
        wait_until(lambda: seen[-1] == 2, 10, "the next change to be delivered")
    finally:
        follower.close()


def _polling(channel: grpc.Channel) -> bool:
    state = channel._connectivity_state  # type: ignore[attr-defined]
    with state.lock:
        return bool(state.polling)


def test_closing_endpoint_channels_never_makes_a_thread_raise(registry, servers, monkeypatch):
    """Endpoint channels closed while they connect, and so while the connectivity monitor
    reads them, make no thread raise (grpcio's own polling thread would: grpc/grpc#18995);
    every one is closed, and the monitor's thread ends with the last channel."""
    raised: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    opened: list[grpc.Channel] = []
    open_sync_channel = gr.balancer.sync.open_channel

    def recording(*args: object) -> grpc.Channel:
        channel = open_sync_channel(*args)  # type: ignore[arg-type]
        opened.append(channel)
        return channel

    monkeypatch.setattr(gr.balancer.sync, "open_channel", recording)
    registry.register(instance_for(servers[0]))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 1)
        for _ in range(60):
            registry.register(instance_for(servers[1]))
            registry.register(instance_for(servers[2]))
            # Removed as soon as they appear, while their channels connect: polling
            # threads are then busy, not asleep in a 0.2 s wait.
            deadline = time.monotonic() + 10
            while len(channel.targets) < 3:
                assert time.monotonic() < deadline, "s1 and s2 never joined"
            registry.deregister("s1")
            registry.deregister("s2")
            wait_until(lambda: len(channel.targets) == 1, 10)
    assert len(opened) == 121
    wait_until(lambda: MONITOR.thread is None, 5, "the connectivity monitor's thread to end")
    assert not any(_polling(c) for c in opened)  # no grpcio polling thread was ever started
    assert [(args.thread, args.exc_value) for args in raised] == []
    for closed in opened:
        with pytest.raises(ValueError, match="closed"):
            closed._channel.check_connectivity_state(False)  # type: ignore[attr-defined]


def two_endpoint_instance(id: str, *servers: EchoServer, **metadata: object) -> gr.ServiceInstance:
    """One instance reachable at every one of ``servers``' endpoints."""
    return gr.ServiceInstance(
        id=id,
        name="echo",
        endpoints=[s.endpoint for s in servers],
        metadata={key: str(value) for key, value in metadata.items()},
    )


def test_every_endpoint_of_an_instance_takes_calls(registry, servers):
    # Go's etcd:/// resolver hands every endpoint to gRPC: 10/10 over 20 calls.
    registry.register(two_endpoint_instance("both", servers[0], servers[1]))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 2)
        assert channel.targets == sorted([servers[0].address, servers[1].address])
        counts = spread(EchoStub(channel), 20)
    assert counts == {"s0": 10, "s1": 10}, counts


def test_an_instance_weight_applies_to_each_of_its_endpoints(registry, servers):
    registry.register(two_endpoint_instance("pair", servers[0], servers[1], weight=1))
    registry.register(instance_for(servers[2], weight=2))
    with registry.get_connection("echo") as channel:
        all_ready(channel, 3)
        counts = spread(EchoStub(channel), 400)
    assert counts == {"s0": 100, "s1": 100, "s2": 200}, counts


def test_unusable_endpoints_beside_usable_ones_are_left_out(registry, servers, etcd_server, namespace):
    # register() refuses such endpoints; another writer (a Go service) may not.
    mixed = gr.ServiceInstance(id="mixed", name="echo", endpoints=["http://127.0.0.1:1", servers[0].endpoint])
    etcd_server.etcdctl("put", f"{namespace}/echo/mixed", input=mixed.to_json())
    with registry.get_connection("echo") as channel:
        all_ready(channel, 1)
        assert channel.targets == [servers[0].address]
        assert spread(EchoStub(channel), 5) == {"s0": 5}


@pytest.mark.parametrize("first_ready", [0, 1, 2])
def test_pick_first_sends_every_call_to_one_endpoint_whatever_becomes_ready_first(registry, first_ready):
    # Bound but not serving: a client's connection stays CONNECTING until the server starts,
    # so the test decides which endpoint is READY first.
    waiting = [EchoServer(f"p{i}") for i in range(3)]
    try:
        for server in waiting:
            registry.register(instance_for(server))
        with registry.get_connection("echo", policy="pick_first") as channel:
            stub = EchoStub(channel)
            early: list[tuple[list[str], str]] = []
            calling = threading.Event()

            def first_call() -> None:
                ready_then = channel.ready_targets()
                calling.set()
                early.append((ready_then, server_of(stub.Unary(b"x", timeout=20))))

            caller = threading.Thread(target=first_call)
            caller.start()
            # The call is under way before any server accepts (a server's start and the
            # connection's handshake take far longer than the step into the call).
            assert calling.wait(10)
            chosen = waiting[first_ready]
            chosen.start()
            wait_until(lambda: channel.ready_targets() == [chosen.address], 10, f"{chosen.name} READY")
            for server in reversed(waiting):
                server.start()
            all_ready(channel, 3)
            caller.join(20)
            ((ready_then, answered),) = early
            assert ready_then == []  # the first call was made before any endpoint was READY
            counts = spread(stub, 59)
        assert [answered, *counts.elements()] == [chosen.name] * 60, (answered, counts)
    finally:
        for server in waiting:
            server.stop()


def test_pick_first_waits_while_an_endpoint_connects_and_fails_once_none_can(registry, servers):
    dead = EchoServer("dead").start()  # served, then stopped: its port refuses connections
    dead.stop()
    late = EchoServer("late")  # bound, not serving: connections to it wait
    try:
        registry.register(instance_for(dead, id="a-dead"))
        registry.register(instance_for(late, id="b-late"))
        with registry.get_connection("echo", policy="pick_first") as channel:
            stub = EchoStub(channel)
            answered: list[str] = []
            caller = threading.Thread(target=lambda: answered.append(server_of(stub.Unary(b"x", timeout=30))))
            caller.start()
            # Private state, read only: the dead endpoint has failed, the call still waits on the other.
            states = lambda: {ep.target: ep.state for ep in channel._endpoints.endpoints()}  # noqa: E731
            wait_until(lambda: states()[dead.address] == grpc.ChannelConnectivity.TRANSIENT_FAILURE, 10)
            assert caller.is_alive() and answered == []
            late.start()
            caller.join(20)
            assert answered == ["late"]
            assert spread(stub, 10) == {"late": 10}
        registry.deregister("b-late")
        with registry.get_connection("echo", policy="pick_first") as channel:
            with pytest.raises(grpc.RpcError) as failed:
                EchoStub(channel).Unary(b"x", timeout=30)  # waits while it connects, fails when it cannot
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        late.stop()
