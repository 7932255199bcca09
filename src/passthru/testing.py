"""passthru in a VMM's own test suite: check a scenario and fail the test with the shrunk
trace when a rule breaks.

    from passthru.testing import assert_scenario_holds

    def test_my_teardown_order():
        assert_scenario_holds(my_scenario)          # a @scenario function

The same is available as the pytest fixture ``passthru_check`` (the ``passthru`` pytest plugin
is registered by the package's entry point). A scenario that *expects* a violation passes
when the checker finds one, as in ``passthru check``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .check.runner import Verdict, check
from .check.scenario import Scenario


class ScenarioViolation(AssertionError):
    """A scenario broke a rule (or a known bug was not found); the message has the trace."""

    def __init__(self, message: str, verdict: Verdict) -> None:
        super().__init__(message)
        self.verdict = verdict


def _scenario_of(obj: Any) -> Scenario:
    sc = obj if isinstance(obj, Scenario) else getattr(obj, "__passthru_scenario__", None)
    if not isinstance(sc, Scenario):
        raise TypeError(f"{obj!r} is not a @scenario function")
    return sc


def assert_scenario_holds(obj: Callable[..., Any] | Scenario, profiles: list[str] | None = None,
                          **kw: Any) -> list[Verdict]:
    """Check every (profile, design) variant; raise ScenarioViolation with the shrunk,
    replayable trace on the first verdict the scenario does not expect."""
    sc = _scenario_of(obj)
    verdicts = []
    for prof, design in sc.variants():
        for p in profiles or [prof]:
            v = check(sc, p, design, **kw)
            verdicts.append(v)
            if v.ok:
                continue
            where = f"{sc.name} @ {p}" + (f" [{design}]" if design else "")
            if v.counterexample is None:
                raise ScenarioViolation(f"{where}: expected a violation, none found in "
                                        f"{v.schedules} schedules", v)
            cx = v.counterexample
            lines = [f"{where}: {len(v.violations)} violation(s) after {v.schedules} "
                     f"schedule(s); shrunk to {cx.preemptions} preemption(s)"]
            lines += ["  " + x.text() for x in v.violations]
            lines += ["", "trace:", cx.log.text(), "replay with `passthru replay` on:",
                      json.dumps(v.schedule_json())]
            raise ScenarioViolation("\n".join(lines), v)
    return verdicts
