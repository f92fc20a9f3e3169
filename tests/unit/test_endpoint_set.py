"""The endpoint set of a balanced channel, without etcd or servers: channels are plain
objects, connectivity is set by hand."""

from __future__ import annotations

import collections
import itertools
import logging
from typing import Any

import genesis_registry as gr
import grpc
import pytest
from genesis_registry.balancer.endpoints import Endpoint, EndpointSet, instance_weight

READY = grpc.ChannelConnectivity.READY
CONNECTING = grpc.ChannelConnectivity.CONNECTING
FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE


class Channels:
    """Stands for the channel twin: records what the set opens, watches and closes."""

    def __init__(self, policy: str = "round_robin", refuse: frozenset[str] = frozenset()) -> None:
        self.opened: list[str] = []
        self.watched: list[str] = []
        self.closed: list[str] = []
        self.refuse = refuse
        self.set = EndpointSet("svc", policy, self.open, self.watch, self.close, logging.getLogger("test.endpoints"))

    def open(self, target: str) -> Any:
        if target in self.refuse:
            raise RuntimeError(f"cannot open {target}")
        self.opened.append(target)
        return f"channel to {target}"

    def watch(self, endpoint: Endpoint) -> None:
        self.watched.append(endpoint.target)

    def close(self, endpoint: Endpoint) -> None:
        self.closed.append(endpoint.target)

    def ready(self, *targets: str) -> None:
        for endpoint in self.set.endpoints():
            if not targets or endpoint.target in targets:
                self.set.set_states([(endpoint, READY)])

    def by_target(self) -> dict[str, Endpoint]:
        return {ep.target: ep for ep in self.set.endpoints()}


def inst(id: str, *ports: int, weight: str | None = None, host: str = "10.0.0.1") -> gr.ServiceInstance:
    metadata = {"weight": weight} if weight is not None else {}
    return gr.ServiceInstance(id=id, name="svc", endpoints=[f"grpc://{host}:{p}" for p in ports], metadata=metadata)


def spread(endpoints: EndpointSet, calls: int) -> collections.Counter[str]:
    counter = itertools.count()
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(calls):
        endpoint = endpoints.acquire(counter)
        assert endpoint is not None
        seen[endpoint.target] += 1
        endpoints.finished(endpoint)
    return seen


def test_every_endpoint_of_every_instance_is_balanced_over() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1, 2), inst("b", 3)])
    assert channels.set.targets() == ["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"]
    assert channels.opened == channels.watched == ["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"]
    channels.ready()
    assert spread(channels.set, 300) == {"10.0.0.1:1": 100, "10.0.0.1:2": 100, "10.0.0.1:3": 100}


def test_ranks_order_by_instance_id_then_endpoint_position() -> None:
    channels = Channels()
    channels.set.update([inst("b", 1), inst("a", 3, 2)])
    ranks = {t: ep.rank for t, ep in channels.by_target().items()}
    assert ranks == {"10.0.0.1:1": ("b", 0), "10.0.0.1:3": ("a", 0), "10.0.0.1:2": ("a", 1)}
    channels.ready()
    assert [ep.target for ep in channels.set.picker.schedule] == ["10.0.0.1:3", "10.0.0.1:2", "10.0.0.1:1"]


def test_pick_first_chooses_by_rank_among_endpoints_ready_together() -> None:
    channels = Channels(policy="pick_first")
    channels.set.update([inst("b", 1), inst("a", 3, 2)])
    for endpoint in channels.set.endpoints():
        endpoint.state = READY  # all READY before the set publishes again
    channels.set.update([inst("b", 1), inst("a", 3, 2)])
    assert channels.set.picker.first is not None and channels.set.picker.first.target == "10.0.0.1:3"


def test_an_endpoint_two_instances_share_is_balanced_once() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1), inst("b", 1, 2)])
    assert channels.opened == ["10.0.0.1:1", "10.0.0.1:2"]
    assert channels.by_target()["10.0.0.1:1"].rank == ("a", 0)


def test_weights_follow_instances_and_missing_ones_count_as_the_mean() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1, 2, weight="6"), inst("b", 3, weight="2"), inst("c", 4), inst("d", 5, weight="x")])
    weights = {t: ep.weight for t, ep in channels.by_target().items()}
    # The mean of the declared weights (6 and 2, each instance once whatever its endpoints).
    assert weights == {"10.0.0.1:1": 6, "10.0.0.1:2": 6, "10.0.0.1:3": 2, "10.0.0.1:4": 4, "10.0.0.1:5": 4}
    channels.ready()
    assert spread(channels.set, 220) == {
        "10.0.0.1:1": 60,
        "10.0.0.1:2": 60,
        "10.0.0.1:3": 20,
        "10.0.0.1:4": 40,
        "10.0.0.1:5": 40,
    }


def test_without_declared_weights_every_endpoint_weighs_one() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1), inst("b", 2, weight="0")])
    assert {ep.weight for ep in channels.set.endpoints()} == {1}


@pytest.mark.parametrize(("raw", "weight"), [("3", 3), ("0", None), ("-2", None), ("1.5", None), ("", None)])
def test_instance_weight_is_a_positive_integer_or_none(raw: str, weight: int | None) -> None:
    assert instance_weight(gr.ServiceInstance(id="a", name="s", metadata={"weight": raw})) == weight


def test_an_instance_without_a_usable_endpoint_is_skipped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    channels = Channels()
    bad = gr.ServiceInstance(id="bad", name="svc", endpoints=["http://h:1", "10.1:80", "u@h:80"])
    with caplog.at_level(logging.WARNING, logger="test.endpoints"):
        channels.set.update([bad, inst("a", 1)])
        channels.set.update([bad, inst("a", 1)])
    assert channels.set.targets() == ["10.0.0.1:1"]
    assert [r.instance_id for r in caplog.records] == ["bad"]  # type: ignore[attr-defined]


def test_an_endpoint_whose_channel_cannot_open_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    channels = Channels(refuse=frozenset({"10.0.0.1:1"}))
    with caplog.at_level(logging.ERROR, logger="test.endpoints"):
        channels.set.update([inst("a", 1, 2)])
    assert channels.set.targets() == ["10.0.0.1:2"]
    assert "cannot open a gRPC channel to 10.0.0.1:1" in caplog.text


def test_a_removed_endpoint_takes_no_call_and_closes_with_its_last_one() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1), inst("b", 2)])
    channels.ready()
    counter = itertools.count()
    busy = channels.set.acquire(counter)
    assert busy is not None and busy.target == "10.0.0.1:1"
    channels.set.update([inst("b", 2)])
    assert channels.closed == []  # a call is in flight
    assert {channels.set.acquire(counter).target for _ in range(4)} == {"10.0.0.1:2"}  # type: ignore[union-attr]
    channels.set.finished(busy)
    assert channels.closed == ["10.0.0.1:1"]
    channels.set.update([])
    assert channels.closed == ["10.0.0.1:1"]  # b has the 4 calls above in flight


def test_an_idle_removed_endpoint_closes_at_once_and_close_all_takes_the_rest() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1), inst("b", 2)])
    channels.set.update([inst("b", 2)])
    assert channels.closed == ["10.0.0.1:1"]
    left = channels.set.close_all()
    assert [ep.target for ep in left] == ["10.0.0.1:2"] and all(ep.removed for ep in left)
    assert channels.set.acquire(itertools.count()) is None and channels.set.picker.hopeless(False)


def test_ready_endpoints_are_preferred_and_failing_ones_skipped() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1), inst("b", 2), inst("c", 3)])
    channels.ready("10.0.0.1:2")
    channels.set.set_states([(channels.by_target()["10.0.0.1:3"], FAILING)])
    assert spread(channels.set, 10) == {"10.0.0.1:2": 10}
    assert channels.set.targets(READY) == ["10.0.0.1:2"]


def test_calls_are_refused_with_the_status_grpc_would_give() -> None:
    channels = Channels()
    assert channels.set.refusal(False, None) == (
        grpc.StatusCode.UNAVAILABLE,
        "no instance of service 'svc' is available",
    )
    assert channels.set.refusal(True, None) is None  # wait_for_ready: it waits
    assert channels.set.refusal(True, 0.0) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "no instance of service 'svc' was ready before the deadline",
    )
    waiting = Channels(policy="pick_first")
    waiting.set.update([inst("a", 1)])  # none READY yet, one connecting: a call waits for it
    assert not waiting.set.picker.takes(False) and waiting.set.refusal(False, None) is None


def test_a_ready_only_call_is_not_given_a_connecting_endpoint() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1)])
    channels.set.set_states([(channels.set.endpoints()[0], CONNECTING)])
    assert channels.set.acquire(itertools.count(), need_ready=True) is None
    assert channels.set.acquire(itertools.count(), need_ready=False) is not None


def test_start_call_uncounts_a_call_that_could_not_start() -> None:
    channels = Channels()
    channels.set.update([inst("a", 1)])
    endpoint = channels.set.acquire(itertools.count())
    assert endpoint is not None

    def refuse(*args: object) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        channels.set.start_call(endpoint, refuse)
    channels.set.update([])
    assert channels.closed == ["10.0.0.1:1"]  # no call was left counted on it


def test_every_change_wakes_the_async_twin() -> None:
    channels = Channels()
    woken: list[int] = []
    channels.set.on_change = lambda: woken.append(1)
    channels.set.update([inst("a", 1)])
    channels.ready()
    assert len(woken) == 2
