"""The values that explain a counterexample (the pfn a vCPU fetched, the invalidate sequence it
saw, a range's owner and state before and after) and each event's source location in the
model (file:line, function, and the kernel function it models), on the report's trace lines."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from click.testing import CliRunner

import passthru
from passthru.check.explore import ReplayChooser
from passthru.check.runner import RunResult, Verdict, run_once
from passthru.cli import main
from passthru.report.html import is_value, render_run
from passthru.sim.log import Event

PKG = Path(passthru.__file__).parent
LINE = re.compile(r'<span class="line([ a-z]*)"(?: id="[a-z-]+")? data-step="(\d+)" '
                  r'data-task="([^"]+)">([^<]*)(?:<span class="where">([^<]*)</span>)?</span>')
WHERE = re.compile(r"(?P<file>[\w/]+\.py):(?P<line>\d+) (?P<func>\w+)(?: \((?P<kfunc>\w+)\))?")


def cx(v: Verdict) -> RunResult:
    assert v.counterexample is not None
    return v.counterexample


def trace_lines(page: str) -> list[tuple[str, int, str, str, str]]:
    """(classes, step, task, text, where) of every trace line of a page."""
    trace = re.search(r'<div class="trace" id="trace">(.*?)</div>', page, re.S)
    assert trace is not None
    return [(c, int(s), t, html.unescape(x), html.unescape(w))
            for c, s, t, x, w in LINE.findall(trace.group(1))]


def find(res: RunResult, subsystem: str, event: str) -> list[Event]:
    return [e for e in res.log.events if e.subsystem == subsystem and e.event == event]


def test_values_that_explain_the_gmem_race(gmem: Verdict) -> None:
    res = cx(gmem)
    page = render_run(res, "t", "", gmem.schedule_json())
    lines = trace_lines(page)
    by_text = {x: (c, s, t) for c, s, t, x, _ in lines}
    # The vCPU fetched pfn 3 for gpa 0x1000, with mmu_invalidate_seq 0 snapshotted ...
    fetch = find(res, "kvm", "faultin-pfn")
    assert len(fetch) == 1 and fetch[0].task == "vcpu0"
    assert dict(fetch[0].args)["pfn"] == 3 and dict(fetch[0].args)["mmu_seq"] == 0
    assert "kvm.faultin-pfn gpa=0x1000 pfn=3 mmu_seq=0" in fetch[0].text()
    assert " value" in by_text[fetch[0].text()][0]
    # ... the punch's invalidation raised in_progress, then its end bumped the sequence ...
    begin = [e for e in find(res, "kvm", "invalidate-begin") if e.task == "punch"]
    end = [e for e in find(res, "kvm", "invalidate-end") if e.task == "punch"]
    assert [dict(e.args)["in_progress"] for e in begin] == [1]
    assert [(dict(e.args)["in_progress"], dict(e.args)["seq"]) for e in end] == [(0, 1)]
    assert fetch[0].step < begin[0].step < end[0].step
    # ... the vCPU's retry check saw seq 1 against its snapshot 0, and mapped anyway (the bug).
    check = find(res, "kvm", "retry-check")
    assert len(check) == 1 and check[0].task == "vcpu0" and check[0].step > end[0].step
    assert "mmu_seq=0 seq=1 in_progress=0 retry=True" in check[0].text()
    mapped = find(res, "kvm", "map")
    assert mapped and mapped[0].step == check[0].step
    # The punched range's page went from gmem1's to an orphan (the fault's reference) to free.
    rel = [e for e in find(res, "phys", "release") if e.task == "punch"]
    assert len(rel) == 1
    args = dict(rel[0].args)
    assert (args["start"], args["end"]) == (0x3000, 0x4000)
    assert args["before"] == "gmem1@vm1/allocated" and args["after"] == "gmem1@vm1/orphan"
    freed = find(res, "phys", "free-orphan")
    assert [(dict(e.args)["start"], dict(e.args)["before"], dict(e.args)["after"])
            for e in freed if e.task == "vcpu0"] == [(0x3000, "gmem1@vm1/orphan", "free")]
    alloc = [e for e in find(res, "phys", "alloc") if dict(e.args)["start"] == 0x3000]
    assert alloc and dict(alloc[0].args)["before"] == "free"
    for ev in (fetch[0], begin[0], end[0], check[0], rel[0], freed[0], alloc[0]):
        cls = by_text[ev.text()][0]
        assert " value" in cls and is_value(ev), ev.text()
    # Lock events carry no value and are not marked.
    assert not any(" value" in c for c, _, _, x, _ in lines if " lock." in x)


def test_physmem_events_are_per_extent(gmem: Verdict) -> None:
    # One event per call or extent: a page-sized alloc, a 3-page one, never one per page.
    res = cx(gmem)
    allocs = [dict(e.args) for e in find(res, "phys", "alloc")]
    assert any(a["end"] - a["start"] > 0x1000 for a in allocs)
    per_range = {(e.event, dict(e.args)["start"]) for e in res.log.events if e.subsystem == "phys"}
    assert len(per_range) == sum(e.subsystem == "phys" for e in res.log.events)


def test_where_names_real_lines_and_kernel_functions(gmem: Verdict) -> None:
    res = cx(gmem)
    lines = trace_lines(render_run(res, "t", "", gmem.schedule_json()))
    assert len(lines) == len(res.log.events)
    located = [(x, w) for _, _, _, x, w in lines if w]
    # Every event of the tasks' steps (and of main's set-up) says where it comes from.
    assert len(located) >= len(lines) - sum(e.event == "exit" for e in res.log.events)
    sources: dict[str, list[str]] = {}
    for text, where in located:
        m = WHERE.fullmatch(where)
        assert m is not None, (text, where)
        assert not where.startswith("/") and not m["file"].startswith("sim/"), where
        src = sources.get(m["file"])
        if src is None:
            path = PKG / m["file"]
            assert path.is_file(), where
            src = sources[m["file"]] = path.read_text().splitlines()
        n = int(m["line"])
        assert 1 <= n <= len(src), where
        # The line is in the named function: its def is the nearest one above, at most.
        defs = [i for i in range(n) if re.match(rf"\s*def {m['func']}\(", src[i])]
        assert defs, (where, text)
        if m["kfunc"]:
            doc = "\n".join(src[defs[-1]:n + 1])
            assert m["kfunc"] in doc, where
    # KVM fault steps name the kernel functions they model.
    by_event = {x.split()[2]: w for x, w in located}
    assert by_event["kvm.retry-check"].startswith("kernel/kvm/mmu.py:")
    assert by_event["kvm.retry-check"].endswith(" retry (mmu_invalidate_retry_gfn)")
    assert by_event["kvm.invalidate-end"].endswith("(kvm_mmu_invalidate_end)")
    assert by_event["kvm.faultin-pfn"].startswith("kernel/kvm/mmu.py:")
    fault_steps = {e.step for e in find(res, "kvm", "faultin-pfn")}
    gmem_lines = [w for _, s, _, x, w in lines if s in fault_steps and "lock.acquire" in x]
    assert any(w.endswith(" get_pfn (kvm_gmem_get_pfn)") for w in gmem_lines), gmem_lines
    # A scheduling point says where the task resumes: the vCPU at mmu.py's pfn point.
    pfn_run = next(w for _, _, _, x, w in lines if "sched.run at=vm1.pfn" in x)
    assert pfn_run.startswith("kernel/kvm/mmu.py:")
    assert pfn_run.endswith(" page_fault (kvm_mmu_page_fault)")
    m = WHERE.fullmatch(pfn_run)
    assert m is not None and '.pfn"' in sources["kernel/kvm/mmu.py"][int(m["line"]) - 1]


def test_where_is_not_in_the_text_log(gmem: Verdict) -> None:
    res = cx(gmem)
    assert all(e.where for e in find(res, "kvm", "faultin-pfn"))
    assert "kernel/kvm" not in res.log.text()
    ev = find(res, "kvm", "faultin-pfn")[0]
    assert ev.to_json()["where"] == ev.where
    assert "where" not in ev._replace(where="").to_json()


def test_two_renders_of_a_replay_are_byte_identical(gmem: Verdict, tmp_path: Path) -> None:
    res = cx(gmem)
    runs = [run_once(gmem.scenario, gmem.profile, gmem.design, ReplayChooser(res.choices),
                     fail_nth=frozenset(res.fail_nth), where=True) for _ in range(2)]
    pages = [render_run(r, "t", "s", gmem.schedule_json()) for r in runs]
    assert pages[0] == pages[1]
    assert pages[0] == render_run(res, "t", "s", gmem.schedule_json())
    assert [e.where for e in runs[0].log.events] == [e.where for e in res.log.events]
    # Through the CLI too: two `passthru replay --trace html` of one schedule, same bytes.
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps(gmem.schedule_json()))
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}.html"
        r = CliRunner().invoke(main, ["replay", str(sched), "--trace", "html", "--out", str(out)])
        assert out.exists(), r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert b'<span class="where">kernel/kvm/mmu.py:' in outs[0]


def test_plain_runs_do_not_compute_where(gmem: Verdict) -> None:
    res = cx(gmem)
    plain = run_once(gmem.scenario, gmem.profile, gmem.design, ReplayChooser(res.choices),
                     fail_nth=frozenset(res.fail_nth))
    assert not plain.log.where
    assert [e.text() for e in plain.log.events] == [e.text() for e in res.log.events]
    assert all(e.where == "" for e in plain.log.events)
    page = render_run(plain, "t", "", None)
    assert '<span class="where">' not in page and 'class="line value"' in page
