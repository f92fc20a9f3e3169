"""StreamManager and AsyncStreamManager against a real etcd and real grpcio servers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import genesis_registry as gr
import grpc
import pytest
from genesis_registry._connectivity import MONITOR
from support.echo import AsyncEchoStub, EchoServer, EchoStub, instance_for
from support.wait import await_until, wait_until

LONG_STREAM = b"100000:50"  # a server stream that lasts far longer than any test


class Recorder:
    """Collects the manager's callbacks."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[str] = []
        self.errors: list[tuple[str, BaseException]] = []

    def on_add(self, instance: gr.ServiceInstance) -> None:
        self.added.append(instance.id)

    def on_remove(self, instance: gr.ServiceInstance) -> None:
        self.removed.append(instance.id)

    def on_error(self, instance: gr.ServiceInstance, error: BaseException) -> None:
        self.errors.append((instance.id, error))


def config(recorder: Recorder, factory: Any = None, **kw: Any) -> gr.StreamManagerConfig:
    return gr.StreamManagerConfig(
        service_name="echo",
        factory=factory or (lambda channel, instance: EchoStub(channel).ServerStream(LONG_STREAM)),
        on_add=recorder.on_add,
        on_remove=recorder.on_remove,
        on_error=recorder.on_error,
        retry_initial=kw.pop("retry_initial", 0.05),
        retry_max=kw.pop("retry_max", 1.0),
        **kw,
    )


def manager_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith(("genesis-streams", "genesis-follow"))}


def test_streams_follow_the_instances(registry, servers):
    recorder = Recorder()
    registry.register(instance_for(servers[0]))
    registry.register(instance_for(servers[1]))
    with gr.StreamManager(registry, config(recorder)) as manager:
        wait_until(lambda: set(manager.streams()) == {"s0", "s1"}, 10, "a stream per instance")
        assert sorted(recorder.added) == ["s0", "s1"]
        wait_until(lambda: servers[0].served["ServerStream"] == 1 == servers[1].served["ServerStream"], 10)
        registry.register(instance_for(servers[2]))
        wait_until(lambda: set(manager.streams()) == {"s0", "s1", "s2"}, 10, "the new instance's stream")
        old = manager.streams()["s0"]
        registry.deregister("s0")
        wait_until(lambda: set(manager.streams()) == {"s1", "s2"}, 10, "the stream of s0 to go")
        assert recorder.removed == ["s0"]
        wait_until(lambda: old.done(), 10, "the removed stream to be cancelled")
        assert old.cancelled()
    assert recorder.errors == []


def test_a_server_that_restarts_gets_its_stream_back(registry, servers):
    recorder = Recorder()
    registry.register(instance_for(servers[0]))
    with gr.StreamManager(registry, config(recorder)) as manager:
        wait_until(lambda: "s0" in manager.streams(), 10)
        first = manager.streams()["s0"]
        wait_until(lambda: servers[0].served["ServerStream"] == 1, 10)
        servers[0].stop()
        wait_until(lambda: recorder.errors, 10, "on_error for the broken stream")
        assert recorder.errors[0][0] == "s0"
        assert recorder.errors[0][1].code() is grpc.StatusCode.UNAVAILABLE
        servers[0].restart()
        wait_until(lambda: servers[0].served["ServerStream"] >= 2, 15, "the stream to be re-opened")
        wait_until(lambda: manager.streams().get("s0") not in (None, first), 10)
        assert manager.streams()["s0"].running()
    assert recorder.added == ["s0"] and recorder.removed == []


def test_a_stream_that_ends_cleanly_is_reopened_without_an_error(registry, servers):
    recorder = Recorder()
    registry.register(instance_for(servers[0]))

    readers: list[threading.Thread] = []
    endings: list[grpc.StatusCode] = []

    def read_to_the_end(call: Any) -> None:
        try:
            list(call)
        except grpc.RpcError as error:  # stop() cancels the stream open at that moment
            endings.append(error.code())
        else:
            endings.append(grpc.StatusCode.OK)

    def short_and_read(channel: grpc.Channel, instance: gr.ServiceInstance) -> Any:
        call = EchoStub(channel).ServerStream(b"2")
        # The application reads its stream; gRPC reports the end once it is read.
        reader = threading.Thread(target=read_to_the_end, args=(call,), daemon=True)
        readers.append(reader)
        reader.start()
        return call

    short = config(recorder, factory=short_and_read)
    with gr.StreamManager(registry, short):
        wait_until(lambda: servers[0].served["ServerStream"] >= 3, 10, "repeated re-opens")
    for reader in readers:
        reader.join(10)
        assert not reader.is_alive()
    assert recorder.errors == []
    assert endings.count(grpc.StatusCode.OK) >= 2, endings  # the third may be cut by stop()
    assert set(endings) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}, endings


def test_an_endpoint_change_gets_a_new_channel_and_stream(registry, servers, etcd_server, namespace):
    recorder = Recorder()
    key = f"{namespace}/echo/moving"
    etcd_server.etcdctl("put", key, input=instance_for(servers[0], id="moving").to_json())
    with gr.StreamManager(registry, config(recorder)) as manager:
        wait_until(lambda: servers[0].served["ServerStream"] == 1, 10, "a stream to s0")
        on_s0 = manager.streams()["moving"]
        etcd_server.etcdctl("put", key, input=instance_for(servers[1], id="moving").to_json())
        wait_until(lambda: servers[1].served["ServerStream"] == 1, 10, "a stream to s1")
        wait_until(lambda: on_s0.done(), 10, "the old stream to be cancelled")
        assert manager.streams()["moving"] is not on_s0
    assert recorder.added == ["moving"] and recorder.removed == []


def test_factory_failures_are_retried_with_backoff(registry, servers):
    recorder = Recorder()
    attempts: list[str] = []

    def flaky(channel: grpc.Channel, instance: gr.ServiceInstance) -> Any:
        attempts.append(instance.id)
        if len(attempts) <= 2:
            raise RuntimeError(f"factory failure {len(attempts)}")
        return EchoStub(channel).ServerStream(LONG_STREAM)

    registry.register(instance_for(servers[0]))
    with gr.StreamManager(registry, config(recorder, factory=flaky)) as manager:
        wait_until(lambda: "s0" in manager.streams(), 10, "the third attempt to succeed")
    assert [str(e) for _, e in recorder.errors] == ["factory failure 1", "factory failure 2"]
    assert attempts == ["s0"] * 3


def test_callbacks_that_raise_are_logged_and_the_manager_goes_on(registry, servers, caplog):
    def explode(instance: gr.ServiceInstance) -> None:
        raise ValueError(f"callback broke on {instance.id}")

    registry.register(instance_for(servers[0]))
    registry.register(instance_for(servers[1]))
    cfg = gr.StreamManagerConfig(
        service_name="echo",
        factory=lambda channel, instance: EchoStub(channel).ServerStream(LONG_STREAM),
        on_add=explode,
    )
    with caplog.at_level(logging.ERROR, logger="genesis_registry"):
        with gr.StreamManager(registry, cfg) as manager:
            wait_until(lambda: set(manager.streams()) == {"s0", "s1"}, 10)
    assert len([r for r in caplog.records if "on_add" in r.getMessage()]) == 2


def test_stop_leaves_no_thread_stream_or_channel(registry, servers):
    before = manager_threads()
    registry.register(instance_for(servers[0]))
    manager = gr.StreamManager(registry, config(Recorder()))
    manager.start()
    manager.start()  # idempotent
    wait_until(lambda: "s0" in manager.streams(), 10)
    stream = manager.streams()["s0"]
    assert manager_threads() - before
    manager.stop()
    manager.stop()
    assert manager_threads() == before
    assert stream.cancelled()
    assert manager.streams() == {}


def test_config_is_checked():
    with pytest.raises(gr.InvalidConfigError, match="service_name"):
        gr.StreamManagerConfig(service_name="", factory=lambda c, i: None)
    with pytest.raises(gr.InvalidConfigError, match="factory"):
        gr.StreamManagerConfig(service_name="echo", factory=None)  # type: ignore[arg-type]
    with pytest.raises(gr.InvalidConfigError, match="retry"):
        gr.StreamManagerConfig(service_name="echo", factory=lambda c, i: None, retry_initial=5, retry_max=1)


# ------------------------------------------------------------------------ asyncio


def aio_config(recorder: Recorder, factory: Any = None) -> gr.StreamManagerConfig:
    return config(recorder, factory or (lambda channel, instance: AsyncEchoStub(channel).ServerStream(LONG_STREAM)))


poll = await_until


async def test_async_streams_follow_the_instances(areg, servers):
    recorder = Recorder()
    await areg.register(instance_for(servers[0]))
    async with gr.AsyncStreamManager(areg, aio_config(recorder)) as manager:
        await poll(lambda: set(manager.streams()) == {"s0"}, message="a stream for s0")
        await areg.register(instance_for(servers[1]))
        await poll(lambda: set(manager.streams()) == {"s0", "s1"}, message="a stream for s1")
        await poll(lambda: servers[1].served["ServerStream"] == 1, message="s1 to serve it")
        old = manager.streams()["s0"]
        await areg.deregister("s0")
        await poll(lambda: set(manager.streams()) == {"s1"}, message="s0's stream to go")
        await poll(old.done, message="the removed stream to end")
        assert old.cancelled()
    assert (recorder.added, recorder.removed, recorder.errors) == (["s0", "s1"], ["s0"], [])


async def test_async_server_restart_gets_its_stream_back(areg, servers):
    recorder = Recorder()
    await areg.register(instance_for(servers[0]))
    async with gr.AsyncStreamManager(areg, aio_config(recorder)) as manager:
        await poll(lambda: servers[0].served["ServerStream"] == 1, message="the first stream")
        await asyncio.to_thread(servers[0].stop)
        await poll(lambda: recorder.errors, message="on_error")
        assert recorder.errors[0][1].code() is grpc.StatusCode.UNAVAILABLE
        await asyncio.to_thread(servers[0].restart)
        await poll(lambda: servers[0].served["ServerStream"] >= 2, 15, "the stream to be re-opened")
        assert "s0" in manager.streams()


async def test_async_stop_leaves_no_task_or_stream(areg, servers):
    await areg.register(instance_for(servers[0]))
    before = asyncio.all_tasks()
    manager = gr.AsyncStreamManager(areg, aio_config(Recorder()))
    await manager.start()
    await poll(lambda: "s0" in manager.streams(), message="the stream")
    stream = manager.streams()["s0"]
    await manager.stop()
    await manager.stop()
    assert stream.cancelled()
    assert manager.streams() == {}
    ours = [
        t
        for t in asyncio.all_tasks() - before
        if not t.done() and "genesis_registry" in getattr(getattr(t.get_coro(), "cr_code", None), "co_filename", "")
    ]
    assert ours == [], ours
    # grpc's own per-call bookkeeping settles within a loop turn or two.
    await poll(lambda: not [t for t in asyncio.all_tasks() - before if not t.done()], 5, "grpc's call tasks to end")


def test_a_failed_start_can_be_retried(own_etcd, namespace, servers):
    from support.etcd import make_connector

    conn = make_connector(own_etcd.endpoints, request_timeout=1)
    reg = gr.Registry(conn, gr.Config(namespace=namespace))
    try:
        reg.register(instance_for(servers[0]))
        manager = gr.StreamManager(reg, config(Recorder()))
        before = manager_threads()
        own_etcd.kill()
        with pytest.raises(gr.EtcdUnavailableError):
            manager.start()  # the service was never read: it cannot start
        assert manager_threads() == before
        own_etcd.restart()
        wait_until(lambda: _started(manager), 15, "start() to succeed once etcd is back")
        wait_until(lambda: "s0" in manager.streams(), 10)
        manager.stop()
    finally:
        reg.close()
        conn.close()


def _started(manager: gr.StreamManager) -> bool:
    try:
        manager.start()
        return True
    except gr.EtcdUnavailableError:
        return False


def test_closing_channels_never_makes_a_thread_raise(registry, servers, monkeypatch):
    """As for balanced channels: channels closed while they connect, and so while the
    connectivity monitor reads them, make no thread raise (grpcio's own polling thread
    would: grpc/grpc#18995)."""
    raised: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    opened: list[grpc.Channel] = []

    def factory(channel: grpc.Channel, instance: gr.ServiceInstance) -> Any:
        if channel not in opened:
            opened.append(channel)
        return EchoStub(channel).ServerStream(LONG_STREAM)

    registry.register(instance_for(servers[0]))
    with gr.StreamManager(registry, config(Recorder(), factory=factory)) as manager:
        wait_until(lambda: "s0" in manager.streams(), 10)
        for _ in range(40):
            registry.register(instance_for(servers[1]))
            registry.register(instance_for(servers[2]))
            # Removed as soon as their streams open, while their channels connect.
            deadline = time.monotonic() + 10
            while len(manager.streams()) < 3:
                assert time.monotonic() < deadline, "s1 and s2 never got streams"
            registry.deregister("s1")
            registry.deregister("s2")
            wait_until(lambda: set(manager.streams()) == {"s0"}, 10)
    assert len(opened) == 81

    def polling(channel: grpc.Channel) -> bool:
        state = channel._connectivity_state  # type: ignore[attr-defined]
        with state.lock:
            return bool(state.polling)

    assert not any(polling(c) for c in opened)  # no grpcio polling thread was ever started
    wait_until(lambda: MONITOR.thread is None, 5, "the connectivity monitor's thread to end")
    assert [(args.thread, args.exc_value) for args in raised] == []
    for closed in opened:
        with pytest.raises(ValueError, match="closed"):
            closed._channel.check_connectivity_state(False)  # type: ignore[attr-defined]


def multi(id: str, *endpoints: str) -> gr.ServiceInstance:
    return gr.ServiceInstance(id=id, name="echo", endpoints=list(endpoints))


def stopped_endpoint() -> str:
    """An endpoint whose port refuses connections (a server that served, then stopped)."""
    dead = EchoServer("dead").start()
    dead.stop()
    return dead.endpoint


def test_a_stream_opens_on_the_first_reachable_endpoint(registry, servers):
    recorder = Recorder()
    registry.register(multi("multi", stopped_endpoint(), servers[1].endpoint, servers[2].endpoint))
    with gr.StreamManager(registry, config(recorder)) as manager:
        wait_until(lambda: servers[1].served["ServerStream"] == 1, 10, "the stream on the second endpoint")
        wait_until(lambda: "multi" in manager.streams(), 10)
        assert manager.streams()["multi"].running()
    assert servers[2].served["ServerStream"] == 0
    assert [(i, e.code()) for i, e in recorder.errors] == [("multi", grpc.StatusCode.UNAVAILABLE)]


def test_a_failing_stream_moves_to_the_instances_next_endpoint(registry, servers):
    recorder = Recorder()
    registry.register(multi("multi", servers[0].endpoint, servers[1].endpoint))
    with gr.StreamManager(registry, config(recorder, retry_initial=5.0, retry_max=10.0)) as manager:
        wait_until(lambda: servers[0].served["ServerStream"] == 1, 10, "the stream on the first endpoint")
        on_s0 = manager.streams()["multi"]
        assert servers[1].served["ServerStream"] == 0
        servers[0].stop()
        # At once, not after the 5 s backoff: the next endpoint has not failed yet.
        wait_until(lambda: servers[1].served["ServerStream"] == 1, 4, "the stream on the second endpoint")
        wait_until(lambda: manager.streams().get("multi") not in (None, on_s0), 4)
    assert recorder.errors and recorder.errors[0][0] == "multi"


def test_an_endpoint_added_beside_the_one_in_use_keeps_the_stream(registry, servers, etcd_server, namespace):
    recorder = Recorder()
    key = f"{namespace}/echo/growing"
    etcd_server.etcdctl("put", key, input=multi("growing", servers[0].endpoint).to_json())
    with gr.StreamManager(registry, config(recorder)) as manager:
        wait_until(lambda: "growing" in manager.streams(), 10, "a stream to s0")
        stream = manager.streams()["growing"]
        etcd_server.etcdctl("put", key, input=multi("growing", servers[1].endpoint, servers[0].endpoint).to_json())
        # Only the manager's table can tell that it took the new list in (streams() is unchanged).
        new_targets = (servers[1].address, servers[0].address)
        wait_until(lambda: manager._table.slots["growing"].targets == new_targets, 10, "the new endpoint list")
        assert manager.streams()["growing"] is stream and not stream.done()
        # A third endpoint list, without s0, moves the stream.
        etcd_server.etcdctl("put", key, input=multi("growing", servers[2].endpoint).to_json())
        wait_until(lambda: servers[2].served["ServerStream"] == 1, 10, "a stream to s2")
        assert stream.cancelled()
    assert servers[0].served["ServerStream"] == 1 and servers[1].served["ServerStream"] == 0
    assert recorder.errors == []


async def test_async_a_stream_opens_on_the_first_reachable_endpoint(areg, servers):
    recorder = Recorder()
    await areg.register(multi("multi", stopped_endpoint(), servers[1].endpoint))
    async with gr.AsyncStreamManager(areg, aio_config(recorder)) as manager:
        await poll(lambda: servers[1].served["ServerStream"] == 1, message="the stream on the second endpoint")
        await poll(lambda: "multi" in manager.streams(), message="the stream published")
    assert [(i, e.code()) for i, e in recorder.errors] == [("multi", grpc.StatusCode.UNAVAILABLE)]


def test_a_stream_the_server_fails_is_reopened_on_the_same_endpoint(registry, servers):
    # Not a connection problem (the server answered with an error status): the endpoint is
    # fine, so the stream is opened there again, on the same channel, with backoff.
    recorder = Recorder()
    readers: list[threading.Thread] = []

    def drain(call: Any) -> None:
        try:
            list(call)
        except grpc.RpcError:
            pass  # the status reaches the manager through the call's done callback

    def failing_and_read(channel: grpc.Channel, instance: gr.ServiceInstance) -> Any:
        call = EchoStub(channel).ServerStream(b"not-a-count")  # the server's handler raises: UNKNOWN
        reader = threading.Thread(target=drain, args=(call,), daemon=True)
        readers.append(reader)
        reader.start()
        return call

    registry.register(multi("multi", servers[0].endpoint, servers[1].endpoint))
    with gr.StreamManager(registry, config(recorder, factory=failing_and_read)):
        wait_until(lambda: len(recorder.errors) >= 3, 10, "three failed streams")
    for reader in readers:
        reader.join(10)
    assert servers[0].served["ServerStream"] >= 3 and servers[1].served["ServerStream"] == 0
    assert {e.code() for _, e in recorder.errors} == {grpc.StatusCode.UNKNOWN}
