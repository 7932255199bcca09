"""Cross-checks of the explorer against itself: what the reductions may prune, and how much.

- :func:`explore_all` runs one strategy over the *whole* space it covers (without stopping at
  the first violation) and collects every run's observable final state, the kinds of
  violation seen and each run's Mazurkiewicz trace signature.
- The *trace* of a run is its happens-before relation over footprints: the steps as (task,
  k-th step of that task) and, for every pair of steps of different tasks whose footprints
  conflict, which came first. Two schedules with the same trace reach the same state; an
  optimal DPOR runs exactly one schedule per trace. :func:`trace_signature` computes it.

The tests use these on the small built-in scenarios (DPOR and DFS against the enumeration
without any reduction: the same verdict, the same set of final states) and the checker
benchmark reports DPOR's schedules per trace on every scenario small enough to enumerate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..sim.track import conflict
from .explore import Decision
from .runner import RunResult, explorer, run_once
from .scenario import Scenario

Signature = tuple[frozenset[tuple[tuple[int, int], tuple[int, int]]], tuple[tuple[int, int], ...]]


def trace_signature(decisions: list[Decision]) -> Signature:
    """The run's happens-before relation over footprints (see the module docstring)."""
    counts: dict[int, int] = {}
    events: list[tuple[int, int]] = []
    for d in decisions:
        k = counts.get(d.chosen, 0)
        counts[d.chosen] = k + 1
        events.append((d.chosen, k))
    edges = set()
    for j, dj in enumerate(decisions):
        for i in range(j):
            di = decisions[i]
            if di.chosen != dj.chosen and conflict(di.fp, dj.fp):
                edges.add((events[i], events[j]))
    return frozenset(edges), tuple(sorted(counts.items()))


@dataclass
class Exploration:
    strategy: str
    bound: int | None
    schedules: int = 0
    complete: bool = True  # False when the cap stopped it
    finals: set[tuple[Any, ...]] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    traces: set[Signature] = field(default_factory=set)

    @property
    def verdict(self) -> str:
        return "violation" if self.kinds else "safe"


def explore_all(sc: Scenario, profile: str, design: str | None, strategy: str,
                bound: int | None = None, cap: int = 5000, races: bool = True) -> Exploration:
    """Every schedule ``strategy`` explores (up to ``cap``), none cut short by a finding."""
    out = Exploration(strategy, bound)
    results: list[RunResult] = []

    def run(ch: Any) -> None:
        results.append(run_once(sc, profile, design, ch, log=False, races=races))

    for _ in explorer(strategy, bound).schedules(run):
        res = results.pop()
        out.schedules += 1
        out.finals.add(res.final_state)
        out.kinds.update(v.kind for v in res.violations)
        out.traces.add(trace_signature(res.decisions))
        if out.schedules >= cap:
            out.complete = False
            break
    return out
