"""Run a scenario once under a given schedule, and check it under many.

One run: a fresh SimHost on a scheduler driven by the chooser; the scenario's set-up runs to
completion, then its tasks run under the chooser; then final checks; then teardown (every
process exits) and the leak check — nothing alive, no RAM allocated, no pin left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import Fault
from ..host.sim import SimHost
from ..kernel.profile import get_profile
from ..sim.log import EventLog
from ..sim.scheduler import Chooser, Scheduler, SimDeadlock, Violation
from .explore import (
    DfsExplorer,
    DporExplorer,
    PctChooser,
    RandomChooser,
    ReplayChooser,
    preemptions,
)
from .scenario import Sandbox, Scenario

SCHEDULE_VERSION = 1


class ScenarioError(Exception):
    """The scenario's own set-up failed: a bug in the scenario, not a finding."""


@dataclass
class RunResult:
    violations: list[Violation]
    log: EventLog
    choices: list[int]
    steps: int
    preemptions: int
    fail_nth: tuple[int, ...] = ()

    @property
    def violated(self) -> bool:
        return bool(self.violations)


def run_once(
    sc: Scenario,
    profile: str,
    design: str | None,
    chooser: Chooser | None,
    fail_nth: frozenset[int] = frozenset(),
    log: bool = True,
) -> RunResult:
    prof = get_profile(profile).with_bugs(*sc.bugs)
    if design:
        prof = prof.with_design(design)
    sched = Scheduler(chooser=chooser, fail_nth=fail_nth, log=log)
    host = SimHost(profile=prof, sched=sched, name="vmm")
    sb = Sandbox(prof, design, sched, host, hosts=[host])
    try:
        sc.fn(sb)
    except (OSError, Fault) as e:
        if not fail_nth:
            raise ScenarioError(f"{sc.name}: set-up failed: {e}") from e
    sched.run()
    for t in sched.tasks:
        err = t.error
        if err is not None and not isinstance(err, (OSError, Fault, SimDeadlock)):
            sched.violation("crash", f"task {t.name} raised {type(err).__name__}: {err}")
    for name, check in sb.finals:
        msg = check()
        if msg:
            sched.violation(name, msg)
    if sc.teardown:
        try:
            for h in reversed(sb.hosts):
                h.exit()
            leaks = host.leaks()
            if leaks:
                sched.violation("leak", "after teardown: " + "; ".join(leaks))
        except SimDeadlock:
            pass  # already reported: a deadlocked task still holds what teardown needs
    trace = getattr(chooser, "trace", [])
    choices = list(getattr(chooser, "choices", []))
    return RunResult(
        list(sched.violations), sched.log, choices, sched.step, preemptions(trace),
        tuple(sorted(fail_nth)),
    )


@dataclass
class Verdict:
    scenario: Scenario
    profile: str
    design: str | None
    schedules: int = 0
    steps: int = 0
    elapsed: float = 0.0
    complete: bool = False  # the whole bounded space was explored
    counterexample: RunResult | None = None
    violations: list[Violation] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.counterexample is not None

    @property
    def ok(self) -> bool:
        return self.found == (self.scenario.expect == "violation")

    def schedule_json(self) -> dict[str, Any]:
        cx = self.counterexample
        return {
            "version": SCHEDULE_VERSION,
            "scenario": self.scenario.name,
            "profile": self.profile,
            "design": self.design,
            "choices": cx.choices if cx else [],
            "fail_nth": list(cx.fail_nth) if cx else [],
        }


def check(
    sc: Scenario,
    profile: str,
    design: str | None = None,
    strategy: str = "dfs",
    bound: int = 2,
    budget: int = 20000,
    seed: int = 0,
) -> Verdict:
    """Explore ``sc`` until a violation or the budget; a safe scenario is explored fully."""
    v = Verdict(sc, profile, design)
    t0 = time.perf_counter()
    results: list[RunResult] = []

    def run(ch: Any) -> None:
        results.append(run_once(sc, profile, design, ch, log=False))

    if strategy in ("dfs", "dpor"):
        gen = (DfsExplorer(bound).schedules(run) if strategy == "dfs"
               else DporExplorer().schedules(run))
        v.complete = True
        for _ in gen:
            res = results.pop()
            v.schedules += 1
            v.steps += res.steps
            if res.violated:
                v.counterexample = res
                v.violations = res.violations
                v.complete = False
                break
            if v.schedules >= budget:
                v.complete = False
                break
    elif strategy in ("random", "pct"):
        # PCT places its change points among the steps a run actually takes, and cycles the
        # bug depth it targets through 2, 3 and 4.
        horizon = run_once(sc, profile, design, ReplayChooser([]), log=False).steps
        for i in range(budget):
            ch = (RandomChooser(seed + i) if strategy == "random"
                  else PctChooser(seed + i, depth=2 + i % 3, horizon=max(horizon, 4)))
            res = run_once(sc, profile, design, ch, log=False)
            v.schedules += 1
            v.steps += res.steps
            if res.violated:
                v.counterexample = res
                v.violations = res.violations
                break
    else:
        raise ValueError(f"unknown strategy {strategy!r} (dfs, dpor, pct, random)")
    if v.counterexample is not None:
        # Re-run the counterexample with the event log on, for the report.
        v.counterexample = run_once(sc, profile, design, ReplayChooser(v.counterexample.choices))
    v.elapsed = time.perf_counter() - t0
    return v
