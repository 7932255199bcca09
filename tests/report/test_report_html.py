"""The HTML page of a run, the report directory and report.json."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from click.testing import CliRunner

from passthru.check.runner import RunResult, Verdict
from passthru.check.schedfile import passthru_version
from passthru.cli import main
from passthru.report import write_report
from passthru.report.html import decisive_preemption, render_run
from passthru.report.json import verdicts_json

from .conftest import scenario


def cx(v: Verdict) -> RunResult:
    assert v.counterexample is not None
    return v.counterexample


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    # One inline script, no external one.
    assert page.lower().count("<script") == page.count("<script>") <= 1
    assert "<link" not in page.lower()
    assert not re.search(r"\ssrc\s*=", page)
    assert not re.search(r"url\((?!#)", page)  # only in-document references


def test_page_is_self_contained(abba: Verdict, gmem: Verdict) -> None:
    for v in (abba, gmem):
        page = render_run(cx(v), v.scenario.name, "sub", v.schedule_json())
        assert_self_contained(page)
        assert page.startswith("<!DOCTYPE html>")


def test_page_contents(gmem: Verdict) -> None:
    res = cx(gmem)
    page = render_run(res, "gmem & co", "a <subtitle>", gmem.schedule_json(),
                      index_href="index.html", schedule_file="x.json")
    assert "<h1>gmem &amp; co</h1>" in page and "a &lt;subtitle&gt;" in page
    assert '<svg class="passthru-seq"' in page
    assert page.count('class="violation"') == len(res.violations)
    for v in res.violations:
        assert f"<b>{v.kind}</b> at step {v.step}" in page
    # The trace is the log's text, line for line; violation lines and steps highlighted.
    trace = re.search(r'<div class="trace" id="trace">(.*?)</div>', page, re.S)
    assert trace is not None
    lines = re.findall(r'<span class="line([ a-z]*)"(?: id="[a-z-]+")? data-step="(\d+)" '
                       r'data-task="([^"]+)">([^<]*)(?:<span class="where">([^<]*)</span>)?'
                       r'</span>', trace.group(1))
    assert [html.unescape(t) for _, _, _, t, _ in lines] == [e.text() for e in res.log.events]
    assert [t for _, _, t, _, _ in lines] == [e.task for e in res.log.events]
    # Each line's source location is the event's (the counterexample's run records them).
    assert [html.unescape(w) for *_, w in lines] == [e.where for e in res.log.events]
    classes = [c for c, *_ in lines]
    assert classes.count(" viol") == sum(e.subsystem == "VIOLATION" for e in res.log.events)
    assert " vstep" in classes
    sched = re.search(r'<pre class="schedule">(.*?)</pre>', page, re.S)
    assert sched is not None
    text = html.unescape(sched.group(1))
    assert json.loads(text) == gmem.schedule_json()
    # Compact: the choices on one line.
    assert f' "choices": {json.dumps(gmem.schedule_json()["choices"])},' in text.splitlines()
    assert "passthru replay x.json" in page
    # The jump link leads to ids that exist: the diagram's band and the trace's line.
    assert '<a href="#violation-1">' in page and 'id="violation-1"' in page
    assert '<a href="#trace-violation">' in page
    assert re.search(r'<span class="line viol" id="trace-violation"', page)
    nav = page.index('<nav class="jump">')
    assert nav < page.index('<ul class="violations">') < page.index("<svg")


def test_decisive_preemption(gmem: Verdict) -> None:
    res = cx(gmem)
    pre = decisive_preemption(res)
    assert pre is not None
    step, was, now = pre
    # The last decision before the violation whose chosen task is not the one that could go on.
    last = max(i for i, d in enumerate(res.decisions[:res.first_violation_step])
               if d.current is not None and d.chosen != d.current)
    assert step == last + 1 and was != now
    assert {e.task for e in res.log.events if e.step == step} == {now}
    assert {e.task for e in res.log.events if e.step == step - 1} == {was}
    page = render_run(res, "t", "", gmem.schedule_json())
    assert f"at step {step} <code>{now}</code> runs instead of <code>{was}</code>" in page
    assert f'<g class="preemption" data-step="{step}" data-preempted="{was}" ' in page
    marked = re.findall(r'<span class="line[ a-z]* preempt"(?: id="[a-z]+")? data-step="(\d+)"',
                        page)
    assert marked and set(marked) == {str(step)}
    assert 'id="preemption"' in page and '<a href="#preemption">' in page
    # No preemption, no mark.
    abba_like = RunResult(res.violations, res.log, res.choices, res.steps, 0)
    assert decisive_preemption(abba_like) is None
    assert 'class="preemption"' not in render_run(abba_like, "t")


def test_setup_and_lock_churn_fold(gmem: Verdict) -> None:
    res = cx(gmem)
    page = render_run(res, "t")
    trace = page[page.index('<div class="trace"'):page.index("<h2>Schedule")]
    setup = re.search(r'<details class="setup"><summary>[^<]*</summary>(.*?)</details>', trace)
    assert setup is not None and trace.startswith('<div class="trace" id="trace"><details')
    first = next(i for i, e in enumerate(res.log.events) if e.task != "main" and e.step > 0)
    assert setup.group(1).count('<span class="line') == first > 0
    assert 'data-task="main"' in setup.group(1)
    assert all(f'data-task="{t}"' not in setup.group(1) for t in ("vcpu0", "punch"))
    assert f"set-up: {first} events" in setup.group(0)
    churns = re.findall(r'<details class="churn"><summary>[^<]*</summary>(.*?)</details>', trace)
    assert churns
    for c in churns:
        assert len(re.findall(r'<span class="line ?[a-z ]*"', c)) >= 2
        assert set(re.findall(r"\d+ +\S+ +(\w+)\.", html.unescape(c))) == {"lock"}
        assert "viol" not in c and "vstep" not in c and "preempt" not in c
    assert "<details open" not in page  # closed by default


def test_page_meta(tmp_path: Path, gmem: Verdict) -> None:
    write_report(tmp_path, [gmem], date="2026-01-02T03:04:05+00:00")
    page = (tmp_path / f"gmem_punch_hole_vs_vcpu_buggy-{gmem.profile}.html").read_text()
    meta = re.search(r'<p class="meta">(.*?)</p>', page)
    assert meta is not None
    text = re.sub(r"<[^>]+>", "", meta.group(1))
    for want in (f"passthru {passthru_version()}", f"profile {gmem.profile}",
                 f"strategy {gmem.strategy}", f"bound {gmem.bound}", f"budget {gmem.budget}",
                 "date 2026-01-02T03:04:05+00:00"):
        assert want in text, (want, text)
    assert "seed" not in text  # dfs has none
    data = json.loads((tmp_path / "report.json").read_text())
    row = data["verdicts"][0]
    assert (row["strategy"], row["bound"], row["budget"]) == (gmem.strategy, gmem.bound,
                                                              gmem.budget)
    assert data["run"]["date"] == "2026-01-02T03:04:05+00:00"
    assert data["run"]["passthru"] == passthru_version()
    # Same date, same bytes: only the date varies between reports.
    again = tmp_path / "again"
    write_report(again, [gmem], date="2026-01-02T03:04:05+00:00")
    for f in ("report.json", f"gmem_punch_hole_vs_vcpu_buggy-{gmem.profile}.html"):
        assert (again / f).read_bytes() == (tmp_path / f).read_bytes()


def test_run_page_is_byte_identical(gmem: Verdict) -> None:
    res = cx(gmem)
    a = render_run(res, "t", "s", gmem.schedule_json())
    assert render_run(res, "t", "s", gmem.schedule_json()) == a
    assert "Produced by" not in a  # no meta given, none shown


def test_page_without_violation_or_schedule(abba: Verdict) -> None:
    res = cx(abba)
    clean = RunResult([], res.log, res.choices, res.steps, res.preemptions)
    page = render_run(clean, "t")
    assert "No violation" in page and '"choices"' in page.replace("&quot;", '"')


def verdicts(abba: Verdict, gmem: Verdict) -> list[Verdict]:
    safe = Verdict(scenario("abba_fixed"), "linux-7.1", None, schedules=7, steps=60,
                   complete=True)
    missed = Verdict(scenario("abba"), "linux-7.1", None, schedules=3, steps=9)
    return [abba, safe, gmem, missed, abba]


def test_write_report(tmp_path: Path, abba: Verdict, gmem: Verdict) -> None:
    vs = verdicts(abba, gmem)
    opts = {"strategy": "dfs", "budget": 20000}
    index = write_report(tmp_path / "out", vs, opts, date="2026-01-02T03:04:05+00:00")
    out = tmp_path / "out"
    assert index == out / "index.html"
    names = sorted(p.name for p in out.iterdir())
    a = f"abba-{abba.profile}"
    g = f"gmem_punch_hole_vs_vcpu_buggy-{gmem.profile}"
    assert names == sorted([f"{a}.html", f"{a}.json", f"{a}-2.html", f"{a}-2.json", f"{g}.html",
                            f"{g}.json", "index.html", "report.json"])
    for p in out.glob("*.html"):
        assert_self_contained(p.read_text())
    # Schedules: exactly what `passthru check --save` writes.
    assert (out / f"{g}.json").read_text() == json.dumps(gmem.schedule_json(), indent=1) + "\n"
    # The index: a row per verdict, links to every page, the missed bug flagged.
    html = index.read_text()
    assert html.count("<tr class=") == len(vs)
    assert html.count("UNEXPECTED") == 1 and 'class="unexpected"' in html
    for link in re.findall(r'href="([^"]+)"', html):
        assert (out / link).exists(), link
    assert f'href="{g}.html"' in html
    # report.json round-trips and agrees with verdicts_json.
    data = json.loads((out / "report.json").read_text())
    assert data == verdicts_json(vs, opts, "2026-01-02T03:04:05+00:00")
    assert json.loads(json.dumps(verdicts_json(vs))) == verdicts_json(vs)
    assert verdicts_json(vs)["run"]["date"] is None  # the date only when given
    assert data["run"]["options"] == opts and data["run"]["profiles"] == ["linux-7.1"]
    assert "2026-01-02T03:04:05+00:00" in html and "strategy=dfs" in html
    assert data["summary"] == {"verdicts": 5, "unexpected": 1, "unproven": 0, "found": 3}
    row = data["verdicts"][2]
    assert row["scenario"] == "gmem_punch_hole_vs_vcpu_buggy" and row["verdict"] == "violation"
    assert row["ok"] is True and row["page"] == f"{g}.html"
    assert row["schedule"] == gmem.schedule_json()
    assert row["violations"][0]["kind"] == gmem.violations[0].kind
    assert len(row["counterexample"]["events"]) == len(cx(gmem).log.events)
    assert data["verdicts"][1]["verdict"] == "safe" and data["verdicts"][1]["page"] is None
    assert data["verdicts"][1]["bound_text"] == "safe (all schedules with ≤ 2 preemptions)"
    assert data["verdicts"][3]["verdict"] == "none found"
    assert data["verdicts"][3]["ok"] is False and data["verdicts"][3]["outcome"] == "unexpected"
    for row in data["verdicts"]:
        assert {"bound_text", "strategy", "bound", "budget", "seed", "stopped"} <= row.keys()


def test_index_marks_unproven_verdicts(tmp_path: Path) -> None:
    sc = scenario("abba_fixed")
    cut = Verdict(sc, "linux-7.1", None, schedules=5, steps=50, budget=5, stopped="budget")
    sampled = Verdict(sc, "linux-6.19", None, schedules=9, strategy="pct", bound=None,
                      stopped="budget", seed=4)
    proven = Verdict(sc, "linux-7.1", "vmm", schedules=7, complete=True, strategy="dpor",
                     bound=None)
    index = write_report(tmp_path, [cut, sampled, proven]).read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert [v["outcome"] for v in data["verdicts"]] == ["unproven", "unproven", "as expected"]
    assert data["summary"]["unproven"] == 2 and data["summary"]["unexpected"] == 0
    assert index.count('<tr class="unproven">') == 2 and index.count("<tr class=") == 3
    assert "2 unproven" in index and "all verdicts as expected" not in index
    assert "none found (5 dfs schedule(s) in 0.00 s, budget)" in index
    assert "safe (all schedules up to DPOR equivalence)" in index
    assert data["run"]["strategies"] == ["dfs", "dpor", "pct"]
    assert data["verdicts"][1]["seed"] == 4 and data["verdicts"][1]["strategy"] == "pct"


def test_saved_schedule_replays(tmp_path: Path, gmem: Verdict) -> None:
    write_report(tmp_path, [gmem])
    f = tmp_path / f"gmem_punch_hole_vs_vcpu_buggy-{gmem.profile}.json"
    r = CliRunner().invoke(main, ["replay", str(f)])
    assert r.exit_code == 1  # the violation again
    assert cx(gmem).log.text() in r.output
