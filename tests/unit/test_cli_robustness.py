"""The checker's CLI never hangs and never traces back (issue 9, sections 2 and 3): every run
is bounded, hostile schedule and scenario files are one-line errors (exit 2), divergence
from a saved schedule is reported, and the output stays readable at 80 columns."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from passthru import cli
from passthru.check.discover import builtin, from_paths
from passthru.check.explore import ReplayChooser
from passthru.check.parallel import check_many
from passthru.check.runner import check, run_once
from passthru.check.scenario import first_sentence
from passthru.cli import main
from passthru.sim import kinds
from passthru.sim.scheduler import STEP_BOUND

SCENARIOS = {sc.name: sc for sc in builtin()}

SPIN = """
from passthru.check.scenario import scenario

@scenario(teardown=False)
def spin_wait(s):
    '''A correct spin-wait: the waiter loops through s.point until the setter's flag.'''
    flag = s.shared(False, "flag")

    def waiter():
        while not flag.get():
            s.point("flag", "r")

    s.spawn("waiter", waiter)
    s.spawn("setter", flag.set, True)
"""

LOOPING_SETUP = """
from passthru.check.scenario import scenario

@scenario(teardown=False)
def loops(s):
    '''A set-up that never returns, through scheduling points.'''
    while True:
        s.point("x", "r")
"""

SETUPS = """
from passthru.check.scenario import scenario

@scenario(teardown=False)
def a_broken(s):
    '''A set-up with a bug.'''
    {}["missing"]

@scenario(teardown=False)
def b_fine(s):
    '''Nothing to see.'''
    s.spawn("t", lambda: None)
"""


def _file(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(
        r.exception, SystemExit)
    for n in needles:
        assert n in r.output, (n, r.output)


# ----- 1. every run is bounded ------------------------------------------------------------

def test_step_bound_is_a_registered_kind_reported_by_the_scheduler():
    assert kinds.is_registered(STEP_BOUND) and "sim" in kinds.owners(STEP_BOUND)


def test_a_spin_wait_under_the_default_schedule_ends_at_the_step_bound(tmp_path):
    (sc,) = from_paths([_file(tmp_path, "spin.py", SPIN)])
    # The default schedule never preempts the waiter: a livelock, cut at max_steps.
    res = run_once(sc, "linux-7.1", None, ReplayChooser([]), max_steps=500)
    assert res.stopped == "steps" and res.steps == 500
    assert [v.kind for v in res.violations] == [STEP_BOUND]
    assert "step bound reached: 500 steps" in res.violations[0].message
    # With the setter run first the same scenario finishes well within the bound.
    res = run_once(sc, "linux-7.1", None, ReplayChooser([2]), max_steps=500, races=False)
    assert res.stopped is None and not res.violated


def test_a_deadline_inside_a_schedule_stops_the_run_without_a_finding(tmp_path):
    (sc,) = from_paths([_file(tmp_path, "spin.py", SPIN)])
    res = run_once(sc, "linux-7.1", None, ReplayChooser([]), max_steps=None, deadline=0.0)
    assert res.stopped == "time" and not res.violated
    v = check(sc, "linux-7.1", time_limit=0.0, max_steps=None)
    assert not v.found and not v.complete and v.stopped == "time"


def test_check_with_a_time_limit_does_not_hang_on_a_spin_wait(tmp_path):
    f = _file(tmp_path, "spin.py", SPIN)
    r = CliRunner().invoke(main, ["check", f, "--time", "0.2", "--max-steps", "100000000"])
    assert r.exit_code == 0, r.output
    assert "time limit" in r.output and "unproven" in r.output


def test_check_max_steps_gives_a_step_bound_outcome(tmp_path):
    f = _file(tmp_path, "spin.py", SPIN)
    r = CliRunner().invoke(main, ["check", f, "--max-steps", "300"])
    assert r.exit_code == 1, r.output
    assert "[step-bound]" in r.output and "step bound reached" in r.output


def test_a_looping_setup_is_bounded_and_reported_as_an_error(tmp_path):
    f = _file(tmp_path, "loop.py", LOOPING_SETUP)
    r = CliRunner().invoke(main, ["check", f, "--max-steps", "1000"])
    assert r.exit_code == 1 and "ERROR" in r.output
    assert "set-up passed 1000 scheduling points" in r.output
    r = CliRunner().invoke(main, ["check", f, "--time", "0"])
    assert r.exit_code == 0 and "time limit" in r.output


LOOPING_IN_THE_MODEL = """
from passthru.check.scenario import scenario

@scenario(teardown=False)
def loops_in_model(s):
    # A set-up that never returns, calling into the model (no s.point of its own).
    while True:
        s.host.close(s.host.memfd_create("x", 0))
"""


def test_a_setup_looping_through_the_model_is_bounded(tmp_path):
    f = _file(tmp_path, "loopm.py", LOOPING_IN_THE_MODEL)
    r = CliRunner().invoke(main, ["check", f, "--max-steps", "500"])
    assert r.exit_code == 1 and "set-up passed 500 scheduling points" in r.output
    r = CliRunner().invoke(main, ["check", f, "--time", "0"])
    assert r.exit_code == 0 and "time limit" in r.output


def test_run_is_bounded_too(tmp_path):
    f = _file(tmp_path, "spin.py", SPIN)
    r = CliRunner().invoke(main, ["run", "spin_wait", f, "--max-steps", "200"])
    assert r.exit_code == 1 and "[step-bound]" in r.output


# ----- 2. one-line errors -------------------------------------------------------------------

def _saved(tmp_path, **over):
    data = {"version": 2, "scenario": "abba", "profile": "linux-7.1", "design": None,
            "choices": [], "fail_nth": [], "source": None, "source_sha256": None}
    data.update(over)
    f = tmp_path / "s.json"
    f.write_text(json.dumps(data))
    return str(f)


@pytest.mark.parametrize("content,needle", [
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "not a schedule file"),
])
def test_replay_of_hostile_bytes_is_a_one_line_error(tmp_path, content, needle):
    f = tmp_path / "bad.json"
    f.write_bytes(content)
    _one_line_error(CliRunner().invoke(main, ["replay", str(f)]), needle)


@pytest.mark.parametrize("over,needle", [
    ({"fail_nth": [[1]]}, "fail_nth[0]"),
    ({"fail_nth": "abc"}, "'fail_nth' must be a list"),
    ({"profile": ["x"]}, "'profile' must be a non-empty string"),
    ({"choices": ["a", None, 1.5]}, "choices[0]"),
    ({"choices": [10**30, -7]}, "out of range"),
    ({"design": "foo"}, "unknown design"),
    ({"version": True}, "unsupported schedule version"),
])
def test_replay_refuses_malformed_fields(tmp_path, over, needle):
    _one_line_error(CliRunner().invoke(main, ["replay", _saved(tmp_path, **over)]), needle)


def test_an_unknown_profile_in_a_replay_file_is_blamed_on_the_file(tmp_path):
    f = _saved(tmp_path, profile="linux-9.9")
    r = CliRunner().invoke(main, ["replay", f])
    _one_line_error(r, "schedule file names unknown profile 'linux-9.9'", f)
    assert "--profile" not in r.output


def test_divergence_from_the_saved_schedule_is_reported(tmp_path):
    # abba's tasks are 1 and 2: task 7 is never runnable.
    r = CliRunner().invoke(main, ["replay", _saved(tmp_path, choices=[7, 1])])
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and "diverged from the schedule" in out
    assert "task 7 was not runnable" in out
    # More decisions than the run has: a whole run's choices, then one more.
    full = run_once(SCENARIOS["abba_fixed"], "linux-7.1", None, ReplayChooser([])).choices
    f = _saved(tmp_path, scenario="abba_fixed", choices=[*full, 1])
    r = CliRunner().invoke(main, ["replay", f])
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and f"the run ended after {len(full)} of {len(full) + 1}" in out
    # The saved schedule itself replays cleanly.
    r = CliRunner().invoke(main, ["replay", _saved(tmp_path, scenario="abba_fixed",
                                                   choices=full)])
    assert r.exit_code == 0 and "diverged" not in r.output


@pytest.mark.parametrize("body,needle", [
    ("raise RuntimeError('boom at import')", "RuntimeError: boom at import"),
    ("from passthru.check.scenario import scenario\n@scenario(expect='x')\n"
     "def f(s):\n    pass\n", "expect must be 'safe' or 'violation'"),
    ("from passthru.check.scenario import scenario\n@scenario(profiles=['nope'])\n"
     "def f(s):\n    pass\n", "unknown profile 'nope'"),
])
@pytest.mark.parametrize("cmd", ["check", "list"])
def test_a_scenario_file_that_fails_at_import_is_a_one_line_error(tmp_path, body, needle,
                                                                  cmd):
    f = _file(tmp_path, "bad_sc.py", body)
    _one_line_error(CliRunner().invoke(main, [cmd, f]), needle, "bad_sc.py")


def test_a_setup_raising_is_reported_for_that_scenario_and_the_others_go_on(tmp_path):
    f = _file(tmp_path, "setups.py", SETUPS)
    r = CliRunner().invoke(main, ["check", f])
    assert r.exit_code == 1, r.output
    assert "set-up raised KeyError" in r.output and "ERROR" in r.output
    assert "b_fine" in r.output and "as expected" in r.output


@pytest.mark.parametrize("opt", ["--save", "--report"])
def test_an_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, opt):
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_error(CliRunner().invoke(main, ["check", "-k", "abba_fixed", opt,
                                              str(f / "sub")]), "cannot write")


def test_an_unwritable_trace_out_is_a_one_line_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = CliRunner().invoke(main, ["run", "abba_fixed", "--trace", "html", "--out",
                                  str(f / "t.html")])
    _one_line_error(r, "cannot write the trace")


# ----- 4. options -------------------------------------------------------------------------

def test_unknown_design_is_refused_with_the_known_ones():
    _one_line_error(CliRunner().invoke(main, ["check", "--design", "foo"]),
                    "unknown design 'foo'", "vfio, iommufd, vmm")
    _one_line_error(CliRunner().invoke(main, ["run", "abba", "--design", "foo"]),
                    "unknown design 'foo'")


def test_compare_with_a_comma_list_says_to_repeat_the_flag():
    _one_line_error(CliRunner().invoke(main, ["compare", "--profile",
                                              "linux-6.19,linux-7.1"]),
                    "repeat the flag")


@pytest.mark.parametrize("cmd", [[], ["check"], ["compare"], ["list"], ["run"], ["replay"],
                                 ["matrix"]])
def test_dash_h_is_help_everywhere(cmd):
    r = CliRunner().invoke(main, [*cmd, "-h"])
    assert r.exit_code == 0 and "Usage:" in r.output and "Show this message" in r.output


def test_every_option_has_help_text():
    for name, cmd in main.commands.items():  # type: ignore[attr-defined]
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert p.help, (name, p.name)
    r = CliRunner().invoke(main, ["check", "--help"], terminal_width=200)
    for word in ("dfs     every schedule", "dpor    dynamic partial-order", "full    every",
                 "pct     random schedules", "random  a uniformly", "First random seed",
                 "300 for pct/random"):
        assert word in r.output, word
    r = CliRunner().invoke(main, ["compare", "--help"], terminal_width=200)
    assert "Worker processes" in r.output and "300 for pct/random" in r.output


def test_sampling_strategies_default_to_a_small_budget():
    r = CliRunner().invoke(main, ["check", "-k", "abba_fixed", "--strategy", "random"])
    assert r.exit_code == 0
    assert "none found (300 random schedule(s)" in r.output


def test_check_explains_its_columns_and_save_prints_the_replay_command(tmp_path):
    r = CliRunner().invoke(main, ["check", "-k", "abba", "--save", str(tmp_path)])
    out = " ".join(r.output.split())
    assert "steps: scheduling steps" in out and "outcome:" in out
    saved = tmp_path / "abba-linux-7.1.json"
    assert saved.is_file()
    assert f"saved {saved}" in r.output.replace("\n", "")
    assert f"passthru replay {saved}" in r.output.replace("\n", "")


def test_compare_explains_the_dash():
    r = CliRunner().invoke(main, ["compare", "-k", "abba"])
    out = " ".join(r.output.split())
    assert "-: the scenario does not run under that profile/design" in out


# ----- 5. what a user sees ------------------------------------------------------------------

def test_the_verdict_table_stays_readable_at_80_columns(monkeypatch):
    con = Console(width=80, record=True, highlight=False, force_terminal=False)
    monkeypatch.setattr(cli, "console", con)
    r = CliRunner().invoke(main, ["check", "-k", "revoke_vs_lazy_importer", "--profile",
                                  "linux-6.19", "--budget", "5"])
    text = con.export_text()
    assert r.exit_code in (0, 1), text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "linux-6.19" in text and "…" not in text
    # The scenario's name is folded, never cut: its characters are all there.
    cells = [line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 2]
    assert "revoke_vs_lazy_importer" in "".join(cells[:3])
    assert "@ linux-6.19" in cells


def test_two_profiles_stay_distinct_at_80_columns(monkeypatch):
    con = Console(width=80, record=True, highlight=False, force_terminal=False)
    monkeypatch.setattr(cli, "console", con)
    CliRunner().invoke(main, ["check", "-k", "revoke_vs_lazy_importer_6_19", "--budget",
                              "5"])
    CliRunner().invoke(main, ["check", "-k", "abba_fixed", "--profile", "linux-7.1"])
    text = con.export_text()
    assert "@ linux-6.19" in text and "@ linux-7.1" in text and "…" not in text


def test_progress_names_the_scenario_being_explored():
    seen = []
    tasks = [(SCENARIOS["abba_fixed"], "linux-7.1", None),
             (SCENARIOS["lost_update_fixed"], "linux-7.1", None)]
    list(check_many(tasks, 1, on_start=seen.append, budget=3))
    assert [t[0].name for t in seen] == ["abba_fixed", "lost_update_fixed"]
    assert "abba_fixed @ linux-7.1" in cli._exploring(tasks[0], "dfs", 3)
    assert cli._exploring(tasks[1], "pct", 1000, 75).endswith("(pct): 75/≤1000 schedules")


def test_list_shows_the_first_sentence_not_the_first_line():
    assert first_sentence("Two vCPUs fault\n    different pages. More here.") == \
        "Two vCPUs fault different pages."
    assert first_sentence("No full stop\nat all") == "No full stop at all"
    sc = SCENARIOS["gmem_punch_hole_vs_two_vcpus"]
    assert sc.doc.endswith("pays.") and "\n" not in sc.doc


def test_progress_with_several_jobs_counts_schedules_of_every_worker(monkeypatch):
    """-j 2: the parent is told how many schedules the workers have run in all (not how many
    variants), and which variants are being explored."""
    from passthru.check import parallel
    monkeypatch.setattr(parallel, "POLL", 0.01)
    polls: list[tuple[int, list[str]]] = []
    tasks = [(SCENARIOS["abba_fixed"], "linux-7.1", None),
             (SCENARIOS["lost_update_fixed"], "linux-7.1", None)]
    verdicts = list(check_many(tasks, 2, budget=50,
                               on_progress=lambda n, run: polls.append(
                                   (n, [t[0].name for t in run]))))
    total = sum(v.schedules for v in verdicts)
    assert polls, "the parent polled the workers while waiting"
    counts = [n for n, _ in polls]
    assert counts == sorted(counts)  # the shared count only grows
    assert counts[-1] == total  # the last poll, after the last variant, has every schedule
    assert total > len(tasks)  # schedules, not variants
    line = cli._exploring_many(tasks, "dfs", 1234)
    assert line.startswith("1234 schedules (dfs); exploring abba_fixed @ linux-7.1")
    assert "lost_update_fixed" in line
    many = cli._exploring_many(tasks * 2, "dpor", 5)
    assert many.endswith("+2 more")
