"""Stateless exploration of schedules (DESIGN.md, "Concurrency and exploration").

The model is deterministic, so a schedule is the list of task choices at each decision and
exploring replays the scenario from scratch for each one. Every decision records the enabled
tasks and the resource each is about to touch (the scheduling point's annotation), which is
what the reductions below reason about. Two accesses are *dependent* when they name the same
resource and are not both reads.

- :class:`DfsExplorer` — depth-first over choices with a preemption bound (switching away from
  a task that could have continued costs one), optionally iterative deepening (bound 0, 1, ...)
  and sleep sets (an alternative already explored at a node is not tried again below a sibling
  that is independent of it).
- :class:`DporExplorer` — dynamic partial-order reduction (Flanagan & Godefroid, POPL 2005)
  over the annotations: after each run, for every step find the last earlier step of another
  task that is dependent and not ordered before it by happens-before (vector clocks) and add a
  backtrack point there; only those points are explored.
- :class:`RandomChooser` (uniform, seeded) and :class:`PctChooser` (probabilistic concurrency
  testing: random task priorities and d-1 priority change points; Burckhardt et al., 2010).

DPOR is sound only for what the annotations cover: a step's shared accesses beyond its first
scheduling point must be protected by a lock that is itself a point (docs/fidelity.md).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..sim.scheduler import Scheduler, Task

Access = tuple[str, str]


def dependent(a: Access | None, b: Access | None) -> bool:
    if a is None or b is None:
        return False
    return a[0] == b[0] and not (a[1] == "r" and b[1] == "r")


@dataclass
class Decision:
    enabled: tuple[int, ...]
    current: int | None  # the task that ran last, if it could continue
    chosen: int
    access: dict[int, Access | None] = field(default_factory=dict)
    sleep: frozenset[int] = frozenset()


@dataclass
class ReplayChooser:
    """Follows ``prefix`` (task ids), then keeps the current task (no preemption); past the
    prefix, tasks in the sleep set are avoided while another is enabled."""

    prefix: list[int] = field(default_factory=list)
    trace: list[Decision] = field(default_factory=list)
    diverged: bool = False
    sleep: frozenset[int] = frozenset()  # the sleep set at the first node past the prefix

    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task:
        i = len(self.trace)
        ids = tuple(t.tid for t in enabled)
        cur = current.tid if current is not None and current in enabled else None
        access = {t.tid: t.next_access for t in enabled}
        pick: Task | None = None
        sleep: frozenset[int] = frozenset()
        if i < len(self.prefix):
            want = self.prefix[i]
            pick = next((t for t in enabled if t.tid == want), None)
            if pick is None:
                self.diverged = True
        else:
            if i == len(self.prefix):
                sleep = self.sleep
            elif self.trace:
                prev = self.trace[-1]
                pa = prev.access.get(prev.chosen)
                sleep = frozenset(q for q in prev.sleep if q != prev.chosen
                                  and not dependent(prev.access.get(q), pa))
            sleep = frozenset(q for q in sleep if q in ids)
        if pick is None:
            awake = [t for t in enabled if t.tid not in sleep] or enabled
            if current is not None and cur is not None and current in awake:
                pick = current
            else:
                pick = awake[0]
        self.trace.append(Decision(ids, cur, pick.tid, access, sleep))
        return pick

    @property
    def choices(self) -> list[int]:
        return [d.chosen for d in self.trace]


def preemptions(trace: list[Decision]) -> int:
    return sum(1 for d in trace if d.current is not None and d.chosen != d.current)


Run = Callable[[ReplayChooser], None]


class DfsExplorer:
    """Enumerate schedules with at most ``bound`` preemptions (each exactly once)."""

    def __init__(self, bound: int = 2, sleep_sets: bool = True, deepening: bool = True) -> None:
        self.bound = bound
        self.sleep_sets = sleep_sets
        self.deepening = deepening

    def schedules(self, run: Run, root: list[int] | None = None) -> Iterator[ReplayChooser]:
        """All schedules extending ``root`` (branching only past it: for --jobs).

        With ``deepening`` the frontier is ordered by preemptions, depth-first within a
        level: every schedule with 0 preemptions runs before any with 1, and so on — iterative
        deepening without re-running the shallower levels."""
        frontier: list[tuple[int, int, list[int], frozenset[int]]] = [
            (0, 0, list(root or []), frozenset())]
        floor = len(root or [])
        counter = 0
        while frontier:
            if self.deepening:
                _, _, prefix, sleep = heapq.heappop(frontier)
            else:
                _, _, prefix, sleep = frontier.pop()
            ch = ReplayChooser(prefix, sleep=sleep if self.sleep_sets else frozenset())
            run(ch)
            yield ch
            trace = ch.trace
            pre = preemptions(trace[: len(prefix)])
            branches: list[tuple[int, list[int], frozenset[int]]] = []
            for i in range(max(len(prefix), floor), len(trace)):
                d = trace[i]
                explored = set(d.sleep) | {d.chosen}
                for alt in d.enabled:
                    if alt in explored:
                        continue
                    extra = 1 if d.current is not None and alt != d.current else 0
                    if pre + extra <= self.bound:
                        a = d.access.get(alt)
                        child = frozenset(q for q in explored if q != alt
                                          and not dependent(d.access.get(q), a))
                        branches.append((pre + extra, [x.chosen for x in trace[:i]] + [alt],
                                         child))
                        explored.add(alt)
                if d.current is not None and d.chosen != d.current:
                    pre += 1
            for npre, p, sl in reversed(branches):
                counter += 1
                # Deeper branches later in the list get smaller keys: depth-first per level.
                item = (npre, -counter, p, sl)
                if self.deepening:
                    heapq.heappush(frontier, item)
                else:
                    frontier.append(item)


@dataclass
class _Node:
    enabled: tuple[int, ...]
    access: dict[int, Access | None]
    chosen: int
    current: int | None
    backtrack: set[int]
    done: set[int]


class DporExplorer:
    """Classic stateless DPOR over the scheduling points' resource annotations."""

    def __init__(self, bound: int | None = None) -> None:
        self.bound = bound  # optional preemption bound on backtrack points

    def schedules(self, run: Run) -> Iterator[ReplayChooser]:
        nodes: list[_Node] = []
        prefix: list[int] = []
        while True:
            ch = ReplayChooser(prefix)
            run(ch)
            yield ch
            trace = ch.trace
            for i in range(len(prefix), len(trace)):
                d = trace[i]
                nodes.append(_Node(d.enabled, d.access, d.chosen, d.current,
                                   {d.chosen}, {d.chosen}))
            del nodes[len(trace):]
            self._add_backtracks(nodes)
            nxt = self._next(nodes)
            if nxt is None:
                return
            i, p = nxt
            nodes[i].done.add(p)
            nodes[i].chosen = p
            del nodes[i + 1:]
            prefix = [n.chosen for n in nodes]

    def _add_backtracks(self, nodes: list[_Node]) -> None:
        clocks: list[dict[int, int]] = []
        task_clock: dict[int, dict[int, int]] = {}
        for j, n in enumerate(nodes):
            p = n.chosen
            aj = n.access.get(p)
            before = task_clock.get(p, {})
            # the last earlier step of another task, dependent and not ordered before p
            for i in range(j - 1, -1, -1):
                m = nodes[i]
                q = m.chosen
                if q == p or not dependent(m.access.get(q), aj):
                    continue
                if before.get(q, 0) >= clocks[i].get(q, 0):
                    continue  # already happens-before p's state
                if p in m.enabled:
                    m.backtrack.add(p)
                else:
                    m.backtrack.update(m.enabled)
                break
            vc = dict(before)
            for i in range(j):
                m = nodes[i]
                if m.chosen != p and dependent(m.access.get(m.chosen), aj):
                    for k, v in clocks[i].items():
                        if vc.get(k, 0) < v:
                            vc[k] = v
            vc[p] = j + 1
            clocks.append(vc)
            task_clock[p] = vc

    def _next(self, nodes: list[_Node]) -> tuple[int, int] | None:
        for i in range(len(nodes) - 1, -1, -1):
            n = nodes[i]
            for p in sorted(n.backtrack - n.done):
                if p not in n.enabled:
                    n.done.add(p)
                    continue
                if self.bound is not None:
                    pre = sum(1 for m in nodes[:i] if m.current is not None
                              and m.chosen != m.current)
                    if pre + (1 if n.current is not None and p != n.current else 0) > self.bound:
                        n.done.add(p)
                        continue
                return i, p
        return None


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


class PctChooser(RandomChooser):
    """PCT: each task gets a random priority (higher runs); at ``depth - 1`` random steps
    among the first ``horizon`` the running task drops below every initial priority."""

    def __init__(self, seed: int, depth: int = 3, horizon: int = 64) -> None:
        super().__init__(seed)
        self.prio: dict[int, int] = {}
        # change point i (at step change[i]) lowers the running task to priority i; the
        # steps are drawn at random and *not* sorted, as in PCT, so labels and order vary.
        self.change = self.rng.sample(range(1, max(horizon, depth) + 1), depth - 1)
        self.step = 0

    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task:
        self.step += 1
        for t in enabled:
            if t.tid not in self.prio:
                self.prio[t.tid] = len(self.change) + 1 + self.rng.randrange(1 << 20)
        if current is not None and self.step in self.change:
            self.prio[current.tid] = self.change.index(self.step)
        pick = max(enabled, key=lambda t: (self.prio[t.tid], -t.tid))
        self.inner.prefix.append(pick.tid)
        return self.inner.choose(sched, enabled, current)
