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
    noisy = run_once(sc, "linux-7.1", None, ReplayChooser([1, 2, 1, 2, 1, 2, 1, 2]), log=False)
    assert noisy.violated and noisy.preemptions >= 2
    small = shrink(sc, "linux-7.1", None, noisy)
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
    assert r.exit_code == 2 and "no scenario has design" in r.output
    r = CliRunner().invoke(main, ["check", "-k", "two_vcpus", "--time", "0"])
    # Stopped early: nothing found, but "none found" rather than "safe" (not proven).
    assert r.exit_code == 0 and "│ none found │" in r.output
