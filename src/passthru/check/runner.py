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
    Decision,
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
    faults_seen: int = 0
    decisions: list[Decision] = field(default_factory=list)

    @property
    def first_violation_step(self) -> int:
        return min((v.step for v in self.violations), default=self.steps)

    def size(self) -> tuple[int, int, int]:
        """What shrinking minimises: preemptions, then faults, then the violation's step."""
        return (self.preemptions, len(self.fail_nth), self.first_violation_step)

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
        tuple(sorted(fail_nth)), sched.faults_seen, list(trace),
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
    # How the verdict was reached: what "safe" or "none found" is relative to.
    strategy: str = "dfs"
    bound: int | None = 2  # preemption bound (dfs; None: unbounded)
    budget: int = 20000
    seed: int = 0
    time_limit: float | None = None
    faults: bool = False
    stopped: str | None = None  # "budget" or "time" when exploration was cut short

    def bound_text(self) -> str:
        """The verdict with its bound, e.g. "safe (all schedules with ≤ 2 preemptions)"."""
        if self.found:
            cx = self.counterexample
            n = cx.preemptions if cx else 0
            return f"violation (after {self.schedules} schedule(s); {n} preemption(s))"
        faults = " and every single fault" if self.faults else ""
        if self.complete:
            if self.strategy == "dfs" and self.bound is not None:
                return f"safe (all schedules with ≤ {self.bound} preemptions{faults})"
            if self.strategy == "dfs":
                return f"safe (all schedules{faults})"
            if self.strategy == "dpor":
                return f"safe (all schedules up to DPOR equivalence{faults})"
            if self.strategy == "full":
                return f"safe (all schedules, no reduction{faults})"
        why = {"time": "time limit", "budget": "budget"}.get(self.stopped or "", "sampled")
        return (f"none found ({self.schedules} {self.strategy} schedule(s) in "
                f"{self.elapsed:.2f} s, {why})")

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


def shrink(sc: Scenario, profile: str, design: str | None, res: RunResult,
           limit: int = 200) -> RunResult:
    """Shrink a counterexample: fewest preemptions, then faults, then the earliest violation.

    Candidates: at each preemption, let the running task take one more step first (the rest
    of the schedule kept as far as it still applies) or run on from there by default; the
    prefix up to any decision, then the default; each injected fault dropped. A candidate is
    kept when it still breaks a rule of the same kind and is smaller; repeat until nothing
    improves (or ``limit`` runs).
    """
    kinds = {v.kind for v in res.violations}
    best = res
    runs = 0
    improved = True
    while improved and runs < limit:
        improved = False
        cands: list[tuple[list[int], frozenset[int]]] = []
        ch, fl = best.choices, frozenset(best.fail_nth)
        for i, d in enumerate(best.decisions):
            if d.current is not None and d.chosen != d.current:
                cands.append((ch[:i] + [d.current] + ch[i:], fl))
                cands.append((ch[:i] + [d.current], fl))
        for k in range(len(ch)):
            cands.append((ch[:k], fl))
        for f in best.fail_nth:
            cands.append((best.choices, frozenset(best.fail_nth) - {f}))
        for prefix, faults in cands:
            runs += 1
            cand = run_once(sc, profile, design, ReplayChooser(prefix), fail_nth=faults,
                            log=False)
            if cand.violated and {v.kind for v in cand.violations} & kinds \
                    and cand.size() < best.size():
                best = cand
                improved = True
                break
            if runs >= limit:
                break
    return best


def check(
    sc: Scenario,
    profile: str,
    design: str | None = None,
    strategy: str = "dfs",
    bound: int = 2,
    budget: int = 20000,
    seed: int = 0,
    time_limit: float | None = None,
    faults: bool = False,
    shrink_cx: bool = True,
) -> Verdict:
    """Explore ``sc`` until a violation, the budget or the time limit; a safe scenario is
    explored fully. ``faults``: then sweep "fail the Nth fault point" for every N the run
    reaches (the kernel's fail_nth), each under the same exploration."""
    v = Verdict(sc, profile, design, strategy=strategy,
                bound=bound if strategy == "dfs" else None, budget=budget, seed=seed,
                time_limit=time_limit, faults=faults)
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + time_limit
    results: list[RunResult] = []
    v.complete = True

    def explore(fail: frozenset[int]) -> RunResult | None:
        def run(ch: Any) -> None:
            results.append(run_once(sc, profile, design, ch, fail_nth=fail, log=False))

        if strategy in ("dfs", "dpor"):
            gen = (DfsExplorer(bound).schedules(run) if strategy == "dfs"
                   else DporExplorer().schedules(run))
            for _ in gen:
                res = results.pop()
                v.schedules += 1
                v.steps += res.steps
                if res.violated:
                    return res
                if v.schedules >= budget or (deadline and time.perf_counter() > deadline):
                    v.complete = False
                    v.stopped = "budget" if v.schedules >= budget else "time"
                    return None
            return None
        if strategy in ("random", "pct"):
            # PCT places its change points among the steps a run actually takes, and cycles
            # the bug depth it targets through 2, 3 and 4.
            horizon = run_once(sc, profile, design, ReplayChooser([]), fail_nth=fail,
                               log=False).steps
            v.complete = False  # sampling never proves anything
            for i in range(budget):
                ch = (RandomChooser(seed + i) if strategy == "random"
                      else PctChooser(seed + i, depth=2 + i % 3, horizon=max(horizon, 4)))
                res = run_once(sc, profile, design, ch, fail_nth=fail, log=False)
                v.schedules += 1
                v.steps += res.steps
                if res.violated:
                    return res
                if deadline and time.perf_counter() > deadline:
                    v.stopped = "time"
                    return None
            v.stopped = "budget"
            return None
        raise ValueError(f"unknown strategy {strategy!r} (dfs, dpor, pct, random)")

    found = explore(frozenset())
    if found is None and faults:
        n_points = run_once(sc, profile, design, ReplayChooser([]), log=False).faults_seen
        for n in range(1, n_points + 1):
            found = explore(frozenset({n}))
            if found is not None or (deadline and time.perf_counter() > deadline):
                break
    if found is not None:
        v.complete = False
        if shrink_cx:
            found = shrink(sc, profile, design, found)
        # Re-run the counterexample with the event log on, for the report.
        v.counterexample = run_once(sc, profile, design, ReplayChooser(found.choices),
                                    fail_nth=frozenset(found.fail_nth))
        v.violations = v.counterexample.violations
    v.elapsed = time.perf_counter() - t0
    return v
