"""passthru in a user's test suite: the helper and the pytest fixture."""

from __future__ import annotations

import pytest

from passthru.check.scenario import Sandbox, scenario
from passthru.testing import ScenarioViolation, assert_scenario_holds


@scenario(expect="safe", teardown=False, name="user_racy_counter")
def racy(s: Sandbox) -> None:
    s.state["n"] = 0

    def inc() -> None:
        s.point("n", "r")
        v = s.state["n"]
        s.point("n", "w")
        s.state["n"] = v + 1

    s.spawn("a", inc)
    s.spawn("b", inc)
    s.final("lost", lambda: None if s.state["n"] == 2 else "lost an increment")


@scenario(expect="violation", teardown=False, name="user_expects_a_bug")
def no_bug(s: Sandbox) -> None:
    s.spawn("a", lambda: None)


def test_failing_scenario_raises_with_the_shrunk_trace():
    with pytest.raises(ScenarioViolation) as e:
        assert_scenario_holds(racy)
    msg = str(e.value)
    assert "lost an increment" in msg and "shrunk to 1 preemption" in msg
    assert "sched.run" in msg and '"choices"' in msg  # the trace and the replayable schedule


def test_expected_violation_not_found_fails():
    with pytest.raises(ScenarioViolation, match="expected a violation, none found"):
        assert_scenario_holds(no_bug)


def test_builtin_scenario_holds_through_the_fixture(passthru_check):
    from passthru.scenarios.kvm import gmem_punch_hole_vs_vcpu

    verdicts = passthru_check(gmem_punch_hole_vs_vcpu)
    assert verdicts and all(v.ok and v.complete for v in verdicts)


def test_not_a_scenario_is_a_type_error():
    with pytest.raises(TypeError):
        assert_scenario_holds(lambda s: None)
