"""The scenario record the reliability tests report through."""

from __future__ import annotations

import pytest
from support.scenario import Scenario


def test_a_check_asserts_and_records_both_sides():
    record = Scenario("t")
    record.inject("SIGKILL the leader")
    record.check("instances", expected=["a", "b"], seen=["a", "b"])
    with pytest.raises(AssertionError, match=r"events: expected 3, seen 2"):
        record.check("events", expected=3, seen=2)
    record.note("recovery", "1.2 s")
    assert record.lines()[1:] == [
        "    inject: SIGKILL the leader",
        "    instances: expected ['a', 'b'], seen ['a', 'b']",
        "    events: expected 3, seen 2",
        "    recovery: '1.2 s'",
    ]


def test_long_collections_are_summarised():
    record = Scenario("t")
    record.check("ids", expected=list(range(200)), seen=list(range(200)))
    assert record.lines()[1] == "    ids: expected list of 200 [0 .. 199], seen list of 200 [0 .. 199]"


def test_the_fixture_records_the_outcome(scenario):
    scenario.check("one", expected=1, seen=1)
    assert scenario.outcome == "not run"  # set after the call, from its report
