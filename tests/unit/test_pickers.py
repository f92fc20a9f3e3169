"""The pickers, without etcd or servers: each policy's choice over plain endpoints."""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Any

import genesis_registry as gr
import grpc
import pytest
from genesis_registry.balancer import pickers
from genesis_registry.balancer.pickers import Picker, PickFirstPicker, RoundRobinPicker, picker_for, smooth_schedule

READY = grpc.ChannelConnectivity.READY
IDLE = grpc.ChannelConnectivity.IDLE
CONNECTING = grpc.ChannelConnectivity.CONNECTING
FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE

EMPTY: Picker[Any] = Picker([], None, False)


@dataclass(eq=False)
class Ep:
    name: str
    state: grpc.ChannelConnectivity = READY
    weight: int = 1
    removed: bool = False


def spread(picker: Picker[Ep], calls: int) -> collections.Counter[str]:
    counter = itertools.count()
    picks = (picker.pick(counter) for _ in range(calls))
    return collections.Counter(ep.name for ep in picks if ep is not None)


def test_policies_are_the_registered_pickers_by_name() -> None:
    assert gr.POLICIES == ("round_robin", "pick_first")
    assert picker_for("round_robin") is RoundRobinPicker
    assert picker_for("pick_first") is PickFirstPicker
    with pytest.raises(gr.InvalidConfigError, match="unknown load-balancing policy 'fastest'"):
        picker_for("fastest")


def test_a_new_policy_is_one_registered_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickers, "PICKERS", dict(pickers.PICKERS))

    @pickers.policy("last")
    class LastPicker(Picker[Ep]):
        @classmethod
        def build(cls, endpoints: Any, previous: Picker[Ep]) -> Picker[Ep]:
            return cls(list(endpoints[-1:]), None, True)

        def pick(self, counter: Any) -> Ep | None:
            return self.schedule[0]

    assert picker_for("last") is LastPicker and LastPicker.name == "last"
    assert spread(LastPicker.build([Ep("a"), Ep("b")], EMPTY), 3) == {"b": 3}


def test_round_robin_takes_ready_endpoints_in_turn() -> None:
    a, b, c = Ep("a"), Ep("b"), Ep("c", state=CONNECTING)
    picker = RoundRobinPicker.build([a, b, c], EMPTY)
    assert picker.ready and picker.first is a
    assert spread(picker, 100) == {"a": 50, "b": 50}


def test_round_robin_follows_weights_spread_out_not_in_runs() -> None:
    a, b, c = Ep("a", weight=5), Ep("b", weight=3), Ep("c", weight=2)
    picker = RoundRobinPicker.build([a, b, c], EMPTY)
    assert len(picker.schedule) == 10
    assert spread(picker, 1000) == {"a": 500, "b": 300, "c": 200}
    names = [ep.name for ep in picker.schedule]
    assert "aaa" not in "".join(names + names)  # smooth: a never three times in a row


def test_weighted_schedule_is_reduced_and_bounded() -> None:
    assert [e.name for e in smooth_schedule([Ep("a", weight=200), Ep("b", weight=100)])] == ["a", "b", "a"]
    big = smooth_schedule([Ep("a", weight=100_000), Ep("b", weight=1)])
    assert len(big) <= pickers.MAX_SCHEDULE + 1 and {e.name for e in big} == {"a", "b"}
    same = [Ep("a", weight=7), Ep("b", weight=7)]
    assert smooth_schedule(same) == same


def test_round_robin_falls_back_to_connecting_then_to_any_endpoint() -> None:
    connecting = RoundRobinPicker.build([Ep("a", state=FAILING), Ep("b", state=CONNECTING)], EMPTY)
    assert [ep.name for ep in connecting.schedule] == ["b"] and not connecting.ready
    assert connecting.takes(wait_for_ready=False) and not connecting.takes(wait_for_ready=True)
    failing = RoundRobinPicker.build([Ep("a", state=FAILING), Ep("b", state=FAILING)], EMPTY)
    assert [ep.name for ep in failing.schedule] == ["a", "b"] and not failing.ready


def test_no_endpoint_fails_a_call_at_once_unless_it_waits_for_ready() -> None:
    picker = RoundRobinPicker.build([], EMPTY)
    assert not picker.takes(False) and not picker.takes(True)
    assert picker.hopeless(wait_for_ready=False) and not picker.hopeless(wait_for_ready=True)


def test_pick_first_takes_the_first_ready_in_rank_order() -> None:
    a, b, c = Ep("a", state=CONNECTING), Ep("b"), Ep("c")
    picker = PickFirstPicker.build([a, b, c], EMPTY)
    assert picker.first is b and spread(picker, 10) == {"b": 10}


def test_pick_first_sticks_while_its_endpoint_is_usable() -> None:
    a, b = Ep("a", state=CONNECTING), Ep("b")
    first = PickFirstPicker.build([a, b], EMPTY)
    a.state = READY  # a ranks first, but b was chosen and is still fine
    assert PickFirstPicker.build([a, b], first).first is b
    b.state = CONNECTING  # reconnecting after a drop: kept, calls wait for it
    kept = PickFirstPicker.build([a, b], first)
    assert kept.first is b and not kept.ready and not kept.takes(wait_for_ready=True)
    assert kept.takes(wait_for_ready=False)


def test_pick_first_moves_only_when_its_endpoint_fails_or_leaves() -> None:
    a, b, c = Ep("a"), Ep("b"), Ep("c")
    first = PickFirstPicker.build([a, b, c], EMPTY)
    assert first.first is a
    a.state = FAILING
    moved = PickFirstPicker.build([a, b, c], first)
    assert moved.first is b
    b.removed = True
    assert PickFirstPicker.build([a, c], moved).first is c


def test_pick_first_waits_while_endpoints_connect_and_fails_when_all_failed() -> None:
    a, b = Ep("a", state=CONNECTING), Ep("b", state=FAILING)
    waiting = PickFirstPicker.build([a, b], EMPTY)
    assert waiting.first is None and waiting.connecting
    assert not waiting.takes(False) and not waiting.hopeless(False)
    a.state = FAILING
    failed = PickFirstPicker.build([a, b], waiting)
    assert not failed.connecting and failed.hopeless(False) and not failed.hopeless(True)
