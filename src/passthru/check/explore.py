"""Stateless exploration of schedules (DESIGN.md, "Concurrency and exploration").

The model is deterministic, so a schedule is just the list of task choices at each decision;
exploring replays the scenario from scratch for each one. :class:`DfsExplorer` is a bounded
depth-first search: a run follows a prefix of choices and then the default (keep running the
current task), recording every decision's alternatives; each alternative beyond the prefix
becomes a new prefix, if switching there keeps the number of preemptions (switching away from
a task that could have continued) within the bound. Every schedule is produced exactly once.
:class:`RandomChooser` picks uniformly from a seeded RNG, for long runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..sim.scheduler import Scheduler, Task


@dataclass
class Decision:
    enabled: tuple[int, ...]
    current: int | None  # the task that ran last, if it could continue
    chosen: int


@dataclass
class ReplayChooser:
    """Follows ``prefix`` (task ids), then keeps the current task (no preemption)."""

    prefix: list[int] = field(default_factory=list)
    trace: list[Decision] = field(default_factory=list)
    diverged: bool = False

    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task:
        i = len(self.trace)
        ids = tuple(t.tid for t in enabled)
        cur = current.tid if current is not None and current in enabled else None
        pick: Task | None = None
        if i < len(self.prefix):
            want = self.prefix[i]
            pick = next((t for t in enabled if t.tid == want), None)
            if pick is None:
                self.diverged = True
        if pick is None:
            pick = current if cur is not None and current is not None else enabled[0]
        self.trace.append(Decision(ids, cur, pick.tid))
        return pick

    @property
    def choices(self) -> list[int]:
        return [d.chosen for d in self.trace]


def preemptions(trace: list[Decision]) -> int:
    return sum(1 for d in trace if d.current is not None and d.chosen != d.current)


class DfsExplorer:
    """Enumerate schedules with at most ``bound`` preemptions."""

    def __init__(self, bound: int = 2) -> None:
        self.bound = bound

    def schedules(self, run: Callable[[ReplayChooser], None]) -> Iterator[ReplayChooser]:
        stack: list[list[int]] = [[]]
        while stack:
            prefix = stack.pop()
            ch = ReplayChooser(prefix)
            run(ch)
            yield ch
            trace = ch.trace
            pre = preemptions(trace[: len(prefix)])
            branches: list[list[int]] = []
            for i in range(len(prefix), len(trace)):
                d = trace[i]
                for alt in d.enabled:
                    if alt == d.chosen:
                        continue
                    extra = 1 if d.current is not None and alt != d.current else 0
                    if pre + extra <= self.bound:
                        branches.append([x.chosen for x in trace[:i]] + [alt])
                if d.current is not None and d.chosen != d.current:
                    pre += 1
            # Deepest alternatives first, so the search is depth-first.
            stack.extend(branches)


class RandomChooser:
    """Uniform choice at every decision from a seeded RNG (records a replayable trace)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.inner = ReplayChooser([])

    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task:
        pick = enabled[self.rng.randrange(len(enabled))]
        self.inner.prefix.append(pick.tid)
        return self.inner.choose(sched, enabled, current)

    @property
    def trace(self) -> list[Decision]:
        return self.inner.trace

    @property
    def choices(self) -> list[int]:
        return self.inner.choices
