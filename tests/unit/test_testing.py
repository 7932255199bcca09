"""passthru in a user's test suite: the helper and the pytest fixture."""

from __future__ import annotations

import shlex

import pytest
from click.testing import CliRunner

from passthru.check.scenario import Sandbox, scenario
from passthru.cli import main
from passthru.testing import ScenarioViolation, assert_scenario_holds

pytest_plugins = ["pytester"]


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


def test_failing_scenario_raises_with_the_shrunk_trace(tmp_path):
    with pytest.raises(ScenarioViolation) as e:
        assert_scenario_holds(racy, save_dir=tmp_path)
    msg = str(e.value)
    assert "lost an increment" in msg and "shrunk to 1 preemption" in msg
    assert "sched.run" in msg  # the trace
    # ... without the set-up noise: nothing before the first spawned task's first step
    trace = msg.split("trace (", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert trace[0].split()[1] != "main" and "sched.spawn" not in msg
    # (the boot's phys.reserve of the CMA carve-out and the two spawns)
    assert "3 set-up events not shown" in msg


def test_the_printed_replay_command_works(tmp_path):
    with pytest.raises(ScenarioViolation) as e:
        assert_scenario_holds(racy, save_dir=tmp_path)
    path, cmd = e.value.schedule_file, e.value.replay_command
    assert path is not None and path.parent == tmp_path and path.is_file()
    assert f"replay with: {cmd}" in str(e.value) and str(path) in cmd
    argv = shlex.split(cmd)
    assert argv[:2] == ["passthru", "replay"]
    r = CliRunner().invoke(main, argv[1:])
    assert r.exit_code == 1, r.output  # the violation again, byte for byte
    assert "lost an increment" in r.output
    assert e.value.verdict.counterexample.log.text() in r.output


def test_the_fixture_saves_under_the_tests_tmp_path(passthru_check, tmp_path):
    with pytest.raises(ScenarioViolation) as e:
        passthru_check(racy)
    assert e.value.schedule_file is not None
    assert e.value.schedule_file.is_relative_to(tmp_path)


def test_a_failing_test_shows_no_passthru_frames(pytester):
    pytester.makepyfile(
        test_user="""
        from passthru.check.scenario import scenario

        @scenario(expect="safe", teardown=False, name="user_lost_update")
        def lost(s):
            s.state["n"] = 0
            def inc():
                s.point("n", "r")
                v = s.state["n"]
                s.point("n", "w")
                s.state["n"] = v + 1
            s.spawn("a", inc)
            s.spawn("b", inc)
            s.final("lost", lambda: None if s.state["n"] == 2 else "lost an increment")

        def test_it(passthru_check):
            passthru_check(lost)
        """
    )
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "lost an increment" in out and "replay with: passthru replay" in out
    # the traceback stops at the test's own call: no frame inside passthru's sources
    assert "passthru/testing.py" not in out and "passthru/check/" not in out


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
