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
from ..sim import kinds
from ..sim.log import EventLog
from ..sim.scheduler import (
    DEFAULT_MAX_STEPS,
    STEP_BOUND,
    Chooser,
    Scheduler,
    SimDeadlock,
    SimStopped,
    Violation,
)
from . import schedfile
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

SCHEDULE_VERSION = schedfile.SCHEDULE_VERSION  # the schedule file's, for older imports

# What a run reports beyond the model's own rules (sim/kinds.py).
LEAK = kinds.register("leak", "check.runner")  # something alive after teardown
CRASH = kinds.register("crash", "check.runner")  # the model, a task or a check raised
TASK_ERROR = kinds.register("task-error", "check.runner")  # a task's unexpected errno or Fault
DEADLOCK = kinds.register("deadlock", "check.runner")  # a final check or teardown would sleep


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
    final_state: tuple[Any, ...] = ()  # what the run left observable (Sandbox.final_state)
    stopped: str | None = None  # "steps" or "time": the run was cut short by its bounds

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
    races: bool = True,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    deadline: float | None = None,
    where: bool = False,
) -> RunResult:
    """One run under ``chooser``, with footprints tracked (and data races detected unless
    ``races`` is False). Never raises for what the scenario's tasks, final checks or
    teardown do: a deadlock, a crash or an unexpected error is a violation in the result.
    The set-up's own failure (or a set-up that does not finish within ``max_steps``
    scheduling points) is a :class:`ScenarioError`.

    Bounded: at ``max_steps`` steps the run ends with a ``step-bound`` violation; past
    ``deadline`` (a ``time.monotonic()`` value) it ends with ``stopped == "time"`` and no
    finding. A stopped run skips its final checks and teardown (its tasks did not finish).

    ``where`` (with ``log``): every event carries its source location in the model
    (``Event.where``), for a counterexample's report or a replay; slower, off by default."""
    prof = get_profile(profile).with_bugs(*sc.bugs)
    if design:
        prof = prof.with_design(design)
    sched = Scheduler(chooser=chooser, fail_nth=fail_nth, log=log, track=True, races=races,
                      max_steps=max_steps, deadline=deadline)
    sched.log.where = log and where
    tracker = sched.tracker
    assert tracker is not None
    tracker.activate()
    try:
        host = SimHost(profile=prof, sched=sched, name="vmm")
        sb = Sandbox(prof, design, sched, host, hosts=[host])
        try:
            try:
                sched.bound_main = True
                sc.fn(sb)
            except SimStopped as e:
                if e.why == "steps":
                    raise ScenarioError(f"{sc.name}: {e}") from e
            except (OSError, Fault) as e:
                if not fail_nth:
                    raise ScenarioError(f"{sc.name}: set-up failed: {e}") from e
            except SimDeadlock as e:
                raise ScenarioError(f"{sc.name}: set-up would sleep forever: {e}") from e
            except Exception as e:
                raise ScenarioError(f"{sc.name}: set-up raised {type(e).__name__}: {e}") from e
            finally:
                sched.bound_main = False
            if sched.stopped is None:
                sched.run()
        except BaseException:
            for undo in reversed(sb.undo):
                undo()
            raise
    finally:
        tracker.deactivate()
    finish = getattr(chooser, "finish", None)
    if finish is not None:
        finish()
    observed = sb.final_state()[:3]  # before final checks and teardown change anything
    _task_errors(sched, sb)
    for name, check in sb.finals if sched.stopped is None else ():
        _guarded(sched, f"final check {name}", lambda c=check, n=name: _final(sched, n, c))
    if sc.teardown and sched.stopped is None:
        def teardown() -> None:
            for h in reversed(sb.hosts):
                h.exit()
            leaks = host.leaks()
            if leaks:
                sched.violation(LEAK, "after teardown: " + "; ".join(leaks))
        _guarded(sched, "teardown", teardown)
    for undo in reversed(sb.undo):
        undo()
    trace = getattr(chooser, "trace", [])
    choices = list(getattr(chooser, "choices", []))
    return RunResult(
        list(sched.violations), sched.log, choices, sched.step, preemptions(trace),
        tuple(sorted(fail_nth)), sched.faults_seen, list(trace),
        observed + (tuple(sorted({v.kind for v in sched.violations})),), sched.stopped,
    )


def _final(sched: Scheduler, name: str, check: Any) -> None:
    msg = check()
    if msg:
        sched.violation(name, msg)


def _guarded(sched: Scheduler, what: str, fn: Any) -> None:
    """Run a final check or the teardown from main; what blocks forever or raises is
    reported, never propagated (a deadlocked task may still hold what it needs)."""
    try:
        fn()
    except SimDeadlock:
        if not any(v.kind == DEADLOCK for v in sched.violations):
            sched.violation(DEADLOCK, f"{what} would sleep forever")
    except (OSError, Fault) as e:
        if not sched.faults_failed:
            sched.violation(CRASH, f"{what} failed: {type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - a crash in the model is a finding, not a traceback
        sched.violation(CRASH, f"{what} raised {type(e).__name__}: {e}")


def _task_errors(sched: Scheduler, sb: Sandbox) -> None:
    """An exception escaping a task is reported, unless the scenario expects it (an errno
    or exception type given to ``spawn(..., expect_errors=...)``) or it is the error path
    of an injected fault."""
    for t in sched.tasks:
        err = t.error
        if err is None or isinstance(err, SimDeadlock):
            continue
        if isinstance(err, (OSError, Fault)):
            if sched.faults_failed:
                continue
            if isinstance(err, OSError) and err.errno in t.expect_errors:
                continue
        if any(isinstance(x, type) and isinstance(err, x) for x in t.expect_errors):
            continue
        kind = TASK_ERROR if isinstance(err, (OSError, Fault)) else CRASH
        sched.violation(kind, f"task {t.name} raised {type(err).__name__}: {err}")


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
        return self.found == (self.scenario.expected(self.design) == "violation")

    def schedule_json(self) -> dict[str, Any]:
        """The counterexample as a schedule file (:mod:`passthru.check.schedfile`)."""
        cx = self.counterexample
        return schedfile.schedule_json(self.scenario, self.profile, self.design,
                             cx.choices if cx else [], cx.fail_nth if cx else ())


def _fewest_preemptions(sc: Scenario, profile: str, design: str | None, res: RunResult,
                        kinds: set[str], races: bool, limit: int = 3000) -> RunResult:
    """Whatever strategy found ``res``, look for the same kind of violation with fewer
    preemptions: DFS with iterative deepening (every schedule with 0 preemptions first, then
    1, ...) below ``res``'s count, up to ``limit`` runs; the first hit has the fewest."""
    if res.preemptions == 0:
        return res
    found: list[RunResult] = []

    def run(ch: Any) -> None:
        found.append(run_once(sc, profile, design, ch, fail_nth=frozenset(res.fail_nth),
                              log=False, races=races))

    for n, _ in enumerate(DfsExplorer(res.preemptions - 1).schedules(run)):
        cand = found.pop()
        if cand.violated and {v.kind for v in cand.violations} & kinds:
            return cand if cand.size() < res.size() else res
        if n + 1 >= limit:
            break
    return res


def shrink(sc: Scenario, profile: str, design: str | None, res: RunResult,
           limit: int = 200, races: bool = True) -> RunResult:
    """Shrink a counterexample: fewest preemptions, then faults, then the earliest violation.

    Candidates: at each preemption, let the running task take one more step first (the rest
    of the schedule kept as far as it still applies) or run on from there by default; the
    prefix up to any decision, then the default; each injected fault dropped. A candidate is
    kept when it still breaks a rule of the same kind and is smaller; repeat until nothing
    improves (or ``limit`` runs).
    """
    kinds = {v.kind for v in res.violations}
    best = _fewest_preemptions(sc, profile, design, res, kinds, races)
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
                            log=False, races=races)
            if cand.violated and {v.kind for v in cand.violations} & kinds \
                    and cand.size() < best.size():
                best = cand
                improved = True
                break
            if runs >= limit:
                break
    return best


STRATEGIES = ("dfs", "dpor", "full", "pct", "random")


def explorer(strategy: str, bound: int | None) -> DfsExplorer | DporExplorer:
    """The systematic explorers: dfs (bounded, sleep sets), dpor, and full (no reduction at
    all, unbounded unless a bound is given: the cross-check of the other two)."""
    if strategy == "dfs":
        return DfsExplorer(bound)
    if strategy == "dpor":
        return DporExplorer()
    if strategy == "full":
        return DfsExplorer(bound, sleep_sets=False, deepening=False)
    raise ValueError(f"unknown strategy {strategy!r} ({', '.join(STRATEGIES)})")


def check(
    sc: Scenario,
    profile: str,
    design: str | None = None,
    strategy: str = "dfs",
    bound: int | None = 2,
    budget: int = 20000,
    seed: int = 0,
    time_limit: float | None = None,
    faults: bool = False,
    shrink_cx: bool = True,
    races: bool = True,
    on_run: Any = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
) -> Verdict:
    """Explore ``sc`` until a violation, the budget or the time limit; a safe scenario is
    explored fully. ``faults``: then sweep "fail the Nth fault point" for every N the run
    reaches (the kernel's fail_nth), each under the same exploration. ``races=False`` turns
    the data-race detector off (footprints still drive the reductions). ``on_run(result)``
    sees every run (the cross-checks collect final states with it). Each run is bounded by
    ``max_steps`` (a ``step-bound`` violation) and by the time limit, checked at every
    scheduling point (a run cut by it counts as the exploration stopped by time)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} ({', '.join(STRATEGIES)})")
    if strategy == "full" and bound == 2:
        bound = None  # "full" means every schedule unless a bound is asked for explicitly
    v = Verdict(sc, profile, design, strategy=strategy,
                bound=bound if strategy in ("dfs", "full") else None, budget=budget,
                seed=seed, time_limit=time_limit, faults=faults)
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + time_limit
    mono = None if time_limit is None else time.monotonic() + time_limit
    bounds: dict[str, Any] = {"max_steps": max_steps, "deadline": mono}
    results: list[RunResult] = []
    v.complete = True

    def one(ch: Any, fail: frozenset[int]) -> RunResult:
        res = run_once(sc, profile, design, ch, fail_nth=fail, log=False, races=races,
                       **bounds)
        if on_run is not None:
            on_run(res)
        return res

    def explore(fail: frozenset[int]) -> RunResult | None:
        def run(ch: Any) -> None:
            results.append(one(ch, fail))

        if strategy in ("dfs", "dpor", "full"):
            for _ in explorer(strategy, bound).schedules(run):
                res = results.pop()
                v.schedules += 1
                v.steps += res.steps
                if res.stopped == "time":
                    v.complete = False
                    v.stopped = "time"
                    return None
                if res.violated:
                    return res
                if v.schedules >= budget or (deadline and time.perf_counter() > deadline):
                    v.complete = False
                    v.stopped = "budget" if v.schedules >= budget else "time"
                    return None
            return None
        # PCT places its change points among the steps a run actually takes, and cycles
        # the bug depth it targets through 2, 3 and 4.
        first = run_once(sc, profile, design, ReplayChooser([]), fail_nth=fail,
                         log=False, races=races, **bounds)
        horizon = first.steps
        v.complete = False  # sampling never proves anything
        for i in range(budget):
            ch = (RandomChooser(seed + i) if strategy == "random"
                  else PctChooser(seed + i, depth=2 + i % 3, horizon=max(horizon, 4)))
            res = one(ch, fail)
            v.schedules += 1
            v.steps += res.steps
            if res.stopped == "time":
                v.stopped = "time"
                return None
            if res.violated:
                return res
            if deadline and time.perf_counter() > deadline:
                v.stopped = "time"
                return None
        v.stopped = "budget"
        return None

    found = explore(frozenset())
    if found is None and faults:
        n_points = run_once(sc, profile, design, ReplayChooser([]), log=False,
                            races=races, **bounds).faults_seen
        for n in range(1, n_points + 1):
            found = explore(frozenset({n}))
            if found is not None or (deadline and time.perf_counter() > deadline):
                if found is None:
                    v.complete = False
                    v.stopped = v.stopped or "time"
                break
    if found is not None:
        v.complete = False
        if shrink_cx and not any(x.kind == STEP_BOUND for x in found.violations):
            # (a run that hit the step bound is as long as the bound: shrinking it would
            # cost hundreds of such runs)
            found = shrink(sc, profile, design, found, races=races)
        # Re-run the counterexample with the event log on, for the report.
        v.counterexample = run_once(sc, profile, design, ReplayChooser(found.choices),
                                    fail_nth=frozenset(found.fail_nth), races=races,
                                    max_steps=max_steps, where=True)
        v.violations = v.counterexample.violations
    v.elapsed = time.perf_counter() - t0
    return v
