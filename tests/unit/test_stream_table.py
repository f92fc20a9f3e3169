"""The StreamManager's table, without etcd, servers or channels: which instance has a
stream on which endpoint, and when and where a stream opens again."""

from __future__ import annotations

import logging
import time
from typing import Any

import genesis_registry as gr
import grpc
import pytest
from genesis_registry._grpcio import FailedCall
from genesis_registry.stream import StreamSlot, StreamTable

READY = grpc.ChannelConnectivity.READY
IDLE = grpc.ChannelConnectivity.IDLE
CONNECTING = grpc.ChannelConnectivity.CONNECTING
FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
UNREACHABLE = FailedCall(grpc.StatusCode.UNAVAILABLE, "connection refused")
SERVER_ERROR = FailedCall(grpc.StatusCode.INTERNAL, "the server failed")


class Stream:
    """Stands for a gRPC call: records its cancellation and its done callback."""

    def __init__(self, channel: str, instance: gr.ServiceInstance) -> None:
        self.channel = channel
        self.instance = instance
        self.cancelled = False
        self.on_done: Any = None

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def add_done_callback(self, callback: Any) -> None:
        self.on_done = callback


class Manager:
    """Stands for a manager twin: opens "channels" (strings) and records everything."""

    def __init__(self, retry_initial: float = 0.5, retry_max: float = 30.0) -> None:
        self.events: list[tuple[str, Any]] = []
        self.channels = 0
        self.retired: list[str] = []
        config = gr.StreamManagerConfig(
            service_name="svc",
            factory=Stream,
            on_add=lambda i: self.events.append(("add", i.id)),
            on_remove=lambda i: self.events.append(("remove", i.id)),
            on_error=lambda i, e: self.events.append(("error", i.id)),
            retry_initial=retry_initial,
            retry_max=retry_max,
        )
        self.table = StreamTable(config, logging.getLogger("test.streams"), self.retired.append)

    def make_channel(self, target: str) -> str:
        self.channels += 1
        return f"{target}#{self.channels}"

    def open(self, slot: StreamSlot) -> None:
        self.table.open_stream(slot, self.make_channel, lambda *ended: self.events.append(("ended", ended)))

    def close(self, slot: StreamSlot) -> None:
        _stream, channel = self.table.detach(slot)
        if channel is not None:
            self.retired.append(channel)

    def update(self, *instances: gr.ServiceInstance) -> None:
        self.table.apply_instances(instances, self.open, self.close)

    def stream(self, instance_id: str) -> Stream:
        stream = self.table.snapshot[instance_id]
        assert isinstance(stream, Stream)
        return stream

    def end(self, instance_id: str, error: BaseException | None) -> StreamSlot:
        """Ends the current stream of an instance as gRPC would report it."""
        slot = self.table.slots[instance_id]
        self.table.apply_ended(instance_id, slot.generation, error)
        return slot

    def reopen_due(self) -> list[str]:
        due, _wait = self.table.due()
        for slot in due:
            self.open(slot)
        return [slot.instance.id for slot in due]


def inst(id: str, *ports: int) -> gr.ServiceInstance:
    return gr.ServiceInstance(id=id, name="svc", endpoints=[f"grpc://10.0.0.1:{p}" for p in ports])


def test_one_stream_per_instance_on_its_first_usable_endpoint() -> None:
    manager = Manager()
    manager.update(inst("a", 1, 2), inst("b", 3), gr.ServiceInstance(id="c", name="svc", endpoints=["u@h:80"]))
    assert sorted(manager.table.snapshot) == ["a", "b"]
    assert manager.stream("a").channel == "10.0.0.1:1#1" and manager.stream("a").instance.id == "a"
    assert manager.events == [("add", "a"), ("add", "b")]
    manager.update(inst("b", 3))
    assert sorted(manager.table.snapshot) == ["b"]
    assert manager.events[-1] == ("remove", "a") and manager.retired == ["10.0.0.1:1#1"]


def test_an_unreachable_endpoint_moves_the_stream_to_the_next_at_once() -> None:
    manager = Manager()
    manager.update(inst("a", 1, 2, 3))
    slot = manager.end("a", UNREACHABLE)
    assert manager.retired == ["10.0.0.1:1#1"]  # a new channel: the failed one may never report again
    assert slot.target == "10.0.0.1:2" and slot.round_failures == 1
    assert slot.reopen_at is not None and slot.reopen_at <= time.monotonic()
    assert manager.reopen_due() == ["a"] and manager.stream("a").channel == "10.0.0.1:2#2"
    assert manager.events[-1] == ("error", "a")


def test_once_every_endpoint_failed_in_a_row_the_backoff_applies() -> None:
    manager = Manager(retry_initial=0.5)
    manager.update(inst("a", 1, 2))
    manager.end("a", UNREACHABLE)
    manager.reopen_due()
    before = time.monotonic()
    slot = manager.end("a", UNREACHABLE)
    after = time.monotonic()
    assert slot.target == "10.0.0.1:1" and slot.round_failures == 0
    # The delay, 0.5 s ± 20 %, lies between reopen_at - after and reopen_at - before.
    assert slot.reopen_at is not None and 0.4 <= slot.reopen_at - before and slot.reopen_at - after <= 0.6
    assert manager.reopen_due() == []  # not yet due
    assert slot.failures == 1


def test_a_server_error_reopens_on_the_same_channel_with_growing_backoff() -> None:
    manager = Manager(retry_initial=0.5)
    manager.update(inst("a", 1, 2))
    slot = manager.end("a", SERVER_ERROR)
    assert manager.retired == [] and slot.channel == "10.0.0.1:1#1" and slot.target == "10.0.0.1:1"
    assert slot.failures == 1 and slot.reopen_at is not None
    slot.reopen_at = time.monotonic()  # make it due now
    manager.reopen_due()
    before = time.monotonic()
    slot = manager.end("a", SERVER_ERROR)
    after = time.monotonic()
    # Twice the first delay, ± 20 %.
    assert slot.reopen_at is not None and 0.8 <= slot.reopen_at - before and slot.reopen_at - after <= 1.2


def test_a_clean_end_reopens_without_growing_the_backoff() -> None:
    manager = Manager(retry_initial=0.5)
    manager.update(inst("a", 1))
    slot = manager.end("a", None)
    assert slot.failures == 0 and slot.stream is None and "a" not in manager.table.snapshot
    assert ("error", "a") not in manager.events


def test_a_late_end_of_a_replaced_stream_is_ignored() -> None:
    manager = Manager()
    manager.update(inst("a", 1, 2))
    old = manager.table.slots["a"].generation
    manager.end("a", UNREACHABLE)
    manager.reopen_due()
    assert manager.table.ended("a", old, UNREACHABLE) is None
    assert manager.table.slots["a"].target == "10.0.0.1:2"


def test_generations_are_unique_across_slots_of_the_same_instance() -> None:
    manager = Manager()
    manager.update(inst("a", 1))
    first = manager.table.slots["a"].generation
    manager.update()
    manager.update(inst("a", 1))
    assert manager.table.slots["a"].generation != first
    assert manager.table.ended("a", first, None) is None


def test_a_stream_whose_endpoint_left_the_instance_moves_to_its_first_endpoint() -> None:
    manager = Manager()
    manager.update(inst("a", 1, 2))
    old_stream, generation = manager.stream("a"), manager.table.slots["a"].generation
    manager.update(inst("a", 3, 2))  # endpoint 1 left
    assert old_stream.cancelled and manager.retired == ["10.0.0.1:1#1"]
    slot = manager.table.slots["a"]
    assert slot.target == "10.0.0.1:3" and slot.generation > generation
    assert manager.stream("a").channel == "10.0.0.1:3#2"


def test_a_stream_stays_where_it_is_when_its_endpoint_only_moves_in_the_list() -> None:
    manager = Manager()
    manager.update(inst("a", 1, 2))
    manager.end("a", UNREACHABLE)
    manager.reopen_due()
    stream = manager.stream("a")
    manager.update(inst("a", 2, 1))
    assert manager.stream("a") is stream and manager.table.slots["a"].index == 0


def test_a_dropped_connection_ends_its_stream_as_unreachable() -> None:
    manager = Manager()
    manager.update(inst("a", 1, 2))
    channel, stream = manager.table.slots["a"].channel, manager.stream("a")
    manager.table.connectivity("a", channel, CONNECTING)
    manager.table.connectivity("a", channel, READY)
    assert not stream.cancelled
    manager.table.connectivity("a", "another channel", IDLE)  # not the slot's channel: ignored
    assert not stream.cancelled
    manager.table.connectivity("a", channel, IDLE)
    assert stream.cancelled and manager.table.slots["a"].target == "10.0.0.1:2"
    assert manager.events[-1] == ("error", "a")


def test_a_channel_that_cannot_connect_ends_its_stream() -> None:
    manager = Manager()
    manager.update(inst("a", 1, 2))
    channel, stream = manager.table.slots["a"].channel, manager.stream("a")
    manager.table.connectivity("a", channel, FAILING)
    assert stream.cancelled and manager.table.slots["a"].target == "10.0.0.1:2"


def test_a_factory_that_raises_is_retried_with_backoff() -> None:
    manager = Manager(retry_initial=0.5)

    def broken(channel: Any, instance: gr.ServiceInstance) -> Any:
        raise RuntimeError("no stub")

    manager.table.config = gr.StreamManagerConfig(
        service_name="svc", factory=broken, on_error=lambda i, e: manager.events.append(("error", i.id))
    )
    manager.update(inst("a", 1))
    slot = manager.table.slots["a"]
    assert slot.stream is None and slot.failures == 1 and ("error", "a") in manager.events
    assert slot.reopen_at is not None and slot.reopen_at > time.monotonic()


def test_a_callback_that_raises_is_logged_and_the_table_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    manager = Manager()

    def boom(instance: gr.ServiceInstance) -> None:
        raise RuntimeError("bad callback")

    manager.table.config = gr.StreamManagerConfig(service_name="svc", factory=Stream, on_add=boom)
    with caplog.at_level(logging.ERROR, logger="test.streams"):
        manager.update(inst("a", 1))
    assert "a" in manager.table.snapshot and "on_add callback raised" in caplog.text


def test_open_due_opens_what_is_due_and_says_how_long_until_the_next() -> None:
    manager = Manager(retry_initial=0.5)
    manager.update(inst("a", 1), inst("b", 2))
    assert manager.table.open_due(manager.open) is None  # nothing waits
    manager.end("a", UNREACHABLE)  # its only endpoint failed: backoff
    manager.end("b", SERVER_ERROR)
    manager.table.slots["b"].reopen_at = time.monotonic()  # due now
    before = time.monotonic()
    wait = manager.table.open_due(manager.open)
    after = time.monotonic()
    assert manager.table.slots["b"].reopen_at is None and "b" in manager.table.snapshot
    reopen_a = manager.table.slots["a"].reopen_at  # a's backoff (jittered) still runs
    assert reopen_a is not None and wait is not None
    assert 0 < reopen_a - after <= wait <= reopen_a - before


def test_apply_dispatches_the_manager_queue_events() -> None:
    manager = Manager()
    manager.table.apply("instances", (inst("a", 1),), manager.open, manager.close)
    assert sorted(manager.table.snapshot) == ["a"]
    slot = manager.table.slots["a"]
    manager.table.apply("ended", ("a", slot.generation, SERVER_ERROR), manager.open, manager.close)
    assert slot.failures == 1 and slot.reopen_at is not None
    manager.table.apply("instances", (), manager.open, manager.close)
    assert manager.table.snapshot == {} and ("remove", "a") in manager.events
