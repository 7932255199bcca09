"""The SVG sequence diagram: well-formed, one lane per task and subsystem, lock bars, the
violation highlighted, deterministic, escaped, compact on long and sparse logs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from passthru.check.explore import ReplayChooser
from passthru.check.runner import RunResult, Verdict, run_once
from passthru.report.svg import ROW, TASK_LOCAL, sequence_svg
from passthru.sim.log import Event
from passthru.sim.scheduler import Violation

NS = "{http://www.w3.org/2000/svg}"


def cx(v: Verdict) -> RunResult:
    assert v.counterexample is not None
    return v.counterexample


def draw(v: Verdict) -> ET.Element:
    res = cx(v)
    return ET.fromstring(sequence_svg(res.log.events, res.violations, v.scenario.name))


def lanes(root: ET.Element, kind: str) -> list[str]:
    return [g.attrib["data-lane"] for g in root.iter(NS + "g")
            if g.attrib.get("class") == f"lane {kind}"]


def expected_lanes(events: list[Event]) -> tuple[list[str], list[str]]:
    tasks: list[str] = []
    subs: list[str] = []
    for ev in events:
        if ev.task not in tasks:
            tasks.append(ev.task)
        if ev.subsystem not in TASK_LOCAL and ev.subsystem not in subs:
            subs.append(ev.subsystem)
    return tasks, subs


@pytest.mark.parametrize("name", ["abba", "gmem"])
def test_well_formed_with_a_lane_per_task_and_subsystem(
        name: str, request: pytest.FixtureRequest) -> None:
    v: Verdict = request.getfixturevalue(name)
    root = draw(v)
    assert root.tag == NS + "svg"
    tasks, subs = expected_lanes(cx(v).log.events)
    assert lanes(root, "task") == tasks
    assert lanes(root, "subsystem") == subs


def test_abba_lanes(abba: Verdict) -> None:
    root = draw(abba)
    assert lanes(root, "task") == ["main", "t1", "t2"]
    assert lanes(root, "subsystem") == []


def test_gmem_lanes(gmem: Verdict) -> None:
    root = draw(gmem)
    assert {"main", "vcpu0", "punch"} <= set(lanes(root, "task"))
    assert {"kvm", "gmem", "fs"} <= set(lanes(root, "subsystem"))
    calls = {e.attrib["data-subsystem"] for e in root.iter(NS + "line")
             if e.attrib.get("class") == "call"}
    assert {"kvm", "gmem"} <= calls  # kvm.map and gmem.punch_hole are arrows


def bars(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter(NS + "rect") if r.attrib.get("class") == "lock-bar"]


def test_abba_lock_bars(abba: Verdict) -> None:
    got = bars(draw(abba))
    held = {(b.attrib["data-task"], b.attrib["data-lock"]) for b in got}
    assert held == {("t1", "lock_a"), ("t1", "lock_b"), ("t2", "lock_a"), ("t2", "lock_b")}

    def span(task: str, lock: str) -> tuple[float, float]:
        (b,) = [b for b in got if b.attrib["data-task"] == task and b.attrib["data-lock"] == lock]
        y = float(b.attrib["y"])
        return y, y + float(b.attrib["height"])

    # t1 takes A then B: B's hold lies within A's; t2 the other way round.
    a, b = span("t1", "lock_a"), span("t1", "lock_b")
    assert a[0] < b[0] and b[1] <= a[1]
    a, b = span("t2", "lock_a"), span("t2", "lock_b")
    assert b[0] < a[0] and a[1] <= b[1]


@pytest.mark.parametrize("name", ["abba", "gmem"])
def test_violation_step_highlighted(name: str, request: pytest.FixtureRequest) -> None:
    v: Verdict = request.getfixturevalue(name)
    res = cx(v)
    svg = sequence_svg(res.log.events, res.violations, v.scenario.name)
    root = ET.fromstring(svg)
    bands = [r for r in root.iter(NS + "rect") if r.attrib.get("class") == "violation"]
    assert {(b.attrib["data-step"], b.attrib["data-kind"]) for b in bands} == {
        (str(x.step), x.kind) for x in res.violations}
    words = " ".join(t.text or "" for t in root.iter(NS + "text"))
    for x in res.violations:
        assert x.kind in words
        assert x.message.split()[0] in words
    assert root.attrib["data-violation-steps"].split() == sorted(
        {str(x.step) for x in res.violations}, key=int)
    # Each band has its id, for the page's jump link.
    assert [b.attrib["id"] for b in bands] == [f"violation-{k + 1}" for k in range(len(bands))]


def test_decisive_preemption_outlined(gmem: Verdict) -> None:
    res = cx(gmem)
    plain = ET.fromstring(sequence_svg(res.log.events, res.violations, "t"))
    assert not [g for g in plain.iter(NS + "g") if g.attrib.get("class") == "preemption"]
    step = next(e.step for e in res.log.events if e.step > 0)
    root = ET.fromstring(sequence_svg(res.log.events, res.violations, "t", (step, "a", "b")))
    marks = [g for g in root.iter(NS + "g") if g.attrib.get("class") == "preemption"]
    assert len(marks) == 1
    g = marks[0]
    assert (g.attrib["data-step"], g.attrib["data-preempted"], g.attrib["data-chosen"]) == (
        str(step), "a", "b")
    # The outline spans exactly the rows of that step: as many rows as the step has events.
    outline = g.find(NS + "rect")
    assert outline is not None and outline.attrib["stroke"] == "#7b2fbf"
    n = sum(e.step == step for e in res.log.events)
    assert float(outline.attrib["height"]) == n * ROW
    assert "decisive preemption" in " ".join(t.text or "" for t in root.iter(NS + "text"))
    # A step with no event: nothing to outline.
    none = sequence_svg(res.log.events, res.violations, "t", (10_000, "a", "b"))
    assert 'class="preemption"' not in none


def test_deterministic_bytes(abba: Verdict, gmem: Verdict) -> None:
    for v in (abba, gmem):
        res = cx(v)
        one = sequence_svg(res.log.events, res.violations, "t")
        assert one == sequence_svg(list(res.log.events), list(res.violations), "t")
        # A replay of the schedule draws the same diagram, byte for byte.
        again = run_once(v.scenario, v.profile, v.design, ReplayChooser(res.choices))
        assert sequence_svg(again.log.events, again.violations, "t") == one


def test_text_is_escaped() -> None:
    evil = '<b>&"x\''
    evs = [Event(0, evil, "sched", "spawn", (("task", evil),)),
           Event(1, evil, "lock", "acquire", (("lock", evil),)),
           Event(1, evil, "k<v>m", "map&", (("a", evil),)),
           Event(2, evil, "VIOLATION", "bad<", (("msg", evil),))]
    svg = sequence_svg(evs, [Violation("bad<", evil, 2, evil)], title=evil)
    root = ET.fromstring(svg)
    assert "<b>" not in svg
    assert evil in lanes(root, "task")
    assert lanes(root, "subsystem") == ["k<v>m"]
    assert [b.attrib["data-lock"] for b in bars(root)] == [evil]


def test_violation_without_event_and_empty_log() -> None:
    evs = [Event(1, "a", "sched", "run", (("at", "x"), ("op", "w"))),
           Event(3, "a", "sched", "exit")]
    root = ET.fromstring(sequence_svg(evs, [Violation("leak", "after teardown", 1, "main")]))
    (band,) = [r for r in root.iter(NS + "rect") if r.attrib.get("class") == "violation"]
    assert band.attrib["data-step"] == "1"
    assert lanes(root, "task") == ["a", "main"]
    empty = ET.fromstring(sequence_svg([], [Violation("deadlock", "stuck", 0, "main")]))
    assert lanes(empty, "task") == ["main"]
    ET.fromstring(sequence_svg([], []))


def test_unreleased_lock_runs_to_the_bottom() -> None:
    evs = [Event(1, "t", "lock", "acquire", (("lock", "L"),)),
           Event(2, "t", "sched", "run", (("at", "L"), ("op", "acquire")))]
    svg = sequence_svg(evs, [])
    assert "L (held)" in svg
    (bar,) = bars(ET.fromstring(svg))
    assert 'stroke-dasharray' in bar.attrib


def test_long_sparse_logs_stay_compact() -> None:
    evs = [Event(0, "main", "sched", "spawn", (("task", "t"),))]
    evs += [Event(10 + i, "t", "kvm" if i % 2 else "mm", "op", (("i", i),)) for i in range(300)]
    evs.append(Event(100000, "t", "sched", "exit"))
    root = ET.fromstring(sequence_svg(evs, []))
    height = float(root.attrib["height"])
    assert height < (len(evs) + 12) * ROW  # rows per event, not per step
    words = " ".join(t.text or "" for t in root.iter(NS + "text"))
    assert "9 steps without events" in words
    assert f"{100000 - 309 - 1} steps without events" in words
