"""Verdicts as JSON, for tools: what ``report.json`` holds.

:func:`verdicts_json` gives, for every verdict, its fields (scenario, doc, profile, design,
expect, verdict, ok, found, complete, schedules, steps, elapsed), its violations, the
replayable schedule (``Verdict.schedule_json()``, or null when nothing was found), the names
of the files :func:`passthru.report.write_report` writes for it, and the counterexample's run
(size, choices and every event as ``Event.to_json()``). Only JSON types: the dict survives
``json.dumps``/``json.loads`` unchanged. Leaves out the schedules explored without a finding.
"""

from __future__ import annotations

import re
from typing import Any

from ..check.runner import RunResult, Verdict
from ..sim.scheduler import Violation

REPORT_VERSION = 1


def verdict_word(v: Verdict) -> str:
    """What the checker concluded, in the words of ``passthru check``."""
    return "violation" if v.found else ("safe" if v.complete else "none found")


def variant_name(v: Verdict) -> str:
    """``<scenario>-<profile>[-<design>]``, safe as a file name."""
    name = f"{v.scenario.name}-{v.profile}" + (f"-{v.design}" if v.design else "")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def file_names(verdicts: list[Verdict]) -> list[str | None]:
    """The file stem of each verdict's counterexample (None without one), made unique."""
    seen: dict[str, int] = {}
    out: list[str | None] = []
    for v in verdicts:
        if not v.found:
            out.append(None)
            continue
        base = variant_name(v)
        n = seen.get(base, 0) + 1
        seen[base] = n
        out.append(base if n == 1 else f"{base}-{n}")
    return out


def violation_json(v: Violation) -> dict[str, Any]:
    return {"kind": v.kind, "message": v.message, "step": v.step, "task": v.task}


def run_json(res: RunResult) -> dict[str, Any]:
    return {
        "steps": res.steps,
        "preemptions": res.preemptions,
        "choices": list(res.choices),
        "fail_nth": list(res.fail_nth),
        "violations": [violation_json(x) for x in res.violations],
        "events": [ev.to_json() for ev in res.log.events],
    }


def verdicts_json(verdicts: list[Verdict]) -> dict[str, Any]:
    """Every verdict, machine-readable (see the module's docstring)."""
    items: list[dict[str, Any]] = []
    for v, stem in zip(verdicts, file_names(verdicts), strict=True):
        cx = v.counterexample
        items.append({
            "scenario": v.scenario.name,
            "doc": v.scenario.doc,
            "profile": v.profile,
            "design": v.design,
            "expect": v.scenario.expect,
            "verdict": verdict_word(v),
            "ok": v.ok,
            "found": v.found,
            "complete": v.complete,
            "schedules": v.schedules,
            "steps": v.steps,
            "elapsed": round(v.elapsed, 6),
            "violations": [violation_json(x) for x in v.violations],
            "schedule": v.schedule_json() if cx is not None else None,
            "page": f"{stem}.html" if stem else None,
            "schedule_file": f"{stem}.json" if stem else None,
            "counterexample": run_json(cx) if cx is not None else None,
        })
    return {
        "version": REPORT_VERSION,
        "summary": {
            "verdicts": len(verdicts),
            "unexpected": sum(not v.ok for v in verdicts),
            "found": sum(v.found for v in verdicts),
        },
        "verdicts": items,
    }
