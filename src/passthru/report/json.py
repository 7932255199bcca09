"""Verdicts as JSON, for tools: what ``report.json`` holds.

:func:`verdicts_json` gives the run's metadata (``run``: the profiles and designs checked, the
passthru version, the command's options and the date — the only wall-clock value besides
elapsed times, and absent unless given), then, for every verdict, its fields (scenario, doc,
profile, design, expect, verdict, bound_text, outcome, ok, found, complete, how it was
reached: strategy, bound, budget, seed, time_limit, faults, stopped; schedules, steps,
elapsed), its violations, the replayable schedule (``Verdict.schedule_json()``, or null when
nothing was found), the names of the files :func:`passthru.report.write_report` writes for it,
and the counterexample's run (size, choices and every event as ``Event.to_json()``). Only JSON
types: the dict survives ``json.dumps``/``json.loads`` unchanged. Leaves out the schedules
explored without a finding.

``outcome`` is "as expected", "unexpected" (the verdict contradicts the scenario's
``expect``) or "unproven": nothing was found in a scenario expected safe, but the exploration
was cut short (budget, time limit, or sampling by random/pct) — not a proof.
"""

from __future__ import annotations

import re
from typing import Any

from ..check.runner import RunResult, Verdict
from ..check.schedfile import passthru_version
from ..sim.scheduler import Violation

REPORT_VERSION = 1  # fields are only ever added

AS_EXPECTED, UNPROVEN, UNEXPECTED = "as expected", "unproven", "unexpected"


def verdict_word(v: Verdict) -> str:
    """What the checker concluded, in the words of ``passthru check``."""
    return "violation" if v.found else ("safe" if v.complete else "none found")


def outcome(v: Verdict) -> str:
    """"as expected", "unproven" (expected safe, nothing found, not explored completely) or
    "unexpected"."""
    if not v.ok:
        return UNEXPECTED
    if not v.found and not v.complete:
        return UNPROVEN
    return AS_EXPECTED


def short_text(v: Verdict) -> str:
    """The verdict with its bound, short enough for a table cell: "safe ≤2", "safe (dpor)",
    "none found (time)", "violation"."""
    if v.found:
        return "violation"
    if v.complete:
        if v.strategy == "dfs" and v.bound is not None:
            return f"safe ≤{v.bound}"
        return f"safe ({v.strategy})"
    why = {"time": "time", "budget": "budget"}.get(v.stopped or "", "sampled")
    return f"none found ({why})"


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


def meta_json(verdicts: list[Verdict], options: dict[str, Any] | None = None,
              date: str | None = None) -> dict[str, Any]:
    """The run's metadata: profiles, designs, passthru version, options and (given) date."""
    return {
        "passthru": passthru_version(),
        "date": date,
        "profiles": sorted({v.profile for v in verdicts}),
        "designs": sorted({v.design for v in verdicts if v.design}),
        "strategies": sorted({v.strategy for v in verdicts}),
        "options": dict(options or {}),
    }


def verdicts_json(verdicts: list[Verdict], options: dict[str, Any] | None = None,
                  date: str | None = None) -> dict[str, Any]:
    """Every verdict, machine-readable (see the module's docstring). ``options``: the
    command's options; ``date``: when it ran (UTC ISO 8601), left null when not given."""
    items: list[dict[str, Any]] = []
    for v, stem in zip(verdicts, file_names(verdicts), strict=True):
        cx = v.counterexample
        items.append({
            "scenario": v.scenario.name,
            "doc": v.scenario.doc,
            "profile": v.profile,
            "design": v.design,
            "expect": v.scenario.expected(v.design),
            "verdict": verdict_word(v),
            "bound_text": v.bound_text(),
            "outcome": outcome(v),
            "ok": v.ok,
            "found": v.found,
            "complete": v.complete,
            "strategy": v.strategy,
            "bound": v.bound,
            "budget": v.budget,
            "seed": v.seed,
            "time_limit": v.time_limit,
            "faults": v.faults,
            "stopped": v.stopped,
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
        "run": meta_json(verdicts, options, date),
        "summary": {
            "verdicts": len(verdicts),
            "unexpected": sum(not v.ok for v in verdicts),
            "unproven": sum(outcome(v) == UNPROVEN for v in verdicts),
            "found": sum(v.found for v in verdicts),
        },
        "verdicts": items,
    }
