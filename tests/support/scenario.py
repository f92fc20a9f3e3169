"""What a reliability scenario injected and what it checked, for the run's summary.

The fault, partition, security and hostile-input tests each take the ``scenario`` fixture,
say what they inject, and make their final comparisons through :meth:`Scenario.check`, which
asserts and records ``expected`` against ``seen``. At the end of the run pytest prints one
block per scenario; with ``GENESIS_SCENARIO_REPORT=path`` the records are also written there
as JSON lines (docs/reliability.md is written from such a run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Scenario:
    """One test's record: its injections and its checks, in order.

    Example::

        def test_leader_killed(scenario, etcd_cluster):
            scenario.inject("SIGKILL the leader")
            ...
            scenario.check("registrations present", expected=sorted(ids), seen=sorted(present))
    """

    test: str
    injected: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, str]] = field(default_factory=list)
    outcome: str = "not run"

    def inject(self, what: str) -> None:
        """Record a fault or input the scenario applies (in the order applied)."""
        self.injected.append(what)

    def check(self, what: str, expected: Any, seen: Any) -> None:
        """Assert ``seen == expected`` and record both, shortened, under ``what``."""
        self.checks.append((what, _short(expected), _short(seen)))
        assert seen == expected, f"{what}: expected {expected!r}, seen {seen!r}"

    def note(self, what: str, value: Any) -> None:
        """Record a measured figure that is not a pass/fail check (a duration, a count)."""
        self.checks.append((what, "", _short(value)))

    def lines(self) -> list[str]:
        out = [f"{self.test}: {self.outcome}"]
        out += [f"    inject: {what}" for what in self.injected]
        for what, expected, seen in self.checks:
            out.append(f"    {what}: {seen}" if not expected else f"    {what}: expected {expected}, seen {seen}")
        return out

    def as_json(self) -> str:
        return json.dumps(
            {
                "test": self.test,
                "outcome": self.outcome,
                "injected": self.injected,
                "checks": [{"what": w, "expected": e, "seen": s} for w, e, s in self.checks],
            }
        )


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, (list, tuple, set, frozenset, dict)) and len(value) > 8:
        text = f"{type(value).__name__} of {len(value)}"
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value):
            text += f" [{value[0]!r} .. {value[-1]!r}]"
        return text
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


SCENARIOS: list[Scenario] = []


def write_report() -> None:
    path = os.environ.get("GENESIS_SCENARIO_REPORT")
    if path and SCENARIOS:
        with open(path, "w") as out:
            for scenario in SCENARIOS:
                out.write(scenario.as_json() + "\n")
