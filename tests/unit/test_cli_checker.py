"""The checker's options end to end: strategies, the fail_nth sweep, jobs, shrinking,
reports, compare, run --trace html."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from passthru.check.discover import builtin
from passthru.check.explore import ReplayChooser
from passthru.check.runner import check, run_once, shrink
from passthru.cli import main

SCENARIOS = {sc.name: sc for sc in builtin()}


def test_fail_nth_sweep_keeps_every_safe_scenario_safe():
    # The sweep once found error-path leaks in the exporters' helpers (memory allocated,
    # then dma_buf_export failed): every safe scenario must survive every injected failure.
    for sc in SCENARIOS.values():
        if sc.expect != "safe":
            continue
        v = check(sc, sc.profiles[-1], faults=True)
        assert v.ok, (sc.name, [x.text() for x in v.violations])


def test_fault_points_are_counted_and_a_fault_shows_in_the_log():
    sc = SCENARIOS["move_vs_dynamic_importer"]
    n = run_once(sc, "linux-7.1", None, ReplayChooser([]), log=False).faults_seen
    assert n >= 3
    res = run_once(sc, "linux-7.1", None, ReplayChooser([]), fail_nth=frozenset({2}))
    assert "fault.inject nth=2" in res.log.text() and not res.violated


def test_shrinking_removes_needless_preemptions():
    sc = SCENARIOS["lost_update"]
    # A needlessly busy schedule: switch at every decision.
    # (races off: with them on, the serial schedule already has the data race)
    noisy = run_once(sc, "linux-7.1", None, ReplayChooser([1, 2, 1, 2, 1, 2, 1, 2]), log=False,
                     races=False)
    assert noisy.violated and noisy.preemptions >= 2
    small = shrink(sc, "linux-7.1", None, noisy, races=False)
    assert small.violated and small.preemptions == 1 and small.size() < noisy.size()


@pytest.mark.parametrize("strategy", ["dfs", "dpor", "pct", "random"])
def test_cli_strategies(strategy):
    r = CliRunner().invoke(main, ["check", "-k", "gmem_punch", "--strategy", strategy,
                                  "--budget", "300"])
    assert r.exit_code == 0, r.output
    assert "gmem_punch_hole_vs_vcpu_buggy" in r.output


def test_cli_jobs_gives_the_same_verdicts():
    one = CliRunner().invoke(main, ["check", "-k", "memslot"])
    two = CliRunner().invoke(main, ["check", "-k", "memslot", "--jobs", "2"])
    assert one.exit_code == two.exit_code == 0
    rows = [[ln.split("│")[1:5] for ln in out.output.splitlines() if "│" in ln]
            for out in (one, two)]
    assert rows[0] == rows[1]


def test_cli_report_and_compare_and_html_trace(tmp_path):
    r = CliRunner().invoke(main, ["check", "-k", "abba", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {v["scenario"] for v in data["verdicts"]} >= {"abba", "abba_fixed"}
    assert (tmp_path / "rep" / "index.html").exists()
    r = CliRunner().invoke(main, ["compare", "-k", "lazy"])
    assert r.exit_code == 0 and "linux-6.19" in r.output and "linux-7.1" in r.output
    out = tmp_path / "abba.html"
    r = CliRunner().invoke(main, ["run", "abba", "--trace", "html", "--out", str(out)])
    assert r.exit_code == 1 and "<svg" in out.read_text()


def test_cli_design_filter_and_time_limit(tmp_path):
    f = tmp_path / "designs.py"
    f.write_text(
        "from passthru.check.scenario import scenario\n"
        "@scenario(designs=['vfio', 'iommufd', 'vmm'], teardown=False)\n"
        "def who_binds(s):\n"
        "    s.final('design-seen', lambda: None if s.design else 'no design')\n"
    )
    r = CliRunner().invoke(main, ["compare", str(f)])
    assert r.exit_code == 0 and "linux-7.1/iommufd" in r.output and "linux-7.1/vmm" in r.output
    r = CliRunner().invoke(main, ["check", str(f), "--design", "vmm"])
    assert r.exit_code == 0 and "[vmm]" in r.output and "[vfio]" not in r.output
    r = CliRunner().invoke(main, ["check", str(f), "--design", "tsm"])
    assert r.exit_code == 2 and "unknown design 'tsm'" in r.output
    assert "vfio, iommufd, vmm" in r.output
    r = CliRunner().invoke(main, ["check", "-k", "two_vcpus", "--time", "0"])
    # Stopped early: nothing found, but "none found" rather than "safe" (not proven), and
    # the outcome is "unproven", not "as expected"; nothing contradicted: exit 0.
    assert r.exit_code == 0, r.output
    assert "none found (" in r.output and "time limit)" in r.output
    assert "safe (" not in r.output and "as expected" not in r.output
    assert "│ unproven" in r.output and "1 unproven" in r.output


# --- Honest reporting: verdicts name their bound; cut-short runs are "unproven". ---

def rows(output: str) -> list[list[str]]:
    return [[c.strip() for c in ln.split("│")[1:-1]] for ln in output.splitlines()
            if ln.startswith("│")]


def test_check_names_the_bound_of_a_safe_verdict():
    r = CliRunner().invoke(main, ["check", "-k", "abba_fixed", "--preemptions", "1"])
    assert r.exit_code == 0, r.output
    (row,) = rows(r.output)
    assert row[0] == "abba_fixed" and row[3] == "safe (all schedules with ≤ 1 preemptions)"
    assert row[-1] == "as expected" and "all verdicts as expected" in r.output


def test_budget_limited_safe_scenario_is_unproven():
    r = CliRunner().invoke(main, ["check", "-k", "abba_fixed", "--budget", "1"])
    assert r.exit_code == 0, r.output
    (row,) = rows(r.output)
    assert row[3].startswith("none found (1 dfs schedule(s)") and row[3].endswith("budget)")
    assert row[-1] == "unproven"
    assert "1 unproven" in r.output and "all verdicts as expected" not in r.output
    # Sampling never proves anything either.
    r = CliRunner().invoke(main, ["check", "-k", "abba_fixed", "--strategy", "random",
                                  "--budget", "3"])
    assert r.exit_code == 0 and rows(r.output)[0][-1] == "unproven", r.output


def test_a_missed_bug_stays_unexpected_even_when_cut_short(tmp_path):
    f = tmp_path / "missed.py"
    f.write_text("from passthru.check.scenario import scenario\n"
                 "@scenario(expect='violation', teardown=False)\n"
                 "def no_bug_here(s):\n"
                 "    s.final('fine', lambda: None)\n")
    r = CliRunner().invoke(main, ["check", str(f), "--time", "0"])
    assert r.exit_code == 1, r.output
    assert rows(r.output)[0][-1] == "UNEXPECTED" and "1 unexpected verdict(s)" in r.output


def test_strategy_full_is_accepted():
    r = CliRunner().invoke(main, ["check", "-k", "abba_fixed", "--strategy", "full"])
    assert r.exit_code == 0, r.output
    (row,) = rows(r.output)
    assert row[3] == "safe (all schedules, no reduction)" and row[-1] == "as expected"


def test_compare_cells_tell_safe_from_none_found():
    r = CliRunner().invoke(main, ["compare", "-k", "abba_fixed"])
    assert r.exit_code == 0, r.output
    assert "safe ≤2" in r.output and "none found" not in rows(r.output)[0][2]
    r = CliRunner().invoke(main, ["compare", "-k", "abba_fixed", "--budget", "1"])
    assert r.exit_code == 0, r.output
    assert rows(r.output)[0][2] == "none found (budget)?"
    assert "'?' marks an unproven one" in r.output


def test_report_records_bound_strategy_and_run_metadata(tmp_path):
    import importlib.metadata
    from datetime import datetime, timedelta

    rep = tmp_path / "rep"
    r = CliRunner().invoke(main, ["check", "-k", "abba", "--budget", "1", "--seed", "5",
                                  "--report", str(rep)])
    assert r.exit_code == 0, r.output
    data = json.loads((rep / "report.json").read_text())
    run = data["run"]
    assert run["passthru"] == importlib.metadata.version("passthru")
    assert run["profiles"] == sorted({v["profile"] for v in data["verdicts"]})
    assert "linux-7.1" in run["profiles"] and run["strategies"] == ["dfs"]
    assert run["options"]["budget"] == 1 and run["options"]["seed"] == 5
    assert run["options"]["scenario"] == "abba" and run["options"]["strategy"] == "dfs"
    date = datetime.fromisoformat(run["date"])
    assert date.utcoffset() == timedelta(0)
    by = {v["scenario"]: v for v in data["verdicts"]}
    fixed, buggy = by["abba_fixed"], by["abba"]
    assert fixed["stopped"] == "budget" and fixed["outcome"] == "unproven"
    assert fixed["bound_text"].startswith("none found (1 dfs schedule(s)")
    assert (fixed["strategy"], fixed["bound"], fixed["budget"], fixed["seed"]) == (
        "dfs", 2, 1, 5)
    assert buggy["bound_text"].startswith("violation (") and buggy["outcome"] == "as expected"
    assert data["summary"]["unproven"] == 1 and data["summary"]["unexpected"] == 0
    index = (rep / "index.html").read_text()
    assert fixed["bound_text"] in index and '<tr class="unproven">' in index
    assert "1 unproven" in index and run["date"] in index
    # The counterexample's schedule file names its source and replays on its own.
    sched = json.loads((rep / buggy["schedule_file"]).read_text())
    assert sched["version"] == 2 and sched["source"].endswith("demos.py")
    assert len(sched["source_sha256"]) == 64


USER = (
    "from passthru.check.scenario import scenario\n"
    "@scenario(profiles=['linux-7.1', 'linux-6.19'], designs=['vfio', 'vmm'],\n"
    "          expect='violation', teardown=False)\n"
    "def where_am_i(s):\n"
    "    s.final('where', lambda: f'ran under {s.profile.name} {s.design}')\n"
    "@scenario(expect='violation', teardown=False)\n"
    "def other(s):\n"
    "    s.final('other', lambda: 'other')\n"
)


@pytest.fixture
def user_cx(tmp_path):
    """A user scenario file and a counterexample saved for it (profile 6.19, design vmm)."""
    src = tmp_path / "scn" / "where.py"
    src.parent.mkdir()
    src.write_text(USER)
    r = CliRunner().invoke(main, ["check", str(src), "-k", "where_am_i", "--profile",
                                  "linux-6.19", "--design", "vmm", "--save",
                                  str(tmp_path / "saved")])
    assert r.exit_code == 0, r.output
    (f,) = (tmp_path / "saved").iterdir()
    return src, f


def test_replay_alone_finds_the_source_and_warns_when_it_changed(user_cx, tmp_path,
                                                                  monkeypatch):
    src, f = user_cx
    monkeypatch.chdir(tmp_path)  # not where the scenario lives
    r = CliRunner().invoke(main, ["replay", str(f)])
    assert r.exit_code == 1, r.output
    assert "ran under linux-6.19 vmm" in r.stdout and not r.stderr
    src.write_text(USER + "# edited\n")
    r = CliRunner().invoke(main, ["replay", str(f)])
    assert r.exit_code == 1 and "ran under linux-6.19 vmm" in r.stdout
    assert "source changed since the counterexample was saved" in r.stderr
    src.unlink()
    r = CliRunner().invoke(main, ["replay", str(f)])
    assert r.exit_code == 2 and "is gone" in r.output and "Traceback" not in r.output


def test_replay_draws_html(user_cx, tmp_path):
    _, f = user_cx
    out = tmp_path / "x" / "replay.html"
    out.parent.mkdir()
    r = CliRunner().invoke(main, ["replay", str(f), "--trace", "html", "--out", str(out)])
    assert r.exit_code == 1, r.output
    page = out.read_text()
    assert "<svg" in page and "where_am_i" in page and "ran under linux-6.19 vmm" in page


def test_run_schedule_takes_profile_and_design_from_the_file(user_cx):
    src, f = user_cx
    r = CliRunner().invoke(main, ["run", "where_am_i", str(src), "--schedule", str(f)])
    assert r.exit_code == 1 and "ran under linux-6.19 vmm" in r.stdout, r.output
    r = CliRunner().invoke(main, ["run", "where_am_i", str(src), "--schedule", str(f),
                                  "--profile", "linux-7.1"])
    assert r.exit_code == 1 and "ran under linux-7.1 vmm" in r.stdout, r.output
    r = CliRunner().invoke(main, ["run", "other", str(src), "--schedule", str(f)])
    assert r.exit_code == 2
    assert "saved for scenario 'where_am_i', not 'other'" in r.output


def test_replay_reads_version_1_files(tmp_path):
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"version": 1, "scenario": "abba", "profile": "linux-7.1",
                             "choices": [1, 1, 1, 1, 2, 2, 2, 2]}))
    r = CliRunner().invoke(main, ["replay", str(f)])
    assert r.exit_code == 1 and "lock-order" in r.output and not r.stderr


@pytest.mark.parametrize(("text", "why"), [
    ("{not json", "not a schedule file"),
    ("[1, 2]", "JSON object"),
    ('{"version": 1, "scenario": "abba", "profile": "linux-7.1", "choices": "12"}',
     "must be a list of integers"),
    ('{"version": 1, "scenario": "abba", "profile": "linux-7.1", "choices": [-1]}',
     "out of range"),
    ('{"version": 1, "scenario": "abba", "profile": "linux-7.1", "choices": [],'
     ' "fail_nth": [0.5]}', "not an integer"),
    ('{"version": 1, "scenario": "abba", "profile": "linux-9.9", "choices": []}',
     "unknown profile 'linux-9.9'"),
    ('{"version": 1, "scenario": "no_such_thing", "profile": "linux-7.1", "choices": []}',
     "not built-in"),
    ("[" * 100_000, "not a schedule file"),
])
def test_malformed_schedule_files_are_usage_errors(tmp_path, text, why):
    f = tmp_path / "bad.json"
    f.write_text(text)
    for args in (["replay", str(f)], ["run", "abba", "--schedule", str(f)]):
        if why == "not built-in" and args[0] == "run":
            continue
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert why in r.output and "Traceback" not in r.output
        assert isinstance(r.exception, SystemExit)
